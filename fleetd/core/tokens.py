"""Secrets: taken from the environment, or generated once into owner-only files in data_dir."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("fleetd.tokens")


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
