"""The auto-trader: every `replan_s` and after every fill it plans against the price forecast (the optimiser),
and for each period still open for trading the difference between the plan and the position already traded
becomes orders, within the risk limits, each through the order desk's pre-trade check like a manual order.

`orders_for_plan` is the pure step (plan + positions + open orders + forecast + risk limits + now -> orders to
place and orders to cancel); the backtest calls it too. `AutoTrader` (below) runs it on the event loop.

While FCR is on and the SoC is outside its reserve band (or the plan's narrower window), the optimiser's plan
brings it back as fast as the plant can (controller/trading/optimiser.py, `restore_direction`): those periods'
orders are placed like any other (same risk limits, same pre-trade check), their reason says they restore the
reserve, and GET /api/auto's `reserve` shows the restore.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from controller.clock import iso, parse_iso
from controller.tasks import Background
from controller.trading.errors import ExchangeDown, OrderRefused
from controller.trading.market import GATE_CLOSURE_S, PERIOD_S, gate_open, period_start

if TYPE_CHECKING:
    from controller.config import TradingAuto

log = logging.getLogger("bess.auto")

LOT_MW = 0.1  # the exchange's quantity step
RESTORE_NOTE = "FCR reserve restore"  # how an order's reason starts when its period restores the reserve
_EPS_MW = 1e-9


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """What the auto-trader may do (trading.auto's figures, gate closure from the market's rules)."""

    min_margin_eur_mwh: float = 1.0
    max_order_mw: float = 5.0
    max_position_mw: float = 10.0
    min_order_mw: float = 0.1
    trade_ahead_s: float = 4 * 3600.0
    reprice_eur_mwh: float = 2.0
    gate_closure_s: float = GATE_CLOSURE_S

    @classmethod
    def from_config(cls, cfg: "TradingAuto") -> "RiskLimits":
        return cls(
            min_margin_eur_mwh=cfg.min_margin_eur_mwh,
            max_order_mw=cfg.max_order_mw,
            max_position_mw=cfg.max_position_mw,
            min_order_mw=cfg.min_order_mw,
            trade_ahead_s=cfg.trade_ahead_h * 3600.0,
            reprice_eur_mwh=cfg.reprice_eur_mwh,
        )


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An order of the site that may still fill: at the exchange (`order_id`), or an intent not settled yet
    (`order_id` None: it cannot be cancelled, but it counts). `own`: placed by the auto-trader (only those are
    ever cancelled by it; an operator's orders are left alone, but count)."""

    order_id: str | None
    side: str  # buy | sell
    remaining_mw: float
    price_eur_mwh: float
    delivery_start: float
    own: bool = True

    @property
    def signed_mw(self) -> float:
        return self.remaining_mw if self.side == "sell" else -self.remaining_mw


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """An order to place: `reason` says which figures produced it."""

    side: str
    quantity_mw: float
    price_eur_mwh: float
    delivery_start: float
    reason: str

    def body(self, market: str = "intraday") -> dict:
        """The order desk's request body (POST /api/orders)."""
        return {
            "side": self.side,
            "quantity_mw": self.quantity_mw,
            "price_eur_mwh": self.price_eur_mwh,
            "market": market,
            "delivery_start": iso(self.delivery_start).replace(".000Z", "Z"),
        }


@dataclass(frozen=True, slots=True)
class Cancel:
    order_id: str
    delivery_start: float
    reason: str


@dataclass(frozen=True)
class OrderActions:
    place: tuple[OrderIntent, ...] = ()
    cancel: tuple[Cancel, ...] = ()


def limit_price(side: str, forecast_eur_mwh: float, margin_eur_mwh: float) -> float:
    """A sell at least `margin` above the forecast, a buy at least `margin` below, on the 0.01 EUR tick (rounded
    away from the forecast, so the margin is never less than asked)."""
    if side == "sell":
        want = forecast_eur_mwh + margin_eur_mwh
        tick = math.ceil(round(want * 100, 6)) / 100  # round(): 55.1 * 100 is 5510.000000000001, still 55.10
        # a margin the rounding absorbed (under a millionth of a cent) would leave the price below it: one tick up
        return tick if tick >= want - 1e-9 else round(tick + 0.01, 2)
    want = forecast_eur_mwh - margin_eur_mwh
    tick = math.floor(round(want * 100, 6)) / 100
    return tick if tick <= want + 1e-9 else round(tick - 0.01, 2)


