"""The Charts view in Chromium against a running fleet: after real requests the charts draw
and state what was sent (requests, tokens), per agent as the agents served them, GPU figures
as heartbeats carried them, and they go on without a reload as more requests arrive."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Fleet
from tests.inference.conftest import requests_served
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, admin, wait_until
from tests.web.conftest import Ui, closed_port_url
from tests.web.test_dashboard import SUPPORTED, start_agent

GiB = 1 << 30


def send(url: str, n: int) -> tuple[int, int]:
    """``n`` generate requests through the coordinator; the tokens their replies counted."""
    prompt = completion = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            r = client.post(
                "/api/generate", json={"model": SUPPORTED, "prompt": f"hello {i}", "stream": False}
            )
            assert r.status_code == 200, r.text
            prompt += r.json()["prompt_eval_count"]
            completion += r.json()["eval_count"]
    return prompt, completion


def summary(ui: Ui, chart: str) -> str:
    text: str = ui.page.locator(f'figure[data-chart="{chart}"] .chart-summary').inner_text()
    return text


def wait_summary(ui: Ui, chart: str, pattern: str) -> str:
    return str(
        wait_until(
            lambda: re.search(pattern, summary(ui, chart)) and summary(ui, chart),
            timeout=20,
            what=f"the {chart} chart to say {pattern!r}",
        )
    )


def test_charts_show_what_was_sent_and_follow_live(fleet: Fleet, ui: Ui) -> None:
    coord = fleet.coordinator(
        supported_models=[SUPPORTED], library_url=closed_port_url(), history_interval_s=1
    )
    sims = [start_agent(fleet, coord, name)[0] for name in ("gpu-a", "gpu-b")]
    with admin(coord.url) as c:
        wait_until(
            lambda: [a for a in c.get("/api/agents").json()["agents"] if not a["initializing"]][1:],
            timeout=30,
            what="two ready agents",
        )
    # A host whose heartbeats carry GPU figures (the simulated agents' static GPUs carry none);
    # initializing, so that no request is sent to its address, where nothing listens.
    gpus = [
        {"name": "A100", "memory_bytes": 80 * GiB, "memory_used_bytes": 30 * GiB},
        {"name": "A100", "memory_bytes": 80 * GiB, "memory_used_bytes": 10 * GiB},
    ]
    with httpx.Client(
        base_url=coord.url, headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=10
    ) as agent:
        reg = {"name": "gpu-figures", "url": "http://127.0.0.1:9", "gpus": gpus}
        figures_id = agent.post("/api/agents", json=reg).json()["id"]
        gpus[0]["utilization"] = 0.9
        gpus[1]["utilization"] = 0.3
        beat = {"initializing": True, "ready_models": 0, "total_models": 1, "gpus": gpus}
        assert agent.post(f"/api/agents/{figures_id}/heartbeat", json=beat).status_code == 200

    before = [requests_served(sim, SUPPORTED) for sim in sims]
    prompt, completion = send(coord.url, 5)

    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.click("#nav a[data-nav=charts]")
    page.wait_for_selector('figure[data-chart="requests"] svg path.line')
    wait_summary(ui, "requests", r"^5 requests, 0 failed in the last 6 min$")
    tokens = wait_summary(ui, "tokens", r"prompt")
    assert tokens == f"{prompt} prompt and {completion} completion tokens in the last 6 min"
    assert prompt > 0 and completion > 0
    # The fleet's GPU charts have the one host that reports figures: 40 GiB of 160 GiB.
    assert wait_summary(ui, "gpu-memory", "used") == "42.9 GB used of 172 GB"
    legend = page.locator('figure[data-chart="gpu-utilization"] .chart-legend').inner_text()
    assert "utilization 60%" in legend
    for name in ("requests", "tokens", "gpu-memory", "gpu-utilization", "downloads"):
        assert page.locator(f'figure[data-chart="{name}"] svg').count() == 1

    # Live: more requests, the same page says so within a few samples.
    ui.mark()
    more_prompt, more_completion = send(coord.url, 3)
    wait_summary(ui, "requests", r"^8 requests, 0 failed")
    wait_summary(
        ui, "tokens", f"^{prompt + more_prompt} prompt and {completion + more_completion} "
    )
    ui.assert_not_reloaded()

    # Per agent: each agent's charts count what it served.
    served = [requests_served(sim, SUPPORTED) - b for sim, b in zip(sims, before, strict=True)]
    assert sum(served) == 8
    for name, n in zip(("gpu-a", "gpu-b"), served, strict=True):
        page.select_option("select[aria-label='Charts of']", label=name)
        page.wait_for_url(re.compile(r"#/charts/\w+$"))
        wait_summary(ui, "requests", f"^{n} requests in the last 6 min$")
        assert summary(ui, "gpu-memory") == "no figures from this agent's GPUs"
    page.select_option("select[aria-label='Charts of']", label="gpu-figures")
    assert wait_summary(ui, "gpu-memory", "used") == "42.9 GB used of 172 GB"

    # An agent's page shows its own charts too.
    page.goto(f"{coord.url}/#/agents/{figures_id}")
    # (A flat line has no height: attached, not "visible", to Playwright.)
    page.wait_for_selector(
        'section figure[data-chart="gpu-utilization"] svg path.line', state="attached"
    )
    legend = page.locator('section figure[data-chart="gpu-utilization"] .chart-legend')
    assert "utilization 60%" in legend.inner_text()
    ui.assert_no_console_errors()
