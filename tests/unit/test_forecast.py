"""The price forecast (pure part): known results first, else similar day (a week before, the latest day of the
same kind, the day before), blended toward the order book for the near periods; the csv and JSON source formats
with errors naming the line or field; the exchange simulator's day-ahead auction (publication time, weekend
shape)."""

from __future__ import annotations

import math
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import iso, parse_iso
from controller.trading.forecast import (
    ForecastSourceError,
    build_forecast,
    parse_price_csv,
    parse_price_json,
    similar_day,
)
from controller.trading.market import PERIOD_S
from simulators.exchange.auction import Auction, AuctionNotPublished
from simulators.exchange.curve import PriceCurve, is_weekend

# 1,000 examples even in CI's profile: each draws a day or more of prices, and 1,000 cover these properties
HEAVY = settings(max_examples=1_000, deadline=None)

DAY = 86400
NOW = parse_iso("2026-12-03T10:05:00Z")  # a Thursday
P0 = parse_iso("2026-12-03T10:00:00Z")


def test_known_prices_win_and_the_horizon_is_covered() -> None:
    known = {P0 + k * PERIOD_S: 50.0 + k for k in range(8)}
    f = build_forecast(NOW, 2 * 3600, known, {}, {}, near_blend_s=0)
    assert [p.period_start for p in f.periods] == [P0 + k * PERIOD_S for k in range(8)]
    assert [p.price_eur_mwh for p in f.periods] == [50.0 + k for k in range(8)]
    assert {p.basis for p in f.periods} == {"known"}


def test_similar_day_prefers_a_week_before_then_same_kind_then_persistence() -> None:
    p = parse_iso("2026-12-07T08:00:00Z")  # a Monday
    history = {p - DAY: 10.0, p - 3 * DAY: 30.0, p - 7 * DAY: 70.0}  # Sunday, Friday, last Monday
    assert similar_day(p, history, 14) == (70.0, "similar_day")
    del history[p - 7 * DAY]
    assert similar_day(p, history, 14) == (30.0, "similar_day")  # Friday: the latest weekday
    del history[p - 3 * DAY]
    assert similar_day(p, history, 14) == (10.0, "persistence")  # only the Sunday is left
    assert similar_day(p, {}, 14) is None


def test_near_periods_blend_toward_the_book_and_the_forecast_stops_where_nothing_is_known() -> None:
    known = {P0 + k * PERIOD_S: 100.0 for k in range(4)}
    book = {P0 + PERIOD_S: 80.0, P0 + 3 * PERIOD_S: 80.0}
    f = build_forecast(NOW, 6 * 3600, known, {}, book, near_blend_s=3600)
    prices = {p.period_start: (p.price_eur_mwh, p.basis) for p in f.periods}
    assert len(f.periods) == 4  # nothing said about 11:00 onwards
    w = 1 - (P0 + PERIOD_S - NOW) / 3600  # 10:15 is 10 min away: weight 5/6 on the book
    assert prices[P0 + PERIOD_S] == (pytest.approx(w * 80 + (1 - w) * 100), "blend")
    assert prices[P0 + 3 * PERIOD_S] == (pytest.approx((1 / 3) * 80 + (2 / 3) * 100), "blend")
    assert prices[P0] == (100.0, "known")


@HEAVY
@given(st.lists(st.floats(-100, 500, allow_nan=False), min_size=96, max_size=96), st.integers(0, 95))
def test_a_day_of_history_forecasts_the_next_by_persistence(prices, start_q) -> None:
    yesterday = P0 - P0 % DAY - DAY
    history = {yesterday + q * PERIOD_S: v for q, v in enumerate(prices)}
    now = yesterday + DAY + start_q * PERIOD_S
    f = build_forecast(now, 24 * 3600, {}, history, {}, near_blend_s=0)
    for p in f.periods:
        if p.period_start < yesterday + 2 * DAY:
            assert p.price_eur_mwh == history[p.period_start - DAY]


def test_csv_rows_and_errors_naming_the_line() -> None:
    text = "period_start,price_eur_mwh\n2026-12-03T10:00:00Z,55.5\n# a comment\n\n2026-12-03T10:15:00Z,-3\n"
    assert parse_price_csv(text) == {P0: 55.5, P0 + PERIOD_S: -3.0}
    with pytest.raises(ForecastSourceError, match="line 2: .*15-minute boundary"):
        parse_price_csv("period_start,price_eur_mwh\n2026-12-03T10:07:00Z,1\n")
    with pytest.raises(ForecastSourceError, match="line 1: expected period_start,price_eur_mwh"):
        parse_price_csv("2026-12-03T10:00:00Z\n")
    with pytest.raises(ForecastSourceError, match="line 1: .*nan"):
        parse_price_csv("2026-12-03T10:00:00Z,nan\n")


def test_json_shape_is_the_auctions() -> None:
    assert parse_price_json({"periods": [{"period_start": iso(P0), "price_eur_mwh": 12}]}) == {P0: 12.0}
    with pytest.raises(ForecastSourceError, match="periods.0.price_eur_mwh"):
        parse_price_json({"periods": [{"period_start": iso(P0), "price_eur_mwh": "x"}]})
    with pytest.raises(ForecastSourceError, match="body: .*expected {periods"):
        parse_price_json([1, 2])


def test_auction_is_published_at_eleven_the_day_before() -> None:
    auction = Auction(PriceCurve(42))
    day = date(2026, 12, 4)
    before = parse_iso("2026-12-03T10:59:59Z")
    with pytest.raises(AuctionNotPublished, match="2026-12-04 is not published yet"):
        auction.result(day, before)
    assert auction.latest_day(before) == date(2026, 12, 3)
    after = parse_iso("2026-12-03T11:00:00Z")
    r = auction.result(day, after)
    assert r["published_at"] == "2026-12-03T11:00:00.000Z" and len(r["periods"]) == 96
    assert r["periods"][0]["period_start"] == "2026-12-04T00:00:00.000Z"
    assert auction.latest_day(after) == day
    assert [p["price_eur_mwh"] for p in r["periods"]] == PriceCurve(42).day(
        int(parse_iso("2026-12-04T00:00:00Z")) // DAY
    )


def test_curve_has_a_daily_shape_and_weekends_run_lower() -> None:
    curve = PriceCurve(42)
    days = range(20_000, 20_000 + 56)
    weekend = [sum(curve.day(d)) / 96 for d in days if is_weekend(d)]
    weekday = [sum(curve.day(d)) / 96 for d in days if not is_weekend(d)]
    assert sum(weekend) / len(weekend) < sum(weekday) / len(weekday) - 5
    night = [sum(curve.day(d)[12:16]) / 4 for d in days]  # 03:00-04:00
    evening = [sum(curve.day(d)[76:80]) / 4 for d in days]  # 19:00-20:00
    assert sum(e - n for e, n in zip(evening, night)) / len(days) > 40


def test_market_prices_from_the_exchange_are_plausible_or_left_out() -> None:
    from controller.trading.forecast import _plausible_price

    for bad in (math.nan, math.inf, -math.inf, 1e300, -10_000.01, True, "55", None):
        assert not _plausible_price(bad), bad
    for good in (-10_000, -3.5, 0, 55, 10_000.0):
        assert _plausible_price(good), good