def lots(mw: float) -> float:
    """`mw` rounded down to the exchange's 0.1 MW lot (never up: an order is never larger than asked)."""
    return math.floor(round(mw / LOT_MW, 6)) / round(1 / LOT_MW) if mw > 0 else 0.0


def _period_actions(
    p: float,
    want_mw: float,
    orders: list[OpenOrder],
    price_eur_mwh: float,
    limits: RiskLimits,
    note: str,
) -> tuple[list[OrderIntent], list[Cancel]]:
    """One period: `want_mw` still to trade (+ sell, - buy) beyond the position; `orders` its open orders."""
    side = "sell" if want_mw > 0 else "buy"
    price = {s: limit_price(s, price_eur_mwh, limits.min_margin_eur_mwh) for s in ("sell", "buy")}
    small = abs(want_mw) < limits.min_order_mw
    kept: list[OpenOrder] = []
    cancels: list[Cancel] = []
    for o in orders:
        if o.own and o.order_id is not None:
            if small or o.side != side:
                cancels.append(Cancel(o.order_id, p, f"plan no longer needs a {o.side} ({note})"))
                continue
            if abs(o.price_eur_mwh - price[o.side]) > limits.reprice_eur_mwh + 1e-9:
                cancels.append(
                    Cancel(o.order_id, p, f"repriced: {o.price_eur_mwh:.2f} -> {price[o.side]:.2f} EUR/MWh ({note})")
                )
                continue
        kept.append(o)
    # more in the book than the plan needs: cancel own orders, smallest first, until the excess is under a lot
    d = 1.0 if side == "sell" else -1.0
    for o in sorted((o for o in kept if o.own and o.order_id is not None), key=lambda o: o.remaining_mw):
        excess = d * (sum(k.signed_mw for k in kept) - want_mw)
        if excess < limits.min_order_mw - _EPS_MW:
            break
        kept.remove(o)
        cancels.append(Cancel(o.order_id, p, f"plan needs less ({note})"))
    residual = want_mw - sum(k.signed_mw for k in kept)
    qty = lots(min(abs(residual), limits.max_order_mw))
    if small or residual * want_mw <= 0 or qty < limits.min_order_mw - _EPS_MW:
        return [], cancels
    reason = f"{note}; {side} {qty:g} MW at {price[side]:.2f} EUR/MWh"
    return [OrderIntent(side, qty, price[side], p, reason)], cancels


def orders_for_plan(
    plan_mw: Mapping[float, float],
    position_mw: Mapping[float, float],
    forecast_eur_mwh: Mapping[float, float],
    open_orders: Iterable[OpenOrder],
    limits: RiskLimits,
    now: float,
    restore: Mapping[float, int] | None = None,
) -> OrderActions:
    """What to place and cancel so that each period's position goes to the plan.

    `plan_mw`: the optimiser's planned net power per period start (+ discharge, - charge); `position_mw`: the
    position already traded per period start (Σ sell - Σ buy); `forecast_eur_mwh`: the price the plan was made
    with; `open_orders`: every order of the site that may still fill. Pure: no I/O, no clock.

    Only periods whose gate is open at `now` and that start within `limits.trade_ahead_s` are traded. Per period
    the target is the plan clipped to ±max_position_mw; what the target needs beyond the position and the open
    orders becomes one order of at most max_order_mw (in 0.1 MW lots, none under min_order_mw), a sell priced at
    least min_margin above the forecast, a buy at least min_margin below. The auto-trader's own open orders on the
    wrong side, priced more than reprice_eur_mwh away from the new price, or beyond what the target needs are
    cancelled (the replacement comes in the same answer); an operator's orders are only counted. Open orders of
    periods without a plan (the horizon moved, the forecast shrank) are cancelled if they are the trader's.
    `restore`: period start -> the plan's restore_direction (-1 it charges the SoC back into the FCR reserve band,
    +1 discharges it back); those orders' reason says so (they are placed under the same limits)."""
    by_period: dict[float, list[OpenOrder]] = {}
    for o in open_orders:
        by_period.setdefault(o.delivery_start, []).append(o)
    place: list[OrderIntent] = []
    cancel: list[Cancel] = []
    for p in sorted(set(plan_mw) | set(by_period)):
        if not gate_open(p, now, limits.gate_closure_s) or p % PERIOD_S:
            continue  # closed: nothing can be placed or cancelled any more (the exchange expires the rest)
        orders = by_period.get(p, [])
        if p not in plan_mw or p not in forecast_eur_mwh or p - now >= limits.trade_ahead_s:
            cancel += [
                Cancel(o.order_id, p, "no plan for this period within the trading window")
                for o in orders
                if o.own and o.order_id is not None and (p not in plan_mw or p not in forecast_eur_mwh)
            ]
            continue
        pos = position_mw.get(p, 0.0)
        target = max(-limits.max_position_mw, min(limits.max_position_mw, plan_mw[p]))
        note = f"plan {plan_mw[p]:+.2f} MW, position {pos:+.2f} MW, forecast {forecast_eur_mwh[p]:.2f} EUR/MWh"
        way = (restore or {}).get(p, 0)
        if way:
            note = f"{RESTORE_NOTE} ({'discharge' if way > 0 else 'charge'} back into the band); {note}"
        new, gone = _period_actions(p, target - pos, orders, forecast_eur_mwh[p], limits, note)
        place += new
        cancel += gone
    return OrderActions(tuple(place), tuple(cancel))


