"""Simulated market participants: seeded traders quoting and hitting around the synthetic curve.

Each step, every counterparty may act on one of the open products of the next few hours: rest a passive
bid or ask a little away from its fair price, send an aggressive IOC across it (that makes trades), or
cancel one of its orders. Fair price = curve price + the trader's own bias + a mean-reverting drift per
product shared by all. Same seed and same step times -> the same orders.
"""

from __future__ import annotations

import random
from typing import Protocol

from simulators.exchange.curve import PriceCurve
from simulators.exchange.engine import MatchingEngine, Result, TickOrder, price_to_ticks


class Venue(Protocol):
    engine: MatchingEngine

    def submit(self, req: TickOrder, now: float) -> Result: ...

    def cancel(self, order_id: str, participant: str, now: float): ...


class Counterparties:
    def __init__(
        self,
        count: int,
        curve: PriceCurve,
        seed: int = 42,
        horizon_products: int = 16,
        max_orders_per_product: int = 4,
        market: str = "intraday",
    ):
        self.names = [f"cp-{i + 1:02d}" for i in range(count)]
        self.curve = curve
        self.rng = random.Random(seed ^ 0x5EED)
        self.bias_eur = {n: self.rng.gauss(0, 1.5) for n in self.names}
        self.horizon_products = horizon_products
        self.max_orders_per_product = max_orders_per_product
        self.market = market
        self.drift_eur: dict[int, float] = {}
        self.seeded: set[int] = set()

    def fair_eur(self, name: str, delivery_start: int) -> float:
        return self.curve.price(delivery_start) + self.bias_eur[name] + self.drift_eur.get(delivery_start, 0.0)

    def _request(self, name: str, side: str, price_eur: float, lots: int, ds: int, tif: str = "GTC") -> TickOrder:
        return TickOrder(
            participant=name,
            side=side,
            price_ticks=price_to_ticks(round(price_eur, 2)),
            quantity_lots=lots,
            delivery_start=ds,
            market=self.market,
            time_in_force=tif,
        )

    def _quote(self, venue: Venue, name: str, ds: int, now: float, side: str | None = None) -> None:
        side = side or self.rng.choice(("buy", "sell"))
        offset = 0.3 + abs(self.rng.gauss(0, 2.0))
        price = self.fair_eur(name, ds) + (-offset if side == "buy" else offset)
        venue.submit(self._request(name, side, price, self.rng.randint(1, 50), ds), now)

    def step(self, venue: Venue, now: float) -> int:
        """One round of decisions at `now`; returns how many orders/cancels were sent."""
        if not self.names:
            return 0
        products = venue.engine.open_products(now, self.horizon_products)
        if not products:
            return 0
        actions = 0
        for ds in products:
            drift = self.drift_eur.get(ds, 0.0)
            self.drift_eur[ds] = 0.95 * drift + self.rng.gauss(0, 0.4)
            if ds not in self.seeded:
                # a new product opens with a few quotes on both sides from everyone
                self.seeded.add(ds)
                for name in self.names:
                    for side in ("buy", "sell"):
                        self._quote(venue, name, ds, now, side)
                        actions += 1
        for ds in [ds for ds in self.drift_eur if ds < products[0]]:
            self.drift_eur.pop(ds)
            self.seeded.discard(ds)
        for name in self.names:
            if self.rng.random() > 0.5:
                continue
            ds = self.rng.choice(products)
            mine = [o for o in venue.engine.orders_of(name) if o.active and o.delivery_start == ds]
            roll = self.rng.random()
            if len(mine) >= self.max_orders_per_product or (roll < 0.15 and mine):
                venue.cancel(mine[0].order_id, name, now)
            elif roll < 0.35:
                side = self.rng.choice(("buy", "sell"))
                edge = 1.0 + abs(self.rng.gauss(0, 2.0))
                price = self.fair_eur(name, ds) + (edge if side == "buy" else -edge)
                venue.submit(self._request(name, side, price, self.rng.randint(1, 30), ds, "IOC"), now)
            else:
                self._quote(venue, name, ds, now)
            actions += 1
        return actions
