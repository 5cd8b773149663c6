"""The exchange simulator in-process on a simulated clock, with one participant of ours (the site): its
matching engine, counterparties and day-ahead auction; the site's fills, open orders, the known (auction)
prices, the books' marks and the realised price of each period (its VWAP at gate closure)."""

from __future__ import annotations

from controller.trading.auto import OpenOrder, OrderIntent
from controller.trading.market import PERIOD_S, gate_closes_at, period_start
from simulators.exchange.auction import Auction
from simulators.exchange.counterparties import Counterparties
from simulators.exchange.curve import DAY_S, PERIODS_PER_DAY, PriceCurve
from simulators.exchange.engine import (
    MatchingEngine,
    Order,
    OrderNotActive,
    OrderNotFound,
    TickOrder,
    Trade,
    lots_to_mw,
    mw_to_lots,
    price_to_ticks,
    ticks_to_price,
)
from simulators.exchange.marketdata import MarketData
from simulators.exchange.service import ExchangeService

SITE = "backtest"
PRUNE_S = 60.0
HISTORY_DAYS = 14  # auction results the site is taken to have stored before the backtest starts


class SimMarket:
    """One strategy's market: the same seed gives every strategy the same curve and counterparties."""

    def __init__(self, seed: int, counterparties: int, start_ts: float):
        self.curve = PriceCurve(seed)
        self.auction = Auction(self.curve)
        self.engine = MatchingEngine(id_prefix="B")
        self.data = MarketData()
        cps = Counterparties(counterparties, self.curve, seed) if counterparties > 0 else None
        self.service = ExchangeService(self.engine, self.data, {SITE}, counterparties=cps)
        self._taken = 0  # site trades already handed out
        self._mine: dict[str, Order] = {}  # the site's orders that were active when last looked at
        self._next_close = period_start(start_ts)
        self._next_prune = start_ts
        self.realised: dict[float, float] = {}  # period start -> VWAP at gate closure (curve price if no trade)
        self.known: dict[float, float] = {}  # published auction prices by period start
        self.history: dict[float, float] = {}  # what the forecast may read: past results and realised prices
        self._published_to = int(start_ts) // DAY_S - HISTORY_DAYS - 1
        self._publish(start_ts)
        for p, price in self.known.items():
            if p < start_ts:
                self.history[p] = price

    def _publish(self, now: float) -> None:
        """The auction results out at `now` (each day's at 11:00 UTC the day before) join `known`."""
        last = int(now) // DAY_S + (1 if now % DAY_S >= self.auction.publish_s else 0)
        while self._published_to < last:
            self._published_to += 1
            prices = self.curve.day(self._published_to)
            for q in range(PERIODS_PER_DAY):
                self.known[float(self._published_to * DAY_S + q * PERIOD_S)] = prices[q]

    def tick(self, now: float) -> None:
        """Expiry, the counterparties' step, the day's auction results, the periods whose gate closed.

        ExchangeService.tick's work, but finished orders are forgotten once a simulated minute and after a
        minute (the live simulator: every tick, after an hour): the counterparties scan their own orders on
        every step, and a week of them would make the backtest crawl. Nothing reads a finished counterparty
        order; the site's own are kept here (_mine) until they finish."""
        self.service.expire(now)
        if self.service.counterparties is not None:
            self.service.counterparties.step(self.service, now)
        if now >= self._next_prune:
            self.engine.prune(now - PRUNE_S)
            self.data.prune(now)
            self._next_prune = now + PRUNE_S
        self._publish(now)
        while gate_closes_at(self._next_close) <= now:
            p = self._next_close
            st = self.data.products.get(int(p))
            vwap = st.vwap_eur if st is not None else None
            self.realised[p] = vwap if vwap is not None else self.curve.price(p)
            self.history[p] = self.realised[p]
            self._next_close += PERIOD_S

    def new_fills(self) -> list[tuple[float, float, float]]:
        """The site's trades since the last call, as (period start, signed MW: + sold, price EUR/MWh)."""
        trades: list[Trade] = self.service.site_trades.get(SITE, [])
        out = []
        for t in trades[self._taken :]:
            mw = lots_to_mw(t.quantity_lots)
            out.append(
                (float(t.delivery_start), mw if t.side_of(SITE) == "sell" else -mw, ticks_to_price(t.price_ticks))
            )
        self._taken = len(trades)
        return out

    def place(self, intent: OrderIntent, now: float) -> str:
        """Send an order; its status ("open", "filled", "rejected", ...)."""
        req = TickOrder(
            participant=SITE,
            side=intent.side,
            price_ticks=price_to_ticks(round(intent.price_eur_mwh, 2)),
            quantity_lots=mw_to_lots(round(intent.quantity_mw, 1)),
            delivery_start=int(intent.delivery_start),
        )
        order = self.service.submit(req, now).order
        if order.active:
            self._mine[order.order_id] = order
        return order.status

    def cancel(self, order_id: str, now: float) -> bool:
        try:
            self.service.cancel(order_id, SITE, now)
            return True
        except (OrderNotFound, OrderNotActive):  # filled or expired in the meantime: nothing to cancel
            return False

    def open_orders(self) -> list[OpenOrder]:
        """The site's orders still resting (the engine keeps the site's finished ones too: they are skipped)."""
        self._mine = {k: o for k, o in self._mine.items() if o.active}
        return [
            OpenOrder(
                o.order_id, o.side, lots_to_mw(o.remaining_lots), ticks_to_price(o.price_ticks), float(o.delivery_start)
            )
            for o in self._mine.values()
        ]

    def marks(self, now: float) -> dict[float, float]:
        """The mid of each open product's book that quotes both sides."""
        out = {}
        for ds, book in self.engine.books.items():
            bid, ask = book.best("buy"), book.best("sell")
            if bid is not None and ask is not None and gate_closes_at(ds) > now:
                out[float(ds)] = ticks_to_price(bid + ask) / 2
        return out
