"""What each strategy wants the plant to do: a plan (MW per period start, + discharge) from the forecast, the
positions already traded and the SoC. The auto-trader's order step (controller/trading/auto.py) turns any
strategy's plan into orders; perfect foresight is the optimiser on the realised prices, traded at them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from controller.config import SiteConfig
from controller.trading.forecast import Forecast
from controller.trading.market import PERIOD_S, gate_open
from controller.trading.optimiser import Plan, optimise, problem_for_site

DAY_S = 86400
PERIOD_H = PERIOD_S / 3600


@dataclass(frozen=True)
class View:
    """What a strategy sees when it plans."""

    now: float
    forecast: Forecast
    position_mw: dict[float, float]
    soc_pct: float


class Strategy(Protocol):
    name: str

    def plan(self, view: View) -> dict[float, float] | None: ...


class OptimiserStrategy:
    """The auto-trader's planning, as AutoTrader._plan does it: the LP over the forecast's horizon, positions as
    commitments, periods past gate closure untradable, power capped at trading.auto.max_position_mw, the end
    value problem_for_site's default."""

    name = "optimiser"

    def __init__(self, cfg: SiteConfig, plan_degradation_eur_mwh: float | None = None):
        self.cfg = cfg
        self.max_position_mw = cfg.trading.auto.max_position_mw
        # the wear cost the plan weighs (default the site's): to see what planning without it costs
        self.degradation = (
            cfg.trading.degradation_eur_mwh if plan_degradation_eur_mwh is None else plan_degradation_eur_mwh
        )
        self.failures = 0
        self.solve_ms: list[float] = []

    def plan(self, view: View) -> dict[float, float] | None:
        periods = view.forecast.periods
        if not periods:
            return None
        starts = [p.period_start for p in periods]
        prices = [p.price_eur_mwh for p in periods]
        pb = problem_for_site(
            self.cfg,
            now_ts=view.now,
            soc_pct_now=view.soc_pct,
            buy_price_eur_mwh=tuple(prices),
            position_mw=tuple(view.position_mw.get(p, 0.0) for p in starts),
            available_charge_mw=self.max_position_mw,
            available_discharge_mw=self.max_position_mw,
            tradable=tuple(gate_open(p, view.now) for p in starts),
            degradation_eur_mwh=self.degradation,
        )
        plan = optimise(pb)
        self.solve_ms.append(plan.solve_ms)
        if not plan.ok:
            self.failures += 1
            return None
        return {q.period_start: q.plan_mw for q in plan.periods}


class NaiveStrategy:
    """Each UTC day, from the forecast at the day's start: charge at full power in the k cheapest periods and
    discharge in the k dearest, k as many as the SoC window holds (the same energy limits as the optimiser).
    It ignores order and SoC: the pre-trade check refuses what the battery cannot do."""

    name = "naive"

    def __init__(self, cfg: SiteConfig):
        self.cfg = cfg
        lim, bat = cfg.limits, cfg.battery
        window_mwh = (lim.soc_max_pct - lim.soc_min_pct) / 100 * bat.capacity_mwh
        per_charge = lim.p_charge_max_mw * PERIOD_H * bat.charge_efficiency
        per_discharge = lim.p_discharge_max_mw * PERIOD_H / bat.discharge_efficiency
        self.k = max(1, math.floor(window_mwh / max(per_charge, per_discharge)))
        self.failures = 0
        self._day: int | None = None
        self._plan: dict[float, float] = {}

    def plan(self, view: View) -> dict[float, float] | None:
        day = int(view.now) // DAY_S
        if day != self._day:
            today = [p for p in view.forecast.periods if int(p.period_start) // DAY_S == day]
            ranked = sorted(today, key=lambda p: p.price_eur_mwh)
            lim = self.cfg.limits
            self._plan = {p.period_start: 0.0 for p in today}
            for p in ranked[: self.k]:
                self._plan[p.period_start] = -lim.p_charge_max_mw
            for p in ranked[-self.k :]:
                self._plan[p.period_start] = lim.p_discharge_max_mw
            self._day = day
        return self._plan


def perfect_foresight(cfg: SiteConfig, start_ts: float, prices: list[float], soc_pct: float, value: float) -> Plan:
    """The optimiser on the realised prices of the whole run, every period tradable at its price, no aux load
    (the battery model has none): what the best hindsight plan earns. `value`: the end value per MWh stored."""
    return optimise(
        problem_for_site(
            cfg,
            now_ts=start_ts,
            soc_pct_now=soc_pct,
            buy_price_eur_mwh=tuple(prices),
            end_value_eur_mwh=value,
            aux_load_mw=0.0,
        )
    )
