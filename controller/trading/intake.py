"""Trade intake, once for every way a trade arrives: parse and store an executed trade (committed before any
ack: MQTT, the API, `bess-edge trade add`), tell a redelivery whose ack never reached the exchange from a
duplicate, and load stored trades into a schedule (on start, and when another process stored them).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.store import Store, StoreError
from controller.trading.schedule import Schedule, Trade, TradeError, parse_trade

log = logging.getLogger("bess.intake")


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a trade message (`bess/{site}/trades/ack`)."""

    trade_id: str | None
    accepted: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"trade_id": self.trade_id, "accepted": self.accepted, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Stored:
    """A trade that parsed and is in the store: `new` is False when its trade_id was stored before."""

    trade: Trade
    body: dict[str, Any]  # the trade as stored (JSON)
    new: bool


def store_trade(store: Store, data: Any, source: str, record_rejected: bool = True) -> Stored | Ack:
    """Parse `data` and store it (committed when this returns). A refusal comes back as the Ack to give: bad
    fields (recorded in the store's rejected trades when `record_rejected`), or a storage error."""
    trade_id = data.get("trade_id") if isinstance(data, dict) else None
    try:
        trade = parse_trade(data)
    except TradeError as e:
        if record_rejected:
            store.record_rejected_trade(data, str(e))
        log.warning("trade rejected", extra={"trade_id": trade_id, "reason": str(e), "source": source})
        return Ack(trade_id if isinstance(trade_id, str) else None, False, str(e))
    try:
        body = trade.model_dump(mode="json")
        new = store.add_trade(body, source)
    except (StoreError, sqlite3.Error) as e:
        # nothing was stored, so nothing may be acknowledged as accepted
        log.error("trade could not be stored", extra={"trade_id": trade.trade_id, "error": str(e)})
        return Ack(trade.trade_id, False, f"not stored (storage error, retry later): {e}")
    return Stored(trade, body, new)


def unanswered_redelivery(store: Store, trade_id: str, body: dict[str, Any]) -> bool:
    """True for an MQTT trade we stored whose ack never reached the broker (we died in between), received
    again with the same content: the exchange never got an answer, and the truthful one is "accepted".
    A replay of an answered trade, or the id reused with other content, stays a refused duplicate."""
    try:
        seen = store.stored_trade(trade_id)
    except (StoreError, sqlite3.Error) as e:
        log.error("stored trade could not be read", extra={"trade_id": trade_id, "error": str(e)})
        return False
    return seen is not None and seen["ack_confirmed_ts"] is None and seen["source"] == "mqtt" and seen["trade"] == body


def load_stored(schedule: Schedule, rows: Iterable[dict[str, Any]]) -> int:
    """Add stored trades (rows of `Store.trades_for_schedule`) to `schedule`; returns how many were new to it.
    A stored trade that no longer parses is logged and skipped: the rest still load."""
    added = 0
    for t in rows:
        try:
            added += bool(schedule.add(parse_trade(t)))
        except TradeError as e:
            log.error("stored trade does not parse", extra={"trade_id": t.get("trade_id"), "reason": str(e)})
    return added
