"""``fleetd mirror import``: an air-gapped fleet gets models from an Ollama models directory,
every digest checked, while the coordinator runs; nothing half-imported is served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Fleet
from tests.mirror.conftest import (
    MODEL,
    manifest,
    mirror_coordinator,
    mirror_name,
    mirror_state,
    model_bytes,
    ollama_models_dir,
    pull,
    upstream,
)


def _import(data_dir: Path, models_dir: Path, *models: str) -> subprocess.CompletedProcess[str]:
    args = ["mirror", "import", str(models_dir), *models, "--data-dir", str(data_dir)]
    return subprocess.run(
        [sys.executable, "-m", "fleetd", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_import_serves_an_air_gapped_fleet(fleet: Fleet, tmp_path: Path) -> None:
    up = upstream(fleet)
    models_dir = ollama_models_dir(up, tmp_path / "models")
    size = model_bytes(manifest(up))
    up.stop()  # air-gapped from here on
    c = mirror_coordinator(fleet, "http://127.0.0.1:9")
    done = _import(c.data_dir, models_dir, MODEL)  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stderr
    assert f"imported {MODEL}: 5 blobs, {size} bytes" in done.stdout
    assert mirror_state(c)["models"] == [{"name": MODEL, "bytes": size, "complete": True}]
    assert pull(fleet.sim(), mirror_name(c))[-1] == {"status": "success"}
    assert mirror_state(c)["upstream_bytes"] == 0
    again = _import(c.data_dir, models_dir, MODEL)  # type: ignore[attr-defined]
    assert again.returncode == 0 and "0 bytes copied" in again.stdout


def test_import_fails_naming_a_missing_or_corrupt_blob(fleet: Fleet, tmp_path: Path) -> None:
    up = upstream(fleet)
    models_dir = ollama_models_dir(up, tmp_path / "models")
    m = manifest(up)
    c = mirror_coordinator(fleet, "http://127.0.0.1:9")
    data_dir: Path = c.data_dir  # type: ignore[attr-defined]
    weights = models_dir / "blobs" / m["layers"][0]["digest"].replace(":", "-")
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    bad = _import(data_dir, models_dir, MODEL)
    assert bad.returncode == 1
    assert f"blob {m['layers'][0]['digest']} is corrupt" in bad.stderr
    weights.unlink()
    missing = _import(data_dir, models_dir, MODEL)
    assert missing.returncode == 1
    assert f"blob {m['layers'][0]['digest']} missing" in missing.stderr
    unknown = _import(data_dir, models_dir, "qwen2.5:0.5b")
    assert unknown.returncode == 1 and "qwen2.5:0.5b: manifest" in unknown.stderr
    assert mirror_state(c)["models"] == []  # nothing half-imported is listed or served
    assert not list((data_dir / "mirror" / "blobs").glob(".import-*"))
    weights.write_bytes(original)
    assert _import(data_dir, models_dir, MODEL).returncode == 0
