"""The FCR reserve restored by the auto-trader (issue 15 item 2), with real parts: the plant simulator with its POI
meter and control API, a Daemon (controller, web, uplink, order desk, auto-trader), the exchange simulator (real
uvicorn) and Mosquitto. FCR is on (8 MW of the 10 MW plant: the band is 20.5-80.5 %, the plan's window 20.5-79.5 %)
and the SoC starts at 15 %, below the band: the auto-trader plans the recharge and places buys for it through the
same order desk and pre-trade check as any order, inside its risk limits, each order's reason saying it restores
the reserve; GET /api/auto shows the restore; the alarm `services:fcr_reserve` is up until the SoC is back in the
band. With the auto-trader switched off, nothing is placed and the alarm names the way and the energy.

The csv forecast alternates cheap and dear hours (test_auto_trading), so buy orders are priced far from the
counterparties' quotes and rest: the test sees them placed. The SoC comes back by the simulator's control API
(delivering a 15-minute period in real time is not a test's business)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from controller.clock import Clock, parse_iso
from controller.config import load_config, load_secrets
from controller.daemon import Daemon
from tests.fixtures.controller import wait_for
from tests.fixtures.exchange import running_exchange
from tests.fixtures.fcr import fcr_site_file, running_site_plant, sim
from tests.fixtures.mosquitto import mosquitto  # noqa: F401  (fixture)
from tests.fixtures.trading import (
    LOCAL_KEY,
    MAX_ORDER_MW,
    PARTICIPANTS,
    SECRET,
    SITE_KEY,
    alternating_prices,
    api_get,
    auto_overrides,
    check_orders_inside_limits,
    site_orders,
    until,
    write_csv,
)

pytestmark = pytest.mark.timeout(120)

ALARM = "services:fcr_reserve"
RESTORE = "FCR reserve restore (charge back into the band)"


@asynccontextmanager
async def restoring_site(mosquitto, tmp_path: Path, soc_pct: float, auto_on: bool = True) -> AsyncIterator:  # noqa: F811
    """The plant (frequency held at 50 Hz, SoC set to `soc_pct` before the controller starts), the exchange and a
    Daemon with FCR on and the auto-trader planning against the alternating csv forecast (`auto_on` False: its
    kill switch off, `run --no-auto-trading`). Yields (plant config, exchange, daemon, api client)."""
    clock = Clock()
    csv_path = write_csv(tmp_path / "prices.csv", alternating_prices(clock.now()))
    over = auto_overrides({"source": "csv", "path": str(csv_path)})
    over["mqtt"] = {"enabled": True, "telemetry_interval_s": 1.0, "reconnect_max_s": 1}
    over["scada"] = {"modbus": {"enabled": False}, "opcua": {"enabled": False}}
    cfg = load_config(fcr_site_file(tmp_path, **over))
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running_site_plant(cfg))
        await sim(cfg, "frequency", wander=False, hz=50.0)
        await sim(cfg, "state", soc_pct=soc_pct)
        ex = await stack.enter_async_context(
            running_exchange(participants=PARTICIPANTS, hmac_secret=SECRET, clock=clock, mqtt_url=mosquitto.url)
        )
        env = {
            "API_KEY": LOCAL_KEY,
            "HMAC_SECRET": SECRET,
            "MQTT_URL": mosquitto.url,
            "EXCHANGE_BASE_URL": ex.url,
            "EXCHANGE_API_KEY": SITE_KEY,
        }
        d = Daemon(cfg, load_secrets(cfg, env), tmp_path / "state", clock=clock, auto_trading=auto_on)
        api = httpx.AsyncClient(base_url=d.web_url, headers={"X-API-Key": LOCAL_KEY}, timeout=10)
        stack.push_async_callback(api.aclose)
        try:
            await d.start()
            await wait_for(lambda: d.controller.stats.good_cycles >= 1, 10, "the site's first good cycle")
            yield cfg, ex, d, api
        finally:
            await d.stop()


async def alarm(api: httpx.AsyncClient) -> dict | None:
    active = (await api_get(api, "/api/alarms"))["active"]
    return next((a for a in active if a["key"] == ALARM), None)


async def test_the_auto_trader_buys_the_reserve_back_and_the_alarm_clears_when_the_soc_is_back(
    mosquitto,  # noqa: F811
    tmp_path,
) -> None:
    async with restoring_site(mosquitto, tmp_path, soc_pct=15.0) as (cfg, ex, d, api):
        await wait_for(lambda: ALARM in d.controller.active_alarms, 10, "the reserve alarm")
        status = await until(
            api, "/api/auto", lambda s: (s.get("reserve") or {}).get("restoring") and s["orders_placed"] >= 2, "buys"
        )
        assert status["state"] == "running", status
        reserve = status["reserve"]
        assert reserve["fcr_enabled"] is True and reserve["held"] is False
        assert reserve["restore_direction"] == -1 and reserve["restore_mwh"] == pytest.approx(1.1, abs=0.05)
        assert reserve["soc_low_pct"] == pytest.approx(20.53, abs=0.01)
        restoring = {parse_iso(p["period_start"]) for p in reserve["restore_periods"]}
        assert all(p["direction"] == -1 and p["plan_mw"] <= 0 for p in reserve["restore_periods"])
        # the restoring periods still open for trading charge with all the band leaves (10 - 8 MW): buys, at most
        # max_order_mw each, with the margin below the forecast, inside the position limit: the usual checks
        await wait_for(lambda: not d.store.order_intents("pending"), 10, "no order on its way")
        mine = [o for o in site_orders(ex) if o.delivery_start in restoring]
        assert mine and all(o.side == "buy" and o.quantity_lots / 10 <= MAX_ORDER_MW for o in mine)
        check_orders_inside_limits(ex, d)
        intents = {i["client_order_id"]: i for i in d.store.intents_by("auto", 0)}
        for o in mine:
            reason = intents[o.client_order_id]["meta"]["reason"]
            assert reason.startswith(RESTORE) and "plan" in reason and "forecast" in reason, reason
        listed = (await api_get(api, "/api/orders"))["orders"]
        assert any(o.get("placed_by") == "auto" and o["reason"].startswith(RESTORE) for o in listed), listed
        # the plan shows the SoC back in the band at the end of the restore, and inside it after
        plan = await api_get(api, "/api/plan")
        after = [p for p in plan["periods"] if parse_iso(p["period_start"]) > max(restoring)]
        assert after and all(p["soc_pct_end"] >= 20.5 for p in after), plan
        metrics = (await api.get("/metrics", headers={"Authorization": f"Bearer {LOCAL_KEY}"})).text
        assert "bess_plan_reserve_restore_periods" in metrics
        assert (await alarm(api)) is not None

        # the SoC is back in the band: the alarm clears, and the next plan restores nothing
        await sim(cfg, "state", soc_pct=50.0)
        await wait_for(lambda: ALARM not in d.controller.active_alarms, 10, "the reserve alarm cleared")
        replans = (await api_get(api, "/api/auto"))["replans"]
        done = await until(api, "/api/auto", lambda s: s["replans"] >= replans + 2, "two replans with the SoC back")
        assert done["reserve"]["held"] is True and done["reserve"]["restoring"] is False, done["reserve"]
        assert done["reserve"]["restore_periods"] == [] and (await alarm(api)) is None


async def test_with_the_auto_trader_off_the_alarm_names_the_way_and_the_energy(
    mosquitto,  # noqa: F811
    tmp_path,
) -> None:
    async with restoring_site(mosquitto, tmp_path, soc_pct=15.0, auto_on=False) as (cfg, ex, d, api):
        await wait_for(lambda: ALARM in d.controller.active_alarms, 10, "the reserve alarm")
        a = await alarm(api)
        assert a is not None
        assert "below the FCR reserve band" in a["message"], a
        assert re.search(r"charge 1\.1\d* MWh to restore it", a["message"]), a  # 20.53 - 15 % of 20 MWh
        fcr = (await api_get(api, "/api/bess-status"))["fcr"]
        assert fcr["reserve_restore_direction"] == -1 and fcr["reserve_restore_mwh"] == pytest.approx(1.1, abs=0.05)
        # the auto-trader plans the restore (the dashboard shows it) but places nothing: the operator must
        planned = await until(api, "/api/auto", lambda s: (s.get("reserve") or {}).get("restoring"), "the restore plan")
        status = await until(api, "/api/auto", lambda s: s["replans"] >= planned["replans"] + 2, "two more replans")
        assert status["state"] == "off" and status["orders_placed"] == 0, status
        assert status["reserve"]["restoring"] is True and status["reserve"]["held"] is False
        assert not site_orders(ex)
