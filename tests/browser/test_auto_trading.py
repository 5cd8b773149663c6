"""The dashboard's auto-trading (issue 14) in a real headless Chromium: the plan chart (plan vs traded position,
forecast price, SoC path) drawn from GET /api/plan, the switch and its state, and the market chart starting from
the stored history (a page just opened shows the last hours, not one sample). A read-only session sees the state
but no switch. The web app runs on a free port on the in-memory backend (tests/fixtures/web.py), so this module
needs no demo ports. Screenshots are saved under artifacts/browser/."""

from __future__ import annotations

import pytest

from tests.fixtures.browser import login, page  # noqa: F401  (fixture)
from tests.fixtures.web import READ_KEYS, MemoryBackend, running_web

pytestmark = pytest.mark.timeout(120)


PLAN = "document.getElementById('plan-chart')"


async def test_plan_chart_switch_and_market_history(page):  # noqa: F811
    backend = MemoryBackend(soc_pct=50.0)
    async with running_web(backend, cycle_s=0.5) as web:
        await login(page, web.url, live=False)
        # the plan: 144 periods (36 h) drawn as four series, SVG paths in the chart
        await page.wait_for(f"{PLAN}.dataset.periods === '144'", what="the plan loaded")
        assert await page.js(f"{PLAN}.dataset.status") == "optimal"
        await page.wait_for(f"{PLAN}.querySelectorAll('.apexcharts-series path').length >= 4", what="plan drawn")
        names = await page.js(
            f"[...{PLAN}.querySelectorAll('.apexcharts-legend-text')].map((e) => e.textContent.trim())"
        )
        assert names == ["Plan (MW)", "Traded position (MW)", "Forecast price (EUR/MWh)", "SoC (%)"], names
        assert "objective 1235 EUR" in await page.js("document.getElementById('plan-summary').textContent")
        # the market chart starts from the stored history: two hours of samples, not one
        await page.wait_for(
            "Number(document.getElementById('market-chart').dataset.samples) > 60", what="market history loaded"
        )
        # the switch: running, then off through the confirmation dialog, and the plan follows
        await page.wait_for("document.getElementById('auto-state').dataset.state === 'running'", what="running")
        assert "refused soc_min 1" in await page.js("document.getElementById('auto-counts').textContent")
        await page.js("document.getElementById('auto-toggle').click(); true")
        await page.wait_for("document.getElementById('confirm-dialog').open", what="the confirmation dialog")
        await page.js("document.getElementById('confirm-ok').click(); true")
        await page.wait_for("document.getElementById('auto-state').dataset.state === 'off'", what="switched off")
        assert backend.auto_enabled is False
        assert [a["action"] for a in backend.audit_log if a["action"] == "set_auto"] == ["set_auto"]
        await page.screenshot("auto-trading-off")


async def test_read_only_session_sees_the_state_but_no_switch(page):  # noqa: F811
    backend = MemoryBackend(soc_pct=50.0)
    async with running_web(backend, cycle_s=0.5, read_keys=READ_KEYS) as web:
        await login(page, web.url, READ_KEYS[0], live=False)
        await page.wait_for("document.getElementById('auto-state').dataset.state === 'running'", what="the state")
        assert await page.js("document.getElementById('auto-toggle') === null")
        await page.wait_for(f"{PLAN}.dataset.periods === '144'", what="the plan loaded")
