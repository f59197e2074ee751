"""Issue 23: managed API keys, per-key limits and models, usage accounting, driven with the
unchanged ``openai`` and ``ollama`` clients against a running fleet."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import Fleet
from tests.inference.conftest import CHAT, CHAT2, MESSAGES, Setup, start
from tests.procs import admin, wait_until

STATIC = "static-secret-key"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A fleet with one static key (FLEETD_API_KEYS) besides the managed ones."""
    fleet = Fleet(Path(tmp_path_factory.mktemp("keys")))
    try:
        yield start(fleet, coordinator_env={"FLEETD_API_KEYS": STATIC})
    finally:
        fleet.close()


def create(setup: Setup, status: int = 201, **body: Any) -> dict[str, Any]:
    with admin(setup.coordinator.url) as c:
        r = c.post("/api/keys", json=body)
    assert r.status_code == status, r.text
    data: dict[str, Any] = r.json()
    return data


def oai(setup: Setup, key: str) -> openai.OpenAI:
    # No retries: the SDK would otherwise honour Retry-After by itself.
    return openai.OpenAI(base_url=setup.coordinator.url + "/v1", api_key=key, max_retries=0)


@contextmanager
def native(setup: Setup, key: str) -> Iterator[ollama.Client]:
    c = ollama.Client(
        host=setup.coordinator.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    try:
        yield c
    finally:
        c._client.close()


def usage(setup: Setup, **query: str) -> list[dict[str, Any]]:
    with admin(setup.coordinator.url) as c:
        r = c.get("/api/usage", params=query)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["usage"]
    return rows


def test_a_key_is_created_used_listed_and_revoked_at_once(keyed: Setup) -> None:
    made = create(keyed, name="team-a")
    secret = made["key"]
    assert secret.startswith(made["prefix"]) and len(secret) > 30
    assert {"id", "name", "prefix", "models", "limits", "created_at", "last_used_at"} <= set(made)

    with oai(keyed, secret) as c:
        assert c.chat.completions.create(model=CHAT, messages=MESSAGES).choices  # type: ignore[arg-type]
    with native(keyed, secret) as n:
        assert n.chat(model=CHAT, messages=MESSAGES).done

    with admin(keyed.coordinator.url) as a:
        listed = {k["id"]: k for k in a.get("/api/keys").json()["keys"]}
        assert "key" not in listed[made["id"]]  # the secret is never shown again
        assert listed[made["id"]]["last_used_at"] is not None
        assert a.delete(f"/api/keys/{made['id']}").status_code == 200
        assert made["id"] not in {k["id"] for k in a.get("/api/keys").json()["keys"]}

    with oai(keyed, secret) as c, pytest.raises(openai.AuthenticationError) as err:
        c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
    assert err.value.body["code"] == "api_key_revoked"  # type: ignore[index]
    with native(keyed, secret) as n, pytest.raises(ollama.ResponseError) as nerr:
        n.chat(model=CHAT, messages=MESSAGES)
    assert nerr.value.status_code == 401 and "revoked" in nerr.value.error


def test_static_keys_keep_working_and_no_key_is_refused(keyed: Setup) -> None:
    create(keyed, name="someone")
    with oai(keyed, STATIC) as c:
        assert c.chat.completions.create(model=CHAT, messages=MESSAGES).choices  # type: ignore[arg-type]
    with oai(keyed, "fk-not-a-key") as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
    r = httpx.post(keyed.coordinator.url + "/api/chat", json={"model": CHAT}, timeout=5)
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"  # Ollama's shape


def test_api_keys_are_refused_by_the_admin_api(keyed: Setup) -> None:
    secret = create(keyed, name="not-an-admin")["key"]
    for key in (secret, STATIC):
        r = httpx.get(
            keyed.coordinator.url + "/api/keys",
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        )
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "api_key_not_admin"


def test_models_a_key_may_use(keyed: Setup) -> None:
    secret = create(keyed, name="only-chat", models=[CHAT])["key"]
    with oai(keyed, secret) as c:
        assert [m.id for m in c.models.list()] == [CHAT]  # what this key may use
        assert c.chat.completions.create(model=CHAT, messages=MESSAGES).choices  # type: ignore[arg-type]
        with pytest.raises(openai.PermissionDeniedError) as err:
            c.chat.completions.create(model=CHAT2, messages=MESSAGES)  # type: ignore[arg-type]
    assert CHAT2 in str(err.value) and err.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    with native(keyed, secret) as n, pytest.raises(ollama.ResponseError) as nerr:
        n.generate(model=CHAT2, prompt="hi")
    assert nerr.value.status_code == 403 and CHAT2 in nerr.value.error


def test_requests_per_minute_gives_429_with_retry_after(keyed: Setup) -> None:
    secret = create(keyed, name="rpm", limits={"requests_per_minute": 2})["key"]
    with oai(keyed, secret) as c:

        def limited() -> openai.RateLimitError | None:
            try:
                c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
            except openai.RateLimitError as e:
                return e
            return None

        # At most 2 pass per minute; a minute boundary may reset the count once.
        err = next(e for e in (limited() for _ in range(6)) if e is not None)
    assert err.body["code"] == "rate_limited"  # type: ignore[index]
    assert 1 <= int(err.response.headers["Retry-After"]) <= 60
    r = httpx.post(
        keyed.coordinator.url + "/api/chat",
        json={"model": CHAT, "messages": MESSAGES, "stream": False},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    if r.status_code == 429:  # unless the minute just turned
        assert r.json()["code"] == "rate_limited" and isinstance(r.json()["error"], str)
        assert int(r.headers["Retry-After"]) >= 1


def test_tokens_per_day_gives_429_until_midnight(keyed: Setup) -> None:
    secret = create(keyed, name="tpd", limits={"tokens_per_day": 5})["key"]
    with native(keyed, secret) as client:
        assert client.chat(model=CHAT, messages=MESSAGES).done  # over 5 tokens: overshoots
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model=CHAT, messages=MESSAGES)
    assert err.value.status_code == 429 and "tokens" in err.value.error
    with oai(keyed, secret) as c, pytest.raises(openai.RateLimitError) as oerr:
        c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
    assert 1 <= int(oerr.value.response.headers["Retry-After"]) <= 86400


def test_usage_equals_the_tokens_the_simulator_reported(keyed: Setup) -> None:
    made = create(keyed, name="counted")
    secret = made["key"]
    prompt = completion = 0
    with oai(keyed, secret) as c:
        r = c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
        assert r.usage is not None
        prompt += r.usage.prompt_tokens
        completion += r.usage.completion_tokens
        chunks = list(
            c.chat.completions.create(
                model=CHAT,
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        final = chunks[-1].usage
        assert final is not None
        prompt += final.prompt_tokens
        completion += final.completion_tokens
    with native(keyed, secret) as client:
        n = client.chat(model=CHAT, messages=MESSAGES)
        last = list(client.generate(model=CHAT, prompt="one two three", stream=True))[-1]
    prompt += n.prompt_eval_count or 0
    completion += n.eval_count or 0
    prompt += last.prompt_eval_count or 0
    completion += last.eval_count or 0
    assert completion > 0 and prompt > 0

    [row] = usage(keyed, key=made["id"])
    assert row["key_name"] == "counted" and row["model"] == CHAT
    assert (row["requests"], row["errors"]) == (4, 0)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert usage(keyed, key="counted", model=CHAT) == [row]  # by name too
    assert usage(keyed, key=made["id"], model=CHAT2) == []

    metrics = httpx.get(keyed.coordinator.url + "/metrics", timeout=5).text
    assert f'fleetd_key_requests_total{{key="counted",model="{CHAT}"}} 4.0' in metrics
    line = f'fleetd_key_tokens_total{{key="counted",kind="completion",model="{CHAT}"}}'
    assert f"{line} {float(completion)}" in metrics


def test_usage_by_time_range_and_errors(keyed: Setup) -> None:
    made = create(keyed, name="ranged", models=[CHAT])
    with oai(keyed, made["key"]) as c:
        c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model=CHAT2, messages=MESSAGES)  # type: ignore[arg-type]
    rows = {r["model"]: r for r in usage(keyed, key=made["id"], since="2020-01-01T00:00:00Z")}
    assert rows[CHAT]["errors"] == 0 and rows[CHAT2] == rows[CHAT2] | {"requests": 1, "errors": 1}
    assert usage(keyed, key=made["id"], since="4102444800") == []  # year 2100
    series = usage(keyed, key=made["id"], interval="3600")
    assert series and all(r["time"].endswith(":00:00Z") for r in series)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": 7}, "name"),
        ({"name": "x", "limits": {"requests_per_minute": -1}}, "limits.requests_per_minute"),
        ({"name": "x", "limits": {"tokens_per_day": 0}}, "limits.tokens_per_day"),
        ({"name": "x", "limits": {"tokens_per_day": "lots"}}, "limits.tokens_per_day"),
        ({"name": "x", "models": ["no-such-model:7b"]}, "models[0]"),
        ({"name": "x", "models": [CHAT, "bad name!"]}, "models[1]"),
        ({"name": "x", "models": []}, "models"),
    ],
)
def test_bad_key_requests_are_400_naming_the_field(
    keyed: Setup, body: dict[str, Any], field: str
) -> None:
    err = create(keyed, status=400, **body)["error"]
    assert err["message"].startswith(field + ":"), err


