"""``packaging/build-pex`` builds one file that runs fleetd with a bare, isolated interpreter
and carries the compiled extensions for every platform it promises."""

from __future__ import annotations

import importlib.util
import io
import re
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd import __version__
from tests.ops.proctree import children_of

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 600
COMPILED = ("msgspec", "uvloop", "aiohttp", "multidict", "yarl", "frozenlist", "propcache")
PLATFORMS = [
    (py, arch) for py in ("cp310", "cp311", "cp312", "cp313") for arch in ("x86_64", "aarch64")
]


def _pex_obtainable(tmp: Path) -> str | None:
    """None when build-pex can get pex; else why not (the only reason to skip)."""
    if importlib.util.find_spec("pex") is not None:
        return None
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), "pex"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if probe.returncode == 0:
        return None
    return (
        f"pex is not installed and cannot be downloaded (offline?): {probe.stderr.strip()[-300:]}"
    )


@pytest.fixture(scope="session")
def pex_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built once per session: resolving eight platforms takes a couple of minutes."""
    tmp = tmp_path_factory.mktemp("pex")
    why = _pex_obtainable(tmp / "probe")
    if why is not None:
        pytest.skip(why)
    out = tmp / "fleetd.pex"
    build = subprocess.run(
        [str(ROOT / "packaging" / "build-pex"), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(tmp),
            "TMPDIR": str(tmp),
            "PYTHON": sys.executable,
        },
    )
    assert build.returncode == 0, build.stdout + build.stderr
    yield out


def clean_run(
    pex: Path, home: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Isolated mode and an empty environment: nothing from this checkout or venv can leak in."""
    return subprocess.run(
        [sys.executable, "-I", str(pex), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )


def test_pex_runs_under_a_clean_interpreter(pex_file: Path, tmp_path: Path) -> None:
    version = clean_run(pex_file, tmp_path, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"fleetd, version {__version__}"
    agent_help = clean_run(pex_file, tmp_path, "--role", "agent", "--help")
    assert agent_help.returncode == 0, agent_help.stderr
    assert "--coordinator" in agent_help.stdout and "--ollama" in agent_help.stdout


def test_pex_holds_compiled_extensions_for_every_platform(pex_file: Path) -> None:
    with zipfile.ZipFile(pex_file) as z:
        wheels = {Path(n).name for n in z.namelist() if n.startswith(".deps/")}
    missing = [
        f"{dist} {py} {arch}"
        for dist in COMPILED
        for py, arch in PLATFORMS
        if not any(re.match(rf"{dist}-[^-]+-{py}-{py}-.*manylinux.*_{arch}", w) for w in wheels)
    ]
    assert not missing, f"missing wheels: {missing}"


def test_pex_holds_every_dashboard_file(pex_file: Path) -> None:
    """fleetd's own wheel inside the pex (a zip in the zip) carries the dashboard's package
    data, every ES module included."""
    with zipfile.ZipFile(pex_file) as z:
        (wheel,) = [n for n in z.namelist() if re.match(r"\.deps/fleetd-[^/]+\.whl$", n)]
        with zipfile.ZipFile(io.BytesIO(z.read(wheel))) as w:
            held = {n.removeprefix("fleetd/web/") for n in w.namelist()}
    assert {f.name for f in (ROOT / "fleetd" / "web").iterdir()} <= held


def test_demo_runs_from_the_pex(pex_file: Path, tmp_path: Path) -> None:
    """The demo's children are started from the pex file itself (no ``-m fleetd`` there)."""
    with subprocess.Popen(
        [
            sys.executable,
            "-I",
            str(pex_file),
            "demo",
            "--agents",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--library-url",
            "http://127.0.0.1:9",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        start_new_session=True,
    ) as demo:
        try:
            assert demo.stdout is not None
            seen = []
            for line in demo.stdout:  # the demo exits by itself if a child fails to start
                seen.append(line)
                if "Dashboard:" in line:
                    break
            assert any("Dashboard: " in line for line in seen), "".join(seen)
            kids = children_of(demo.pid)
            assert len(kids) == 3
            # The pex file itself, or the copy of it that pex unzipped into PEX_ROOT and runs.
            pex_root = tmp_path / ".cache" / "pex"
            for pid in kids:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                started = Path(argv[1])
                assert started == pex_file or started.is_relative_to(pex_root), argv
            demo.send_signal(signal.SIGTERM)
            assert demo.wait(60) == 0, demo.stdout.read()
        finally:
            if demo.poll() is None:
                demo.kill()