# ---------------------------------------------------------------- the auto-trader on the event loop
SWITCH_KEY = "auto_trading"  # the store's key-value state: the kill switch, kept across restarts
PLAN_KEY = "auto_plan"  # the last plan, as GET /api/plan shows it
WHO = "auto"  # the order desk's `who` (and the intents' meta.who) for the auto-trader's orders
OWN_INTENTS_S = 3 * 86400.0  # the auto-trader's orders are recognised by their intents this far back
START_RETRY_S = 2.0  # while waiting for the first SoC or prices, a pass this often
NO_PLAN = {"generated_at": None, "status": "none", "solve_ms": None, "objective_eur": None, "periods": []}

# why the auto-trader places nothing (its `state`); "running" when it may trade
OFF, DISABLED, RUNNING = "off", "disabled", "running"
STOPPED, SAFE_STATE, EXCHANGE_DOWN = "stopped", "safe_state", "exchange_down"
NO_FORECAST, NO_SOC, NO_PLAN_STATE = "no_forecast", "no_soc", "no_plan"


@dataclass
class AutoCounters:
    replans: int = 0
    placed: int = 0
    cancelled: int = 0
    refused: dict[str, int] | None = None

    def refuse(self, reason: str) -> None:
        self.refused = self.refused or {}
        self.refused[reason] = self.refused.get(reason, 0) + 1


def plan_view(plan, forecast_prices: Mapping[float, float], generated_at: float) -> dict:
    """DESIGN.md's GET /api/plan: {generated_at, status, solve_ms, objective_eur, periods: [{period_start,
    price_eur_mwh, position_mw, plan_mw, soc_pct_end}]} from the optimiser's Plan."""
    return {
        "generated_at": iso(generated_at),
        "status": plan.status,
        "solve_ms": round(plan.solve_ms, 3),
        "objective_eur": round(plan.objective_eur, 2) if math.isfinite(plan.objective_eur) else None,
        "periods": [
            {
                "period_start": iso(p.period_start),
                "price_eur_mwh": round(forecast_prices.get(p.period_start, math.nan), 2),
                "position_mw": round(p.position_mw, 3),
                "plan_mw": round(p.plan_mw, 3),
                "soc_pct_end": round(p.soc_pct_end, 2),
            }
            for p in plan.periods
        ],
    }


