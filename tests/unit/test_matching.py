"""Matching engine properties (hypothesis) against a naive reference matcher, plus gate closure and units."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.exchange.engine import (
    MatchingEngine,
    OrderNotActive,
    OrderNotFound,
    lots_to_mw,
    mw_to_lots,
    price_to_ticks,
    ticks_to_price,
)
from simulators.exchange.engine import TickOrder as OrderRequest

T0 = 1_800_000_000 - 1_800_000_000 % 900  # a 15-minute boundary
DS = T0 + 4 * 900  # a product one hour ahead: open from T0 on
DS2 = DS + 900
PARTICIPANTS = ("a", "b", "c")

submit_op = st.tuples(
    st.just("submit"),
    st.sampled_from(PARTICIPANTS),
    st.sampled_from(("buy", "sell")),
    st.integers(9_900, 10_100),  # price ticks: 99.00-101.00 EUR/MWh, narrow so orders cross often
    st.integers(1, 30),  # lots
    st.sampled_from(("GTC", "GTC", "IOC", "FOK")),
    st.sampled_from((DS, DS2)),
)
cancel_op = st.tuples(st.just("cancel"), st.integers(0, 200))
ops_strategy = st.lists(st.one_of(submit_op, submit_op, submit_op, cancel_op), min_size=1, max_size=60)


class Reference:
    """The obvious O(n log n)-per-order matcher: sort all crossing resting orders by (price, arrival)."""

    def __init__(self):
        self.resting: list[dict] = []  # {id, seq, participant, side, price, lots, ds}
        self.trades: list[tuple] = []

    def submit(self, oid, seq, participant, side, price, lots, tif, ds) -> tuple[str, int]:
        opposite = "sell" if side == "buy" else "buy"
        crossing = [
            r
            for r in self.resting
            if r["ds"] == ds
            and r["side"] == opposite
            and (r["price"] <= price if side == "buy" else r["price"] >= price)
        ]
        crossing.sort(key=lambda r: (r["price"] if side == "buy" else -r["price"], r["seq"]))
        if tif == "FOK":
            can = 0
            for r in crossing:
                if r["participant"] == participant:
                    break
                can += r["lots"]
            if can < lots:
                return "cancelled", 0
        filled, status = 0, None
        for r in crossing:
            if filled == lots:
                break
            if r["participant"] == participant:
                status = "cancelled"
                break
            q = min(lots - filled, r["lots"])
            buy, sell = (oid, r["id"]) if side == "buy" else (r["id"], oid)
            self.trades.append((buy, sell, r["price"], q, ds))
            r["lots"] -= q
            filled += q
            if r["lots"] == 0:
                self.resting.remove(r)
        if filled == lots:
            return "filled", filled
        if status:
            return status, filled
        if tif == "GTC":
            self.resting.append(
                {
                    "id": oid,
                    "seq": seq,
                    "participant": participant,
                    "side": side,
                    "price": price,
                    "lots": lots - filled,
                    "ds": ds,
                }
            )
            return ("partially_filled" if filled else "open"), filled
        return "cancelled", filled

    def cancel(self, oid) -> None:
        self.resting = [r for r in self.resting if r["id"] != oid]


def run(ops):
    """Apply `ops` to a fresh engine and a reference; check the invariants after every step."""
    eng = MatchingEngine(id_prefix="")
    ref = Reference()
    ids: list[str] = []
    trades = []
    now = float(T0)
    for op in ops:
        now += 0.5
        if op[0] == "cancel":
            if not ids:
                continue
            oid = ids[op[1] % len(ids)]
            order = eng.orders[oid]
            if order.active:
                eng.cancel(oid, order.participant, now)
                ref.cancel(oid)
                assert order.status == "cancelled"
            else:
                with pytest.raises(OrderNotActive):
                    eng.cancel(oid, order.participant, now)
            continue
        _, who, side, price, lots, tif, ds = op
        result = eng.submit(OrderRequest(who, side, price, lots, ds, time_in_force=tif), now)
        o = result.order
        ids.append(o.order_id)
        want_status, want_filled = ref.submit(o.order_id, o.seq, who, side, price, lots, tif, ds)
        got = [
            (t.buy_order_id, t.sell_order_id, t.price_ticks, t.quantity_lots, t.delivery_start) for t in result.trades
        ]
        # price-time priority: exactly the reference's fills, in the same order, at the resting prices
        assert got == ref.trades[len(trades) :]
        trades.extend(result.trades)
        assert (o.status, o.filled_lots) == (want_status, want_filled)
        # IOC and FOK never rest; FOK is all or nothing
        if tif != "GTC":
            assert not o.active
            assert all(o not in b.orders(o.side) for b in eng.books.values())
        if tif == "FOK":
            assert o.filled_lots in (0, lots)
        # trade prices never improve on the incoming order's limit and walk away from it level by level
        prices = [t.price_ticks for t in result.trades]
        assert prices == sorted(prices, reverse=(side == "sell"))
        assert all(p <= price if side == "buy" else p >= price for p in prices)
        check_invariants(eng, trades)
    return eng, trades


def check_invariants(eng: MatchingEngine, trades) -> None:
    for book in eng.books.values():
        bid, ask = book.best("buy"), book.best("sell")
        assert bid is None or ask is None or bid < ask, "book crossed after matching"
        for side in ("buy", "sell"):
            for o in book.orders(side):
                assert o.active and o.remaining_lots > 0
    fills: dict[str, int] = {}
    for t in trades:
        assert t.quantity_lots > 0 and t.buyer != t.seller
        fills[t.buy_order_id] = fills.get(t.buy_order_id, 0) + t.quantity_lots
        fills[t.sell_order_id] = fills.get(t.sell_order_id, 0) + t.quantity_lots
    total = sum(t.quantity_lots for t in trades)
    buys = sum(v for k, v in fills.items() if eng.orders[k].side == "buy")
    sells = sum(v for k, v in fills.items() if eng.orders[k].side == "sell")
    assert buys == sells == total
    for o in eng.orders.values():
        assert o.filled_lots == fills.get(o.order_id, 0)
        assert o.remaining_lots + o.filled_lots == o.quantity_lots
        assert 0 <= o.filled_lots <= o.quantity_lots
        assert (o.status == "filled") == (o.filled_lots == o.quantity_lots)
    resting = {o.order_id for b in eng.books.values() for s in ("buy", "sell") for o in b.orders(s)}
    assert resting == {o.order_id for o in eng.orders.values() if o.active}


@settings(max_examples=400, deadline=None)
@given(ops_strategy)
def test_matching_properties(ops):
    run(ops)


@settings(max_examples=100, deadline=None)
@given(ops_strategy, st.integers(0, 899))
def test_gate_closure_expires_and_refuses(ops, after_s):
    eng, _ = run(ops)
    resting = {o.order_id for o in eng.orders.values() if o.active and o.delivery_start == DS}
    others = {o.order_id for o in eng.orders.values() if o.active and o.delivery_start == DS2}
    close = DS - 300 + after_s  # at or after DS's gate closure, before DS2's
    expired = eng.expire(close)
    assert {o.order_id for o in expired} == resting
    assert all(eng.orders[i].status == "expired" and "gate closed" in eng.orders[i].reason for i in resting)
    assert DS not in eng.books
    assert {o.order_id for o in eng.orders.values() if o.active} == others
    refused = eng.submit(OrderRequest("a", "buy", 10_000, 10, DS), close)
    assert refused.order.status == "rejected" and "gate closed" in refused.order.reason
    assert refused.trades == [] and DS not in eng.books


def test_gate_closure_boundary():
    eng = MatchingEngine()
    assert eng.submit(OrderRequest("a", "buy", 100, 1, DS), DS - 300.001).order.status == "open"
    assert eng.submit(OrderRequest("a", "buy", 100, 1, DS), DS - 300).order.status == "rejected"
    assert (
        eng.submit(OrderRequest("a", "buy", 100, 1, DS + 7), T0).order.reason
        == "delivery_start is not on a 15-minute boundary"
    )
    far = eng.submit(OrderRequest("a", "buy", 100, 1, T0 + 3 * 86400), T0).order
    assert far.status == "rejected" and "not open yet" in far.reason


def test_trade_at_resting_price_and_partial_fill():
    eng = MatchingEngine(id_prefix="S-")
    ask = eng.submit(OrderRequest("a", "sell", 5_000, 20, DS), T0).order
    r = eng.submit(OrderRequest("b", "buy", 5_200, 5, DS), T0 + 1)
    assert [(t.price_ticks, t.quantity_lots) for t in r.trades] == [(5_000, 5)]
    assert r.trades[0].trade_id == "S-T00000001" and r.order.order_id == "S-O00000002"
    assert ask.status == "partially_filled" and ask.remaining_lots == 15
    view = r.trades[0].view("b")
    assert view["side"] == "buy" and view["price_eur_mwh"] == 50.0 and view["quantity_mw"] == 0.5
    assert r.trades[0].view("a")["side"] == "sell"
    assert view["delivery_start"].endswith("Z") and view["delivery_end"] > view["delivery_start"]


def test_self_trade_prevention_cancels_incoming():
    eng = MatchingEngine()
    eng.submit(OrderRequest("b", "sell", 100, 5, DS), T0)
    own = eng.submit(OrderRequest("a", "sell", 101, 5, DS), T0).order
    r = eng.submit(OrderRequest("a", "buy", 105, 20, DS), T0 + 1)
    assert [t.quantity_lots for t in r.trades] == [5]  # the other participant's better ask fills first
    assert r.order.status == "cancelled" and "self-trade" in r.order.reason and r.order.filled_lots == 5
    assert own.status == "open" and own.remaining_lots == 5


def test_cancel_rules():
    eng = MatchingEngine()
    o = eng.submit(OrderRequest("a", "buy", 100, 5, DS), T0).order
    with pytest.raises(OrderNotFound):
        eng.cancel(o.order_id, "b", T0)  # someone else's order is not found, not revealed
    with pytest.raises(OrderNotFound):
        eng.cancel("nope", "a", T0)
    assert eng.cancel(o.order_id, "a", T0).status == "cancelled"
    assert DS not in eng.books


def test_deterministic_ids():
    def ids():
        eng = MatchingEngine(id_prefix="p")
        out = []
        for i in range(10):
            r = eng.submit(OrderRequest(PARTICIPANTS[i % 3], ("buy", "sell")[i % 2], 100 + i % 3, 3, DS), T0 + i)
            out += [r.order.order_id] + [t.trade_id for t in r.trades]
        return out

    assert ids() == ids()


@given(st.integers(-999_900, 999_900), st.integers(1, 100_000))
def test_units_roundtrip(ticks, lots):
    assert price_to_ticks(ticks_to_price(ticks)) == ticks
    assert mw_to_lots(lots_to_mw(lots)) == lots


@pytest.mark.parametrize("value", [0.001, 12.345, float("nan"), float("inf"), "x"])
def test_price_precision_refused(value):
    with pytest.raises(ValueError):
        price_to_ticks(value)


def test_no_float_drift_in_lots():
    eng = MatchingEngine()
    eng.submit(OrderRequest("a", "sell", 100, mw_to_lots(1.0), DS), T0)
    for i in range(10):
        eng.submit(OrderRequest("b", "buy", 100, mw_to_lots(0.1), DS), T0 + i)
    assert DS not in eng.books  # 10 × 0.1 MW filled 1.0 MW exactly
