"""Continuous price-time-priority matching of 15-minute delivery products, in integer ticks and lots.

Pure: no I/O and no clock; every call that depends on time takes `now` (Unix seconds).

Policies:
- one order book per product (product key = delivery_start, Unix seconds on a :00/:15/:30/:45 boundary);
- limit orders; time in force GTC (rest), IOC (fill what crosses, cancel the rest), FOK (fill all or nothing);
- a trade executes at the resting order's price; prices are 0.01 EUR/MWh ticks, quantities 0.1 MW lots;
- gate closure `gate_closure_s` (300 s) before delivery: new orders are rejected, resting ones expire;
- self-trade prevention, "cancel newest": when an incoming order would match a resting order of the same
  participant, the incoming order's remaining quantity is cancelled (what it matched before stays filled),
  the resting order is untouched. This keeps the book uncrossed and never trades a participant with itself.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

from controller.clock import iso
from controller.trading.market import (
    GATE_CLOSURE_S,
    PERIOD_S,
    gate_closes_at,
    gate_open,
)

Side = Literal["buy", "sell"]
TimeInForce = Literal["GTC", "IOC", "FOK"]

TICKS_PER_EUR = 100  # 0.01 EUR/MWh
LOTS_PER_MW = 10  # 0.1 MW

ACTIVE = ("open", "partially_filled")
TERMINAL = ("filled", "cancelled", "expired", "rejected")


class EngineError(Exception):
    """Base of the engine's typed errors."""


class OrderNotFound(EngineError):
    pass


class OrderNotActive(EngineError):
    def __init__(self, order: "Order"):
        super().__init__(f"order {order.order_id} is {order.status}, not active")
        self.order = order


def _exact_multiple(value: float | int | str | Decimal, unit: Decimal, what: str) -> int:
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what}: not a number ({value!r})") from None
    if not d.is_finite():
        raise ValueError(f"{what}: not a finite number ({value!r})")
    q = d / unit
    if q != q.to_integral_value():
        raise ValueError(f"{what}: must be a multiple of {unit} (got {value})")
    return int(q)


def price_to_ticks(price_eur_mwh: float | int | str) -> int:
    """EUR/MWh -> integer 0.01 ticks; a price with more precision is refused (ValueError)."""
    return _exact_multiple(price_eur_mwh, Decimal("0.01"), "price_eur_mwh")


def mw_to_lots(quantity_mw: float | int | str) -> int:
    """MW -> integer 0.1 MW lots; a quantity with more precision is refused (ValueError)."""
    return _exact_multiple(quantity_mw, Decimal("0.1"), "quantity_mw")


def ticks_to_price(ticks: int) -> float:
    return ticks / TICKS_PER_EUR


def lots_to_mw(lots: int) -> float:
    return lots / LOTS_PER_MW


@dataclass(frozen=True)
class TickOrder:
    """An order in the engine's units: integer 0.01 EUR/MWh ticks and 0.1 MW lots (the wire's MW and EUR/MWh
    become these at the engine's boundary: simulators/exchange/wire.py)."""

    participant: str
    side: Side
    price_ticks: int
    quantity_lots: int
    delivery_start: int
    market: str = "intraday"
    time_in_force: TimeInForce = "GTC"
    client_order_id: str | None = None