def reserve_view(plan, fcr) -> dict | None:
    """GET /api/auto's `reserve`: the FCR reserve as the cycle last saw it (`held`; if not, the way back,
    `restore_direction` +1 discharge / -1 charge, and `restore_mwh`, as status' fcr has them) and what the plan does
    about it: `restoring` while periods of the plan bring the SoC back into the band (or the plan's narrower window
    while it drifts toward the band's edge), listed in `restore_periods` with their planned power. None on a site
    that offers no FCR (`fcr` None)."""
    if fcr is None:
        return None
    back = [p for p in plan.periods if p.restore_direction] if plan is not None else []
    return {
        "fcr_enabled": fcr.enabled,
        "held": fcr.reserve_held,
        "soc_low_pct": fcr.soc_low_pct,
        "soc_high_pct": fcr.soc_high_pct,
        "restore_direction": fcr.restore_direction,
        "restore_mwh": round(fcr.restore_mwh, 3),
        "restoring": bool(back),
        "restore_periods": [
            {"period_start": iso(p.period_start), "plan_mw": round(p.plan_mw, 3), "direction": p.restore_direction}
            for p in back
        ],
    }


def realised_pnl_by_day(trades: Iterable[Mapping], now: float) -> list[dict]:
    """Cash of the trades delivered by `now` per UTC day of delivery, oldest first: [{day, pnl_eur,
    energy_mwh}]. A sell earns price × MWh, a buy pays it."""
    days: dict[str, tuple[list[float], list[float]]] = {}
    for t in trades:
        try:
            start, end = parse_iso(t["delivery_start"]), parse_iso(t["delivery_end"])
            mwh = float(t["quantity_mw"]) * (end - start) / 3600.0
            cash = float(t["price_eur_mwh"]) * mwh * (1 if t["side"] == "sell" else -1)
        except (KeyError, TypeError, ValueError):
            continue
        if end > now:
            continue
        day = iso(start - start % 86400)[:10]
        cashes, energies = days.setdefault(day, ([], []))
        cashes.append(cash)
        energies.append(mwh)
    # fsum: the exactly rounded sum, whatever order the trades come in (the store's newest first, or the kept
    # copy's by delivery): a running sum's last bit depends on the order, and round() then tipped -0.975 either way
    return [
        {"day": d, "pnl_eur": round(math.fsum(c), 2), "energy_mwh": round(math.fsum(e), 3)}
        for d, (c, e) in sorted(days.items())
    ]


PNL_DAYS = 7  # realised PnL is kept for this many UTC days of delivery back (GET /api/auto; the metrics use 2)


def _delivery_end(t: Mapping) -> float:
    try:
        return parse_iso(t["delivery_end"])
    except (KeyError, TypeError, ValueError):
        return math.inf  # unreadable: never realised (realised_pnl_by_day leaves it out too)


class RealisedPnl:
    """Realised PnL per UTC day of delivery (realised_pnl_by_day) without reading and summing every trade on each
    request. The trades delivered in the last PNL_DAYS days or later are read from the store (in a worker
    thread) only when its `trades_mark` says a trade was stored or pruned since; the days are summed again only
    when that copy changed, a trade's delivery ended (its end passed `now`) or the window moved to another day;
    otherwise the last answer is given. The answer is realised_pnl_by_day's over the same trades, exactly."""

    def __init__(self, store):
        self.store = store
        self._mark: tuple[int, int] | None = None
        self._from_ts = math.inf  # the copy holds every trade whose delivery ends after this
        self._trades: list[dict] = []
        self._ends: list[float] = []  # their delivery ends, sorted
        self._views: dict[int, tuple[tuple, list[dict]]] = {}  # days -> (what it was summed from, the answer)
        self.reads = 0  # store reads of the trades (the tests count them)

    async def by_day(self, now: float, days: int = PNL_DAYS) -> list[dict]:
        """[{day, pnl_eur, energy_mwh}] of the last `days` (at most PNL_DAYS) UTC days of delivery, oldest first."""
        days = max(0, min(days, PNL_DAYS))
        first_day = iso(now - days * 86400.0)[:10]
        window_ts = parse_iso(iso(now - PNL_DAYS * 86400.0)[:10] + "T00:00:00Z")
        mark = await asyncio.to_thread(self.store.trades_mark)
        if mark != self._mark or window_ts < self._from_ts:
            trades = await asyncio.to_thread(self.store.trades_for_schedule, window_ts)
            self._trades, self._ends = trades, sorted(_delivery_end(t) for t in trades)
            self._mark, self._from_ts = mark, window_ts
            self._views.clear()
            self.reads += 1
        key = (self._mark, bisect.bisect_right(self._ends, now), first_day)
        cached = self._views.get(days)
        if cached is None or cached[0] != key:
            rows = [r for r in realised_pnl_by_day(self._trades, now) if r["day"] >= first_day]
            cached = self._views[days] = (key, rows)
        return [dict(r) for r in cached[1]]


