"""The simulator's settings: one frozen SimOptions fixed at start, its checks, and the unit
parser that the CLI and the ``/_sim`` control API share for sizes and rates ("50MB").
"""

from __future__ import annotations

import re

import msgspec

from fleetd.sim import names

GB = 1000**3
GiB = 1024**3

# Download sizes in bytes: the four supported models' real sizes on the
# Ollama registry, plus small models
# that let a demo or a test pull something real-looking in seconds.
DEFAULT_MODELS: dict[str, int] = {
    "gpt-oss:20b": 13_793_441_244,
    "gpt-oss:120b": 65_370_000_000,
    "gpt-oss-safeguard:20b": 13_800_000_000,
    "qwen3-coder:30b": 18_556_700_761,
    "llama3.2:1b": 1_321_098_329,
    "nomic-embed-text:latest": 274_302_450,
    "qwen2.5:0.5b": 397_821_319,
}


FAULT_MESSAGE = "max retries exceeded: connection reset by peer"


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A pull of ``model`` goes wrong once its progress reaches fraction ``at``.

    ``kind`` "fail" ends the stream with an HTTP-200 ``{"error": message}`` line; "interrupt"
    cuts the connection with no error line; "stall" stops the bytes but keeps sending the
    same progress lines until the client gives up. Partial bytes stay in every case.
    ``times`` is how many pulls it hits before it disarms itself (-1: every pull).
    """

    model: str
    kind: str = "fail"
    at: float = 0.5
    message: str = FAULT_MESSAGE
    times: int = 1

    def problem(self) -> str | None:
        """Why this fault cannot be armed, or None when it is fine."""
        if self.kind not in ("fail", "interrupt", "stall"):
            return f'kind must be "fail", "interrupt" or "stall", got {self.kind!r}'
        if not 0.0 <= self.at <= 1.0:
            return f"at must be a fraction between 0 and 1, got {self.at}"
        if self.times == 0 or self.times < -1:
            return f"times must be >= 1 or -1 (always), got {self.times}"
        return None


class SimOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything a simulated Ollama server is started with.

    listen: ``HOST:PORT`` for the CLI (port 0 picks a free one).
    bandwidth_bps: download speed of one pull in bytes/s; 0 = instant.
    disk_bytes: capacity for blobs (installed models and partial downloads).
    vram_bytes, max_loaded_models: when loading needs more, models are evicted silently.
    latency_ms: extra wait before an inference reply starts.
    token_delay_ms, num_chunks: pacing and length of generated replies.
    load_ms: how long loading a model into VRAM takes.
    chunk_interval_s: pull progress cadence (Ollama: 60 ms).
    max_queue: requests allowed to wait before 503 (OLLAMA_MAX_QUEUE).
    models: the registry: model name -> download size in bytes.
    preinstalled: models present at start. size_scale multiplies every model size.
    version: what /api/version answers.
    state_dir: when set, installed models and partial downloads survive restarts.
    faults: pull faults armed at start (see Fault).
    """

    listen: str = "127.0.0.1:11434"
    bandwidth_bps: float = 200e6
    disk_bytes: int = 2000 * GB
    vram_bytes: int = 80 * GiB
    max_loaded_models: int = 3
    latency_ms: float = 0.0
    token_delay_ms: float = 20.0
    num_chunks: int = 8
    load_ms: float = 0.0
    chunk_interval_s: float = 0.06
    max_queue: int = 512
    models: dict[str, int] = msgspec.field(default_factory=lambda: dict(DEFAULT_MODELS))
    preinstalled: list[str] = msgspec.field(default_factory=list)
    size_scale: float = 1.0
    version: str = "0.12.3"
    state_dir: str | None = None
    faults: list[Fault] = msgspec.field(default_factory=list)


def check(options: SimOptions) -> None:
    """Raise ValueError naming the first option that cannot work."""
    o = options
    bounds: list[tuple[str, float, float]] = [
        ("vram_bytes", o.vram_bytes, 1),
        ("max_loaded_models", o.max_loaded_models, 1),
        ("num_chunks", o.num_chunks, 1),
        ("max_queue", o.max_queue, 1),
        ("chunk_interval_s", o.chunk_interval_s, 1e-3),
        ("size_scale", o.size_scale, 1e-12),
        ("bandwidth_bps", o.bandwidth_bps, 0),
        ("disk_bytes", o.disk_bytes, 0),
        ("latency_ms", o.latency_ms, 0),
        ("token_delay_ms", o.token_delay_ms, 0),
        ("load_ms", o.load_ms, 0),
    ]
    for key, value, least in bounds:
        if value < least:
            raise ValueError(f"{key}: expected a number >= {least:g}, got {value:g}")
    host, _, port = o.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen: expected HOST:PORT, got {o.listen!r}")
    for name, size in o.models.items():
        if not names.is_valid(name) or size < 0:
            raise ValueError(f"models: expected a valid name and a size >= 0, got {name}={size}")
    registry = {names.display(n) for n in o.models}
    wanted = [("preinstalled", n) for n in o.preinstalled]
    wanted += [("faults", f.model) for f in o.faults]
    for key, name in wanted:
        if not names.is_valid(name) or names.display(name) not in registry:
            raise ValueError(f"{key}: {name!r} is not a model of the simulated registry")
    for fault in o.faults:
        if (problem := fault.problem()) is not None:
            raise ValueError(f"faults: {problem}")


_UNIT = {"": 1, "k": 1000, "m": 1000**2, "g": GB, "t": 1000**4}
_UNIT.update({"ki": 1024, "mi": 1024**2, "gi": GiB, "ti": 1024**4})
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]i?)?b?(?:/s)?\s*", re.I)


def parse_bytes(text: str) -> float:
    """Bytes in ``"50MB"``, ``"1.5GB/s"``, ``"80GiB"`` or ``"2e9"`` (decimal units, as Ollama)."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"expected a byte count such as 500MB, 2TB or 80GiB, got {text!r}")
    return float(m.group(1)) * _UNIT[(m.group(2) or "").lower()]
