"""An agent that cannot start its parts says why in one line, exits 1 and leaves nothing open."""

from __future__ import annotations

from tests.conftest import Fleet


def test_an_unreadable_download_queue_stops_the_start_with_one_line(fleet: Fleet) -> None:
    data_dir = fleet.tmp / "agent"
    (data_dir / "downloads.json").mkdir(parents=True)  # cannot be read as a file
    a = fleet.agent("http://127.0.0.1:9", data_dir=data_dir, wait=False)
    assert a.wait_exit(20) == 1
    lines = [line for line in a.lines if "download queue" in line]
    assert len(lines) == 1, a.log
    assert str(data_dir / "downloads.json") in lines[0]
    assert "Traceback" not in a.log
    assert "Unclosed" not in a.log
