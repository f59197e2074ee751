"""The dashboard in Chromium: login, the live agents list, live download progress, distributing
in at most 3 clicks, the degraded catalog banner, offline targets, and narrow windows."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, SIM_GPU, Proc, admin, wait_until
from tests.web.conftest import Library, Ui, closed_port_url

SUPPORTED = "qwen2.5:0.5b"


def sim_with_supported(fleet: Fleet, *extra: str) -> Proc:
    """A sim that already holds the supported model, so agents are ready within seconds."""
    return fleet.sim("--preinstall", SUPPORTED, *extra)


def start_agent(fleet: Fleet, coord: Proc, name: str, *sim_args: str) -> tuple[Proc, Proc]:
    sim = sim_with_supported(fleet, *sim_args)
    agent = fleet.agent(coord.url, ollama=sim.url, name=name, registry_url=sim.url)
    return sim, agent


WEB = Path(__file__).resolve().parents[2] / "fleetd" / "web"


def served_modules(client: httpx.Client) -> set[str]:
    """The dashboard's ES modules reachable from the page's script, each checked to be served
    as JavaScript (browsers refuse to run a module script of any other type)."""
    page = client.get("/").text
    todo = re.findall(r'<script type="module" src="/static/([\w.]+)"', page)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        resp = client.get(f"/static/{name}")
        assert resp.status_code == 200, name
        assert resp.headers["content-type"].startswith("text/javascript"), name
        todo += re.findall(r'^import .* from "\./([\w.]+)";$', resp.text, re.M)
    return seen


def agent_row(ui: Ui, name: str) -> Any:
    return ui.page.locator("table.agents tbody tr", has=ui.page.get_by_role("link", name=name))


def test_without_login_no_fleet_data_is_served(fleet: Fleet) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    start_agent(fleet, coord, "secret-gpu-7")
    with httpx.Client(base_url=coord.url) as anon:
        page = anon.get("/")
        assert page.status_code == 200 and "secret-gpu-7" not in page.text
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert served_modules(anon) == {f.name for f in WEB.glob("*.js")}
        assert anon.get("/api/agents").status_code == 401
        assert anon.get("/api/events").status_code == 401
        assert anon.get("/api/tasks").status_code == 401
        assert anon.get("/api/session").json() == {"authenticated": False}
        wrong = anon.get("/?token=wrong")
        assert wrong.status_code == 303 and "set-cookie" not in wrong.headers
        right = anon.get(f"/?token={ADMIN_TOKEN}")
        assert right.status_code == 303 and right.headers["location"] == "/"
        assert anon.get("/api/agents").status_code == 200  # the cookie is the session
        assert anon.delete("/api/session").status_code == 200
        assert anon.get("/api/agents").status_code == 401
        # The sign-in form's endpoint: JSON from the page, or a plain form post.
        wrong = anon.post("/api/session", json={"token": "nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        bad = anon.post("/api/session", content=b"{", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400
        assert anon.post("/api/session", json={"token": 5}).status_code == 400
        form = anon.post("/api/session", data={"token": ADMIN_TOKEN})
        assert form.status_code == 303 and form.headers["location"] == "/"
        assert anon.get("/api/agents").status_code == 200
        anon.cookies.clear()
        assert anon.post("/api/session", json={"token": ADMIN_TOKEN}).status_code == 200
        assert "secret-gpu-7" in anon.get("/api/agents").text


def test_login_form_then_logout_then_token_url(fleet: Fleet, ui: Ui) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    start_agent(fleet, coord, "secret-gpu-7")
    page = ui.page
    api_calls: list[str] = []
    page.on("request", lambda r: api_calls.append(r.url) if "/api/" in r.url else None)

    page.goto(coord.url + "/")
    page.wait_for_selector("#login:not([hidden])")
    assert page.locator("#nav").is_hidden()
    assert "secret-gpu-7" not in page.content()
    assert all(u.endswith("/api/session") for u in api_calls), api_calls

    page.goto(coord.url + "/?token=wrong")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "not the admin token" in page.inner_text("#login-error")
    assert page.url.rstrip("/") == coord.url  # the token left the address bar

    page.fill("#token", ADMIN_TOKEN)
    page.click("#login-form button[type=submit]")
    agent_row(ui, "secret-gpu-7").wait_for()
    cookie = next(c for c in page.context.cookies() if c["name"] == "fleetd_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in cookie["value"]

    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    assert "secret-gpu-7" not in page.inner_text("body")
    assert page.context.cookies() == []

    ui.login(coord.url, ADMIN_TOKEN)
    assert page.url.rstrip("/") == coord.url
    agent_row(ui, "secret-gpu-7").wait_for()
    ui.assert_no_console_errors()


def test_agents_appear_live_as_they_register(fleet: Fleet, ui: Ui) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.get_by_text("No agents yet").wait_for()
    ui.mark()

    start_agent(fleet, coord, "gpu-alpha")
    row = agent_row(ui, "gpu-alpha")
    row.wait_for()
    # Without a reload it goes on to ready: online, 1/1.
    page.wait_for_function(
        """() => [...document.querySelectorAll('table.agents tbody tr')].some(tr =>
             tr.textContent.includes('gpu-alpha') && tr.querySelector('[data-state=online]')
             && tr.querySelector('.ready-num').textContent === '1/1')""",
        timeout=20_000,
    )
    assert "Sim H100" in row.inner_text()
    start_agent(fleet, coord, "gpu-beta")
    agent_row(ui, "gpu-beta").wait_for()
    assert page.locator("table.agents tbody tr").count() == 2
    ui.assert_not_reloaded()

    # The name links to the detail, which lists the installed models.
    page.get_by_role("link", name="gpu-alpha").click()
    page.wait_for_selector(f"table.installed >> text={SUPPORTED}")
    ui.assert_no_console_errors()


def test_download_percent_rises_without_reload(fleet: Fleet, ui: Ui) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    # llama3.2:1b is 1.32 GB; scaled to 13 MB at 2 MB/s its download takes about 6 s.
    start_agent(fleet, coord, "gpu-slow", "--size-scale", "0.01", "--bandwidth", "2MB")
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.get_by_role("link", name="gpu-slow").click()
    page.wait_for_selector(f"table.installed >> text={SUPPORTED}")
    ui.mark()

    page.fill("input[name=model]", "llama3.2:1b")
    page.click("form.inline-form button[type=submit]")
    row = page.locator('table.tasks tr[data-task]:has-text("llama3.2:1b")')
    row.wait_for()
    seen: list[float] = []
    speeds: list[str] = []
    etas: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = row.get_attribute("data-status")
        text = row.locator(".pct").inner_text()
        value = float(text.rstrip("%"))
        if not seen or value != seen[-1]:
            seen.append(value)
        if status == "downloading":
            speeds.append(row.locator("td").nth(3).inner_text())
            etas.append(row.locator("td.eta").inner_text())
        if status == "completed":
            break
        page.wait_for_timeout(200)
    assert row.get_attribute("data-status") == "completed", seen
    rising = [v for v in seen if 0 < v < 100]
    assert len(rising) >= 3, f"percent shown: {seen}"
    assert rising == sorted(rising), f"percent went backwards: {seen}"
    assert any(re.fullmatch(r"[\d.]+ (KB|MB)/s", s) for s in speeds), speeds
    assert any(re.fullmatch(r"\d+ s left", e) for e in etas), etas
    # Once done, it is among the installed models, with its size.
    page.wait_for_selector("table.installed >> text=llama3.2:1b")
    installed = page.locator('table.installed tr:has-text("llama3.2:1b")').inner_text()
    assert "13.2 MB" in installed
    ui.assert_not_reloaded()
    ui.assert_no_console_errors()


def test_distribute_to_all_agents_in_three_clicks(fleet: Fleet, ui: Ui, library: Library) -> None:
    coord = fleet.coordinator(
        supported_models=[SUPPORTED], library_url=library.url, registry_url=library.url
    )
    magistral = ("--model", "magistral:latest=200MB")
    start_agent(fleet, coord, "gpu-1", *magistral)
    start_agent(fleet, coord, "gpu-2", *magistral)
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.wait_for_function("document.querySelectorAll('table.agents tbody tr').length === 2")
    page.click("[data-nav=models]")
    row = page.locator('tr[data-model="magistral"]')
    clicks = 0
    row.locator("[data-action=distribute]").click()
    clicks += 1
    dialog = page.locator("#dialog")
    # The tag defaults to latest, the target to every online agent.
    expect(dialog.locator("select[name=tag]")).to_have_value("magistral:latest")
    assert dialog.locator("input[value=all]").is_checked()
    dialog.locator("[data-action=confirm]").click()
    clicks += 1
    assert clicks <= 3
    done = dialog.locator('.mini-task[data-status="completed"]')
    done.nth(1).wait_for(timeout=20_000)
    assert dialog.locator(".mini-task").count() == 2
    assert "Sent magistral:latest to 2 agents" in dialog.inner_text()
    page.keyboard.press("Escape")

    page.click("[data-nav=tasks]")
    page.locator('.chip[data-filter="completed"]').click()
    tasks = page.locator('table.tasks tr[data-task]:has-text("magistral:latest")')
    assert tasks.count() == 2
    with admin(coord.url) as c:
        server = c.get("/api/tasks", params={"model": "magistral:latest"}).json()["tasks"]
    assert sorted(t["agent_name"] for t in server) == ["gpu-1", "gpu-2"]
    assert all(t["status"] == "completed" for t in server)

    # Again: both have it now, so the dashboard asks, and "Re-download" sends it anyway.
    page.click("[data-nav=models]")
    page.locator('tr[data-model="magistral"] [data-action=distribute]').click()
    page.locator("#dialog [data-action=confirm]").click()
    warning = page.locator("#dialog .notice.warn")
    warning.wait_for()
    assert "already installed on gpu-1, gpu-2" in warning.inner_text()
    assert page.locator("#dialog [data-action=skip]").is_visible()
    page.locator("#dialog [data-action=redownload]").click()
    page.locator('#dialog .mini-task[data-status="completed"]').nth(1).wait_for(timeout=20_000)
    with admin(coord.url) as c:
        again = c.get("/api/tasks", params={"model": "magistral:latest"}).json()["tasks"]
    assert len(again) == 4 and sum(t["redownload"] for t in again) == 2
    ui.assert_no_console_errors()


def test_degraded_banner_when_the_library_is_down(fleet: Fleet, ui: Ui) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    start_agent(fleet, coord, "gpu-only")
    with admin(coord.url) as c:
        wait_until(
            lambda: (
                c.get("/api/models/matrix").json()["agents"][0]["models"][SUPPORTED] == "installed"
            ),
            what="the agent's installed models",
        )
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.goto(coord.url + "/#/models")
    banner = page.locator(".notice.degraded")
    banner.wait_for()
    text = banner.inner_text()
    assert "Catalog degraded" in text and "installed on the agents" in text
    assert page.locator('tr[data-model="qwen2.5"]').is_visible()
    assert "supported" in page.locator('tr[data-model="qwen2.5"]').inner_text()
    ui.assert_no_console_errors()


def test_offline_target_shows_the_error_and_retries_when_online(fleet: Fleet, ui: Ui) -> None:
    coord = fleet.coordinator(
        supported_models=[SUPPORTED], library_url=closed_port_url(), heartbeat_timeout_s=1.5
    )
    start_agent(fleet, coord, "gpu-stays")
    sim, agent = start_agent(fleet, coord, "gpu-leaves")
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.locator('[data-state="online"]').nth(1).wait_for()
    ui.mark()
    agent.kill()
    agent_row(ui, "gpu-leaves").locator('[data-state="offline"]').wait_for(timeout=10_000)

    page.get_by_role("link", name="gpu-leaves").click()
    page.fill("input[name=model]", "llama3.2:1b")
    page.click("form.inline-form button[type=submit]")
    error = page.locator(".notice.offline")
    error.wait_for()
    assert "gpu-leaves is offline" in error.inner_text()
    page.locator("[data-action=retry-when-online]").click()
    waiting = page.locator('table.tasks tr[data-status="waiting"]:has-text("llama3.2:1b")')
    waiting.wait_for()
    assert "when online" in waiting.inner_text()

    # From the Models view too: pick the offline agent in the distribute dialog.
    page.goto(coord.url + "/#/models")
    page.locator('tr[data-model="qwen2.5"] [data-action=distribute]').click()
    dialog = page.locator("#dialog")
    dialog.locator("label.target", has_text="gpu-leaves").click()
    dialog.locator("[data-action=confirm]").click()
    assert "gpu-leaves is offline" in dialog.locator(".notice.offline").inner_text()
    assert dialog.locator("[data-action=retry-when-online]").is_visible()
    page.keyboard.press("Escape")
    page.click("[data-nav=agents]")
    page.get_by_role("link", name="gpu-leaves").click()
    waiting.wait_for()

    # It comes back (same data_dir, same id): the waiting task runs by itself.
    data_dir = agent.data_dir  # type: ignore[attr-defined]
    fleet.agent(
        coord.url, ollama=sim.url, name="gpu-leaves", registry_url=sim.url, data_dir=data_dir
    )
    page.locator('table.tasks tr[data-status="completed"]:has-text("llama3.2:1b")').wait_for(
        timeout=20_000
    )
    page.wait_for_selector("table.installed >> text=llama3.2:1b")
    ui.assert_not_reloaded()
    ui.assert_no_console_errors()


def test_failed_download_shows_its_error_and_retries(fleet: Fleet, ui: Ui) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    start_agent(
        fleet, coord, "gpu-flaky", "--fail", "llama3.2:1b@0.3:write /models/blob: no space left"
    )
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.get_by_role("link", name="gpu-flaky").click()
    page.fill("input[name=model]", "llama3.2:1b")
    page.click("form.inline-form button[type=submit]")
    page.click("[data-nav=tasks]")
    page.locator('.chip[data-filter="failed"]').click()
    error = page.locator("tr.error-row pre.error-text")
    error.wait_for(timeout=15_000)
    assert "no space left" in error.inner_text()
    page.locator('tr[data-status="failed"] button', has_text="Retry").click()
    page.locator('.chip[data-filter="completed"]').click()
    page.locator('table.tasks tr[data-status="completed"]:has-text("llama3.2:1b")').wait_for(
        timeout=15_000
    )
    ui.assert_no_console_errors()


def test_narrow_window_needs_no_sideways_scrolling(fleet: Fleet, narrow_ui: Ui) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    start_agent(fleet, coord, "gpu-with-a-rather-long-name")
    narrow_ui.login(coord.url, ADMIN_TOKEN)
    page = narrow_ui.page
    page.locator("table.agents tbody tr").wait_for()
    for view in ("#/agents", "#/tasks", "#/models", "#/keys", "#/usage"):
        page.goto(coord.url + "/" + view)
        page.wait_for_timeout(300)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{view} is {overflow}px wider than a 400px window"
    narrow_ui.assert_no_console_errors()


def test_a_large_fleet_is_listed_a_page_at_a_time_and_filtered(fleet: Fleet, ui: Ui) -> None:
    """Hundreds of agents: the list shows 200 rows and a button for more (laying out thousands
    of rows froze the page for seconds), and the filter finds any agent, shown or not."""
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    with httpx.Client(base_url=coord.url, headers=headers, timeout=10) as c:
        for i in range(450):
            body = {"name": f"node-{i:03d}", "url": f"http://10.0.{i // 250}.{i % 250}:11435",
                    "gpus": [SIM_GPU]}  # fmt: skip
            assert c.post("/api/agents", json=body).status_code == 200
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    rows = page.locator("table.agents tbody tr")
    agent_row(ui, "node-000").wait_for()
    assert rows.count() == 200
    expect(page.locator(".more-rows")).to_contain_text("Showing 200 of 450.")
    page.get_by_role("button", name="Show 200 more").click()
    expect(rows).to_have_count(400)
    page.get_by_role("button", name="Show 50 more").click()
    expect(rows).to_have_count(450)
    expect(page.locator(".more-rows")).to_have_count(0)

    search = page.get_by_label("Filter agents")
    search.fill("node-44")  # node-440 … node-449, all beyond the first page
    expect(rows).to_have_count(10)
    assert rows.first.inner_text().startswith("node-440")
    search.fill("no-such-agent")
    expect(page.get_by_text("No agent matches “no-such-agent”.")).to_be_visible()

    # The models × agents matrix pages its agent columns the same way.
    page.goto(coord.url + "/#/models/matrix")
    cols = page.locator("table.matrix thead th.agent-col")
    expect(cols).to_have_count(200)
    page.get_by_role("button", name="Show 200 more").click()
    expect(cols).to_have_count(400)
    ui.assert_no_console_errors()


def test_a_late_post_reply_does_not_overwrite_a_newer_state(fleet: Fleet, ui: Ui) -> None:
    """The reply to a download's POST is held until the page has already been told, over SSE,
    that the download failed; the stale ``queued`` reply arriving last must not bring back a
    queued row with a Cancel button."""
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    fail = "llama3.2:1b@0.3:write /models/blob: no space left"
    start_agent(
        fleet, coord, "gpu-race", "--size-scale", "0.01", "--bandwidth", "4MB", "--fail", fail
    )
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.get_by_role("link", name="gpu-race").click()
    page.wait_for_selector(f"table.installed >> text={SUPPORTED}")
    held: list[Any] = []
    page.route("**/api/distributions", lambda route: held.append(route))

    page.fill("input[name=model]", "llama3.2:1b")
    page.click("form.inline-form button[type=submit]")
    wait_until(lambda: held, what="the page's POST /api/distributions")
    reply = held[0].fetch()  # the server creates the task now; the browser waits for this
    sent = reply.json()["tasks"][0]
    assert sent["status"] == "queued", sent
    row = page.locator(f'table.tasks tr[data-task="{sent["id"]}"]')
    expect(row).to_have_attribute("data-status", "failed", timeout=20_000)  # over SSE

    held[0].fulfill(response=reply)
    expect(page.locator(".dist-result")).to_contain_text("Sent llama3.2:1b to 1 agent")
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    expect(row).to_have_attribute("data-status", "failed")
    expect(row.get_by_role("button", name="Retry")).to_be_visible()
    expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
    with admin(coord.url) as c:
        now = c.get(f"/api/tasks/{sent['id']}").json()
    assert now["status"] == "failed" and now["revision"] > sent["revision"]
    ui.assert_no_console_errors()


def test_a_copy_older_than_the_one_held_is_never_merged(fleet: Fleet, ui: Ui) -> None:
    """The page's one merge rule, whichever way a copy arrives: SSE message, REST reply or
    snapshot. A copy replaces the held one only if its ``revision`` is not lower."""
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    page = ui.page
    page.goto(coord.url + "/")
    page.wait_for_selector("#login:not([hidden])")
    result = page.evaluate(
        """async () => {
          const m = await import('/static/state.js');
          const task = (revision, status) => ({id: 't1', agent_id: 'a1', revision, status});
          const agent = (revision, status) => ({id: 'a1', name: 'a', revision, status});
          const out = {};
          m.mergeTask(task(7, 'failed'));
          out.olderTaskTaken = m.mergeTask(task(6, 'queued'));
          out.taskAfterOlder = m.S.tasks.get('t1').status;
          out.sameTaken = m.mergeTask(task(7, 'failed'));
          m.mergeAgent(agent(10, 'offline'));
          out.olderAgentTaken = m.mergeAgent(agent(9, 'online'));
          out.agentAfterOlder = m.S.agents.get('a1').status;
          // A snapshot read before a newer copy arrived keeps the newer copy.
          const mark = m.snapshotMark();
          m.mergeTask(task(9, 'completed'));
          m.mergeTask({id: 't2', agent_id: 'a1', model: 'n', revision: 1, status: 'queued'});
          m.setSnapshot(mark, [agent(8, 'online')], [task(8, 'downloading')]);
          out.afterSnapshot = [m.S.agents.get('a1').status, m.S.tasks.get('t1').status,
                               m.S.tasks.has('t2')];
          // Newer copies win, and a snapshot drops what it no longer lists.
          out.newerTaken = m.mergeTask(task(10, 'queued'));
          m.setSnapshot(m.snapshotMark(), [agent(11, 'online')], [task(11, 'cancelled')]);
          out.afterSecondSnapshot = [m.S.agents.get('a1').status, m.S.tasks.get('t1').status,
                                     m.S.tasks.has('t2')];
          return out;
        }"""
    )
    assert result == {
        "olderTaskTaken": False,
        "taskAfterOlder": "failed",
        "sameTaken": True,
        "olderAgentTaken": False,
        "agentAfterOlder": "offline",
        "afterSnapshot": ["offline", "completed", True],
        "newerTaken": True,
        "afterSecondSnapshot": ["online", "cancelled", False],
    }
    ui.assert_no_console_errors()
