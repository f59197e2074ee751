"""``fleetd mirror import``: models from an Ollama models directory into the mirror's cache,
for fleets with no upstream at all.

The layout Ollama writes: ``manifests/registry.ollama.ai/<namespace>/<model>/<tag>`` and
``blobs/sha256-<hex>``. Every blob is hashed while it is copied into a staging file next to
the cache's blobs; only when all of a model's blobs have passed are they renamed into place
(atomic, so a running coordinator never serves half a blob), and the manifest goes last, so
a model is listed only once all of it is there. A missing or corrupt blob fails the import
naming it, and nothing of that model is moved into place.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from fleetd.coordinator.mirror.cache import BadName, Cache, Manifest, check_digest
from fleetd.core import names

CHUNK = 1 << 20
DEFAULT_HOST = "registry.ollama.ai"


class ImportFailed(Exception):
    """The import cannot be done; the message names the model, file or digest."""


@dataclass
class Imported:
    name: str
    blobs: int
    bytes: int
    copied: int


def import_model(cache: Cache, models_dir: Path, model: str) -> Imported:
    """Copy one model into ``cache`` (blocking)."""
    try:
        repo, tag = names.split(model)
    except names.InvalidModelName as err:
        raise ImportFailed(str(err)) from None
    if repo.count("/") != 1:
        raise ImportFailed(f"{model}: only models of {DEFAULT_HOST} can be imported")
    namespace, name = repo.split("/")
    path = models_dir / "manifests" / DEFAULT_HOST / namespace / name / tag
    try:
        body = path.read_bytes()
    except OSError as err:
        raise ImportFailed(f"{model}: manifest {path}: {err.strerror}") from None
    try:
        manifest = msgspec.json.decode(body, type=Manifest)
        for b in manifest.blobs:
            check_digest(b.digest)
    except (msgspec.DecodeError, msgspec.ValidationError, BadName) as err:
        raise ImportFailed(f"{model}: manifest {path} unreadable: {err}") from None
    staged: list[tuple[str, Path]] = []
    copied = 0
    try:
        for blob in manifest.blobs:
            if cache.blob_path(blob.digest).exists() or any(d == blob.digest for d, _ in staged):
                continue
            source = models_dir / "blobs" / blob.digest.replace(":", "-")
            tmp = cache.blob_dir / f".import-{os.getpid()}-{blob.digest[7:]}"
            _copy_checked(source, tmp, blob.digest, blob.size, model)
            staged.append((blob.digest, tmp))
            copied += blob.size
        for digest, tmp in staged:
            os.replace(tmp, cache.blob_path(digest))
        staged.clear()
        cache.write_manifest(namespace, name, tag, body)
    finally:
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)
    return Imported(
        names.normalize(model), len(manifest.blobs), sum(b.size for b in manifest.blobs), copied
    )


def _copy_checked(source: Path, target: Path, digest: str, size: int, model: str) -> None:
    h = hashlib.sha256()
    n = 0
    try:
        with source.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                dst.write(chunk)
                n += len(chunk)
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        raise ImportFailed(f"{model}: blob {digest} missing ({source})") from None
    except OSError as err:
        target.unlink(missing_ok=True)
        raise ImportFailed(f"{model}: blob {digest} ({source}): {err.strerror}") from None
    got = "sha256:" + h.hexdigest()
    if got != digest or n != size:
        target.unlink(missing_ok=True)
        raise ImportFailed(
            f"{model}: blob {digest} is corrupt ({source}: {n} bytes with sha256 {got}, "
            f"expected {size} bytes)"
        )
