"""The mirror's content-addressed store under ``data_dir/mirror``:

    blobs/sha256-<hex>            complete, sha256 checked
    blobs/sha256-<hex>.partial    arriving from upstream (resumed after a restart)
    manifests/<ns>/<model>/<tag>  the registry's manifest, byte for byte
    tmp/                          staging for imports (renamed into place when checked)

Every path is built from a checked digest or checked name parts, never from raw input, so
nothing can leave the cache. A blob counts as present only under its final name, which it
gets by an atomic rename after its check. Eviction is least recently used, within
``max_bytes`` (0: keep 10 % of the disk free), and skips blobs that are pinned (being served
or fetched). Everything here that touches the disk is blocking: callers run it in a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from fleetd.core import names

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
FREE_FRACTION = 0.10


class BadName(ValueError):
    """A digest or name part that is not what a registry path may hold."""


class Blob(msgspec.Struct):
    digest: str
    size: int


class Manifest(msgspec.Struct):
    config: Blob
    layers: list[Blob]

    @property
    def blobs(self) -> list[Blob]:
        return [*self.layers, self.config]


def check_digest(digest: str) -> str:
    if DIGEST.fullmatch(digest) is None:
        raise BadName(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>")
    return digest


def check_repo(namespace: str, model: str, tag: str | None = None) -> None:
    for kind, rx, value in (("namespace", NAMESPACE, namespace), ("model", MODEL, model)):
        if rx.fullmatch(value) is None:
            raise BadName(f"invalid {kind} {value!r}")
    if tag is not None and TAG.fullmatch(tag) is None:
        raise BadName(f"invalid tag {tag!r}")


def model_name(namespace: str, model: str, tag: str) -> str:
    """The name users know: ``gpt-oss:20b`` for library models, ``ns/model:tag`` else."""
    return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"


class Cache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.manifest_dir = root / "manifests"
        self.tmp_dir = root / "tmp"
        self.max_bytes = max_bytes
        self.sizes: dict[str, int] = {}
        """Complete blobs: digest -> size."""
        self.used: dict[str, float] = {}
        """Complete blobs: digest -> last use (monotonic), for LRU."""
        self.partial_bytes: dict[str, int] = {}
        self.pins: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- paths -----------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / check_digest(digest).replace(":", "-")

    def partial_path(self, digest: str) -> Path:
        return self.blob_dir / (check_digest(digest).replace(":", "-") + ".partial")

    def manifest_path(self, namespace: str, model: str, tag: str) -> Path:
        check_repo(namespace, model, tag)
        return self.manifest_dir / namespace / model / tag

    # -- state -----------------------------------------------------------------------------

    def prepare(self) -> None:
        for d in (self.blob_dir, self.manifest_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    def open(self) -> None:
        """Create the directories, index complete blobs, drop stale staging files."""
        self.prepare()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir()
        now = time.monotonic()
        for entry in os.scandir(self.blob_dir):
            name = entry.name
            if not name.startswith("sha256-"):
                continue
            digest = "sha256:" + name[7:].removesuffix(".partial")
            if DIGEST.fullmatch(digest) is None:
                continue
            size = entry.stat().st_size
            if name.endswith(".partial"):
                self.partial_bytes[digest] = size
            else:
                self.sizes[digest] = size
                self.used[digest] = now - (time.time() - entry.stat().st_atime)

    def has(self, digest: str) -> bool:
        return digest in self.sizes

    def touch(self, digest: str) -> None:
        if digest in self.used:
            self.used[digest] = time.monotonic()

    def pin(self, digest: str) -> None:
        with self._lock:
            self.pins[digest] = self.pins.get(digest, 0) + 1

    def unpin(self, digest: str) -> None:
        with self._lock:
            n = self.pins.get(digest, 0) - 1
            if n > 0:
                self.pins[digest] = n
            else:
                self.pins.pop(digest, None)

    @property
    def bytes_cached(self) -> int:
        with self._lock:  # the dicts change in worker threads too
            return sum(self.sizes.values()) + sum(self.partial_bytes.values())

    def add(self, digest: str, size: int) -> None:
        """A complete blob found on disk (moved there by ``fleetd mirror import``)."""
        with self._lock:
            self.sizes[digest] = size
            self.used[digest] = time.monotonic()

    def set_partial(self, digest: str, size: int | None) -> None:
        with self._lock:
            if size is None:
                self.partial_bytes.pop(digest, None)
            else:
                self.partial_bytes[digest] = size

    def budget(self) -> int:
        """Bytes the cache may hold: ``max_bytes``, or what leaves 10 % of the disk free."""
        if self.max_bytes > 0:
            return self.max_bytes
        usage = shutil.disk_usage(self.root)
        return max(0, self.bytes_cached + usage.free - int(usage.total * FREE_FRACTION))

    def make_room(self, incoming: int, needed_models: Iterable[str] = ()) -> list[str]:
        """Evict least recently used blobs until ``incoming`` more bytes fit, sparing those
        pinned and those of ``needed_models`` (running tasks'); returns the evicted digests.
        Blocking."""
        evicted: list[str] = []
        budget = self.budget()
        if self.bytes_cached + incoming <= budget:
            return evicted
        with self._lock:
            pinned = set(self.pins)
        pinned.update(self._digests_of(needed_models))
        with self._lock:
            oldest_first = sorted(self.sizes, key=lambda d: self.used.get(d, 0.0))
        for digest in oldest_first:
            if self.bytes_cached + incoming <= budget:
                break
            if digest in pinned:
                continue
            self.blob_path(digest).unlink(missing_ok=True)
            with self._lock:
                self.sizes.pop(digest, None)
                self.used.pop(digest, None)
            evicted.append(digest)
        return evicted

    def _digests_of(self, models: Iterable[str]) -> set[str]:
        digests: set[str] = set()
        for model in models:
            try:
                repo, tag = names.split(model)
                namespace, name = repo.split("/")
                body = self.manifest_path(namespace, name, tag).read_bytes()
                manifest = msgspec.json.decode(body, type=Manifest)
            except (ValueError, OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # another registry's model, or no manifest stored yet
            digests.update(b.digest for b in manifest.blobs)
        return digests

    def complete(self, digest: str, source: Path) -> None:
        """Move a checked file into place under its digest (atomic). Blocking."""
        os.replace(source, self.blob_path(digest))
        size = self.blob_path(digest).stat().st_size
        with self._lock:
            self.partial_bytes.pop(digest, None)
            self.sizes[digest] = size
            self.used[digest] = time.monotonic()

    def write_manifest(self, namespace: str, model: str, tag: str, body: bytes) -> None:
        """Atomically store a manifest. Blocking."""
        path = self.manifest_path(namespace, model, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"manifest-{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
        tmp.write_bytes(body)
        os.replace(tmp, path)

    def read_manifest(self, namespace: str, model: str, tag: str) -> tuple[bytes, float] | None:
        """The stored manifest and its age in seconds, or None. Blocking."""
        path = self.manifest_path(namespace, model, tag)
        try:
            body = path.read_bytes()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return body, age

    def models(self) -> list[tuple[str, int, bool]]:
        """(name, bytes, complete) of every stored manifest. Blocking."""
        out = []
        for path in sorted(self.manifest_dir.glob("*/*/*")):
            try:
                manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue
            ns, model, tag = path.relative_to(self.manifest_dir).parts
            blobs = manifest.blobs
            with self._lock:
                complete = all(b.digest in self.sizes for b in blobs)
            out.append((model_name(ns, model, tag), sum(b.size for b in blobs), complete))
        return out

    def rescan(self) -> None:
        """Pick up blobs another process (``fleetd mirror import``) moved into place."""
        for entry in os.scandir(self.blob_dir):
            digest = "sha256:" + entry.name[7:]
            if entry.name.startswith("sha256-") and DIGEST.fullmatch(digest):
                if digest not in self.sizes:
                    self.add(digest, entry.stat().st_size)
