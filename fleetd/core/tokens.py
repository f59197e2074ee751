"""Secrets: taken from the environment, or generated once into owner-only files in data_dir."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from fleetd.core.errors import StartupError

log = logging.getLogger("fleetd.tokens")

MIN_LENGTH = 16
"""Shorter tokens are accepted with a warning: guessable, even throttled."""


def check_tokens(admin: str | None, agent: str | None, api_keys: tuple[str, ...] = ()) -> None:
    """Refuse an admin token equal to the agent token (every GPU host would hold admin rights);
    warn, once each, about tokens too short to resist guessing."""
    if admin is not None and admin == agent:
        raise StartupError(
            "the admin token equals the agent token, which would give every GPU host admin "
            "rights: set FLEETD_ADMIN_TOKEN and FLEETD_AGENT_TOKEN to different values"
        )
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


def load_or_create(data_dir: Path, filename: str, from_env: str | None, what: str) -> str:
    """Blocking; call in a thread. The generated token is shown once, then never logged."""
    if from_env:
        return from_env
    path = data_dir / filename
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    log.warning("generated %s %s (stored in %s, readable by this user only)", what, token, path)
    return token


def read_existing(data_dir: Path, filename: str, from_env: str | None) -> str | None:
    """A token from the environment or an existing file; ``None`` when neither has one."""
    if from_env:
        return from_env
    try:
        return (data_dir / filename).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def mask(token: str) -> str:
    return token[:4] + "…" if len(token) > 8 else "…"
