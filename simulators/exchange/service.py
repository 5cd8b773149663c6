"""The exchange as one object: matching engine + market data + counterparties + trade publishing for sites.

No HTTP here (app.py is the REST face) and no clock: every call takes `now`.
"""

from __future__ import annotations

import logging
from typing import Protocol

from simulators.exchange.counterparties import Counterparties
from simulators.exchange.engine import MatchingEngine, Order, Result, TickOrder, Trade
from simulators.exchange.marketdata import MarketData

log = logging.getLogger("bess.exchange")


class TradeSink(Protocol):
    """Where a site's trades go (publisher.py's MQTT publisher)."""

    def publish_trade(self, site: str, trade: dict) -> None: ...

    def delivery(self, site: str, trade_id: str) -> dict: ...


class ExchangeService:
    def __init__(
        self,
        engine: MatchingEngine,
        market: MarketData,
        sites: set[str],
        publisher: TradeSink | None = None,
        counterparties: Counterparties | None = None,
        order_history_s: float = 3600.0,
    ):
        self.engine = engine
        self.market = market
        self.sites = set(sites)
        self.publisher = publisher
        self.counterparties = counterparties
        self.order_history_s = order_history_s
        self.site_trades: dict[str, list[Trade]] = {}
        self.trades_total = 0

    def submit(self, req: TickOrder, now: float) -> Result:
        self.expire(now)
        result = self.engine.submit(req, now)
        for trade in result.trades:
            self._on_trade(trade)
        return result

    def cancel(self, order_id: str, participant: str, now: float) -> Order:
        self.expire(now)
        return self.engine.cancel(order_id, participant, now)

    def expire(self, now: float) -> list[Order]:
        expired = self.engine.expire(now)
        for o in expired:
            if o.participant in self.sites:
                log.info("order %s of %s expired at gate closure", o.order_id, o.participant)
        return expired

    def tick(self, now: float) -> None:
        """Periodic work: expiry, counterparties' step, forgetting old counterparty orders and products."""
        self.expire(now)
        if self.counterparties is not None:
            self.counterparties.step(self, now)
        self.engine.prune(now - self.order_history_s, keep_participants=self.sites)
        self.market.prune(now)

    def _on_trade(self, trade: Trade) -> None:
        self.trades_total += 1
        self.market.on_trade(trade)
        for party in {trade.buyer, trade.seller}:
            if party in self.sites:
                self.site_trades.setdefault(party, []).append(trade)
                if self.publisher is not None:
                    view = trade.view(party)
                    view.pop("order_id")
                    for k in ("buy_order_id", "sell_order_id"):
                        view.pop(k)
                    self.publisher.publish_trade(party, view)

    def trades_of(self, participant: str) -> list[dict]:
        """`participant`'s trades, oldest first, each with `side`, its `order_id` and the MQTT delivery state."""
        out = []
        for t in self.site_trades.get(participant, []):
            d = t.view(participant)
            if self.publisher is not None:
                d.update(self.publisher.delivery(participant, t.trade_id))
            out.append(d)
        return out

    def market_data(self, now: float) -> dict:
        self.expire(now)
        # the next two hours always, further products only when they have quotes
        open_products = [
            ds for i, ds in enumerate(self.engine.open_products(now, 200)) if i < 8 or ds in self.engine.books
        ]
        quotes = {ds: (b.best("buy"), b.best("sell")) for ds, b in self.engine.books.items()}
        return self.market.summary(quotes, open_products, now)
