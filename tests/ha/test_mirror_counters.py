"""The registry mirror's byte counters with coordinators sharing one PostgreSQL: each keeps
its own cache, and the counts of all of them add up instead of overwriting each other."""

from __future__ import annotations

from tests.conftest import Fleet
from tests.mirror.conftest import (
    manifest,
    mirror_coordinator,
    mirror_name,
    mirror_state,
    model_bytes,
    pull,
    upstream,
)
from tests.procs import wait_until


def test_the_mirror_counters_of_two_coordinators_add_up(fleet: Fleet, pg_url: str) -> None:
    up = upstream(fleet)
    a = mirror_coordinator(fleet, up.url, database_url=pg_url)
    b = mirror_coordinator(fleet, up.url, database_url=pg_url)
    size = model_bytes(manifest(up))
    # Each coordinator has its own cache, so each fetches the model once.
    for c in (a, b):
        assert pull(fleet.sim(), mirror_name(c))[-1] == {"status": "success"}
        assert mirror_state(c)["bytes_cached"] == size

    def both_count_both() -> bool:
        states = [mirror_state(c) for c in (a, b)]
        return all(s["upstream_bytes"] == 2 * size <= s["served_bytes"] for s in states)

    wait_until(both_count_both, 20, 0.2, what="each coordinator counting both fetches")
    for c in (a, b):
        assert c.stop() == 0
    again = mirror_coordinator(fleet, up.url, database_url=pg_url)
    assert mirror_state(again)["upstream_bytes"] == 2 * size
