"""The registry mirror on the dashboard's Tasks page: cache fill, bytes from upstream and
served, each model's state, updated live by ``mirror`` events (no reload)."""

from __future__ import annotations

from tests.conftest import Fleet
from tests.mirror.conftest import (
    MODEL,
    manifest,
    mirror_coordinator,
    mirror_name,
    model_bytes,
    pull,
    upstream,
)
from tests.procs import ADMIN_TOKEN
from tests.web.conftest import Ui, closed_port_url


def test_mirror_card_fills_live(fleet: Fleet, ui: Ui) -> None:
    up = upstream(fleet)
    c = mirror_coordinator(fleet, up.url, library_url=closed_port_url())
    ui.login(c.url, ADMIN_TOKEN)
    page = ui.page
    page.goto(c.url + "/#/tasks")
    card = page.locator("#mirror .mirror-card")
    card.wait_for()
    assert "0 B" in card.inner_text()
    ui.mark()
    assert pull(fleet.sim(), mirror_name(c))[-1] == {"status": "success"}
    model = card.locator(f'.mirror-model[data-model="{MODEL}"]')
    model.wait_for(timeout=10_000)
    assert "cached" in model.inner_text()
    size_mb = f"{model_bytes(manifest(up)) / 1e6:.1f} MB"
    text = card.inner_text()
    assert f"{size_mb}\nfrom upstream" in text, text
    ui.assert_not_reloaded()
    ui.assert_no_console_errors()
