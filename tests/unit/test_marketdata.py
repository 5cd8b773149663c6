"""Market data as tables: VWAP, EMA (alpha = 2/(N+1)), mark fallbacks, the running aggregates, the summary
shape; and the synthetic curve's shape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.exchange.curve import PriceCurve
from simulators.exchange.engine import MatchingEngine, Trade
from simulators.exchange.engine import TickOrder as OrderRequest
from simulators.exchange.marketdata import MarketData, ema, ema_alpha, mark, vwap

DS = 1_800_000_000 - 1_800_000_000 % 900


@pytest.mark.parametrize(
    "trades, want",
    [
        ([], None),
        ([(50.0, 1.0)], 50.0),
        ([(50.0, 1.0), (60.0, 1.0)], 55.0),
        ([(50.0, 3.0), (60.0, 1.0)], 52.5),
        ([(-10.0, 2.0), (10.0, 2.0)], 0.0),
        ([(100.0, 0.1), (0.0, 0.9)], 10.0),
    ],
)
def test_vwap_table(trades, want):
    got = vwap(trades)
    assert got == pytest.approx(want) if want is not None else got is None


@pytest.mark.parametrize("span, alpha", [(1, 1.0), (3, 0.5), (9, 0.2), (19, 0.1)])
def test_ema_alpha_table(span, alpha):
    assert ema_alpha(span) == pytest.approx(alpha)


@pytest.mark.parametrize(
    "prices, span, want",
    [
        ([], 3, None),
        ([40.0], 3, 40.0),
        ([40.0, 60.0], 3, 50.0),  # alpha 0.5
        ([40.0, 60.0, 80.0], 3, 65.0),
        ([10.0, 20.0, 30.0], 1, 30.0),  # span 1 = last price
        ([100.0, 0.0], 9, 80.0),  # alpha 0.2
    ],
)
def test_ema_table(prices, span, want):
    got = ema(prices, span)
    assert got == pytest.approx(want) if want is not None else got is None


def test_ema_span_refused():
    with pytest.raises(ValueError):
        ema_alpha(0)


@pytest.mark.parametrize(
    "bid, ask, last, vw, want",
    [
        (50.0, 52.0, 60.0, 55.0, 51.0),  # tight spread: mid
        (50.0, 55.0, 60.0, 55.0, 60.0),  # spread 5 is not under 5: last
        (50.0, 70.0, 60.0, 55.0, 60.0),  # wide spread: last
        (50.0, None, 60.0, 55.0, 60.0),  # one-sided: last
        (None, None, None, 55.0, 55.0),  # no last: vwap
        (None, 52.0, None, None, None),  # nothing to go by
        (-5.0, -3.0, None, None, -4.0),  # negative prices work the same
    ],
)
def test_mark_table(bid, ask, last, vw, want):
    assert mark(bid, ask, last, vw, spread_max_eur=5.0) == want


def _trade(i, price_ticks, lots, ds=DS):
    return Trade(f"T{i}", i, f"B{i}", f"S{i}", "a", "b", price_ticks, lots, ds, "intraday", ds - 3600 + i)


@given(st.lists(st.tuples(st.integers(-999_900, 999_900), st.integers(1, 1000)), min_size=1, max_size=50))
def test_running_aggregates_match_the_formulas(rows):
    md = MarketData(ema_span=5)
    for i, (ticks, lots) in enumerate(rows):
        md.on_trade(_trade(i, ticks, lots))
    st_ = md.products[DS]
    assert st_.volume_lots == sum(lots for _, lots in rows)
    assert st_.vwap_eur == pytest.approx(vwap((t / 100, q / 10) for t, q in rows), abs=1e-4)
    assert st_.ema_eur == pytest.approx(ema((t / 100 for t, _ in rows), 5))
    assert st_.last_eur == rows[-1][0] / 100


def test_summary_shape_and_front_product():
    eng = MatchingEngine(id_prefix="")
    md = MarketData(ema_span=3, mark_spread_max_eur=5.0)
    now = DS - 3600.0  # products from DS-3600+300+... are open; DS is four products ahead
    front = eng.open_products(now, 1)[0]
    eng.submit(OrderRequest("a", "sell", 5_000, 10, front), now)
    for t in eng.submit(OrderRequest("b", "buy", 5_000, 4, front), now).trades:
        md.on_trade(t)
    eng.submit(OrderRequest("b", "buy", 4_800, 1, front), now)
    later = front + 900
    for ticks, lots in ((6_000, 10), (7_000, 30)):
        eng.submit(OrderRequest("a", "sell", ticks, lots, later), now)
        for t in eng.submit(OrderRequest("b", "buy", ticks, lots, later), now).trades:
            md.on_trade(t)
    quotes = {ds: (b.best("buy"), b.best("sell")) for ds, b in eng.books.items()}
    s = md.summary(quotes, eng.open_products(now, 8), now)
    assert set(s) >= {"mark", "ema", "vwap", "series"}
    # front: bid 48, ask 50 -> spread 2 < 5 -> mark is the mid
    assert (s["mark"], s["vwap"], s["ema"]) == (49.0, 50.0, 50.0)
    assert s["series"] == [
        {"period_start": s["front"], "vwap": 50.0, "volume_mw": 0.4},
        {"period_start": s["series"][1]["period_start"], "vwap": 67.5, "volume_mw": 4.0},
    ]
    p2 = next(p for p in s["products"] if p["delivery_start"] == s["series"][1]["period_start"])
    assert (p2["last"], p2["mark"], p2["ema"], p2["best_bid"]) == (70.0, 70.0, 65.0, None)


def test_curve_shape_is_seeded_with_peaks_dip_and_negatives():
    a, b = PriceCurve(7), PriceCurve(7)
    assert a.day(20_000) == b.day(20_000) and a.day(20_000) != PriceCurve(8).day(20_000)
    days = [a.day(d) for d in range(20_000, 20_060)]
    assert all(len(d) == 96 for d in days)

    def mean_at(hour):
        return sum(d[hour * 4 + q] for d in days for q in range(4)) / (4 * len(days))

    assert mean_at(8) > mean_at(3) and mean_at(19) > mean_at(8) and mean_at(13) < mean_at(8) - 30
    assert any(min(d[44:60]) < 0 for d in days)  # negative midday prices happen
    assert sum(min(d) < 0 for d in days) < len(days)  # but not every day
    assert a.price(20_000 * 86400 + 8 * 3600) == days[0][32]
