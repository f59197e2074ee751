"""Two coordinators sharing one PostgreSQL database (issue 23): a key created on one works on
the other, a revocation reaches the other within the sync interval, and so do spent tokens
(the limit holds across both) and usage."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Fleet
from tests.inference.conftest import CHAT, MESSAGES, SUPPORTED, start
from tests.procs import Proc, admin, wait_until


def chat(c: Proc, key: str, model: str = CHAT) -> httpx.Response:
    return httpx.post(
        c.url + "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_keys_limits_and_usage_hold_across_coordinators(fleet: Fleet, pg_url: str) -> None:
    one = start(fleet, database_url=pg_url).coordinator
    two = fleet.coordinator(database_url=pg_url, supported_models=SUPPORTED)
    with admin(one.url) as a:
        made: dict[str, Any] = a.post(
            "/api/keys", json={"name": "shared", "limits": {"tokens_per_day": 5}}
        ).json()
    secret = made["key"]

    # Known on the second coordinator at its next sync: an unknown model there is a 404,
    # which means the key was accepted (that coordinator has no agent of its own).
    wait_until(lambda: chat(two, secret, "no-such-model:7b").status_code == 404, 10, 0.2)

    assert chat(one, secret).status_code == 200  # spends more than the 5 tokens
    r = wait_until(
        lambda: (x := chat(two, secret, "no-such-model:7b")).status_code == 429 and x,
        10,
        0.2,
        what="the other coordinator to see the tokens spent",
    )
    assert r.json()["error"]["code"] == "rate_limited" and "Retry-After" in r.headers

    with admin(two.url) as a:
        rows = a.get("/api/usage", params={"key": made["id"], "model": CHAT}).json()["usage"]
        assert rows[0]["requests"] == 1 and rows[0]["completion_tokens"] > 0
        assert a.delete(f"/api/keys/{made['id']}").status_code == 200
    assert chat(two, secret).status_code == 401  # at once where it was revoked
    wait_until(
        lambda: chat(one, secret).json()["error"]["code"] == "api_key_revoked",
        10,
        0.2,
        what="the revocation to reach the other coordinator",
    )
