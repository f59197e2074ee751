"""Issue 24: the demo's children import the real fleetd package even when the demo was started
from a folder holding a ``fleetd/`` directory (a clone's parent), which ``-m`` would import."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd import __version__
from fleetd.demo.processes import Child


def test_a_fleetd_folder_in_the_current_dir_does_not_shadow_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = tmp_path / "clone-parent"
    (bogus / "fleetd").mkdir(parents=True)
    (bogus / "fleetd" / "__init__.py").write_text("# not fleetd\n")
    monkeypatch.chdir(bogus)
    child = Child("version", ["--version"], {}, tmp_path / "child.log")
    try:
        assert child.popen.wait(30) == 0, child.tail(20)
    finally:
        child.close()
    assert f"version {__version__}" in (tmp_path / "child.log").read_text()
