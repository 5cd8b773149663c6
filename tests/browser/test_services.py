"""The dashboard's grid-services view (issue 15) in a real headless Chromium: the grid frequency over the last
minutes with the FCR contribution and the aFRR part, FCR's state and its switch (operator keys only, through
POST /api/services/fcr, confirmed in the page's dialog), the aFRR setpoint and whether the plant follows it,
all live from /ws. The web app runs on a free port on an in-memory backend (tests/fixtures/web.py), so this
module needs no demo ports. Screenshots are saved under artifacts/browser/."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.fixtures.browser import (
    login,
    page,  # noqa: F401  (fixture)
)
from tests.fixtures.web import KEYS, READ_KEYS, MemoryBackend, running_web

pytestmark = pytest.mark.timeout(120)


class ServicesBackend(MemoryBackend):
    """The memory plant with a POI meter whose frequency swings around 50 Hz, FCR (4 MW, off at start) and
    an aFRR setpoint of 1.5 MW being followed."""

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.fcr_enabled = False
        self.reserve_held = True
        self.afrr_timed_out = False
        self.switches: list[tuple[bool, str]] = []

    def frequency_hz(self) -> float:
        return 50.0 + 0.05 * math.sin(self.now() / 7.0)

    def _make_status(self) -> dict[str, Any]:
        st = super()._make_status()
        hz = self.frequency_hz()
        fcr_mw = -4.0 * max(-1.0, min(1.0, (hz - 50.0) / 0.2)) if self.fcr_enabled else 0.0
        st["poi"] = {"power_mw": self.power_mw, "frequency_hz": hz, "ts": self.now()}
        st["fcr"] = {
            "enabled": self.fcr_enabled,
            "capacity_mw": 4.0,
            "frequency_hz": hz,
            "contribution_mw": fcr_mw,
            "reserve_held": self.reserve_held,
            "reserve_soc_low_pct": 20.0,
            "reserve_soc_high_pct": 80.0,
            "reserve_restore_mwh": 0.0 if self.reserve_held else 1.1,
            "reserve_restore_direction": 0 if self.reserve_held else -1,
        }
        st["afrr"] = {
            "setpoint_mw": 1.5,
            "active_mw": 0.0 if self.afrr_timed_out else 1.5,
            "band_up_mw": 2.0,
            "band_down_mw": 2.0,
            "following": not self.afrr_timed_out,
            "timed_out": self.afrr_timed_out,
            "clamped": False,
            "received": self.now(),
        }
        return st

    async def set_fcr(self, enabled: bool, who: str) -> dict[str, Any]:
        self.fcr_enabled = enabled
        self.switches.append((enabled, who))
        self._status = self._make_status()
        return self._status["fcr"]


def el(name: str, attr: str = "dataset.value") -> str:
    return f"document.getElementById({name!r}).{attr}"


async def test_frequency_fcr_and_afrr_live_and_the_fcr_switch(page):
    backend = ServicesBackend()
    async with running_web(backend, cycle_s=0.5) as web:
        await login(page, web.url)
        await page.wait_for(f"!{el('services', 'classList')}.contains('hidden')", what="the services view")
        hz = float(await page.wait_for(el("services-frequency-value"), what="the frequency"))
        assert 49.9 < hz < 50.1
        assert await page.js(el("fcr-state", "dataset.state")) == "off"
        assert await page.js(el("fcr-reserve", "dataset.state")) == "none"  # FCR off: no reserve to hold
        assert float(await page.js(el("fcr-contribution-value"))) == 0.0
        assert float(await page.js(el("afrr-setpoint-value"))) == pytest.approx(1.5)
        assert await page.js(el("afrr-state", "dataset.state")) == "following"
        await page.wait_for(f"Number({el('frequency-chart', 'dataset.samples')}) >= 4", what="chart samples")
        await page.screenshot("services-fcr-off")

        # the switch: confirmed in the dialog, then the status says FCR is on and its contribution is live
        await page.js("document.getElementById('fcr-toggle').click(); true")
        await page.wait_for("document.getElementById('confirm-dialog').open", what="the confirmation")
        await page.js("document.getElementById('confirm-ok').click(); true")
        await page.wait_for(f"{el('fcr-result', 'dataset.ok')} === 'true'", what="the switch answered")
        await page.wait_for(f"{el('fcr-state', 'dataset.state')} === 'on'", what="FCR on")
        assert backend.switches and backend.switches[-1][0] is True
        await page.wait_for(f"{el('fcr-contribution-value')} !== '0'", what="a live FCR contribution")
        await page.wait_for(f"Number({el('frequency-chart', 'dataset.samples')}) >= 8", what="more chart samples")
        await page.wait_for(f"{el('fcr-reserve', 'dataset.state')} === 'held'", what="the reserve held")
        assert "20–80 %" in await page.js(el("fcr-reserve", "textContent"))
        await page.screenshot("services-fcr-on")

        # the SoC leaves the reserve band: the view says which way and how much restores it
        backend.reserve_held = False
        await page.wait_for(f"{el('fcr-reserve', 'dataset.state')} === 'restore'", what="the reserve to restore")
        assert "charge 1.10 MWh" in await page.js(el("fcr-reserve", "textContent"))

        # aFRR setpoints lost: the view says so with the next push
        backend.afrr_timed_out = True
        await page.wait_for(f"{el('afrr-state', 'dataset.state')} === 'timeout'", what="aFRR timeout shown")
        assert float(await page.js(el("afrr-active-value"))) == 0.0
    assert not page.console, page.console


async def test_read_only_key_sees_the_view_without_the_switch(page):
    async with running_web(ServicesBackend(), cycle_s=0.5, read_keys=READ_KEYS) as web:
        await page.goto(web.url + "/")
        await page.wait_for("location.pathname === '/login'", what="redirect to the login page")
        await page.js(
            f"document.getElementById('api-key').value = {READ_KEYS[0]!r};"
            "document.getElementById('login-form').requestSubmit(); true"
        )
        await page.wait_for("location.pathname === '/' && !!document.getElementById('soc-value')", what="dashboard")
        await page.wait_for(f"!{el('services', 'classList')}.contains('hidden')", what="the services view")
        await page.wait_for(el("services-frequency-value"), what="the frequency")
        assert await page.js("document.getElementById('fcr-toggle') === null")
    assert not page.console, page.console


async def test_a_site_without_services_hides_the_view(page):
    async with running_web(MemoryBackend(), cycle_s=0.5) as web:
        await login(page, web.url)
        await page.wait_for(el("soc-value"), what="SoC value")
        assert await page.js(f"{el('services', 'classList')}.contains('hidden')")
    assert KEYS
    assert not page.console, page.console
