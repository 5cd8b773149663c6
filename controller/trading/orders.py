"""Trading on the edge: orders from the site pass the pre-trade feasibility check (open orders at their worst
case), their intent is stored, then they are signed and sent to the exchange, and kept in the store; an order
left without an answer (timeout, error, kill -9) is reconciled with the exchange by its client_order_id, never
sent twice. Market data, orders and trades are served from a short cache that still answers (flagged `stale`)
when the exchange is unreachable. Position and PnL per 15-minute period.
Also `bess-edge trade add` for commissioning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.clock import iso, parse_iso
from controller.commands import PlantCommands
from controller.store import Store, StoreError
from controller.tasks import Background
from controller.trading.errors import ExchangeDown, ExchangeNotConfigured, OrderRefused
from controller.trading.exchange import (
    ExchangeClient,
    ExchangeError,
    ExchangeNotReached,
    ExchangeRejected,
)
from controller.trading.market import PERIOD_S, PRICE_LIMIT_EUR_MWH, gate_open

if TYPE_CHECKING:
    from controller.config import Secrets, SiteConfig

log = logging.getLogger("bess.trading")

ORDER_SYNC_MAX = 50  # locally active orders re-read one by one per refresh, at most
OPEN_ORDERS_MAX = 10_000  # open orders counted by the pre-trade check (far more than a site has)
RECONCILE_INTERVAL_S = 2.0  # pending order intents are asked for at the exchange this often (real seconds)
SETTLE_MARGIN_S = 5.0  # beyond two request windows, before an order the exchange lacks is settled not placed


def _leg(side: Any, quantity_mw: Any, delivery_start: Any) -> tuple[float, float] | None:
    """An order as (period start, signed MW: + sell, - buy); None for a record that cannot be read (logged)."""
    try:
        start = parse_iso(delivery_start) if isinstance(delivery_start, str) else float(delivery_start)
        mw = float(quantity_mw)
    except (TypeError, ValueError):
        log.error(
            "stored order unreadable: left out of the pre-trade check",
            extra={"side": side, "quantity_mw": quantity_mw, "delivery_start": delivery_start},
        )
        return None
    if side not in ("buy", "sell") or not (math.isfinite(mw) and math.isfinite(start)) or mw <= 0:
        return None
    return start, mw if side == "sell" else -mw


class OrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    side: Literal["buy", "sell"]
    quantity_mw: float = Field(gt=0, le=10_000)
    price_eur_mwh: float = Field(ge=-PRICE_LIMIT_EUR_MWH, le=PRICE_LIMIT_EUR_MWH)
    market: str = Field("intraday", min_length=1, max_length=64)
    delivery_start: str
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"

    @field_validator("quantity_mw", "price_eur_mwh")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("delivery_start")
    @classmethod
    def _aligned(cls, v: str) -> str:
        try:
            ts = parse_iso(v)
        except ValueError as e:
            raise ValueError(f"not an ISO 8601 UTC time ({e})") from e
        if ts % PERIOD_S:
            raise ValueError("must be on a 15-minute boundary (:00, :15, :30, :45)")
        return iso(ts).replace(".000Z", "Z")


@dataclass
class Cached:
    value: Any = None
    fetched_mono: float = -math.inf
    error: str | None = None


class OrderDesk:
    """The site's trading: pre-trade check, signed orders to the exchange, a cache that survives outages."""

    def __init__(
        self,
        commands: PlantCommands,
        store: Store,
        config: "SiteConfig",
        now: Callable[[], float],
        secrets: "Secrets",
        client: ExchangeClient | None = None,
    ):
        """`commands`: the pre-trade check (the controller's, handed over by the composition root); `now`: the
        controller's clock."""
        self.commands = commands
        self.store = store
        self.config = config
        self.now = now
        # signed with the controller's clock, the same one the gate-closure check reads: the site and the exchange
        # must agree on time (in tests and labs both run on one injected clock; on a site it is the real one)
        # the site's key at the exchange is EXCHANGE_API_KEY, never one of the local API keys (one purpose each);
        # without it the client still reads the exchange's public market data
        self.has_key = client is not None or bool(secrets.exchange_api_key)
        self.client = client or ExchangeClient(
            secrets.exchange_base_url,
            secrets.exchange_api_key,
            secrets.hmac_secret,
            timeout_s=self.config.exchange.timeout_s,
            now=now,
        )
        self._market = Cached()
        self._orders = Cached()
        self._trades = Cached()
        self._lock = asyncio.Lock()
        self._in_flight: set[str] = set()  # client_order_ids whose request this process is sending now
        self._reconciler = Background("order-intents")

    async def start(self) -> None:
        """Reconcile the intents a previous run left pending (a kill -9 mid-send), now and then periodically."""
        self._reconciler.start(self._reconcile_loop)

    async def close(self) -> None:
        await self._reconciler.stop()
        await self.client.aclose()

    # ---------------------------------------------------------------- orders
    def pre_trade_check(self, order: OrderRequest):
        """Feasibility of the whole schedule if this order and any of the site's open orders fill: each limit at
        its worst case (schedule.check_feasibility; this order is refused only for a worst case it is part of).
        Refuses on an unknown SoC."""
        return self.commands.feasibility(
            self.open_legs(), new_order=_leg(order.side, order.quantity_mw, order.delivery_start)
        )

    def open_legs(self) -> list[tuple[float, float]]:
        """(period start, signed MW that may still fill) of every order of the site that may still trade: the
        open and partially filled orders' remaining quantity (their filled part is in the schedule as trades),
        and the intents not yet settled (sent or not, the exchange may have them)."""
        legs = []
        for o in self.store.orders(active_only=True, limit=OPEN_ORDERS_MAX):
            remaining = o.get("remaining_mw")
            remaining = o.get("quantity_mw") if not isinstance(remaining, (int, float)) else remaining
            leg = _leg(o.get("side"), remaining, o.get("delivery_start"))
            if leg is not None:
                legs.append(leg)
        for i in self.store.order_intents("pending", limit=OPEN_ORDERS_MAX):  # maybe at the exchange: in full
            leg = _leg(i["side"], i["quantity_mw"], i["delivery_start"])
            if leg is not None:
                legs.append(leg)
        return legs

    async def place_order(
        self, body: dict[str, Any], who: str = "api", meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Check, store the intent (committed), send; the order as the exchange holds it. With no answer from the
        exchange, ask it by client_order_id; the order is never sent twice. `meta` (e.g. the auto-trader's plan
        id and reason) is stored with the intent, with `who`."""
        order = OrderRequest.model_validate(body)
        if not self.has_key:
            raise ExchangeNotConfigured()
        now = self.now()
        start = parse_iso(order.delivery_start)
        if not gate_open(start, now):
            raise OrderRefused(
                f"gate closed: delivery {order.delivery_start} starts in less than 5 minutes",
                iso(start),
                "gate_closure",
            )
        # from the check to the stored intent nothing awaits: two requests at once cannot both pass the check
        # against the same open orders
        feas = self.pre_trade_check(order)
        if not feas.ok:
            period = iso(feas.period_start) if feas.period_start is not None else None
            log.info(
                "order refused by the pre-trade check",
                extra={"reason": feas.reason, "side": order.side, "quantity_mw": order.quantity_mw},
            )
            raise OrderRefused(feas.reason, period, feas.limit)
        cid = f"{self.config.site.id}-{uuid.uuid4().hex[:16]}"
        out = {**order.model_dump(), "participant": self.config.site.id, "client_order_id": cid}
        try:
            self.store.add_order_intent(cid, out, now, {"who": who, **(meta or {})})
        except (StoreError, sqlite3.Error) as e:
            log.error("order intent not stored: order not sent", extra={"client_order_id": cid, "error": str(e)})
            raise ExchangeDown(f"order not sent: its intent could not be stored ({e})") from e
        self._in_flight.add(cid)
        try:
            placed = await self._send(cid, out, now)
        finally:
            self._in_flight.discard(cid)
        self._orders.fetched_mono = -math.inf  # refresh on the next read
        return placed

    async def _send(self, cid: str, out: dict[str, Any], created_ts: float) -> dict[str, Any]:
        """Send a stored intent once and settle it by the answer: placed, refused, or (no answer) reconciled."""
        try:
            placed = await self.client.place_order(out)
        except ExchangeRejected as e:  # a definite answer: the exchange did not take it
            detail = e.detail
            log.warning(
                "exchange refused the order", extra={"reason": detail, "status": e.status_code, "client_order_id": cid}
            )
            rec = e.body.get("order") if isinstance(e.body, dict) else None
            self.store.resolve_order_intent(cid, "refused", rec if isinstance(rec, dict) else None, detail)
            raise OrderRefused(
                f"exchange refused: {detail}",
                out["delivery_start"],
                "exchange",
                status=409 if e.status_code == 409 else 422,
            ) from e
        except ExchangeNotReached as e:  # no connection, so nothing sent: settled now
            log.error("exchange unreachable: order not sent", extra={"error": str(e), "client_order_id": cid})
            self.store.resolve_order_intent(cid, "not_placed", reason=f"exchange unreachable, nothing sent: {e}")
            raise ExchangeDown(f"exchange unreachable, order not sent: {e}") from e
        except ExchangeError as e:  # no answer, or a 5xx: the exchange may have taken it all the same
            log.warning(
                "no answer from the exchange: asking it by client_order_id",
                extra={"client_order_id": cid, "error": str(e)},
            )
            found = await self._reconcile(cid, created_ts)
            if found is None:
                raise ExchangeDown(
                    f"no answer from the exchange ({e}); the order may or may not have been taken: it is kept "
                    f"pending as client_order_id {cid}, counted as open by the pre-trade check, and reconciled "
                    f"with the exchange by that id (never sent again)"
                ) from e
            return found
        placed.pop("trades", None)
        if not self.store.resolve_order_intent(cid, "placed", placed):
            self.store.add_order(placed)  # settled meanwhile by the reconciler: keep the freshest view
        log.info(
            "order sent",
            extra={"order_id": placed.get("order_id"), "status": placed.get("status"), "client_order_id": cid},
        )
        return placed

    @property
    def settle_s(self) -> float:
        """How long after its intent was stored an order the exchange does not have can still arrive there: its
        request carries a timestamp from just after that moment, and the exchange refuses one older than its
        window, on its own clock (up to a window apart from ours)."""
        return 2 * self.config.exchange.request_window_s + SETTLE_MARGIN_S

    async def _reconcile(self, cid: str, created_ts: float) -> dict[str, Any] | None:
        """Ask the exchange for the order of a pending intent. It has it: placed (stored). It has not, and can no
        longer take it (`settle_s` passed): not_placed. Otherwise (or unreachable): still pending, None."""
        try:
            found = await self.client.order_by_client_id(cid)
        except ExchangeError as e:
            log.warning(
                "order intent not reconciled: exchange unreachable", extra={"client_order_id": cid, "error": str(e)}
            )
            return None
        if found is not None:
            found.pop("trades", None)
            if not self.store.resolve_order_intent(cid, "placed", found):
                log.error(
                    "the exchange has an order whose intent was already settled: stored as it is there",
                    extra={"client_order_id": cid, "order_id": found.get("order_id")},
                )
                self.store.add_order(found)
            log.info(
                "order intent reconciled: the exchange has the order",
                extra={"client_order_id": cid, "order_id": found.get("order_id"), "status": found.get("status")},
            )
            self._orders.fetched_mono = -math.inf
            return found
        waited_s = self.now() - created_ts
        if waited_s >= self.settle_s:
            reason = (
                f"not at the exchange {waited_s:.0f} s after it was stored (the request never reached it, "
                f"and one older than its {self.config.exchange.request_window_s:g} s window cannot)"
            )
            if self.store.resolve_order_intent(cid, "not_placed", reason=reason):
                log.warning("order intent settled: never placed", extra={"client_order_id": cid, "reason": reason})
        return None

    async def reconcile_pending(self) -> int:
        """Reconcile every pending intent not being sent right now (startup, then every RECONCILE_INTERVAL_S);
        how many are still pending."""
        pending = [i for i in self.store.order_intents("pending") if i["client_order_id"] not in self._in_flight]
        if pending and not self.has_key:
            log.warning(
                "pending order intents cannot be reconciled without EXCHANGE_API_KEY", extra={"pending": len(pending)}
            )
            return len(pending)
        for intent in pending:
            await self._reconcile(intent["client_order_id"], intent["created_ts"])
        return len(self.store.order_intents("pending")) if pending else 0

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile_pending()
            except (StoreError, sqlite3.Error) as e:
                log.error("order intents not reconciled: store error", extra={"error": str(e)})
            await asyncio.sleep(RECONCILE_INTERVAL_S)

    async def cancel_order(self, order_id: str, who: str = "api") -> dict[str, Any]:
        if not self.has_key:
            raise ExchangeNotConfigured()
        try:
            res = await self.client.cancel_order(order_id)
        except ExchangeRejected as e:
            raise OrderRefused(
                f"exchange refused the cancel: {e.detail}", status=404 if e.status_code == 404 else 409
            ) from e
        except ExchangeError as e:
            raise ExchangeDown(f"exchange unreachable, cancel not sent: {e}") from e
        self.store.update_order(
            order_id,
            status=res.get("status", "cancelled"),
            remaining_mw=res.get("remaining_mw"),
            filled_mw=res.get("filled_mw"),
        )
        self._orders.fetched_mono = -math.inf
        return res

    # ---------------------------------------------------------------- cached reads
    async def _cached(self, slot: Cached, fetch) -> tuple[Any, bool]:
        if time.monotonic() - slot.fetched_mono < self.config.exchange.cache_s:
            return slot.value, slot.error is not None
        try:
            slot.value = await fetch()
            slot.error = None
        except ExchangeError as e:
            if slot.error is None:
                log.warning("exchange unreachable: serving the last known data", extra={"error": str(e)})
            slot.error = str(e)
        slot.fetched_mono = time.monotonic()
        return slot.value, slot.error is not None

    async def market_data(self) -> dict[str, Any]:
        data, stale = await self._cached(self._market, self.client.market_data)
        out = dict(data) if isinstance(data, dict) else {"mark": None, "ema": None, "vwap": None, "series": []}
        out["stale"] = stale
        return out

    async def orders(self, active_only: bool = True) -> dict[str, Any]:
        if not self.has_key:  # no key, no orders at the exchange to read: only what the store holds
            return {"orders": self.store.orders(active_only=active_only), "stale": False}
        _, stale = await self._cached(self._orders, lambda: self._sync_orders(active_only))
        return {"orders": self.store.orders(active_only=active_only), "stale": stale}

    async def _sync_orders(self, active_only: bool) -> list[dict[str, Any]]:
        """The exchange's view of the site's orders into the store. An order the store holds as active but the
        exchange no longer lists as active (filled by a counterparty, expired at gate closure, cancelled
        elsewhere) is asked for by id, so it does not stay "open" here forever."""
        remote = await self.client.orders("active" if active_only else None)
        listed: set[str] = set()
        for o in remote if isinstance(remote, list) else []:
            if isinstance(o, dict) and o.get("order_id"):
                listed.add(o["order_id"])
                self._update_order(o)
        for o in self.store.orders(active_only=True, limit=ORDER_SYNC_MAX):
            order_id = o.get("order_id")
            if order_id in listed:
                continue
            try:
                self._update_order(await self.client.order(order_id))
            except ExchangeRejected as e:  # e.g. a restarted simulator that never knew it: keep what we have
                log.warning(
                    "order unknown at the exchange: left as stored",
                    extra={"order_id": order_id, "status": e.status_code, "reason": e.detail},
                )
        return remote

    def _update_order(self, o: dict[str, Any]) -> None:
        if o.get("order_id"):
            self.store.update_order(
                o["order_id"], status=o.get("status"), filled_mw=o.get("filled_mw"), remaining_mw=o.get("remaining_mw")
            )

    def trades(self, limit: int = 200) -> dict[str, Any]:
        return {"trades": self.store.trades(limit=limit), "stale": False}


# ---------------------------------------------------------------- commissioning CLI
def add_trade_cli(args) -> int:
    """`bess-edge trade add`: validate and store one executed trade, print the ack as JSON. A running daemon
    picks it up from the store within a cycle."""
    from controller.store import Store
    from controller.trading.intake import Ack, store_trade

    if args.json:
        try:
            data = json.loads(args.json)
        except json.JSONDecodeError as e:
            print(json.dumps({"trade_id": None, "accepted": False, "reason": f"--json: not JSON ({e})"}))
            return 2
    else:
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        data = {
            "trade_id": args.trade_id or f"manual-{uuid.uuid4().hex[:12]}",
            "side": args.side,
            "quantity_mw": args.quantity_mw,
            "price_eur_mwh": args.price_eur_mwh,
            "delivery_start": args.delivery_start,
            "delivery_end": args.delivery_end,
            "market": args.market,
            "executed_at": now,
        }
    store = Store.in_state_dir(args.state_dir)
    try:
        stored = store_trade(store, data, "cli", record_rejected=False)
        if isinstance(stored, Ack):
            print(json.dumps(stored.as_dict()))
            return 2
        ack = Ack(stored.trade.trade_id, stored.new, "stored" if stored.new else "duplicate trade_id: already stored")
        print(json.dumps(ack.as_dict()))
        return 0 if stored.new else 1
    finally:
        store.close()
