"""Issue 24: a client that hangs up is counted under status 499 in ``/metrics``, never 5xx."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Fleet
from tests.inference.conftest import CHAT, MESSAGES, start
from tests.procs import admin, wait_until


def _requests(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    pattern = r'fleetd_http_requests_total\{route="([^"]+)",status="(\d+)"\} (\S+)'
    return {(m[1], m[2]): float(m[3]) for m in re.finditer(pattern, text)}


def test_clients_that_leave_are_499_not_500(fleet: Fleet) -> None:
    setup = start(fleet, sim_args=("--token-delay-ms", "300"))
    url = setup.coordinator.url
    with admin(url) as c, c.stream("GET", "/api/events") as r:
        next(r.iter_bytes())  # the dashboard's tab is open…
    # …and closed.
    wait_until(lambda: ("/api/events", "499") in _requests(url), what="/api/events counted")
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=10) as r:
        next(r.iter_bytes())  # one token of eight, then the client leaves
    route = "/v1/chat/completions"
    counted = wait_until(lambda: (route, "499") in _requests(url) and _requests(url))
    assert not [k for k in counted if k[1].startswith("5")], counted
