"""A half-fetched blob survives a kill -9 of the coordinator: the next one resumes it from
upstream with Range, so its bytes are fetched once."""

from __future__ import annotations

import httpx

from tests.conftest import Fleet
from tests.mirror.conftest import (
    REPO,
    manifest,
    mirror_coordinator,
    mirror_state,
    registry_knobs,
    sha256,
    upstream,
    upstream_served,
)
from tests.procs import wait_until


def test_resume_after_kill_9(fleet: Fleet) -> None:
    up = upstream(fleet)
    layer = manifest(up)["layers"][0]
    size = layer["size"]
    registry_knobs(up, bandwidth_bps=size // 4)  # about 4 s for the whole blob
    c = mirror_coordinator(fleet, up.url)
    url = f"/v2/{REPO}/blobs/{layer['digest']}"
    assert httpx.head(c.url + url, timeout=10).status_code == 200  # starts the fetch

    def fetched() -> int:
        flights = mirror_state(c)["fetching"]
        return int(flights[0]["have"]) if flights else 0

    wait_until(lambda: fetched() >= size // 3, 20, 0.05, what="a third of the blob fetched")
    c.kill()
    before = upstream_served(up)
    assert before < size
    registry_knobs(up)  # full speed now
    again = fleet.coordinator(
        data_dir=c.data_dir,  # type: ignore[attr-defined]
        registry_url=up.url,
        mirror={"enabled": True},
    )
    body = httpx.get(again.url + url, timeout=30).content
    assert sha256(body) == layer["digest"]
    m = again.wait_for_line(r"resuming " + layer["digest"] + r" at (\d+) bytes")
    assert int(m.group(1)) >= size // 3
    assert upstream_served(up) - before <= size - int(m.group(1))  # nothing fetched twice
    assert upstream_served(up) <= size * 1.05


def test_a_partial_that_is_already_whole_is_checked_not_fetched_again(fleet: Fleet) -> None:
    """Killed after the last byte but before the rename: upstream answers the resume with
    416, and the bytes on disk are checked and kept."""
    up = upstream(fleet)
    layer = manifest(up)["layers"][0]
    body = httpx.get(
        f"{up.url}/v2/{REPO}/blobs/{layer['digest']}", follow_redirects=True, timeout=10
    ).content
    c = mirror_coordinator(fleet, up.url)
    c.stop()
    blobs = c.data_dir / "mirror" / "blobs"  # type: ignore[attr-defined]
    (blobs / (layer["digest"].replace(":", "-") + ".partial")).write_bytes(body)
    before = upstream_served(up)
    again = fleet.coordinator(
        data_dir=c.data_dir,  # type: ignore[attr-defined]
        registry_url=up.url,
        mirror={"enabled": True},
    )
    got = httpx.get(f"{again.url}/v2/{REPO}/blobs/{layer['digest']}", timeout=30).content
    assert sha256(got) == layer["digest"]
    assert upstream_served(up) == before
    assert (blobs / layer["digest"].replace(":", "-")).exists()
