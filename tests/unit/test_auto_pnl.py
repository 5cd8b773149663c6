"""GET /api/auto's realised PnL (controller/trading/auto.RealisedPnl): kept between requests instead of read and
summed from every trade each time, and exact: after any sequence of trades stored (by the daemon or another
process), deliveries ending, days passing and trades pruned, it equals realised_pnl_by_day over every trade in the
store; the store's trades are read again only when one was stored or pruned. Real store (SQLite in a tmp dir)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import iso
from controller.store import Store
from controller.trading.auto import PNL_DAYS, RealisedPnl, realised_pnl_by_day
from controller.trading.market import PERIOD_S
from tests.fixtures.controller import trade

T0 = 1_796_342_400.0  # 2026-12-04T00:00Z

trades = st.fixed_dictionaries(
    {
        "side": st.sampled_from(["buy", "sell"]),
        "quantity_mw": st.sampled_from([0.1, 0.3, 1.0, 2.5, 7.7]),
        "price_eur_mwh": st.floats(-500, 4000, allow_nan=False).map(lambda p: round(p, 2)),
        # around now (deliveries ending while the test waits), or from 12 days before now to a day ahead
        "start_periods": st.one_of(st.integers(-4, 8), st.integers(-12 * 96, 96)),
        "periods": st.integers(1, 8),
    }
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("trade"), trades),
        st.tuples(st.just("wait"), st.one_of(st.floats(1, 1800), st.floats(1, 3 * 86400))),
        st.tuples(st.just("prune"), st.floats(1, 10)),
        st.tuples(st.just("ask"), st.integers(0, PNL_DAYS)),
    ),
    min_size=1,
    max_size=30,
)


def expected(store: Store, now: float, days: int) -> list[dict]:
    """The figure computed from scratch: every trade in the store, realised by `now`, of the last `days` days."""
    first = iso(now - days * 86400.0)[:10]
    return [r for r in realised_pnl_by_day(store.trades(None, 1_000_000), now) if r["day"] >= first]


async def run(store: Store, script: list) -> None:
    pnl = RealisedPnl(store)
    now, n, reads, changed = T0 + 123.0, 0, 0, True
    for kind, arg in script:
        if kind == "trade":
            start = (now - now % PERIOD_S) + arg["start_periods"] * PERIOD_S
            n += 1
            body = trade(
                f"t{n}", arg["side"], arg["quantity_mw"], start, now, arg["price_eur_mwh"], periods=arg["periods"]
            )
            assert store.add_trade(body, "test")
            changed = True
        elif kind == "wait":
            now += arg
        elif kind == "prune":
            deleted = store.prune(now, 365, trade_retention_days=arg)
            changed = changed or deleted.get("trades", 0) > 0
        else:
            got = await pnl.by_day(now, arg)
            assert got == expected(store, now, arg), (iso(now), arg)
            # the trades were read again only if one was stored or pruned since the last answer
            assert pnl.reads == reads + (1 if changed else 0), (pnl.reads, reads, changed)
            reads, changed = pnl.reads, False
    for days in (PNL_DAYS, 2):  # and at the end, whatever came last
        assert await pnl.by_day(now, days) == expected(store, now, days)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_the_kept_pnl_equals_the_pnl_summed_from_every_trade(script) -> None:
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "s.db") as store:
        asyncio.run(run(store, script))


async def test_a_trade_stored_by_another_process_is_counted_and_nothing_is_read_twice(tmp_path) -> None:
    """`bess-edge trade add` stores into the same database from another process (no event reaches the daemon):
    the next answer counts it. Without a new trade, asking again reads nothing."""
    now = T0 + 3600.0
    with Store(tmp_path / "s.db") as store, Store(tmp_path / "s.db") as other:
        pnl = RealisedPnl(store)
        assert await pnl.by_day(now) == [] and pnl.reads == 1
        assert await pnl.by_day(now) == [] and await pnl.by_day(now, 2) == [] and pnl.reads == 1
        body = trade("cli-1", "sell", 2.0, T0, T0 - 600, price_eur_mwh=100.0)
        assert other.add_trade(body, "cli")
        day = iso(T0)[:10]
        assert await pnl.by_day(now) == [{"day": day, "pnl_eur": 50.0, "energy_mwh": 0.5}] and pnl.reads == 2
        assert await pnl.by_day(now + 60) == [{"day": day, "pnl_eur": 50.0, "energy_mwh": 0.5}] and pnl.reads == 2


async def test_a_trade_counts_once_its_delivery_has_ended_without_reading_the_store_again(tmp_path) -> None:
    now = T0 + 3600.0 + 60  # 01:01Z; the trade delivers 01:15-01:30
    with Store(tmp_path / "s.db") as store:
        pnl = RealisedPnl(store)
        body = trade("t1", "buy", 4.0, T0 + 3600 + PERIOD_S, now, price_eur_mwh=30.0)
        assert store.add_trade(body, "test")
        assert await pnl.by_day(now) == [] and pnl.reads == 1  # not delivered yet
        assert await pnl.by_day(T0 + 3600 + 2 * PERIOD_S - 1) == []
        got = await pnl.by_day(T0 + 3600 + 2 * PERIOD_S)  # its delivery has just ended
        assert got == [{"day": iso(T0)[:10], "pnl_eur": -30.0, "energy_mwh": 1.0}] and pnl.reads == 1


def test_the_pnl_of_a_day_does_not_depend_on_the_order_of_its_trades() -> None:
    """The store gives trades newest first, the kept copy by delivery: a running sum's last bit depends on the order,
    and round() to the cent tipped -8039.065 either way; fsum gives the exactly rounded sum (found by hypothesis in the test above)."""
    trades = [
        trade("a", "buy", 7.7, T0, T0 - 600, 459.16),
        trade("b", "buy", 2.5, T0, T0 - 600, 878.07),
        trade("c", "buy", 7.7, T0, T0 - 600, 3431.89),
    ]
    now = T0 + 3600.0
    assert realised_pnl_by_day(trades, now) == realised_pnl_by_day(trades[::-1], now)
    assert realised_pnl_by_day(trades, now) == [{"day": iso(T0)[:10], "pnl_eur": -8039.07, "energy_mwh": 4.475}]
