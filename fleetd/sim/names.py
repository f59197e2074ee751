"""Ollama's model-name parsing, transcribed from its Go source (types/model/name.go).

The simulator keeps its own copy on purpose instead of importing fleetd's checker: it is
the reference fleetd is tested against, so a bug in fleetd's rule must not hide here too.
"""

from __future__ import annotations

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
_MISSING = "!MISSING!"
_HOST, _NAMESPACE, _MODEL, _TAG = range(4)


class InvalidName(ValueError):
    """The string is not a valid Ollama model name."""


def _cut_last(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return s[:i] or _MISSING, s[i + len(sep) :] or _MISSING, True


def _valid_part(kind: int, s: str) -> bool:
    if not 1 <= len(s) <= (350 if kind == _HOST else 80):
        return False
    for i, c in enumerate(s):
        word = c.isascii() and (c.isalnum() or c == "_")
        if i == 0 or c not in "-.:":
            if not word:
                return False
        elif (c == "." and kind == _NAMESPACE) or (c == ":" and kind != _HOST):
            return False
    return True


def parse(name: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) with Ollama's defaults filled in; case is kept."""
    s, host, namespace, tag = name, "", "", ""
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_last(s, ":")
    s, model, promised = _cut_last(s, "/")
    if not promised:
        model = s
    else:
        s, namespace, promised = _cut_last(s, "/")
        if not promised:
            namespace = s
        else:
            scheme, sep, rest = s.partition("://")
            host = rest if sep else scheme
    parts = (host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or "latest")
    if not all(_valid_part(kind, part) for kind, part in enumerate(parts)):
        raise InvalidName(name)
    return parts


def is_valid(name: str) -> bool:
    try:
        parse(name)
    except InvalidName:
        return False
    return True


def display(name: str) -> str:
    """The shortest form Ollama shows (``gpt-oss:20b``, ``ns/model:tag``, ``host/ns/m:t``)."""
    host, namespace, model, tag = parse(name)
    if host.lower() != DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def registry_path(name: str) -> tuple[str, str]:
    """(``namespace/model``, tag) as the registry's URL spells them."""
    _, namespace, model, tag = parse(name)
    return f"{namespace}/{model}", tag
