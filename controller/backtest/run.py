"""The backtest's loop and report. Per strategy, a market of its own (same seed: same curve and counterparties)
on a simulated clock: every tick the counterparties act and the plant delivers the current period's position;
every `replan_s` (and after a fill) the strategy plans, the auto-trader's order step (orders_for_plan) turns the
plan into orders, and each order passes the real pre-trade check (check_feasibility) before it reaches the
engine. Perfect foresight is then the optimiser on the prices the optimiser's market realised.

Money: cash from fills; imbalance (what the plant did not deliver, settled at the period's realised price plus
a penalty); degradation (throughput x trading.degradation_eur_mwh); and the change of stored energy valued at
the run's mean reference price, so that a strategy cannot look rich by ending empty.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from statistics import fmean

from controller.backtest.market import SimMarket
from controller.backtest.plant import Plant
from controller.backtest.strategies import NaiveStrategy, OptimiserStrategy, Strategy, View, perfect_foresight
from controller.config import SiteConfig
from controller.trading.auto import RiskLimits, orders_for_plan
from controller.trading.forecast import build_forecast
from controller.trading.market import PERIOD_S, period_start
from controller.trading.schedule import check_feasibility

DAY_S = 86400
IMBALANCE_PENALTY_EUR_MWH = 50.0
REPLAN_AFTER_FILL_S = 60.0  # a fill brings the next plan forward, but not to less than this after the last  # on top of the realised price, for energy the plant did not deliver as traded
DEFAULT_START = date(2026, 11, 2)  # a Monday: each week-long run sees five weekdays and a weekend


@dataclass
class Settings:
    days: float
    seed: int
    start_ts: float
    counterparties: int = 8
    tick_s: float = 20.0
    replan_s: float = 300.0
    horizon_h: float = 36.0
    soc_pct: float = 50.0
    plan_degradation_eur_mwh: float | None = None  # what the optimiser weighs; wear is charged at the site's cost


@dataclass
class Result:
    strategy: str
    pnl_eur: float = 0.0  # net: cash + imbalance - degradation + stored energy's change in value
    cash_eur: float = 0.0
    imbalance_eur: float = 0.0
    degradation_eur: float = 0.0
    stored_value_eur: float = 0.0
    throughput_mwh: float = 0.0
    equivalent_full_cycles: float = 0.0
    traded_mwh: float = 0.0
    fills: int = 0
    orders_placed: int = 0
    orders_cancelled: int = 0
    limit_refusals: int = 0  # orders the pre-trade check refused
    exchange_rejections: int = 0
    plan_failures: int = 0
    soc_pct_end: float = 0.0
    shortfall_mwh: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class Run:
    """One strategy's state while it runs."""

    cfg: SiteConfig
    s: Settings
    strategy: Strategy
    market: SimMarket
    plant: Plant
    risk: RiskLimits
    result: Result
    position_mw: dict[float, float] = field(default_factory=dict)

    def fills(self) -> int:
        got = self.market.new_fills()
        for p, mw, price in got:
            self.position_mw[p] = round(self.position_mw.get(p, 0.0) + mw, 9)
            self.result.cash_eur += mw * price * PERIOD_S / 3600
            self.result.traded_mwh += abs(mw) * PERIOD_S / 3600
        self.result.fills += len(got)
        return len(got)

    def trade(self, now: float) -> None:
        """Plan, then the auto-trader's order step, each order through the pre-trade check."""
        m = self.market
        forecast = build_forecast(
            now, self.s.horizon_h * 3600, m.known, m.history, m.marks(now), near_blend_s=2 * 3600, history_days=14
        )
        plan = self.strategy.plan(View(now, forecast, dict(self.position_mw), self.plant.soc_pct))
        if plan is None:
            self.result.plan_failures += 1
            return
        actions = orders_for_plan(plan, self.position_mw, forecast.prices(), m.open_orders(), self.risk, now)
        for c in actions.cancel:
            self.result.orders_cancelled += m.cancel(c.order_id, now)
        current = period_start(now)
        positions = [(p, mw) for p, mw in self.position_mw.items() if p >= current]
        for intent in actions.place:
            signed = intent.quantity_mw if intent.side == "sell" else -intent.quantity_mw
            open_now = [(o.delivery_start, o.signed_mw) for o in m.open_orders()] + [(intent.delivery_start, signed)]
            check = check_feasibility(
                positions, self.plant.soc_pct, now, self.cfg.battery, self.cfg.limits, open_orders=open_now
            )
            if not check.ok:
                self.result.limit_refusals += 1
                continue
            status = m.place(intent, now)
            self.result.orders_placed += 1
            self.result.exchange_rejections += status == "rejected"


