"""The dashboard's operator actions (issue 22 items 2, 3, 5, 6): drain and undrain an agent,
edit the supported list, delete a model from the fleet, clear finished tasks."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, admin, wait_until
from tests.web.conftest import Ui, closed_port_url

SUPPORTED = "qwen2.5:0.5b"
EXTRA = "nomic-embed-text:latest"


def agent_json(url: str, agent_id: str) -> dict[str, Any]:
    with admin(url) as c:
        data: dict[str, Any] = c.get(f"/api/agents/{agent_id}").json()
    return data


def test_drain_undrain_supported_list_delete_and_clear(fleet: Fleet, ui: Ui) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED], library_url=closed_port_url())
    sim = fleet.sim("--preinstall", SUPPORTED, "--preinstall", EXTRA)
    fleet.agent(coord.url, ollama=sim.url, name="gpu-ops", registry_url=sim.url)
    with admin(coord.url) as c:
        agent_id = wait_until(
            lambda: [
                a["id"] for a in c.get("/api/agents").json()["agents"] if not a["initializing"]
            ],
            what="a ready agent",
        )[0]
    ui.login(coord.url, ADMIN_TOKEN)
    page = ui.page
    page.on("dialog", lambda d: d.accept())

    # Drain from the agent's page: the badge says so, here and in the list; then undrain.
    page.goto(f"{coord.url}/#/agents/{agent_id}")
    page.locator('button[data-action="drain"]').click()
    page.locator('.page-head [data-state="draining"]').wait_for()
    assert agent_json(coord.url, agent_id)["draining"] is True
    page.goto(f"{coord.url}/#/agents")
    page.locator('table.agents [data-state="draining"]').wait_for()
    page.goto(f"{coord.url}/#/agents/{agent_id}")
    page.locator('button[data-action="undrain"]').click()
    page.locator('.page-head [data-state="online"]').wait_for()
    assert agent_json(coord.url, agent_id)["draining"] is False

    # The supported list: add one, see it, take it off again.
    page.goto(f"{coord.url}/#/models/matrix")
    page.locator('#supported [data-model="qwen2.5:0.5b"]').wait_for()
    page.fill('input[name="supported-model"]', "llama3.2:1b")
    page.locator("#supported button[type=submit]").click()
    page.locator('#supported [data-model="llama3.2:1b"]').wait_for()
    with admin(coord.url) as c:
        assert c.get("/api/supported-models").json()["models"] == [SUPPORTED, "llama3.2:1b"]
    page.locator('#supported [data-model="llama3.2:1b"] .chip-x').click()
    page.locator('#supported [data-model="llama3.2:1b"]').wait_for(state="detached")
    with admin(coord.url) as c:
        assert c.get("/api/supported-models").json()["models"] == [SUPPORTED]
        # The download ordered meanwhile runs to its end before the delete below.
        wait_until(
            lambda: all(t["status"] != "downloading" for t in c.get("/api/tasks").json()["tasks"]),
            timeout=30,
            what="downloads finished",
        )

    # Delete a model that is not supported from the fleet, from its matrix row.
    row = page.locator(f'tr[data-model="{EXTRA}"]')
    row.locator('button[data-action="delete-model"]').click()
    wait_until(
        lambda: EXTRA not in {m["name"] for m in sim_state_installed(sim.url)},
        what=f"{EXTRA} deleted on the sim",
    )
    # Supported rows offer no delete.
    assert page.locator(f'tr[data-model="{SUPPORTED}"] [data-action="delete-model"]').count() == 0

    # Clear the finished tasks from the tasks page.
    page.goto(f"{coord.url}/#/tasks")
    page.locator("table.tasks tbody tr").first.wait_for()
    page.locator('button[data-action="clear-tasks"]').click()
    page.get_by_text("No downloads yet.").wait_for()
    with admin(coord.url) as c:
        assert c.get("/api/tasks").json()["tasks"] == []
    ui.assert_no_console_errors()


def sim_state_installed(url: str) -> list[dict[str, Any]]:
    installed: list[dict[str, Any]] = httpx.get(url + "/_sim/state", timeout=5).json()["installed"]
    return installed
