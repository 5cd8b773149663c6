"""The auto-trader: every `replan_s` and after every fill it plans against the price forecast (the optimiser),
and for each period still open for trading the difference between the plan and the position already traded
becomes orders, within the risk limits, each through the order desk's pre-trade check like a manual order.

`orders_for_plan` is the pure step (plan + positions + open orders + forecast + risk limits + now -> orders to
place and orders to cancel); the backtest calls it too. `AutoTrader` (below) runs it on the event loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

from controller.clock import iso
from controller.trading.market import GATE_CLOSURE_S, PERIOD_S, gate_open

if TYPE_CHECKING:
    from controller.config import TradingAuto

LOT_MW = 0.1  # the exchange's quantity step
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
        return math.ceil(round((forecast_eur_mwh + margin_eur_mwh) * 100, 6)) / 100
    return math.floor(round((forecast_eur_mwh - margin_eur_mwh) * 100, 6)) / 100


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
    periods without a plan (the horizon moved, the forecast shrank) are cancelled if they are the trader's."""
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
        new, gone = _period_actions(p, target - pos, orders, forecast_eur_mwh[p], limits, note)
        place += new
        cancel += gone
    return OrderActions(tuple(place), tuple(cancel))