@dataclass(eq=False)
class Order:
    order_id: str
    seq: int
    participant: str
    side: Side
    price_ticks: int
    quantity_lots: int
    delivery_start: int
    market: str
    time_in_force: TimeInForce
    client_order_id: str | None
    created_at: float
    updated_at: float
    filled_lots: int = 0
    status: str = "open"
    reason: str | None = None

    @property
    def remaining_lots(self) -> int:
        """Unfilled lots (quantity - filled, also after cancel/expiry; `active` says whether it still rests)."""
        return self.quantity_lots - self.filled_lots

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_dict(self) -> dict:
        d = {
            "order_id": self.order_id,
            "status": self.status,
            "filled_mw": lots_to_mw(self.filled_lots),
            "remaining_mw": lots_to_mw(self.remaining_lots),
            "side": self.side,
            "quantity_mw": lots_to_mw(self.quantity_lots),
            "price_eur_mwh": ticks_to_price(self.price_ticks),
            "delivery_start": iso(self.delivery_start),
            "delivery_end": iso(self.delivery_start + PERIOD_S),
            "market": self.market,
            "time_in_force": self.time_in_force,
            "participant": self.participant,
            "client_order_id": self.client_order_id,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass(frozen=True)
class Trade:
    trade_id: str
    seq: int
    buy_order_id: str
    sell_order_id: str
    buyer: str
    seller: str
    price_ticks: int
    quantity_lots: int
    delivery_start: int
    market: str
    executed_at: float

    def to_dict(self) -> dict:
        return {
            "trade_id": self.trade_id,
            "buy_order_id": self.buy_order_id,
            "sell_order_id": self.sell_order_id,
            "price_eur_mwh": ticks_to_price(self.price_ticks),
            "quantity_mw": lots_to_mw(self.quantity_lots),
            "delivery_start": iso(self.delivery_start),
            "delivery_end": iso(self.delivery_start + PERIOD_S),
            "market": self.market,
            "executed_at": iso(self.executed_at),
        }

    def side_of(self, participant: str) -> Side | None:
        if participant == self.buyer:
            return "buy"
        if participant == self.seller:
            return "sell"
        return None

    def view(self, participant: str) -> dict:
        """The trade as `participant` sees it: adds `side` and its own `order_id`."""
        side = self.side_of(participant)
        if side is None:
            raise ValueError(f"{participant} is not a party to trade {self.trade_id}")
        return {**self.to_dict(), "side": side, "order_id": self.buy_order_id if side == "buy" else self.sell_order_id}


@dataclass
class Result:
    order: Order
    trades: list[Trade] = field(default_factory=list)


def _crosses(incoming: Order, resting_price_ticks: int) -> bool:
    if incoming.side == "buy":
        return resting_price_ticks <= incoming.price_ticks
    return resting_price_ticks >= incoming.price_ticks


class Book:
    """One product's resting orders: price levels (FIFO deques) sorted best first on each side."""

    def __init__(self, delivery_start: int):
        self.delivery_start = delivery_start
        # keys are price for asks and -price for bids, so that keys[0] is the best level on both sides
        self._levels: dict[Side, dict[int, deque[Order]]] = {"buy": {}, "sell": {}}
        self._keys: dict[Side, list[int]] = {"buy": [], "sell": []}
        self._count = 0

    @staticmethod
    def _key(side: Side, price_ticks: int) -> int:
        return -price_ticks if side == "buy" else price_ticks

    def add(self, order: Order) -> None:
        k = self._key(order.side, order.price_ticks)
        levels = self._levels[order.side]
        if k not in levels:
            levels[k] = deque()
            bisect.insort(self._keys[order.side], k)
        levels[k].append(order)
        self._count += 1

    def remove(self, order: Order) -> None:
        k = self._key(order.side, order.price_ticks)
        level = self._levels[order.side].get(k)
        if level is None:
            return
        try:
            level.remove(order)
        except ValueError:
            return
        self._count -= 1
        if not level:
            self._drop_level(order.side, k)

    def head(self, side: Side) -> Order | None:
        """The first order in priority on `side`, or None."""
        keys = self._keys[side]
        return self._levels[side][keys[0]][0] if keys else None

    def pop_head(self, side: Side) -> Order:
        k = self._keys[side][0]
        level = self._levels[side][k]
        order = level.popleft()
        self._count -= 1
        if not level:
            del self._levels[side][k]
            del self._keys[side][0]
        return order

    def _drop_level(self, side: Side, k: int) -> None:
        del self._levels[side][k]
        keys = self._keys[side]
        del keys[bisect.bisect_left(keys, k)]

    def best(self, side: Side) -> int | None:
        """Best price in ticks on `side`, or None when that side is empty."""
        keys = self._keys[side]
        if not keys:
            return None
        return -keys[0] if side == "buy" else keys[0]

    def levels(self, side: Side) -> list[tuple[int, int]]:
        """[(price_ticks, total remaining lots)] best first."""
        out = []
        for k in self._keys[side]:
            price = -k if side == "buy" else k
            out.append((price, sum(o.remaining_lots for o in self._levels[side][k])))
        return out

    def orders(self, side: Side) -> list[Order]:
        """Resting orders on `side` in priority order."""
        return [o for k in self._keys[side] for o in self._levels[side][k]]

    def __len__(self) -> int:
        return self._count

    def _crossing(self, incoming: Order):
        """Resting orders that `incoming` may match, in priority order (read-only: the book must not change
        while this generator runs)."""
        opposite: Side = "sell" if incoming.side == "buy" else "buy"
        for k in self._keys[opposite]:
            if not _crosses(incoming, -k if opposite == "buy" else k):
                return
            for resting in self._levels[opposite][k]:
                yield k, resting

    def fillable_lots(self, incoming: Order, self_trade_prevention: bool) -> int:
        """How much of `incoming` would fill now (FOK's pre-check), stopping at an own order under STP."""
        total = 0
        for _, resting in self._crossing(incoming):
            if self_trade_prevention and resting.participant == incoming.participant:
                break
            total += resting.remaining_lots
            if total >= incoming.remaining_lots:
                break
        return total


class MatchingEngine:
    """All products' books plus every order it has seen (until pruned)."""

    def __init__(
        self,
        gate_closure_s: int = GATE_CLOSURE_S,
        horizon_s: int = 2 * 86400,
        id_prefix: str = "",
        self_trade_prevention: bool = True,
    ):
        self.gate_closure_s = gate_closure_s
        self.horizon_s = horizon_s
        self.id_prefix = id_prefix
        self.self_trade_prevention = self_trade_prevention
        self.books: dict[int, Book] = {}
        self.orders: dict[str, Order] = {}
        self._by_participant: dict[str, dict[str, Order]] = {}
        self._by_client_id: dict[tuple[str, str], str] = {}
        self._order_seq = 0
        self._trade_seq = 0

    # ---- products -------------------------------------------------------------------------------------
    def gate_closes_at(self, delivery_start: int) -> int:
        return gate_closes_at(delivery_start, self.gate_closure_s)

    def is_open(self, delivery_start: int, now: float) -> bool:
        return gate_open(delivery_start, now, self.gate_closure_s) and delivery_start - now <= self.horizon_s

    def open_products(self, now: float, count: int) -> list[int]:
        """The next `count` products still open for trading at `now`, nearest first."""
        first = (int(now + self.gate_closure_s) // PERIOD_S + 1) * PERIOD_S
        return [p for p in (first + i * PERIOD_S for i in range(count)) if self.is_open(p, now)]

    def refusal(self, req: TickOrder, now: float) -> str | None:
        """Why `req` cannot enter at `now`, or None when it can."""
        if req.delivery_start % PERIOD_S:
            return "delivery_start is not on a 15-minute boundary"
        if not gate_open(req.delivery_start, now, self.gate_closure_s):
            return (
                f"gate closed for {iso(req.delivery_start)} at {iso(self.gate_closes_at(req.delivery_start))} "
                f"({self.gate_closure_s // 60} min before delivery)"
            )
        if req.delivery_start - now > self.horizon_s:
            return f"product {iso(req.delivery_start)} not open yet (more than {self.horizon_s} s ahead)"
        if req.quantity_lots <= 0:
            return "quantity_mw must be > 0"
        return None

    # ---- orders ---------------------------------------------------------------------------------------
    def _new_order(self, req: TickOrder, now: float) -> Order:
        self._order_seq += 1
        order = Order(
            order_id=f"{self.id_prefix}O{self._order_seq:08d}",
            seq=self._order_seq,
            participant=req.participant,
            side=req.side,
            price_ticks=req.price_ticks,
            quantity_lots=req.quantity_lots,
            delivery_start=req.delivery_start,
            market=req.market,
            time_in_force=req.time_in_force,
            client_order_id=req.client_order_id,
            created_at=now,
            updated_at=now,
        )
        self.orders[order.order_id] = order
        self._by_participant.setdefault(order.participant, {})[order.order_id] = order
        if req.client_order_id:
            self._by_client_id[(req.participant, req.client_order_id)] = order.order_id
        return order

    def find_client_order(self, participant: str, client_order_id: str) -> Order | None:
        oid = self._by_client_id.get((participant, client_order_id))
        return self.orders.get(oid) if oid else None

    def submit(self, req: TickOrder, now: float) -> Result:
        """Enter an order at `now`: reject it, match it, and rest (GTC) or cancel (IOC/FOK) the remainder."""
        order = self._new_order(req, now)
        why = self.refusal(req, now)
        if why:
            order.status, order.reason = "rejected", why
            return Result(order)
        book = self.books.setdefault(req.delivery_start, Book(req.delivery_start))
        if order.time_in_force == "FOK":
            can = book.fillable_lots(order, self.self_trade_prevention)
            if can < order.quantity_lots:
                order.status = "cancelled"
                order.reason = (
                    f"FOK: only {lots_to_mw(can):g} of {lots_to_mw(order.quantity_lots):g} MW fillable at the limit"
                )
                return Result(order)
        trades = self._match(book, order, now)
        if order.remaining_lots == 0:
            order.status = "filled"
        elif order.status == "cancelled":
            pass  # self-trade prevention cancelled the remainder
        elif order.time_in_force == "GTC":
            order.status = "partially_filled" if order.filled_lots else "open"
            book.add(order)
        else:
            order.status = "cancelled"
            order.reason = f"{order.time_in_force}: remainder {lots_to_mw(order.remaining_lots):g} MW cancelled"
        if not len(book):
            del self.books[req.delivery_start]
        return Result(order, trades)

    def _match(self, book: Book, incoming: Order, now: float) -> list[Trade]:
        trades: list[Trade] = []
        while incoming.remaining_lots:
            resting = book.head("sell" if incoming.side == "buy" else "buy")
            if resting is None or not _crosses(incoming, resting.price_ticks):
                break
            if self.self_trade_prevention and resting.participant == incoming.participant:
                incoming.status = "cancelled"
                incoming.reason = (
                    f"self-trade prevention: would match own order {resting.order_id}; "
                    f"remainder {lots_to_mw(incoming.remaining_lots):g} MW cancelled"
                )
                break
            lots = min(incoming.remaining_lots, resting.remaining_lots)
            self._trade_seq += 1
            buy, sell = (incoming, resting) if incoming.side == "buy" else (resting, incoming)
            trades.append(
                Trade(
                    trade_id=f"{self.id_prefix}T{self._trade_seq:08d}",
                    seq=self._trade_seq,
                    buy_order_id=buy.order_id,
                    sell_order_id=sell.order_id,
                    buyer=buy.participant,
                    seller=sell.participant,
                    price_ticks=resting.price_ticks,
                    quantity_lots=lots,
                    delivery_start=book.delivery_start,
                    market=resting.market,
                    executed_at=now,
                )
            )
            incoming.filled_lots += lots
            resting.filled_lots += lots
            resting.updated_at = now
            if resting.remaining_lots == 0:
                resting.status = "filled"
                book.pop_head(resting.side)
            else:
                resting.status = "partially_filled"
        incoming.updated_at = now
        return trades

    def cancel(self, order_id: str, participant: str, now: float) -> Order:
        """Cancel an active order of `participant`; another participant's order counts as not found."""
        order = self.orders.get(order_id)
        if order is None or order.participant != participant:
            raise OrderNotFound(order_id)
        if not order.active:
            raise OrderNotActive(order)
        book = self.books.get(order.delivery_start)
        if book is not None:
            book.remove(order)
            if not len(book):
                del self.books[order.delivery_start]
        order.status, order.updated_at = "cancelled", now
        order.reason = "cancelled by participant"
        return order

    def expire(self, now: float) -> list[Order]:
        """Expire every resting order of the products whose gate has closed at `now`; drop those books."""
        expired: list[Order] = []
        for ds in [ds for ds in self.books if not gate_open(ds, now, self.gate_closure_s)]:
            book = self.books.pop(ds)
            for side in ("buy", "sell"):
                for o in book.orders(side):
                    o.status, o.updated_at = "expired", now
                    o.reason = f"gate closed at {iso(self.gate_closes_at(ds))}"
                    expired.append(o)
        return expired

    def orders_of(self, participant: str) -> list[Order]:
        return list(self._by_participant.get(participant, {}).values())

    def prune(self, before: float, keep_participants: set[str] = frozenset()) -> int:
        """Forget terminal orders last updated before `before` (except `keep_participants`'); returns how many."""
        gone = [
            o
            for o in self.orders.values()
            if not o.active and o.updated_at < before and o.participant not in keep_participants
        ]
        for o in gone:
            del self.orders[o.order_id]
            self._by_participant.get(o.participant, {}).pop(o.order_id, None)
            if o.client_order_id:
                self._by_client_id.pop((o.participant, o.client_order_id), None)
        return len(gone)
