"""Trades -> schedule: parsing with reasons that name the field, positions per 15-minute period, idempotence."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import parse_iso
from controller.trading.schedule import PERIOD_S, Schedule, Trade, TradeError, iso_minute, parse_trade, period_start

T0 = parse_iso("2026-11-25T14:00:00Z")  # a period boundary


def trade_dict(**over) -> dict:
    base = {
        "trade_id": "t-1",
        "side": "sell",
        "quantity_mw": 5,
        "price_eur_mwh": 81.25,
        "delivery_start": "2026-11-25T14:00:00Z",
        "delivery_end": "2026-11-25T14:15:00Z",
        "market": "intraday",
        "executed_at": "2026-11-25T13:02:11.123Z",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


# ---------------------------------------------------------------- periods


@pytest.mark.parametrize(
    "ts, start",
    [
        (T0, T0),
        (T0 + 0.001, T0),
        (T0 + 899.999, T0),
        (T0 + 900, T0 + 900),
        (T0 - 0.5, T0 - 900),
        (0.0, 0.0),
        (-1.0, -900.0),
    ],
)
def test_period_start(ts: float, start: float) -> None:
    assert period_start(ts) == start


def test_iso_minute() -> None:
    assert iso_minute(T0) == "2026-11-25T14:00Z"


# ---------------------------------------------------------------- parsing


def test_parse_a_trade() -> None:
    t = parse_trade(trade_dict(sig="ab12", ts=123, buy_order_id="o-9"))  # wire extras are ignored
    assert (t.trade_id, t.side, t.quantity_mw, t.price_eur_mwh, t.market) == ("t-1", "sell", 5.0, 81.25, "intraday")
    assert t.delivery_start == datetime(2026, 11, 25, 14, 0, tzinfo=timezone.utc)
    assert t.start_ts == T0 and t.end_ts == T0 + 900
    assert t.position_mw == 5.0
    assert parse_trade(trade_dict(side="buy")).position_mw == -5.0
    assert t.period_starts() == [T0]


def test_trade_round_trips_through_json() -> None:
    t = parse_trade(trade_dict(delivery_start="2026-11-25T14:00:00.000Z", delivery_end="2026-11-25T15:00:00+00:00"))
    dumped = t.model_dump(mode="json")
    assert dumped["delivery_start"] == "2026-11-25T14:00:00Z"
    assert dumped["delivery_end"] == "2026-11-25T15:00:00Z"
    assert parse_iso(dumped["executed_at"]) == pytest.approx(t.executed_at.timestamp())
    assert parse_trade(dumped) == t
    assert t.period_starts() == [T0, T0 + 900, T0 + 1800, T0 + 2700]


def test_trade_is_frozen() -> None:
    t = parse_trade(trade_dict())
    with pytest.raises(Exception):
        t.quantity_mw = 7  # type: ignore[misc]
    assert parse_trade(t) is t


BAD = [
    ({"trade_id": ""}, "trade_id:"),
    ({"trade_id": "   "}, "trade_id: must not be blank"),
    ({"trade_id": "x" * 129}, "trade_id:"),
    ({"trade_id": 17}, "trade_id:"),
    ({"trade_id": ...}, "trade_id: missing"),
    ({"side": "hold"}, "side:"),
    ({"side": "SELL"}, "side:"),
    ({"quantity_mw": 0}, "quantity_mw: must be greater than 0"),
    ({"quantity_mw": -2.5}, "quantity_mw:"),
    ({"quantity_mw": math.nan}, "quantity_mw:"),
    ({"quantity_mw": math.inf}, "quantity_mw:"),
    ({"quantity_mw": 1e9}, "quantity_mw:"),
    ({"quantity_mw": True}, "quantity_mw: must be a valid number"),
    ({"quantity_mw": "5"}, "quantity_mw:"),
    ({"price_eur_mwh": math.nan}, "price_eur_mwh: must be a finite number"),
    ({"price_eur_mwh": "80"}, "price_eur_mwh:"),
    ({"delivery_start": "2026-11-25T14:05:00Z"}, "delivery_start: must be on a 15-minute boundary"),
    ({"delivery_start": "2026-11-25T14:00:30Z"}, "delivery_start: must be on a 15-minute boundary"),
    ({"delivery_start": "2026-11-25T14:00:00.500Z"}, "delivery_start: must be on a 15-minute boundary"),
    ({"delivery_start": "2026-11-25T14:00:00"}, "delivery_start: has no timezone"),
    ({"delivery_start": "2026-11-25T15:00:00+01:00"}, "delivery_start: must be UTC"),
    ({"delivery_start": "tomorrow"}, "delivery_start: not an ISO 8601 time"),
    ({"delivery_start": 1764079200}, "delivery_start: must be an ISO 8601 UTC time string"),
    ({"delivery_end": "2026-11-25T14:20:00Z"}, "delivery_end: must be on a 15-minute boundary"),
    ({"delivery_end": "2026-11-25T14:00:00Z"}, "delivery_end: must be after delivery_start"),
    ({"delivery_end": "2026-11-25T13:45:00Z"}, "delivery_end: must be after delivery_start"),
    ({"delivery_end": "2026-11-26T14:15:00Z"}, "delivery_end: delivery may last at most 24 h"),
    ({"market": ...}, "market: missing"),
    ({"executed_at": "yesterday"}, "executed_at: not an ISO 8601 time"),
    ({"executed_at": None}, "executed_at:"),
]


@pytest.mark.parametrize("over, reason", BAD, ids=[r for _, r in BAD])
def test_bad_trades_are_rejected_naming_the_field(over: dict, reason: str) -> None:
    with pytest.raises(TradeError) as err:
        parse_trade(trade_dict(**over))
    assert err.value.reason.startswith(reason), err.value.reason
    assert str(err.value) == err.value.reason


def test_every_bad_field_is_named() -> None:
    with pytest.raises(TradeError) as err:
        parse_trade(trade_dict(side="hold", quantity_mw=-1, delivery_start="2026-11-25T14:07:00Z"))
    assert [r.split(":")[0] for r in err.value.reason.split("; ")] == ["side", "quantity_mw", "delivery_start"]


@pytest.mark.parametrize("data", [None, [], "trade", 5])
def test_a_trade_must_be_an_object(data) -> None:
    with pytest.raises(TradeError, match="trade: must be a JSON object"):
        parse_trade(data)


# ---------------------------------------------------------------- schedule (tables)


def test_schedule_positions() -> None:
    s = Schedule()
    assert s.add(parse_trade(trade_dict(trade_id="a", side="sell", quantity_mw=5)))
    assert s.add(parse_trade(trade_dict(trade_id="b", side="buy", quantity_mw=2, delivery_end="2026-11-25T14:45:00Z")))
    assert s.add(
        parse_trade(
            trade_dict(
                trade_id="c",
                side="sell",
                quantity_mw=0.5,
                delivery_start="2026-11-25T14:30:00Z",
                delivery_end="2026-11-25T15:00:00Z",
            )
        )
    )
    assert len(s) == 3 and "a" in s and "z" not in s
    assert s.position_mw(T0) == 3.0
    assert s.position_mw(T0 + 899.9) == 3.0
    assert s.position_mw(T0 + 900) == -2.0
    assert s.position_mw(T0 + 1800) == -1.5
    assert s.position_mw(T0 + 2700) == 0.5
    assert s.position_mw(T0 + 3600) == 0.0  # a trade's power is gone at the end of its delivery
    assert s.position_mw(T0 - 1) == 0.0
    assert s.periods(T0 + 10, T0 + 1800) == [(T0, 3.0), (T0 + 900, -2.0)]
    assert s.periods(T0 - 3600, T0 + 86400) == [(T0, 3.0), (T0 + 900, -2.0), (T0 + 1800, -1.5), (T0 + 2700, 0.5)]
    assert s.periods(T0 + 3600, T0 + 7200) == []


def test_duplicate_trade_id_is_ignored() -> None:
    s = Schedule([parse_trade(trade_dict(trade_id="a"))])
    assert not s.add(parse_trade(trade_dict(trade_id="a")))
    assert not s.add(parse_trade(trade_dict(trade_id="a", quantity_mw=9, side="buy")))  # same id, other content
    assert s.position_mw(T0) == 5.0 and len(s) == 1


def test_opposite_trades_cancel_exactly() -> None:
    s = Schedule()
    for i, (side, q) in enumerate([("sell", 0.1), ("sell", 0.2), ("buy", 0.3)]):
        s.add(parse_trade(trade_dict(trade_id=f"x{i}", side=side, quantity_mw=q)))
    assert s.position_mw(T0) == 0.0
    assert s.periods(T0, T0 + 900) == [(T0, 0.0)]  # the period still has trades


# ---------------------------------------------------------------- properties

# A schedule example builds up to 25 pydantic trades; a tenth of the profile's examples (ci 1,000, dev 100)
# keeps these under ~10 s in CI. The 10,000-example budget goes to the limit function.
SCHEDULE_EXAMPLES = settings(max_examples=max(100, settings.default.max_examples // 10))

_K = st.integers(0, 95)  # period index within one day from T0
_LEN = st.integers(1, 8)  # periods delivered
_SIDE = st.sampled_from(["buy", "sell"])
_QTY = st.floats(0.001, 50)
_ID = st.integers(0, 30)  # a small pool, so duplicates happen


@st.composite
def trades(draw) -> Trade:
    k, n = draw(_K), draw(_LEN)
    return parse_trade(
        {
            "trade_id": f"t{draw(_ID)}",
            "side": draw(_SIDE),
            "quantity_mw": draw(_QTY),
            "price_eur_mwh": 50.0,
            "market": "intraday",
            "executed_at": "2026-11-25T00:00:00Z",
            "delivery_start": iso_minute(T0 + k * PERIOD_S),
            "delivery_end": iso_minute(T0 + (k + n) * PERIOD_S),
        }
    )


@SCHEDULE_EXAMPLES
@given(st.lists(trades(), max_size=25))
def test_position_is_the_signed_sum_of_distinct_trades(batch: list[Trade]) -> None:
    s = Schedule()
    first: dict[str, Trade] = {}
    for t in batch:
        assert s.add(t) == (t.trade_id not in first)
        first.setdefault(t.trade_id, t)
    assert len(s) == len(first)
    for k in range(0, 105):
        ts = T0 + k * PERIOD_S + 450
        expected = math.fsum(t.position_mw for t in first.values() if t.start_ts <= ts < t.end_ts)
        assert s.position_mw(ts) == pytest.approx(expected, abs=1e-8)
    listed = dict(s.periods(T0, T0 + 2 * 86400))
    assert set(listed) == {p for t in first.values() for p in t.period_starts()}
    assert all(s.position_mw(p) == mw for p, mw in listed.items())


@SCHEDULE_EXAMPLES
@given(st.lists(trades(), max_size=25, unique_by=lambda t: t.trade_id), st.integers(0, 2**32))
def test_positions_do_not_depend_on_arrival_order_or_resends(batch: list[Trade], seed: int) -> None:
    a = Schedule(batch)
    resent = batch + batch[: len(batch) // 2]  # at-least-once delivery: some trades arrive twice
    random.Random(seed).shuffle(resent)
    b = Schedule()
    added = [b.add(t) for t in resent]
    assert sum(added) == len(batch)
    assert a.periods(T0, T0 + 2 * 86400) == b.periods(T0, T0 + 2 * 86400)


@pytest.mark.parametrize("which", ["delivery_start", "delivery_end"])
def test_misaligned_bounds_are_rejected_with_the_field(which: str) -> None:
    """Every minute and second of an hour, exhaustively (cheaper and surer than sampling 3,600 cases)."""
    other, fixed = (
        ("delivery_end", "2026-11-25T15:00:00Z")
        if which == "delivery_start"
        else ("delivery_start", "2026-11-25T09:00:00Z")
    )
    for minute in range(60):
        for second in range(60):
            data = trade_dict(**{which: f"2026-11-25T12:{minute:02d}:{second:02d}Z", other: fixed})
            if minute % 15 == 0 and second == 0:
                assert parse_trade(data).period_starts()
                continue
            with pytest.raises(TradeError) as err:
                parse_trade(data)
            assert err.value.reason.startswith(f"{which}: must be on a 15-minute boundary"), err.value.reason
