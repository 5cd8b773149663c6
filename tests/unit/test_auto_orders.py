"""The auto-trader's pure step, orders_for_plan: plan + positions + open orders + forecast + risk limits + now ->
orders to place and cancel. Tables for the rules, hypothesis for the properties: every order inside the risk
limits and before gate closure, priced with the margin, moving the position toward the plan and never past
max_position_mw; applying the answer and asking again gives nothing more to do (never placed twice)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import iso, parse_iso
from controller.trading.auto import Cancel, OpenOrder, OrderActions, RiskLimits, limit_price, lots, orders_for_plan
from controller.trading.market import GATE_CLOSURE_S, PERIOD_S

# 1,000 examples even in CI's profile: each draws a day or more of prices, and 1,000 cover these properties
HEAVY = settings(max_examples=1_000, deadline=None)

NOW = parse_iso("2026-12-03T10:02:00Z")
P0 = parse_iso("2026-12-03T10:15:00Z")  # gate closes 10:10: open at NOW
LIMITS = RiskLimits(min_margin_eur_mwh=1.0, max_order_mw=3.0, max_position_mw=8.0, trade_ahead_s=4 * 3600)


def period(k: int) -> float:
    return P0 + k * PERIOD_S


def test_a_plan_to_sell_becomes_a_sell_priced_above_the_forecast() -> None:
    acts = orders_for_plan({period(0): 2.0}, {}, {period(0): 80.0}, [], LIMITS, NOW)
    assert acts.cancel == ()
    (o,) = acts.place
    assert (o.side, o.quantity_mw, o.price_eur_mwh, o.delivery_start) == ("sell", 2.0, 81.0, period(0))
    assert "plan +2.00 MW" in o.reason and "position +0.00 MW" in o.reason


def test_a_plan_to_charge_becomes_a_buy_below_the_forecast_capped_at_max_order() -> None:
    acts = orders_for_plan({period(1): -7.0}, {period(1): -1.0}, {period(1): 30.004}, [], LIMITS, NOW)
    (o,) = acts.place
    assert (o.side, o.quantity_mw, o.price_eur_mwh) == ("buy", 3.0, 29.0)


def test_plan_clipped_to_max_position() -> None:
    acts = orders_for_plan({period(0): 10.0}, {period(0): 7.0}, {period(0): 80.0}, [], LIMITS, NOW)
    (o,) = acts.place
    assert o.quantity_mw == 1.0  # 8 - 7


def test_closed_gate_and_beyond_the_trading_window_are_left_alone() -> None:
    closing = P0 - PERIOD_S  # 10:00: gate closed at 09:55
    far = NOW + 5 * 3600 - NOW % PERIOD_S
    acts = orders_for_plan({closing: 5.0, far: 5.0}, {}, {closing: 80.0, far: 80.0}, [], LIMITS, NOW)
    assert acts == OrderActions()


def test_open_orders_count_and_wrong_side_or_stale_price_is_replaced() -> None:
    resting = OpenOrder("X-1", "sell", 2.0, 81.0, period(0))
    assert orders_for_plan({period(0): 2.0}, {}, {period(0): 80.0}, [resting], LIMITS, NOW) == OrderActions()
    # the forecast moved 5 EUR: replaced at the new price
    acts = orders_for_plan({period(0): 2.0}, {}, {period(0): 85.0}, [resting], LIMITS, NOW)
    assert [c.order_id for c in acts.cancel] == ["X-1"] and "repriced" in acts.cancel[0].reason
    assert [(o.side, o.quantity_mw, o.price_eur_mwh) for o in acts.place] == [("sell", 2.0, 86.0)]
    # the plan now charges: the sell goes, a buy comes
    acts = orders_for_plan({period(0): -1.0}, {}, {period(0): 80.0}, [resting], LIMITS, NOW)
    assert [c.order_id for c in acts.cancel] == ["X-1"]
    assert [(o.side, o.quantity_mw) for o in acts.place] == [("buy", 1.0)]


def test_operator_orders_and_unsettled_intents_count_but_are_never_cancelled() -> None:
    manual = OpenOrder("X-9", "sell", 3.0, 200.0, period(0), own=False)
    pending = OpenOrder(None, "sell", 1.0, 81.0, period(0))
    acts = orders_for_plan({period(0): -2.0}, {}, {period(0): 80.0}, [manual, pending], LIMITS, NOW)
    assert acts.cancel == ()
    # -2 wanted, +4 may still fill: buy the difference, capped at max_order
    assert [(o.side, o.quantity_mw) for o in acts.place] == [("buy", 3.0)]


def test_orders_of_a_period_without_plan_are_cancelled() -> None:
    own = OpenOrder("X-2", "buy", 1.0, 50.0, period(3))
    acts = orders_for_plan({period(0): 0.0}, {}, {period(0): 80.0}, [own], LIMITS, NOW)
    assert acts.cancel == (Cancel("X-2", period(3), "no plan for this period within the trading window"),)


def test_limit_price_keeps_at_least_the_margin_on_the_tick() -> None:
    assert limit_price("sell", 80.001, 1.0) == 81.01
    assert limit_price("buy", 80.009, 1.0) == 79.0
    assert lots(2.99) == 2.9 and lots(0.3) == 0.3 and lots(-1) == 0.0


# ---------------------------------------------------------------- properties
mw = st.floats(-12, 12, allow_nan=False).map(lambda x: round(x, 1))
price = st.floats(-50, 300, allow_nan=False)
limits_st = st.builds(
    RiskLimits,
    min_margin_eur_mwh=st.floats(0, 5),
    max_order_mw=st.sampled_from([0.5, 1.0, 2.5, 5.0]),
    max_position_mw=st.sampled_from([5.0, 8.0, 10.0]),
    min_order_mw=st.sampled_from([0.1, 0.2, 0.5]),
    trade_ahead_s=st.sampled_from([1800.0, 4 * 3600.0]),
    reprice_eur_mwh=st.floats(0, 5),
)
periods_st = st.lists(st.integers(-2, 20), min_size=1, max_size=8, unique=True)


@st.composite
def situations(draw):
    ks = draw(periods_st)
    plan = {period(k): draw(mw) for k in ks}
    position = {period(k): draw(mw) for k in ks if draw(st.booleans())}
    forecast = {period(k): draw(price) for k in ks}
    orders = []
    for i in range(draw(st.integers(0, 6))):
        k = draw(st.sampled_from(ks + [25]))
        side = draw(st.sampled_from(["buy", "sell"]))
        oid = draw(st.sampled_from([f"X-{i}", None]))
        orders.append(OpenOrder(oid, side, draw(st.sampled_from([0.1, 0.5, 1.0, 3.0])), draw(price), period(k),
                                own=draw(st.booleans())))  # fmt: skip
    now = NOW + draw(st.integers(0, 1200))
    return plan, position, forecast, orders, draw(limits_st), now


def _apply(orders: list[OpenOrder], acts: OrderActions) -> list[OpenOrder]:
    gone = {c.order_id for c in acts.cancel}
    kept = [o for o in orders if o.order_id not in gone or o.order_id is None]
    new = [
        OpenOrder(f"N-{i}", o.side, o.quantity_mw, o.price_eur_mwh, o.delivery_start) for i, o in enumerate(acts.place)
    ]
    return kept + new


@HEAVY
@given(situations())
def test_every_order_is_inside_the_risk_limits_and_before_gate_closure(s) -> None:
    plan, position, forecast, orders, limits, now = s
    acts = orders_for_plan(plan, position, forecast, orders, limits, now)
    for o in acts.place:
        assert now < o.delivery_start - GATE_CLOSURE_S
        assert o.delivery_start - now < limits.trade_ahead_s
        assert limits.min_order_mw - 1e-9 <= o.quantity_mw <= limits.max_order_mw + 1e-9
        assert math.isclose(o.quantity_mw * 10, round(o.quantity_mw * 10), abs_tol=1e-9)
        if o.side == "sell":
            assert o.price_eur_mwh >= forecast[o.delivery_start] + limits.min_margin_eur_mwh - 1e-9
        else:
            assert o.price_eur_mwh <= forecast[o.delivery_start] - limits.min_margin_eur_mwh + 1e-9
    assert len({o.delivery_start for o in acts.place}) == len(acts.place)  # one order per period and replan
    known = {o.order_id: o for o in orders}
    for c in acts.cancel:
        assert c.order_id in known and known[c.order_id].own  # only its own orders, only real ones


@HEAVY
@given(situations())
def test_orders_move_toward_the_plan_and_never_past_max_position(s) -> None:
    plan, position, forecast, orders, limits, now = s
    acts = orders_for_plan(plan, position, forecast, orders, limits, now)
    after = _apply(orders, acts)
    for o in acts.place:
        p = o.delivery_start
        target = max(-limits.max_position_mw, min(limits.max_position_mw, plan[p]))
        base = position.get(p, 0.0)
        before_new = base + sum(
            x.signed_mw for x in after if x.delivery_start == p and not (x.order_id or "").startswith("N-")
        )
        with_new = before_new + (o.quantity_mw if o.side == "sell" else -o.quantity_mw)
        assert abs(with_new - target) < abs(before_new - target)  # closer to the target
        assert (target - with_new) * (target - before_new) >= -1e-9  # never beyond it
        if abs(before_new) <= limits.max_position_mw:
            assert abs(with_new) <= limits.max_position_mw + 1e-9


@HEAVY
@given(situations())
def test_applying_the_answer_leaves_nothing_more_to_do(s) -> None:
    """The same inputs once the answer is carried out (placed orders resting, cancelled ones gone): nothing to
    place or cancel, so a replan (or a restart that re-reads the open orders) never places an order twice."""
    plan, position, forecast, orders, limits, now = s
    acts = orders_for_plan(plan, position, forecast, orders, limits, now)
    after = _apply(orders, acts)
    again = orders_for_plan(plan, position, forecast, after, limits, now)
    if any(o.quantity_mw >= limits.max_order_mw - 1e-9 for o in acts.place):
        # capped at max_order_mw: the rest follows in the next replan, one order at a time, never a duplicate
        assert all(a.delivery_start not in {c.delivery_start for c in again.cancel} for a in acts.place)
        return
    assert again == OrderActions(), (acts, again)


# ---------------------------------------------------------------- the faces' projections
def test_realised_pnl_by_day_counts_only_delivered_trades() -> None:
    from controller.trading.auto import realised_pnl_by_day

    def trade(side: str, mw: float, price: float, start: str) -> dict:
        s = parse_iso(start)
        return {
            "side": side,
            "quantity_mw": mw,
            "price_eur_mwh": price,
            "delivery_start": start,
            "delivery_end": iso(s + PERIOD_S),
        }

    trades = [
        trade("buy", 4.0, 20.0, "2026-12-02T03:00:00Z"),  # pays 4 * 0.25 * 20 = 20
        trade("sell", 4.0, 120.0, "2026-12-02T19:00:00Z"),  # earns 120
        trade("sell", 2.0, 100.0, "2026-12-03T09:45:00Z"),  # earns 50
        trade("sell", 2.0, 100.0, "2026-12-03T10:00:00Z"),  # delivery not over at NOW: not realised
        {"side": "sell", "quantity_mw": "x"},  # unreadable: left out
    ]
    assert realised_pnl_by_day(trades, NOW) == [
        {"day": "2026-12-02", "pnl_eur": 100.0, "energy_mwh": 2.0},
        {"day": "2026-12-03", "pnl_eur": 50.0, "energy_mwh": 0.5},
    ]


def test_plan_view_is_designs_shape() -> None:
    from controller.trading.auto import plan_view
    from controller.trading.optimiser import Plan, PlanPeriod

    plan = Plan("optimal", "", 123.456, 4.2, (PlanPeriod(P0, -2.0, -2.0, 0.0, 52.5, 2.0, 0.0, 0.25),))
    view = plan_view(plan, {P0: 31.234}, NOW)
    assert view == {
        "generated_at": iso(NOW),
        "status": "optimal",
        "solve_ms": 4.2,
        "objective_eur": 123.46,
        "periods": [
            {"period_start": iso(P0), "price_eur_mwh": 31.23, "position_mw": 0.0, "plan_mw": -2.0, "soc_pct_end": 52.5}
        ],
    }
