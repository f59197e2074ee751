"""The Keys and Usage pages in Chromium (issue 23): create a key and see its secret once, use
it, see its usage as a table and a chart, revoke it."""

from __future__ import annotations

import httpx
import openai
from playwright.sync_api import expect

from tests.conftest import Fleet
from tests.inference.conftest import CHAT, MESSAGES, start
from tests.procs import ADMIN_TOKEN
from tests.web.conftest import Ui


def test_create_use_chart_and_revoke_a_key(fleet: Fleet, ui: Ui) -> None:
    setup = start(fleet)
    url = setup.coordinator.url
    ui.login(url, ADMIN_TOKEN)
    page = ui.page
    page.get_by_role("link", name="Keys", exact=True).click()
    expect(page.get_by_text("No API keys yet")).to_be_visible()

    page.get_by_label("Name").fill("web-team")
    page.get_by_label("Models (comma-separated)").fill(CHAT)
    page.get_by_label("Requests per minute").fill("100")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("[data-secret]").inner_text()
    assert secret.startswith("fk-")
    row = page.locator("table.keys tbody tr", has_text="web-team")
    expect(row).to_contain_text(secret[:10])
    expect(row).to_contain_text("100 req/min")
    assert secret not in row.inner_text()

    # A duplicate name is refused with the server's words, next to the form.
    page.get_by_label("Name").fill("web-team")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator(".key-form .form-error")).to_contain_text("already exists")
    page.get_by_role("button", name="I have saved it").click()
    expect(page.locator("[data-secret]")).to_have_count(0)  # never shown again

    with openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0) as c:
        r = c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
    assert r.usage is not None

    row.get_by_role("link", name="Usage").click()
    usage_row = page.locator("table.usage tbody tr", has_text="web-team")
    expect(usage_row).to_contain_text(CHAT)
    expect(usage_row.locator("td").nth(5)).to_have_text(str(r.usage.completion_tokens))
    chart = page.locator("figure.chart-box", has_text="web-team")
    expect(chart.locator("svg.chart rect.c-completion")).to_have_count(1)

    page.get_by_role("link", name="Keys", exact=True).click()
    page.locator("table.keys tbody tr", has_text="web-team").get_by_role(
        "button", name="Revoke"
    ).click()
    page.locator("#dialog").get_by_role("button", name="Revoke").click()
    expect(page.locator("table.keys tbody tr", has_text="web-team")).to_have_count(0)
    refused = httpx.post(
        url + "/v1/chat/completions",
        json={"model": CHAT, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert refused.status_code == 401
    # The browser logs the refused duplicate (HTTP 400) as a console error; nothing else.
    assert [e for e in ui.errors if "status of 400" not in e] == []
