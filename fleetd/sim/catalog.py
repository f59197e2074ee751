"""The simulated registry's models: layers, digests, manifests and the metadata that
/api/tags, /api/show and /api/ps report, all derived deterministically from name and size.
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from fleetd.sim import names

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
_MEDIA = "application/vnd.ollama.image."
# Nominal sizes of the small layers; the weights layer takes every other byte.
_SMALL = {"template": 7_240, "license": 11_353, "params": 96, "system": 68}
_CONFIG_SIZE = 489
EMBED_DIMS = 16  # length of the simulated embedding vectors


class Layer(msgspec.Struct, frozen=True, rename="camel"):
    media_type: str
    digest: str
    size: int


class Manifest(msgspec.Struct, frozen=True, rename="camel"):
    schema_version: int
    media_type: str
    config: Layer
    layers: tuple[Layer, ...]


class ModelSpec(msgspec.Struct, frozen=True):
    """One registry model as Ollama would know it after pulling its manifest."""

    name: str
    family: str
    parameter_size: str
    quantization_level: str
    context_length: int
    capabilities: tuple[str, ...]
    config: Layer
    layers: tuple[Layer, ...]

    @property
    def blobs(self) -> tuple[Layer, ...]:
        """Every blob a pull fetches, in pull order (layers, then config)."""
        return (*self.layers, self.config)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)

    def manifest_json(self) -> bytes:
        return msgspec.json.encode(Manifest(2, MANIFEST_TYPE, self.config, self.layers))

    @property
    def digest(self) -> str:
        """64 hex of the manifest's sha256: /api/tags ``digest``, ``ollama list`` ID."""
        return hashlib.sha256(self.manifest_json()).hexdigest()

    def details(self) -> dict[str, object]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


_COMPLETION = ("completion", "tools")
_THINKING = (*_COMPLETION, "thinking")
_TLP = ("template", "license", "params")
# name -> (family, parameter size, quantization, context length, capabilities, small layers)
_KNOWN: dict[str, tuple[str, str, str, int, tuple[str, ...], tuple[str, ...]]] = {
    "gpt-oss:20b": ("gptoss", "20.9B", "MXFP4", 131072, _THINKING, _TLP),
    "gpt-oss:120b": ("gptoss", "116.8B", "MXFP4", 131072, _THINKING, _TLP),
    "gpt-oss-safeguard:20b": ("gptoss", "20.9B", "MXFP4", 131072, _THINKING, _TLP),
    "qwen3-coder:30b": ("qwen3moe", "30.5B", "Q4_K_M", 262144, _COMPLETION, _TLP),
    "llama3.2:1b": ("llama", "1.2B", "Q8_0", 131072, _COMPLETION, _TLP),
    "nomic-embed-text:latest": ("nomic-bert", "137M", "F16", 2048, ("embedding",), ("license",)),
    "qwen2.5:0.5b": ("qwen2", "494.03M", "Q4_K_M", 32768, _COMPLETION, ("system", "template")),
}


def _sha(*parts: object) -> str:
    return "sha256:" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def _guess(name: str) -> tuple[str, str, str, int, tuple[str, ...], tuple[str, ...]]:
    """Plausible metadata for a model the table does not know (added with --model)."""
    _, _, model, tag = names.parse(name)
    family = re.match(r"[a-z]*", model.lower())
    size = re.match(r"(?:.*-)?([0-9.]+[bm])(?:-|$)", tag.lower())
    embedding = "embed" in model.lower()
    caps = ("embedding",) if embedding else _COMPLETION
    h = int(_sha(name)[7:15], 16)
    small = _TLP[: h % 4]
    return (
        (family.group(0) if family else "") or "llama",
        size.group(1).upper() if size else "7B",
        "F16" if embedding else "Q4_K_M",
        2048 if embedding else 4096,
        caps,
        small,
    )


def build_spec(name: str, download_bytes: int) -> ModelSpec:
    """The manifest of ``name`` whose blobs add up to exactly ``download_bytes``."""
    family, params, quant, ctx, caps, small = _KNOWN.get(name) or _guess(name)
    sizes = [_SMALL[k] for k in small] + [_CONFIG_SIZE]
    budget = download_bytes // 20
    if sum(sizes) > budget:
        # Tiny (scaled) models: shrink the small layers so the weights still dominate.
        sizes = [max(1, s * budget // sum(sizes)) for s in sizes]
    weights = max(download_bytes - sum(sizes), 1)
    layers = [Layer(_MEDIA + "model", _sha(name, "model", weights), weights)]
    layers += [
        Layer(_MEDIA + k, _sha(name, k, s), s) for k, s in zip(small, sizes[:-1], strict=True)
    ]
    config = Layer(CONFIG_TYPE, _sha(name, "config", sizes[-1]), sizes[-1])
    return ModelSpec(name, family, params, quant, ctx, caps, config, tuple(layers))


def build_catalog(models: dict[str, int], size_scale: float) -> dict[str, ModelSpec]:
    """Registry contents keyed by display name (``gpt-oss:20b``); names must be valid."""
    specs = {}
    for raw, size in models.items():
        name = names.display(raw)
        specs[name] = build_spec(name, round(size * size_scale))
    return specs


def spec_from_manifest(name: str, manifest: Manifest) -> ModelSpec:
    """What Ollama knows of ``name`` pulled from another registry: its manifest's blobs, and
    (standing in for the config blob's contents) the metadata of the model it names."""
    _, namespace, model, tag = names.parse(name)
    short = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    family, params, quant, ctx, caps, _ = _KNOWN.get(short) or _guess(short)
    return ModelSpec(name, family, params, quant, ctx, caps, manifest.config, manifest.layers)