def test_duplicate_names_are_refused_until_revoked(keyed: Setup) -> None:
    first = create(keyed, name="dup")
    err = create(keyed, status=400, name="dup")["error"]
    assert err["code"] == "name_taken" and err["message"].startswith("name:")
    with admin(keyed.coordinator.url) as a:
        assert a.delete(f"/api/keys/{first['id']}").status_code == 200
        assert a.delete("/api/keys/no-such-id").status_code == 404
    create(keyed, name="dup")


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "12:00"}, "until"),
        ({"interval": "90"}, "interval"),
        ({"interval": str(10**30)}, "interval"),
        ({"since": "inf"}, "since"),
        ({"since": "1e30"}, "since"),
        ({"until": "-5"}, "until"),
        ({"model": "bad name!"}, "model"),
    ],
)
def test_bad_usage_queries_are_400_naming_the_parameter(
    keyed: Setup, query: dict[str, str], param: str
) -> None:
    with admin(keyed.coordinator.url) as c:
        r = c.get("/api/usage", params=query)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(param + ":")


def test_open_fleet_ignores_keys_and_counts_usage(fleet: Fleet) -> None:
    """No key of either kind: inference is open; usage is counted under "(no key)"."""
    setup = start(fleet)
    with oai(setup, "anything") as c:
        c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
    [row] = usage(setup)
    assert row["key_name"] == "(no key)" and row["requests"] == 1
    first = create(setup, name="first")  # from now on a key is needed
    with oai(setup, "anything") as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
    with admin(setup.coordinator.url) as a:
        assert a.delete(f"/api/keys/{first['id']}").status_code == 200
    # Revoking the last key does not open the fleet to everyone again.
    with oai(setup, first["key"]) as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]


def test_a_stream_cut_short_counts_what_passed(fleet: Fleet) -> None:
    setup = start(fleet, sim_args=("--token-delay-ms", "100"))
    made = create(setup, name="leaver")
    with httpx.stream(
        "POST",
        setup.coordinator.url + "/api/chat",
        json={"model": CHAT, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {made['key']}"},
        timeout=10,
    ) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)

    def counted() -> dict[str, Any] | None:
        rows = usage(setup, key=made["id"])
        return rows[0] if rows and rows[0]["completion_tokens"] >= 3 else None

    row = wait_until(counted, 10, 0.2, what="the cut stream's tokens")
    with native(setup, create(setup, name="whole")["key"]) as client:
        whole = client.chat(model=CHAT, messages=MESSAGES)
    assert whole.eval_count is not None and row["completion_tokens"] < whole.eval_count
    assert row["errors"] == 0