@dataclass(frozen=True)
class TradingPlant:
    """What the auto-trader reads and does besides the order desk, handed over by the composition root (never the
    Controller): the site file, the store, the controller's clock, its latest frozen PlantState, the schedule's
    positions ((period start, MW) of periods with trades in [from, to)), and the alarms it may raise and clear."""

    config: Any
    store: Any
    clock: Any
    latest: Callable[[], Any]
    positions: Callable[[float, float], list[tuple[float, float]]]
    raise_alarm: Callable[[Any, str, str], None]
    clear_alarm: Callable[[Any], None]


class AutoTrader:
    """Runs the loop: every `replan_s` (and at once after a fill, `on_trade`) the forecast, a plan, and the
    orders it needs through the order desk. The kill switch (`set_enabled`) is kept in the store across
    restarts; mode stopped, a plant-level safe state and an exchange that does not answer stop it too (its own
    open orders are cancelled where the exchange still answers). Everything here runs on the event loop; the
    solve and the store reads go to worker threads."""

    def __init__(self, plant: TradingPlant, desk, forecaster, metrics=None, switch_on: bool = True):
        self.plant = plant
        self.clock = plant.clock
        self.config = plant.config
        self.auto = self.config.trading.auto
        self.limits = RiskLimits.from_config(self.auto)
        self.desk = desk
        self.forecaster = forecaster
        self.metrics = metrics
        self.store = plant.store
        stored = self.store.get_state(SWITCH_KEY) or {}
        # off when the site file says so, when `run --no-auto-trading` said so, or when an operator's kill
        # switch was last set off (kept across restarts)
        self.enabled = bool(self.auto.enabled and switch_on and stored.get("enabled", True))
        self.state, self.reason = (RUNNING, "") if self.enabled else self._off_state()
        self.counts = AutoCounters()
        self.plan: dict = self.store.get_state(PLAN_KEY) or dict(NO_PLAN)
        self.plan_id: str | None = None
        self.reserve: dict | None = None  # GET /api/auto's `reserve` (reserve_view) of the last plan
        self.last_replan_at: float | None = None
        self.pnl = RealisedPnl(self.store)
        self._wake = asyncio.Event()
        self._runner = Background("auto-trader")

    def _off_state(self) -> tuple[str, str]:
        if not self.auto.enabled:
            return DISABLED, "trading.auto.enabled is false in the site file"
        return OFF, "switched off (kill switch)"

    # ---- lifecycle
    async def start(self) -> None:
        self._runner.start(self._run)

    async def stop(self) -> None:
        await self._runner.stop()

    def on_trade(self, _trade) -> None:
        """Event.TRADE_ACCEPTED: a fill changes the position, so re-plan now."""
        self._wake.set()

    async def _run(self) -> None:
        clock = self.clock
        while True:
            try:
                await self.replan()
            except Exception:  # the loop must outlive a bug in one pass: the log says what happened
                log.exception("auto-trader pass failed")
            # waiting for its first SoC or prices (start-up): look again soon, not a whole replan_s later
            wait_s = (
                min(self.auto.replan_s, START_RETRY_S) if self.state in (NO_SOC, NO_FORECAST) else self.auto.replan_s
            )
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=clock.real_seconds(wait_s))
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    # ---- the kill switch
    async def set_enabled(self, enabled: bool, who: str) -> dict:
        """The kill switch (API, dashboard). Off: nothing more is placed, its open orders are cancelled; on: it
        trades from the next pass (at once). On is refused (ValueError -> 422... PermissionError -> 403 for
        read-only keys is the web's) when the site file does not enable it."""
        if enabled and not self.auto.enabled:
            raise ValueError("enabled: trading.auto.enabled is false in the site file; set it there and restart")
        self.enabled = enabled
        await asyncio.to_thread(
            self.store.set_state, SWITCH_KEY, {"enabled": enabled, "by": who, "ts": self.clock.now()}
        )
        log.warning("auto-trading switched %s", "on" if enabled else "off", extra={"who": who})
        if enabled:
            self.state, self.reason = RUNNING, ""
        else:
            self._set_state(OFF, f"switched off by {who}")
            await self._cancel_own("auto-trading switched off")
        self._wake.set()
        return self.status()

    # ---- one pass
    async def replan(self) -> None:
        """Forecast, plan (always, so the dashboard shows it), and, when nothing stops it, the orders."""
        self.counts.replans += 1
        now = self.clock.now()
        self.last_replan_at = now
        if self.metrics is not None:
            await self.pnl_by_day(2)  # the realised PnL gauges (today, yesterday)
        state = self.plant.latest()
        await self.forecaster.ensure_fresh()
        forecast = await self.forecaster.forecast()
        plan = await self._plan(forecast, state, now)
        blocked = self._blocked(state, forecast, plan)
        if blocked is not None:
            self._set_state(*blocked)
            if blocked[0] in (OFF, STOPPED, SAFE_STATE):
                await self._cancel_own(blocked[1])
            return
        open_orders, stale = await self._open_orders(now)
        if stale:
            self._set_state(EXCHANGE_DOWN, "the exchange does not answer: no orders placed until it does")
            return
        positions = dict(self.plant.positions(period_start(now), now + self.limits.trade_ahead_s))
        actions = orders_for_plan(
            {p.period_start: p.plan_mw for p in plan.periods},
            positions,
            forecast.prices(),
            open_orders,
            self.limits,
            self.clock.now(),
            restore={p.period_start: p.restore_direction for p in plan.periods if p.restore_direction},
        )
        self._set_state(RUNNING, "")
        await self._carry_out(actions)

    def _blocked(self, state, forecast, plan) -> tuple[str, str] | None:
        """Why nothing may be placed now, or None."""
        from controller.cycle.limits import SAFE_STATES

        if not self.enabled:
            return self._off_state() if not self.auto.enabled else (OFF, self.reason or "switched off")
        if state.mode == "stopped":
            return STOPPED, "mode stopped: no trading"
        if state.binding in SAFE_STATES:
            return SAFE_STATE, f"plant in safe state ({state.binding}): no trading"
        if not self.forecaster.exchange_ok:
            return EXCHANGE_DOWN, "the exchange does not answer: no orders placed until it does"
        if not forecast.periods:
            return NO_FORECAST, f"no prices to plan against ({self.forecaster.status.error or 'no market data yet'})"
        if plan is None:
            return NO_SOC, "SoC unknown: no plan"
        if not plan.ok:
            return NO_PLAN_STATE, f"no plan: {plan.status} ({plan.reason})"
        return None

    def _set_state(self, state: str, reason: str) -> None:
        from controller.cycle.alarms import EXCHANGE_DOWN_ALARM

        if (state, reason) != (self.state, self.reason):
            log.info("auto-trader %s", state, extra={"reason": reason})
        self.state, self.reason = state, reason
        if state == EXCHANGE_DOWN:
            self.plant.raise_alarm(EXCHANGE_DOWN_ALARM, "exchange_down", f"auto-trading: {reason}")
        else:  # trading again, or stopped for another reason (switched off, mode stopped): not the exchange's
            self.plant.clear_alarm(EXCHANGE_DOWN_ALARM)

    async def _plan(self, forecast, state, now: float):
        """The optimiser's plan over the forecast's periods from the live SoC (None without a fresh SoC or
        prices); stored as the plan GET /api/plan shows."""
        from controller.services.reserve import plan_reserve
        from controller.trading.optimiser import optimise, problem_for_site

        soc = state.soc_pct if state.online else None
        if soc is None or not forecast.periods:
            return None
        starts = [p.period_start for p in forecast.periods]
        prices = tuple(p.price_eur_mwh for p in forecast.periods)
        positions = dict(self.plant.positions(starts[0], starts[-1] + PERIOD_S))
        # while FCR is on, its reserve is held back (issue 15): the optimiser takes reserve_mw off the power it
        # plans with and keeps reserve_mwh of room either way; the position cap applies to what is left
        fcr_on = getattr(state, "fcr", None) is not None and state.fcr.enabled
        reserve = plan_reserve(self.config.services.fcr, self.config.battery, fcr_on)
        cap = self.limits.max_position_mw + reserve.reserve_mw
        problem = problem_for_site(
            self.config,
            now_ts=now,
            soc_pct_now=soc,
            buy_price_eur_mwh=prices,
            sell_price_eur_mwh=prices,
            position_mw=tuple(positions.get(p, 0.0) for p in starts),
            available_charge_mw=min(cap, self._available_mw(state)),
            available_discharge_mw=min(cap, self._available_mw(state)),
            tradable=tuple(gate_open(p, now, self.limits.gate_closure_s) for p in starts),
            reserve_mw=reserve.reserve_mw,
            reserve_mwh=reserve.reserve_mwh,
        )
        plan = await asyncio.to_thread(optimise, problem)
        self.plan_id = f"P{int(now):x}-{self.counts.replans}"
        self._note_reserve(plan, getattr(state, "fcr", None))
        self.plan = plan_view(plan, forecast.prices(), now)
        await asyncio.to_thread(self.store.set_state, PLAN_KEY, self.plan)
        if self.metrics is not None:
            self.metrics.on_plan(plan)
        return plan

    def _note_reserve(self, plan, fcr) -> None:
        """Keep the plan's reserve restore for GET /api/auto, and log when one starts and when it is done."""
        before = bool(self.reserve and self.reserve["restoring"])
        self.reserve = reserve_view(plan, fcr)
        now_restoring = bool(self.reserve and self.reserve["restoring"])
        if now_restoring and not before:
            r = self.reserve
            log.warning(
                "FCR reserve restore planned: the plan brings the SoC back into the band as fast as the plant can",
                extra={
                    "direction": "discharge" if r["restore_periods"][0]["direction"] > 0 else "charge",
                    "restore_mwh": r["restore_mwh"],
                    "periods": len(r["restore_periods"]),
                    "first_period": r["restore_periods"][0]["period_start"],
                    "plan_id": self.plan_id,
                },
            )
        elif before and not now_restoring and plan is not None and plan.ok:
            log.info("FCR reserve restore done: the plan starts inside the band", extra={"plan_id": self.plan_id})

    def _available_mw(self, state) -> float:
        """The plant's power with its unavailable units out (every unit's rating when none is known)."""
        plan = self.config.unit_plan()
        down = {u.unit for u in state.units if not u.available} if state.units else set()
        return sum(u.rated_mw for u in plan if u.unit not in down)

    async def _open_orders(self, now: float) -> tuple[list[OpenOrder], bool]:
        """Every order of the site that may still fill (the exchange's view, synced into the store; unsettled
        intents in full), marked own when the auto-trader placed it; and whether the exchange's view is stale."""
        synced = await self.desk.orders(active_only=True)
        own_intents = await asyncio.to_thread(self.store.intents_by, WHO, now - OWN_INTENTS_S)
        own = {i["client_order_id"] for i in own_intents}
        out: list[OpenOrder] = []
        for o in synced["orders"]:
            try:
                start = parse_iso(o["delivery_start"])
                remaining = float(o.get("remaining_mw", o.get("quantity_mw")))
                out.append(
                    OpenOrder(
                        o["order_id"],
                        o["side"],
                        remaining,
                        float(o["price_eur_mwh"]),
                        start,
                        own=o.get("client_order_id") in own,
                    )
                )
            except (KeyError, TypeError, ValueError):
                log.error("open order unreadable: left out of the auto-trader's view", extra={"order": str(o)[:200]})
        pending = await asyncio.to_thread(self.store.order_intents, "pending", 1000)
        for i in pending:
            body = i["order"]
            out.append(
                OpenOrder(
                    None,
                    i["side"],
                    float(i["quantity_mw"]),
                    float(body.get("price_eur_mwh", 0.0)),
                    parse_iso(i["delivery_start"]),
                    own=i["client_order_id"] in own,
                )
            )
        return out, bool(synced.get("stale"))

    def _may_place(self) -> bool:
        """Checked before every order: the kill switch or a stop between two orders of one pass ends the pass."""
        from controller.cycle.limits import SAFE_STATES

        state = self.plant.latest()
        return self.enabled and state.mode != "stopped" and state.binding not in SAFE_STATES

    async def _carry_out(self, actions: OrderActions) -> None:
        for c in actions.cancel:
            if not await self._cancel(c.order_id, c.reason):
                return
        for intent in actions.place:
            if not self._may_place():
                log.info("auto-trader pass ended: switched off or stopped meanwhile")
                return
            meta = {"plan_id": self.plan_id, "reason": intent.reason}
            try:
                placed = await self.desk.place_order(intent.body(self.config.exchange.market), WHO, meta)
            except OrderRefused as e:
                self._refused(e.limit or "refused")
                log.info("auto order refused", extra={"reason": e.reason, "limit": e.limit, "plan_id": self.plan_id})
                continue
            except ValueError as e:  # the order model refused it (a price past its bounds): that order only
                self._refused("invalid")
                log.warning("auto order invalid", extra={"error": str(e)[:300], "plan_id": self.plan_id})
                continue
            except ExchangeDown as e:
                self._refused("exchange_down")
                self._set_state(EXCHANGE_DOWN, f"the exchange does not answer: {e}")
                return
            self.counts.placed += 1
            self._count("placed", intent.side)
            log.info(
                "auto order placed",
                extra={"order_id": placed.get("order_id"), "plan_id": self.plan_id, "reason": intent.reason},
            )

    async def _cancel(self, order_id: str, reason: str) -> bool:
        """Cancel one of its orders; False when the exchange is down (the pass ends)."""
        try:
            await self.desk.cancel_order(order_id, WHO)
        except OrderRefused as e:  # filled or expired meanwhile: nothing to cancel
            log.info("auto cancel refused", extra={"order_id": order_id, "reason": e.reason})
            return True
        except ExchangeDown as e:
            self._set_state(EXCHANGE_DOWN, f"the exchange does not answer: {e}")
            return False
        self.counts.cancelled += 1
        self._count("cancelled", "stale")
        log.info("auto order cancelled", extra={"order_id": order_id, "reason": reason})
        return True

    async def _cancel_own(self, reason: str) -> None:
        """Cancel every open order the auto-trader placed (switched off, stopped, safe state)."""
        if not self.desk.has_key:
            return
        now = self.clock.now()
        own = {i["order_id"] for i in await asyncio.to_thread(self.store.intents_by, WHO, now - OWN_INTENTS_S)}
        for o in await asyncio.to_thread(self.store.orders, True, 1000):
            if o.get("order_id") in own and not await self._cancel(o["order_id"], reason):
                return

    def _refused(self, reason: str) -> None:
        """An order refused for `reason`: counted for GET /api/auto and on the metrics."""
        self.counts.refuse(reason)
        self._count("refused", reason)

    def _count(self, result: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auto_orders.labels(result, reason).inc()

    # ---- faces
    def status(self) -> dict:
        """GET /api/auto: the switch, what it does now and why, its counters and the last plan's id."""
        c = self.counts
        return {
            "enabled": self.enabled,
            "configured": self.auto.enabled,
            "state": self.state,
            "reason": self.reason,
            "replans": c.replans,
            "last_replan_at": iso(self.last_replan_at) if self.last_replan_at else None,
            "plan_id": self.plan_id,
            "reserve": self.reserve,
            "orders_placed": c.placed,
            "orders_cancelled": c.cancelled,
            "orders_refused": dict(c.refused or {}),
            "replan_s": self.auto.replan_s,
            "limits": {
                "min_margin_eur_mwh": self.limits.min_margin_eur_mwh,
                "max_order_mw": self.limits.max_order_mw,
                "max_position_mw": self.limits.max_position_mw,
                "trade_ahead_h": self.limits.trade_ahead_s / 3600,
            },
            "forecast": self.forecaster.status.as_dict(),
        }

    async def pnl_by_day(self, days: int = PNL_DAYS) -> list[dict]:
        """Realised PnL per UTC day of delivery over the last `days` days (at most PNL_DAYS; also set on the
        metrics): RealisedPnl's, summed again only when a trade came, was delivered or the day moved."""
        now = self.clock.now()
        by_day = await self.pnl.by_day(now, days)
        if self.metrics is not None:
            self.metrics.on_pnl(by_day, iso(now)[:10], iso(now - 86400.0)[:10])
        return by_day
