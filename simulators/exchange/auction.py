"""The day-ahead auction of the exchange simulator: the next UTC day's 96 quarter-hour reference prices (the
seeded synthetic curve) are published once a day at a fixed time, as a real day-ahead auction publishes its
results around noon. The intraday counterparties quote around the same curve, so intraday prices wander around
the auction's.

Pure: no clock reads (time is passed in), no HTTP (routes.py serves it as GET /api/auction/{day}).
"""

from __future__ import annotations

from datetime import date, datetime, timezone

from controller.clock import iso
from controller.trading.market import PERIOD_S
from simulators.exchange.curve import DAY_S, PERIODS_PER_DAY, PriceCurve

PUBLISH_S = 11 * 3600  # results for day D are published at 11:00 UTC on day D - 1 (EPEX: 12:00 CET)
MARKET = "day-ahead"


class AuctionNotPublished(Exception):
    """The results asked for are not out yet; `publishes_at` says when they will be (Unix seconds)."""

    def __init__(self, day: date, publishes_at: float):
        super().__init__(f"the day-ahead auction for {day.isoformat()} is not published yet (at {iso(publishes_at)})")
        self.publishes_at = publishes_at


def day_index(day: date) -> int:
    """UTC day number (Unix seconds // 86400) of a calendar date."""
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) // DAY_S


def parse_day(text: str) -> date:
    """YYYY-MM-DD -> date; ValueError naming the format otherwise."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"day: expected YYYY-MM-DD (got {text[:40]!r})") from None


class Auction:
    """The day-ahead results of the simulator's curve, published at `publish_s` seconds into the day before."""

    def __init__(self, curve: PriceCurve, publish_s: int = PUBLISH_S):
        self.curve = curve
        self.publish_s = publish_s

    def publishes_at(self, day: date) -> float:
        return float((day_index(day) - 1) * DAY_S + self.publish_s)

    def latest_day(self, now: float) -> date:
        """The furthest day whose results are out at `now` (tomorrow after the publication time, else today)."""
        today = int(now) // DAY_S
        index = today + 1 if now >= (today * DAY_S + self.publish_s) else today
        return datetime.fromtimestamp(index * DAY_S, tz=timezone.utc).date()

    def result(self, day: date, now: float) -> dict:
        """`{day, market, published_at, periods: [{period_start, price_eur_mwh}] * 96}`; AuctionNotPublished
        before its publication time."""
        at = self.publishes_at(day)
        if now < at:
            raise AuctionNotPublished(day, at)
        index = day_index(day)
        start = index * DAY_S
        prices = self.curve.day(index)
        return {
            "day": day.isoformat(),
            "market": MARKET,
            "published_at": iso(at),
            "periods": [
                {"period_start": iso(start + q * PERIOD_S), "price_eur_mwh": prices[q]} for q in range(PERIODS_PER_DAY)
            ],
        }
