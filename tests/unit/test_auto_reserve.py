"""The auto-trader plans around the FCR reserve (issue 15 item 2): while FCR is on, the optimiser gets
reserve_mw / reserve_mwh (controller/services/reserve.plan_reserve), so its plan never uses the band's power and
keeps the SoC inside the reserve band; with FCR off the whole plant is planned. Real optimiser, real store."""

from __future__ import annotations

import math

import pytest
import yaml

from controller.clock import Clock
from controller.config import SiteConfig, fcr_reserve_pct
from controller.cycle.state import PlantState
from controller.services.runtime import FcrState
from controller.store import Store
from controller.trading.auto import AutoTrader, TradingPlant
from controller.trading.forecast import Forecast, ForecastPeriod
from controller.trading.market import PERIOD_S
from tests.fixtures.fcr import CONFIG

NOW = 1_796_342_400.0  # 2026-12-04T00:00Z, on a period boundary


def config(capacity_mw: float) -> SiteConfig:
    raw = yaml.safe_load((CONFIG / "demo-modbus.yaml").read_text())
    raw["devices"]["poi"] = {"role": "meter", "protocol": "sunspec", "port": 1505, "profile": "x.yaml"}
    raw["services"] = {"fcr": {"enabled": True, "capacity_mw": capacity_mw}}
    return SiteConfig.model_validate(raw)


def fcr_state(on: bool) -> FcrState:
    return FcrState(on, 5.0, 50.0, NOW, 0.0, True, 20.0, 80.0, 0.0, 0, None, 0, 0)


