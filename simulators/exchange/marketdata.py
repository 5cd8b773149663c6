"""Market data per 15-minute product: best bid/ask, last, VWAP, EMA of trade prices, mark; and DESIGN.md's summary.

The statistics are pure functions of trades and quotes; `MarketData` keeps the running aggregates in integers
(ticks × lots) so the VWAP has no float drift however many trades a product gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from controller.clock import iso
from controller.trading.market import PERIOD_S
from simulators.exchange.engine import Trade, lots_to_mw, ticks_to_price


def ema_alpha(span: int) -> float:
    """alpha = 2 / (N + 1)."""
    if span < 1:
        raise ValueError(f"ema span must be >= 1 (got {span})")
    return 2.0 / (span + 1)


def ema(prices: Iterable[float], span: int) -> float | None:
    """Exponential moving average of `prices` in order, seeded with the first price; None for no prices."""
    a = ema_alpha(span)
    value = None
    for p in prices:
        value = p if value is None else a * p + (1 - a) * value
    return value


def vwap(trades: Iterable[tuple[float, float]]) -> float | None:
    """Volume-weighted average price of (price, quantity) pairs; None when the volume is 0."""
    num = vol = 0.0
    for price, qty in trades:
        num += price * qty
        vol += qty
    return num / vol if vol else None


def mark(
    best_bid: float | None, best_ask: float | None, last: float | None, vwap_price: float | None, spread_max_eur: float
) -> float | None:
    """Mid when both sides quote and the spread is under `spread_max_eur`; else last; else VWAP; else None."""
    if best_bid is not None and best_ask is not None and best_ask - best_bid < spread_max_eur:
        return round((best_bid + best_ask) / 2, 3)
    if last is not None:
        return last
    return vwap_price


@dataclass
class ProductStats:
    """Running trade statistics of one product (integers where it matters)."""

    delivery_start: int
    trades: int = 0
    volume_lots: int = 0
    notional: int = 0  # sum of price_ticks * lots
    last_ticks: int | None = None
    ema_eur: float | None = None
    last_trade_at: float | None = None

    @property
    def vwap_eur(self) -> float | None:
        # ticks*lots / lots = ticks, / 100 = EUR; one division at the end, exact inputs
        return round(self.notional / self.volume_lots / 100, 4) if self.volume_lots else None

    @property
    def last_eur(self) -> float | None:
        return None if self.last_ticks is None else ticks_to_price(self.last_ticks)


class MarketData:
    """Per-product aggregates fed with every trade; quotes come from the engine's books when asked."""

    def __init__(self, ema_span: int = 20, mark_spread_max_eur: float = 5.0, history_s: float = 86400.0):
        self.alpha = ema_alpha(ema_span)
        self.ema_span = ema_span
        self.mark_spread_max_eur = mark_spread_max_eur
        self.history_s = history_s
        self.products: dict[int, ProductStats] = {}

    def on_trade(self, trade: Trade) -> None:
        st = self.products.setdefault(trade.delivery_start, ProductStats(trade.delivery_start))
        st.trades += 1
        st.volume_lots += trade.quantity_lots
        st.notional += trade.price_ticks * trade.quantity_lots
        st.last_ticks = trade.price_ticks
        price = ticks_to_price(trade.price_ticks)
        st.ema_eur = price if st.ema_eur is None else self.alpha * price + (1 - self.alpha) * st.ema_eur
        st.last_trade_at = trade.executed_at

    def prune(self, now: float) -> None:
        """Forget products delivered more than `history_s` ago."""
        for ds in [ds for ds in self.products if ds + PERIOD_S < now - self.history_s]:
            del self.products[ds]

    def product(
        self, delivery_start: int, best_bid_ticks: int | None, best_ask_ticks: int | None, is_open: bool
    ) -> dict:
        st = self.products.get(delivery_start) or ProductStats(delivery_start)
        bid = None if best_bid_ticks is None else ticks_to_price(best_bid_ticks)
        ask = None if best_ask_ticks is None else ticks_to_price(best_ask_ticks)
        return {
            "delivery_start": iso(delivery_start),
            "delivery_end": iso(delivery_start + PERIOD_S),
            "open": is_open,
            "best_bid": bid,
            "best_ask": ask,
            "last": st.last_eur,
            "vwap": st.vwap_eur,
            "ema": None if st.ema_eur is None else round(st.ema_eur, 4),
            "mark": mark(bid, ask, st.last_eur, st.vwap_eur, self.mark_spread_max_eur),
            "volume_mw": lots_to_mw(st.volume_lots),
            "trades": st.trades,
        }

    def summary(self, quotes: dict[int, tuple[int | None, int | None]], open_products: list[int], now: float) -> dict:
        """DESIGN.md's `{mark, ema, vwap, series}`: the top level is the front product (the nearest one still
        open, `front`); `series` is the 15-minute VWAP and volume of every product traded in the history
        window; `products` has the detail of the open products and of the traded ones."""
        keys = sorted(set(open_products) | {ds for ds, st in self.products.items() if st.volume_lots})
        products = [self.product(ds, *quotes.get(ds, (None, None)), is_open=ds in open_products) for ds in keys]
        front = open_products[0] if open_products else None
        top = next((p for p in products if front is not None and p["delivery_start"] == iso(front)), None)
        series = [
            {
                "period_start": iso(ds),
                "vwap": self.products[ds].vwap_eur,
                "volume_mw": lots_to_mw(self.products[ds].volume_lots),
            }
            for ds in sorted(self.products)
            if self.products[ds].volume_lots
        ]
        return {
            "mark": top["mark"] if top else None,
            "ema": top["ema"] if top else None,
            "vwap": top["vwap"] if top else None,
            "series": series,
            "front": iso(front) if front is not None else None,
            "ts": iso(now),
            "ema_span": self.ema_span,
            "mark_spread_max_eur": self.mark_spread_max_eur,
            "products": products,
        }
