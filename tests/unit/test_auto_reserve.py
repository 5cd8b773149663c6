"""The auto-trader plans around the FCR reserve (issue 15 item 2): while FCR is on, the optimiser gets
reserve_mw / reserve_mwh (controller/services/reserve.plan_reserve), so its plan never uses the band's power and
keeps the SoC inside the reserve band; with FCR off the whole plant is planned. Real optimiser, real store."""

from __future__ import annotations

import math

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