async def plan(tmp_path, fcr_on: bool):
    cfg = config(5.0)
    with Store(tmp_path / f"s{fcr_on}.db") as store:
        plant = TradingPlant(cfg, store, Clock(), lambda: None, lambda a, b: [], lambda *a: None, lambda *a: None)
        trader = AutoTrader(plant, desk=None, forecaster=None)
        # prices swinging hard every hour: the optimiser wants all the power and all the energy it may use
        periods = tuple(
            ForecastPeriod(NOW + i * PERIOD_S, 200.0 if (i // 4) % 2 else -50.0, "known") for i in range(48)
        )
        state = PlantState(ts=NOW, soc_pct=50.0, online=True, fcr=fcr_state(fcr_on))
        return cfg, await trader._plan(Forecast(NOW, "test", periods), state, NOW)


async def test_the_plan_keeps_the_fcr_reserve(tmp_path) -> None:
    cfg, p = await plan(tmp_path, fcr_on=True)
    assert p is not None and p.ok, p
    lim = cfg.limits
    most = max(max(q.charge_mw, q.discharge_mw) for q in p.periods)
    assert most <= lim.p_discharge_max_mw - 5.0 + 1e-6  # the band's 5 MW are never planned
    # the SoC stays where full activation for reserve_minutes still fits (the optimiser keeps the larger of the
    # two directions' room either way)
    room = max(fcr_reserve_pct(cfg.services.fcr, cfg.battery))
    socs = [q.soc_pct_end for q in p.periods]
    assert min(socs) >= lim.soc_min_pct + room - 1e-6 and max(socs) <= lim.soc_max_pct - room + 1e-6


async def test_without_fcr_the_whole_plant_is_planned(tmp_path) -> None:
    cfg, p = await plan(tmp_path, fcr_on=False)
    assert p is not None and p.ok
    most = max(max(q.charge_mw, q.discharge_mw) for q in p.periods)
    assert most > cfg.limits.p_discharge_max_mw - 5.0 + 1e-3 and math.isfinite(most)


def fcr_out(soc_pct: float, cfg: SiteConfig) -> FcrState:
    """FCR on with the SoC outside the band, as the cycle reports it (controller/services/reserve.reserve_status)."""
    from controller.services.reserve import band, reserve_status

    b = band(cfg.services.fcr, cfg.battery, cfg.limits)
    r = reserve_status(soc_pct, b, cfg.battery.capacity_mwh)
    return FcrState(True, 5.0, 50.0, NOW, 0.0, r.held, b.soc_low_pct, b.soc_high_pct, r.restore_mwh, r.direction,
                    None, 0, 0)  # fmt: skip


async def restore_plan(tmp_path, soc_pct: float):
    """The auto-trader's plan from `soc_pct` with FCR on (5 MW on the 10 MW plant), and the orders it makes of it."""
    from controller.trading.auto import RiskLimits, orders_for_plan

    cfg = config(5.0)
    with Store(tmp_path / "restore.db") as store:
        plant = TradingPlant(cfg, store, Clock(), lambda: None, lambda a, b: [], lambda *a: None, lambda *a: None)
        trader = AutoTrader(plant, desk=None, forecaster=None)
        periods = tuple(ForecastPeriod(NOW + i * PERIOD_S, 80.0 + (i % 3), "known") for i in range(48))
        state = PlantState(ts=NOW, soc_pct=soc_pct, online=True, fcr=fcr_out(soc_pct, cfg))
        forecast = Forecast(NOW, "test", periods)
        p = await trader._plan(forecast, state, NOW)
        limits = RiskLimits(max_order_mw=2.0, max_position_mw=8.0, trade_ahead_s=2 * 3600)
        acts = orders_for_plan(
            {q.period_start: q.plan_mw for q in p.periods},
            {},
            forecast.prices(),
            [],
            limits,
            NOW,
            restore={q.period_start: q.restore_direction for q in p.periods if q.restore_direction},
        )
        return cfg, p, trader.reserve, acts


async def test_below_the_band_the_plan_charges_back_and_its_orders_say_so(tmp_path) -> None:
    """SoC 12 % with 5 MW of FCR on 20 MWh (band from 16.6 %, the plan's window from 16.6 %): before the restore
    there was no plan at all (infeasible: the current period is past its gate). Now: the 5 MW the band leaves, as
    buys, in every period open for trading until the band is reached, each order's reason saying it restores it."""
    cfg, p, view, acts = await restore_plan(tmp_path, 12.0)
    assert p is not None and p.ok, p
    assert p.periods[0].restore_direction == -1 and p.periods[0].plan_mw == 0  # past its gate: idle
    back = [q for q in p.periods[1:] if q.restore_direction == -1]
    assert back and all(q.charge_mw > 0 and q.discharge_mw == 0 for q in back)
    assert all(q.plan_mw == pytest.approx(-5.0) for q in back[:-1])  # all the power the band leaves
    low = cfg.limits.soc_min_pct + max(fcr_reserve_pct(cfg.services.fcr, cfg.battery))
    assert back[-1].soc_pct_end == pytest.approx(low, abs=1e-6) or back[-1].soc_pct_end > low
    assert all(q.soc_pct_end >= low - 1e-6 for q in p.periods[len(back) + 1 :])
    # GET /api/auto's reserve (AutoTrader.status()["reserve"]): the cycle's view of the band and the plan's restore
    assert view["held"] is False and view["restore_direction"] == -1 and view["restore_mwh"] > 0
    assert view["restoring"] is True and len(view["restore_periods"]) == len(back) + 1
    # the orders: buys for the restoring periods (2 MW: max_order_mw), reason naming the restore
    restoring = {q.period_start for q in back}
    buys = [o for o in acts.place if o.delivery_start in restoring]
    assert buys and all(o.side == "buy" and o.quantity_mw == 2.0 for o in buys)
    assert all(o.reason.startswith("FCR reserve restore (charge back into the band); plan ") for o in buys)
    assert not [o for o in acts.place if o.delivery_start not in restoring and "restore" in o.reason]


async def test_above_the_band_the_plan_discharges_back(tmp_path) -> None:
    cfg, p, view, acts = await restore_plan(tmp_path, 88.0)
    assert p.ok, p
    back = [q for q in p.periods[1:] if q.restore_direction == 1]
    assert back and all(q.discharge_mw > 0 and q.charge_mw == 0 for q in back)
    assert view["restore_direction"] == 1 and view["restoring"] is True
    sells = [o for o in acts.place if o.delivery_start in {q.period_start for q in back}]
    assert sells and all(o.side == "sell" and "discharge back into the band" in o.reason for o in sells)


async def test_inside_the_band_nothing_is_a_restore(tmp_path) -> None:
    _, p, view, acts = await restore_plan(tmp_path, 50.0)
    assert p.ok and not any(q.restore_direction for q in p.periods)
    assert view["held"] is True and view["restoring"] is False and view["restore_periods"] == []
    assert not any("restore" in o.reason for o in acts.place)
