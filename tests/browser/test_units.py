"""The dashboard's units and POI meter (issue 13) in a real headless Chromium: on a two-unit plant with a meter,
one card per unit (SoC, power, setpoint, temperature, available, binding) and the POI power and frequency,
updated live from /ws (a unit going unavailable shows without a reload); on a plant without units data or a
meter the section is hidden. The web app runs on a free port on an in-memory backend (tests/fixtures/web.py),
so this module needs no demo ports. Screenshots are saved under artifacts/browser/."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.browser import (
    login,
    page,  # noqa: F401  (fixture)
)
from tests.fixtures.web import MemoryBackend, running_web

pytestmark = pytest.mark.timeout(120)


class TwoUnitBackend(MemoryBackend):
    """The memory plant as two units of half its rating behind a POI meter: unit 1 fuller than unit 2, the
    meter measuring the plant's power less 0.1 MW of aux load."""

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.u2_available = True
        self.frequency_hz = 49.987

    def _make_status(self) -> dict[str, Any]:
        st = super()._make_status()
        share = self.setpoint_mw if self.u2_available else 0.0
        u1 = self.setpoint_mw - share / 2 if self.u2_available else self.setpoint_mw
        st["units"] = [
            {
                "unit": "u1",
                "soc_pct": self.soc_pct + 6.0,
                "power_mw": u1,
                "setpoint_mw": u1,
                "temperature_c": 28.5,
                "available": True,
                "binding": "none",
            },
            {
                "unit": "u2",
                "soc_pct": self.soc_pct - 6.0,
                "power_mw": share / 2,
                "setpoint_mw": share / 2,
                "temperature_c": 26.0,
                "available": self.u2_available,
                "binding": "none" if self.u2_available else "stale",
            },
        ]
        st["poi"] = {"power_mw": self.power_mw - 0.1, "frequency_hz": self.frequency_hz, "ts": self.now()}
        return st


CARDS = "[...document.querySelectorAll('[data-testid=unit-card]')]"


def field(unit: str, name: str, attr: str = "dataset.value") -> str:
    return f"document.querySelector('[data-testid=unit-card][data-unit={unit}] [data-field={name}]').{attr}"


async def test_two_units_and_the_poi_live(page):
    backend = TwoUnitBackend(soc_pct=50.0)
    backend.mode, backend.manual_setpoint_mw, backend.manual_expires_ts = "manual", 4.0, backend.now() + 3600
    async with running_web(backend, cycle_s=0.5) as web:
        await login(page, web.url)
        await page.wait_for(f"{CARDS}.length === 2", what="two unit cards")
        assert await page.js(f"{CARDS}.map((c) => c.dataset.unit)") == ["u1", "u2"]
        assert not await page.js("document.getElementById('units-poi').classList.contains('hidden')")
        await page.wait_for(field("u2", "soc_pct"), what="unit 2's SoC")
        soc1, soc2 = float(await page.js(field("u1", "soc_pct"))), float(await page.js(field("u2", "soc_pct")))
        assert soc1 > soc2 and 0 < soc2 < soc1 < 100
        for unit in ("u1", "u2"):
            for name in ("power_mw", "setpoint_mw", "temperature_c"):
                assert await page.js(field(unit, name)) != "", f"{unit}.{name}"
            assert await page.js(f"document.querySelector('[data-unit={unit}]').dataset.available") == "true"
        power = float(await page.wait_for("document.getElementById('poi-power-value').dataset.value", what="POI"))
        assert power == pytest.approx(backend.power_mw - 0.1, abs=1.0)
        freq = float(await page.js("document.getElementById('poi-frequency-value').dataset.value"))
        assert freq == pytest.approx(49.987)
        await page.screenshot("units-two-live")
        # unit 2 lost: its card says so with the next push, no reload
        backend.u2_available = False
        await page.wait_for(
            "document.querySelector('[data-unit=u2]').dataset.available === 'false'", what="unit 2 unavailable"
        )
        assert await page.js(field("u2", "available", "textContent")) == "unavailable"
        assert await page.js(field("u2", "binding", "dataset.binding")) == "stale"
        await page.screenshot("units-two-u2-unavailable")
    assert not page.console, page.console


async def test_a_plant_without_units_or_meter_shows_neither(page):
    async with running_web(MemoryBackend(), cycle_s=0.5) as web:
        await login(page, web.url)
        await page.wait_for("document.getElementById('soc-value').dataset.value", what="SoC value")
        assert await page.js("document.getElementById('units-poi').classList.contains('hidden')")
        assert await page.js(f"{CARDS}.length") == 0
    assert not page.console, page.console