def run_strategy(cfg: SiteConfig, s: Settings, strategy: Strategy) -> tuple[Result, SimMarket]:
    run = Run(
        cfg,
        s,
        strategy,
        SimMarket(s.seed, s.counterparties, s.start_ts),
        Plant(cfg, s.soc_pct),
        RiskLimits.from_config(cfg.trading.auto),
        Result(strategy.name),
    )
    end = s.start_ts + s.days * DAY_S
    now, next_plan, last_plan = s.start_ts, s.start_ts, -math.inf
    while now < end:
        run.market.tick(now)
        filled = run.fills()
        if now >= next_plan or (filled and now >= last_plan + REPLAN_AFTER_FILL_S):
            run.trade(now)
            last_plan, next_plan = now, now + s.replan_s
        p = period_start(now)
        run.plant.deliver(run.position_mw.get(p, 0.0), p, now, s.tick_s)
        now += s.tick_s
    run.market.tick(end)  # the last periods' realised prices
    return _settle(cfg, s, run), run.market


def _settle(cfg: SiteConfig, s: Settings, run: Run) -> Result:
    r, plant, market = run.result, run.plant, run.market
    value = reference_value(market, s)
    for p, dev in plant.deviation_mwh.items():
        price = market.realised.get(p, market.curve.price(p))
        r.imbalance_eur -= dev * price + abs(dev) * IMBALANCE_PENALTY_EUR_MWH
        r.shortfall_mwh += abs(dev)
    r.throughput_mwh = plant.throughput_mwh
    r.equivalent_full_cycles = r.throughput_mwh / (2 * cfg.battery.capacity_mwh)
    r.degradation_eur = r.throughput_mwh * cfg.trading.degradation_eur_mwh
    r.stored_value_eur = (plant.battery.energy_mwh - plant.energy_start_mwh) * value
    r.pnl_eur = r.cash_eur + r.imbalance_eur - r.degradation_eur + r.stored_value_eur
    r.soc_pct_end = plant.soc_pct
    return r


