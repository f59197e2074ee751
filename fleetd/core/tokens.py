"""Secrets: taken from the environment, or generated once into owner-only files in data_dir
(a coordinator on PostgreSQL shares its tokens through the database: coordinator/token_sync.py)."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from fleetd.core.errors import StartupError

log = logging.getLogger("fleetd.tokens")

MIN_LENGTH = 16
"""Shorter tokens are accepted with a warning: guessable, even throttled."""


def refuse_same(admin: str | None, agent: str | None) -> None:
    """An admin token equal to the agent token would give every GPU host admin rights."""
    if admin is not None and admin == agent:
        raise StartupError(
            "the admin token equals the agent token, which would give every GPU host admin "
            "rights: set FLEETD_ADMIN_TOKEN and FLEETD_AGENT_TOKEN to different values"
        )


def check_tokens(admin: str | None, agent: str | None, api_keys: tuple[str, ...] = ()) -> None:
    """Refuse an admin token equal to the agent token; warn, once each, about tokens too
    short to resist guessing."""
    refuse_same(admin, agent)
    named = [("admin token", admin), ("agent token", agent)]
    named += [(f"API key #{i}", key) for i, key in enumerate(api_keys, 1)]
    for what, token in named:
        if token is not None and len(token) < MIN_LENGTH:
            log.warning(
                "the %s is only %d characters long; use at least %d (openssl rand -hex 16)",
                what,
                len(token),
                MIN_LENGTH,
            )


def private_dir(path: Path) -> None:
    """Blocking. ``path`` (with its parents) exists and only its owner may enter it: it holds
    tokens and the database, whatever the umask of whoever starts fleetd."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def private_files(*paths: Path) -> None:
    """Blocking. Those of ``paths`` that exist become owner-only (0600)."""
    for p in paths:
        try:
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


def new_token() -> str:
    return secrets.token_urlsafe(32)


def read_token(path: Path) -> str | None:
    """Blocking. The token in ``path``; ``None`` when it is missing or empty."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def write_token(path: Path, token: str) -> None:
    """Blocking. ``token`` into ``path``, owner-only, replaced in one step so that a reader
    (``fleetd ctl``) never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover may have other permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.replace(tmp, path)


def load_or_create(data_dir: Path, filename: str, from_env: str | None, what: str) -> str:
    """Blocking; call in a thread. The generated token is shown once, then never logged."""
    if from_env:
        return from_env
    path = data_dir / filename
    token = read_token(path)
    if token:
        return token
    token = new_token()
    write_token(path, token)
    log.warning("generated %s %s (stored in %s, readable by this user only)", what, token, path)
    return token


def read_existing(data_dir: Path, filename: str, from_env: str | None) -> str | None:
    """A token from the environment or an existing file; ``None`` when neither has one."""
    return from_env or read_token(data_dir / filename)


def mask(token: str) -> str:
    return token[:4] + "…" if len(token) > 8 else "…"
