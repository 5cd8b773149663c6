"""Prices to plan against: a price per 15-minute period over the horizon (default 36 h), and the market history
it is built from.

`build_forecast` is pure (time passed in): a period's price is the known result where one is published (the
exchange's day-ahead auction, or a site's own csv/http forecast), else a similar-day model over the stored
history (the same quarter hour a week before, else on the latest day of the same kind, weekday or weekend, else
on the day before), and the near periods blend toward the live order book's mark (all the way at the front,
none at `near_blend_s`). The `Forecaster` keeps the market history in the store (the front product's
mark/EMA/VWAP sampled over time, each period's traded VWAP, the known results) and reads the configured source:
exchange | csv (a file) | http (a URL answering the auction's JSON).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from controller.clock import iso, parse_iso
from controller.tasks import Background
from controller.trading.exchange import ExchangeError
from controller.trading.market import PERIOD_S, PRICE_LIMIT_EUR_MWH, period_start

if TYPE_CHECKING:
    from controller.config import Forecast as ForecastConfig
    from controller.store import Store

log = logging.getLogger("bess.forecast")

DAY_S = 86400
WEEK_S = 7 * DAY_S
KNOWN = "known"  # a market_prices source other than "intraday": published results / a site's forecast
MAX_PERIODS = 100_000  # a forecast file or answer larger than this is refused (a horizon is a few hundred)


def is_weekend(ts: float) -> bool:
    return datetime.fromtimestamp(ts, tz=timezone.utc).weekday() >= 5


@dataclass(frozen=True, slots=True)
class ForecastPeriod:
    period_start: float
    price_eur_mwh: float
    basis: str  # known | similar_day | persistence | book | blend


@dataclass(frozen=True)
class Forecast:
    """The forecast made at `generated_at`: contiguous periods from the current one on (it stops at the first
    period nothing could be said about)."""

    generated_at: float
    source: str
    periods: tuple[ForecastPeriod, ...] = ()

    def prices(self) -> dict[float, float]:
        return {p.period_start: p.price_eur_mwh for p in self.periods}

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": iso(self.generated_at),
            "source": self.source,
            "periods": [
                {"period_start": iso(p.period_start), "price_eur_mwh": round(p.price_eur_mwh, 2), "basis": p.basis}
                for p in self.periods
            ],
        }


def similar_day(p: float, history: Mapping[float, float], history_days: int) -> tuple[float, str] | None:
    """The price of the quarter hour `p` on a similar past day: a week before, else the latest earlier day of the
    same kind (weekday/weekend) within `history_days`, else the day before (persistence)."""
    if p - WEEK_S in history:
        return history[p - WEEK_S], "similar_day"
    weekend = is_weekend(p)
    for k in range(1, history_days + 1):
        q = p - k * DAY_S
        if q in history and is_weekend(q) == weekend:
            return history[q], "similar_day"
    for k in range(1, history_days + 1):
        if p - k * DAY_S in history:
            return history[p - k * DAY_S], "persistence"
    return None


def build_forecast(
    now: float,
    horizon_s: float,
    known: Mapping[float, float],
    history: Mapping[float, float],
    book: Mapping[float, float],
    near_blend_s: float,
    history_days: int = 14,
    source: str = "exchange",
) -> Forecast:
    """A price per period from the one containing `now` through `now + horizon_s`. `known`: published prices by
    period start; `history`: realised prices of past periods (and known ones: a forecast of tomorrow reads
    today's); `book`: the live order book's mark of open periods. A forecast made of the known and the
    similar-day figures is blended toward the book with weight 1 - (start - now) / near_blend_s."""
    first = period_start(now)
    periods: list[ForecastPeriod] = []
    past = {**history, **known}
    p = first
    while p < now + horizon_s:
        if p in known:
            price, basis = known[p], KNOWN
        else:
            found = similar_day(p, past, history_days)
            if found is None and p in book:
                price, basis = book[p], "book"
            elif found is None:
                break
            else:
                price, basis = found
        mark = book.get(p)
        if mark is not None and basis != "book" and near_blend_s > 0 and p - now < near_blend_s:
            w = min(1.0, max(0.0, 1.0 - (p - now) / near_blend_s))
            price, basis = w * mark + (1.0 - w) * price, "blend"
        periods.append(ForecastPeriod(p, float(price), basis))
        p += PERIOD_S
    return Forecast(now, source, tuple(periods))


# ---------------------------------------------------------------- the sources' wire format
class PricePoint(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    period_start: str
    price_eur_mwh: float = Field(ge=-PRICE_LIMIT_EUR_MWH, le=PRICE_LIMIT_EUR_MWH)

    @field_validator("period_start")
    @classmethod
    def _aligned(cls, v: str) -> str:
        try:
            ts = parse_iso(v)
        except ValueError as e:
            raise ValueError(f"not an ISO 8601 UTC time ({e})") from None
        if ts % PERIOD_S:
            raise ValueError("must be on a 15-minute boundary (:00, :15, :30, :45)")
        return v


class PriceList(BaseModel):
    """The JSON a forecast URL answers, the exchange's auction shape: {periods: [{period_start,
    price_eur_mwh}]} (other keys ignored)."""

    model_config = ConfigDict(extra="ignore")

    periods: list[PricePoint] = Field(max_length=MAX_PERIODS)


class ForecastSourceError(ValueError):
    """A source that answered something unusable; the message names where (line, field)."""


def parse_price_json(data: Any) -> dict[float, float]:
    try:
        rows = PriceList.model_validate(data).periods
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise ForecastSourceError(
            f"{where}: {first['msg']} (expected {{periods: [{{period_start, price_eur_mwh}}]}})"
        ) from None
    return {parse_iso(r.period_start): r.price_eur_mwh for r in rows}


def parse_price_csv(text: str) -> dict[float, float]:
    """Rows `period_start,price_eur_mwh` (a header row with those names, then ISO 8601 UTC times on 15-minute
    boundaries and finite prices). ForecastSourceError names the first bad line."""
    reader = csv.reader(io.StringIO(text))
    out: dict[float, float] = {}
    for n, row in enumerate(reader, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if n == 1 and row[0].strip() == "period_start":
            continue
        if len(row) < 2:
            raise ForecastSourceError(f"line {n}: expected period_start,price_eur_mwh (got {','.join(row)[:80]!r})")
        try:
            point = PricePoint(period_start=row[0].strip(), price_eur_mwh=float(row[1]))
        except (ValueError, ValidationError) as e:
            msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            raise ForecastSourceError(f"line {n}: {msg} (got {','.join(row)[:80]!r})") from None
        out[parse_iso(point.period_start)] = point.price_eur_mwh
        if len(out) > MAX_PERIODS:
            raise ForecastSourceError(f"more than {MAX_PERIODS} periods")
    return out


# ---------------------------------------------------------------- the forecaster
@dataclass
class ForecastStatus:
    source: str
    updated_at: float | None = None  # when the source last answered
    error: str | None = None  # the source's last problem (None: fine)
    known_periods: int = 0
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "updated_at": iso(self.updated_at) if self.updated_at else None,
            "error": self.error,
            "known_periods": self.known_periods,
        }


class Forecaster:
    """Keeps the market history in the store and the configured source's known prices, and makes the forecast.
    Runs on the event loop; store work goes to a worker thread."""

    def __init__(self, config: "ForecastConfig", store: "Store", desk: Any, now):
        """`desk`: the order desk (controller.trading.orders.OrderDesk, a sibling layer): its exchange client."""
        self.config = config
        self.store = store
        self.desk = desk
        self.now = now
        self.status = ForecastStatus(config.source)
        self._csv_mtime: float | None = None
        self._last_sample_mono = -math.inf
        self._days_done: set[str] = set()  # auction days already stored (published results do not change)
        self._days_fetched: set[str] = set()  # auction days of this refresh, done once their prices are stored
        self.book: dict[float, float] = {}
        self.exchange_ok = True  # the exchange's market data answered last time
        self.refreshed = False  # a refresh has run (the auto-trader's first pass waits for one)
        self._last_source_mono = -math.inf
        self._runner = Background("forecaster")

    async def start(self) -> None:
        self._runner.start(self._run)

    async def stop(self) -> None:
        await self._runner.stop()

    async def _run(self) -> None:
        """The order book every `sample_s`, the source every `refresh_s` (real seconds)."""
        while True:
            try:
                await self.refresh()
            except Exception:  # the loop must outlive a bug in one pass: the log says what happened
                log.exception("forecaster pass failed")
            await asyncio.sleep(min(self.config.sample_s, self.config.refresh_s))

    async def ensure_fresh(self) -> None:
        """One refresh now if none has run yet (a forecast asked for before the loop's first pass)."""
        if not self.refreshed:
            await self.refresh()

    async def refresh(self) -> None:
        """Read the order book (market data) and, every `refresh_s`, the source; store what is new."""
        self.refreshed = True
        await self._market()
        if time.monotonic() - self._last_source_mono < self.config.refresh_s:
            return
        self._last_source_mono = time.monotonic()
        try:
            known = await self._known()
        except (ForecastSourceError, OSError, httpx.HTTPError, ValueError, ExchangeError) as e:
            if self.status.error != str(e):
                log.warning("forecast source failed: keeping what it said before", extra={"error": str(e)})
            self.status.error = f"{self.config.source}: {e}"
            self._last_source_mono = -math.inf  # try again at the next pass
            return
        if known:
            await asyncio.to_thread(self.store.record_market_prices, KNOWN, [(p, v, None) for p, v in known.items()])
        self._days_done |= self._days_fetched
        self.status.error = None
        self.status.updated_at = self.now()

    async def _market(self) -> None:
        # straight from the exchange, not through the desk's cache: what the web API serves stays its own
        try:
            md = await self.desk.client.market_data()
        except ExchangeError as e:
            if self.exchange_ok:
                log.warning("market data unavailable: the exchange does not answer", extra={"error": str(e)})
            self.exchange_ok = False
            return
        self.exchange_ok = isinstance(md, dict)
        if not self.exchange_ok:
            return
        book: dict[float, float] = {}
        traded: list[tuple[float, float, float | None]] = []
        for prod in md.get("products") or []:
            try:
                start = parse_iso(prod["delivery_start"])
            except (KeyError, TypeError, ValueError):
                continue
            if prod.get("open") and _plausible_price(prod.get("mark")):
                book[start] = float(prod["mark"])
            if _plausible_price(prod.get("vwap")) and prod.get("volume_mw"):
                traded.append((start, float(prod["vwap"]), prod.get("volume_mw")))
        self.book = book
        if traded:
            await asyncio.to_thread(self.store.record_market_prices, "intraday", traded)
        if time.monotonic() - self._last_sample_mono >= self.config.sample_s:
            self._last_sample_mono = time.monotonic()
            await asyncio.to_thread(
                self.store.record_market_sample, self.now(), md.get("mark"), md.get("ema"), md.get("vwap")
            )

    async def _known(self) -> dict[float, float]:
        if self.config.source == "csv":
            return await asyncio.to_thread(self._read_csv)
        if self.config.source == "http":
            async with httpx.AsyncClient(timeout=self.config.timeout_s) as client:
                r = await client.get(self.config.url)
            if r.status_code != 200:
                raise ForecastSourceError(f"GET {self.config.url}: HTTP {r.status_code}")
            return parse_price_json(r.json())
        return await self._auctions()

    def _read_csv(self) -> dict[float, float]:
        path = self.config.path
        mtime = os.stat(path).st_mtime
        if mtime == self._csv_mtime:
            return {}
        with open(path, encoding="utf-8") as f:
            prices = parse_price_csv(f.read())
        self._csv_mtime = mtime
        return prices

    async def _auctions(self) -> dict[float, float]:
        """The exchange's day-ahead results of every UTC day the horizon touches (a day once stored is not asked
        for again; one not published yet is asked for on every refresh)."""
        now = self.now()
        out: dict[float, float] = {}
        self._days_fetched.clear()
        day = int(now) // DAY_S * DAY_S
        while day < now + self.config.horizon_h * 3600:
            name = datetime.fromtimestamp(day, tz=timezone.utc).date().isoformat()
            if name not in self._days_done:
                result = await self.desk.client.auction(name)
                if result is not None:
                    out.update(parse_price_json(result))
                    self._days_fetched.add(name)  # done once stored (refresh): a later failure must not lose it
            day += DAY_S
        return out

    async def forecast(self) -> Forecast:
        """The forecast now, from the store's history and known prices and the last order book."""
        now = self.now()
        horizon_s = self.config.horizon_h * 3600
        rows = await asyncio.to_thread(
            self.store.market_prices, now - (self.config.history_days + 1) * DAY_S, now + horizon_s + PERIOD_S
        )
        known: dict[float, float] = {}
        history: dict[float, float] = {}
        for r in rows:
            if r["source"] == KNOWN:
                known[r["period_start"]] = r["price_eur_mwh"]
            else:
                history.setdefault(r["period_start"], r["price_eur_mwh"])
        history.update({p: v for p, v in known.items() if p < period_start(now)})
        upcoming = {p: v for p, v in known.items() if p >= period_start(now)}
        self.status.known_periods = len(upcoming)
        return build_forecast(
            now,
            horizon_s,
            upcoming,
            history,
            self.book,
            self.config.near_blend_h * 3600,
            self.config.history_days,
            self.config.source,
        )


def _plausible_price(x: object) -> bool:
    """A market price the forecast may use: a finite number within what an order may carry (a NaN, a bool or a
    1e300 from the exchange would otherwise poison the plan or make every order invalid)."""
    return (
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) <= PRICE_LIMIT_EUR_MWH
    )