def reference_value(market: SimMarket, s: Settings) -> float:
    """EUR per MWh stored, the same for every strategy: the mean reference (auction) price over the run."""
    n = int(s.days * DAY_S // PERIOD_S)
    return fmean(market.curve.price(s.start_ts + i * PERIOD_S) for i in range(n))


def run_perfect(cfg: SiteConfig, s: Settings, market: SimMarket) -> Result:
    """The optimiser on the realised prices (of `market`), traded at them: the upper bound."""
    n = int(s.days * DAY_S // PERIOD_S)
    prices = [
        market.realised.get(s.start_ts + i * PERIOD_S, market.curve.price(s.start_ts + i * PERIOD_S)) for i in range(n)
    ]
    value = reference_value(market, s)
    plan = perfect_foresight(cfg, s.start_ts, prices, s.soc_pct, value)
    r = Result("perfect")
    if not plan.ok:
        r.plan_failures = 1
        r.extra["reason"] = plan.reason
        return r
    energy_0 = s.soc_pct / 100 * cfg.battery.capacity_mwh
    energy_end = plan.periods[-1].soc_pct_end / 100 * cfg.battery.capacity_mwh
    r.throughput_mwh = plan.throughput_mwh
    r.equivalent_full_cycles = r.throughput_mwh / (2 * cfg.battery.capacity_mwh)
    r.degradation_eur = r.throughput_mwh * cfg.trading.degradation_eur_mwh
    r.stored_value_eur = (energy_end - energy_0) * value
    r.cash_eur = plan.objective_eur - value * energy_end + r.degradation_eur
    r.pnl_eur = plan.objective_eur - value * energy_0
    r.traded_mwh = sum(abs(q.plan_mw) * q.hours for q in plan.periods)
    r.soc_pct_end = plan.periods[-1].soc_pct_end
    r.extra["solve_ms"] = round(plan.solve_ms, 1)
    return r


def backtest(cfg: SiteConfig, s: Settings) -> dict:
    """Every strategy on the same seed; the figures and the comparisons as one dict."""
    t0 = time.perf_counter()
    opt = OptimiserStrategy(cfg, s.plan_degradation_eur_mwh)
    optimiser, market = run_strategy(cfg, s, opt)
    optimiser.extra["solves"] = len(opt.solve_ms)
    optimiser.extra["solve_ms_median"] = (
        round(sorted(opt.solve_ms)[len(opt.solve_ms) // 2], 2) if opt.solve_ms else None
    )
    naive, _ = run_strategy(cfg, s, NaiveStrategy(cfg))
    perfect = run_perfect(cfg, s, market)
    results = [optimiser, naive, perfect]
    ratio = optimiser.pnl_eur / perfect.pnl_eur if perfect.pnl_eur > 0 else math.nan
    return {
        "backtest": {
            "days": s.days,
            "seed": s.seed,
            "start": datetime.fromtimestamp(s.start_ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
            "site": cfg.site.id,
            "capacity_mwh": cfg.battery.capacity_mwh,
            "degradation_eur_mwh": cfg.trading.degradation_eur_mwh,
            "plan_degradation_eur_mwh": opt.degradation,
            "counterparties": s.counterparties,
            "replan_s": s.replan_s,
            "tick_s": s.tick_s,
        },
        "strategies": {r.strategy: _rounded(r) for r in results},
        "optimiser_minus_naive_eur": round(optimiser.pnl_eur - naive.pnl_eur, 2),
        "optimiser_to_perfect_ratio": round(ratio, 4) if math.isfinite(ratio) else None,
        "optimiser_beats_naive": optimiser.pnl_eur > naive.pnl_eur,
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _rounded(r: Result) -> dict:
    out = asdict(r)
    extra = out.pop("extra")
    out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}
    out.update(extra)
    return out


COLUMNS = [
    ("strategy", "strategy", "{:<10}"),
    ("pnl_eur", "PnL net EUR", "{:>12,.0f}"),
    ("cash_eur", "cash EUR", "{:>11,.0f}"),
    ("imbalance_eur", "imbal. EUR", "{:>10,.0f}"),
    ("degradation_eur", "degr. EUR", "{:>10,.0f}"),
    ("stored_value_eur", "stored EUR", "{:>10,.0f}"),
    ("throughput_mwh", "thru MWh", "{:>9,.1f}"),
    ("equivalent_full_cycles", "EFC", "{:>6.2f}"),
    ("limit_refusals", "refusals", "{:>8}"),
    ("orders_placed", "orders", "{:>7}"),
    ("fills", "fills", "{:>6}"),
]


def table(report: dict) -> str:
    """The human table: one row per strategy, then the comparisons."""
    head = " ".join(f"{title:>{len(fmt.format(0 if key != 'strategy' else ''))}}" for key, title, fmt in COLUMNS)
    rows = [head]
    for r in report["strategies"].values():
        rows.append(" ".join(fmt.format(r[key]) for key, _, fmt in COLUMNS))
    b = report["backtest"]
    ratio = report["optimiser_to_perfect_ratio"]
    rows.append(
        f"{b['days']:g} days from {b['start']}, seed {b['seed']}, {b['counterparties']} counterparties, "
        f"degradation {b['degradation_eur_mwh']:g} EUR/MWh (the optimiser plans with {b['plan_degradation_eur_mwh']:g}); "
        "optimiser - naive = "
        f"{report['optimiser_minus_naive_eur']:,.0f} EUR; optimiser / perfect foresight = "
        + (f"{ratio:.1%}" if ratio is not None else "n/a")
        + f" ({report['wall_s']:g} s)"
    )
    return "\n".join(rows)


def main_backtest(
    cfg: SiteConfig,
    days: float,
    seed: int,
    start: date | None,
    counterparties: int,
    plan_degradation_eur_mwh: float | None = None,
) -> int:
    start_day = start or DEFAULT_START
    start_ts = datetime(start_day.year, start_day.month, start_day.day, tzinfo=timezone.utc).timestamp()
    settings = Settings(days, seed, start_ts, counterparties, plan_degradation_eur_mwh=plan_degradation_eur_mwh)
    report = backtest(cfg, settings)
    print(table(report))
    print(json.dumps(report))
    return 0
