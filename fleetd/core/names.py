"""Ollama's model-name rule, checked before anything else touches a name (as Ollama
checks it, so a name fleetd accepts is one Ollama accepts too)."""

from __future__ import annotations

import functools
import re

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}"
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,79}"
_HOST = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,349}(?::[0-9]{1,5})?"
_NAME_RE = re.compile(
    rf"^(?:(?P<host>{_HOST})/)?(?:(?P<ns>{_NAMESPACE})/)?(?P<model>{_PART})(?::(?P<tag>{_PART}))?$"
)


class InvalidModelName(ValueError):
    """The name breaks Ollama's naming rule."""


def normalize(name: str) -> str:
    """Return ``name:tag`` with the tag defaulted to ``latest``; case is kept exactly.

    The implicit ``library/`` namespace and the default registry host are dropped, so
    ``library/llama3`` and ``llama3:latest`` are the same model.
    """
    if not isinstance(name, str):
        raise InvalidModelName(f"invalid model name: {name!r}")
    return _normalize(name)


@functools.lru_cache(maxsize=4096)
def _normalize(name: str) -> str:
    # Cached: every report and request names the same few models (bounded, as names come
    # from clients too; an invalid name raises and is not cached).
    m = _NAME_RE.match(name)
    if m is None:
        raise InvalidModelName(f"invalid model name: {name!r}")
    host, ns, model, tag = m.group("host"), m.group("ns"), m.group("model"), m.group("tag")
    if host is not None and ns is None:
        # "a/b" is namespace/model, not host/model.
        if "." in host or ":" in host:
            raise InvalidModelName(f"invalid model name: {name!r}")
        host, ns = None, host
    if host == "registry.ollama.ai":
        host = None
    if ns == "library" and host is None:
        ns = None
    prefix = "/".join(p for p in (host, ns) if p)
    return f"{prefix + '/' if prefix else ''}{model}:{tag or 'latest'}"


def is_valid(name: str) -> bool:
    try:
        normalize(name)
    except InvalidModelName:
        return False
    return True


def split(name: str) -> tuple[str, str]:
    """(repository path, tag) of a normalized name: ``('library/gpt-oss', '20b')``."""
    full = normalize(name)
    repo, _, tag = full.rpartition(":")
    if "/" not in repo:
        repo = f"library/{repo}"
    return repo, tag
