"""The durable store: one SQLite database (WAL) in the state directory holding trades, orders and order
intents, the decision log, alarms, the audit log, shortfalls and key-value state, with retention.

Durability. The connection runs `synchronous=FULL`: in WAL mode every commit fsyncs the WAL, so a write
that acknowledges something (a trade, an order, an alarm, a state change, an audit row) survives a process
kill -9 *and* a power loss once the method returns. NORMAL would survive kill -9 only (the WAL is synced at
checkpoints), which is not enough for a trade we have told the exchange we hold. The one exception is the
decision log: a decision acknowledges nothing, so `record_decision` only buffers the row in memory and the
buffer is written in one transaction every `DECISION_BATCH_ROWS` rows or `DECISION_FLUSH_S` seconds, with
`synchronous=NORMAL` for that commit. A kill -9 loses at most that last buffer (about one second of log);
it never corrupts the file (the WAL is checksummed) and never loses an acknowledged row, because a later
FULL commit syncs the whole WAL, earlier frames included.

Hot path (the control cycle, 0.1-1 s). Safe to call every cycle: `record_decision` (a list append; the
periodic flush is ~0.1 ms, is skipped, not waited for, while another thread of this process holds the
database, and waits at most 20 ms for another connection's write lock before leaving the rows buffered for
the next cycle), `get_state`, `has_trade`, `active_alarms`. One fsync each (~0.3-1 ms on an SSD), fine for
events but not for every cycle: `add_trade`, `raise_alarm`, `clear_alarm`, `set_state`, `audit`,
`record_shortfall`, `add_order`, `update_order`, `add_order_intent`, `resolve_order_intent`,
`record_rejected_trade`. Not for the cycle: `prune` (may
delete many rows; run it from housekeeping: it works in chunks so it never holds the database for long)
and large reads.

Sharing. One connection, guarded by a lock, so the store may be called from the event loop and from worker
threads (FastAPI's sync endpoints, APScheduler jobs). Other modules may open the same file with their own
connection (the MQTT outbox does): WAL lets readers and one writer run together, `busy_timeout` makes a
writer wait for the other's short transaction instead of failing. They must create their own tables with
`CREATE TABLE IF NOT EXISTS` and never set `PRAGMA user_version`, which belongs to this module's
migrations.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from controller.clock import parse_iso

log = logging.getLogger("bess.store")

DB_FILENAME = "bess-edge.db"
BUSY_TIMEOUT_MS = 5000
HOT_BUSY_TIMEOUT_MS = 20  # the cycle's decision flush waits at most this for another connection's write
DECISION_BATCH_ROWS = 50  # flush the decision buffer at this many rows...
DECISION_FLUSH_S = 1.0  # ...or when the oldest unflushed row is this old (monotonic seconds)
DECISION_BUFFER_MAX = 100_000  # beyond this (a failing disk), drop the oldest rows rather than grow without end
PRUNE_CHUNK_ROWS = 5000  # rows per delete transaction, so a prune never holds the database for long
ACTIVE_ORDER_STATUSES = ("open", "partially_filled")
DAY_S = 86400.0

# Each entry brings the schema from version i to i + 1 (PRAGMA user_version). Append, never edit.
MIGRATIONS: list[list[str]] = [
    [
        # trade_ids is the set of seen ids: it outlives the trade rows that retention may delete, so a
        # replayed old trade is still recognised as a duplicate.
        """CREATE TABLE trade_ids (
            trade_id TEXT PRIMARY KEY,
            first_seen_ts REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE trades (
            trade_id TEXT PRIMARY KEY REFERENCES trade_ids(trade_id),
            side TEXT NOT NULL,
            quantity_mw REAL,
            price_eur_mwh REAL,
            delivery_start_ts REAL NOT NULL,
            delivery_end_ts REAL NOT NULL,
            market TEXT,
            executed_ts REAL NOT NULL,
            source TEXT NOT NULL,
            stored_ts REAL NOT NULL,
            json TEXT NOT NULL
        )""",
        "CREATE INDEX trades_delivery_end ON trades(delivery_end_ts)",
        "CREATE INDEX trades_executed ON trades(executed_ts)",
        """CREATE TABLE rejected_trades (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            trade_id TEXT,
            reason TEXT NOT NULL,
            message TEXT NOT NULL
        )""",
        "CREATE INDEX rejected_trades_ts ON rejected_trades(ts)",
        """CREATE TABLE orders (
            order_id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            side TEXT,
            quantity_mw REAL,
            price_eur_mwh REAL,
            delivery_start TEXT,
            market TEXT,
            filled_mw REAL,
            remaining_mw REAL,
            created_ts REAL NOT NULL,
            updated_ts REAL NOT NULL,
            json TEXT NOT NULL
        )""",
        "CREATE INDEX orders_status ON orders(status)",
        "CREATE INDEX orders_updated ON orders(updated_ts)",
        """CREATE TABLE decisions (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            target_mw REAL,
            setpoint_mw REAL,
            binding TEXT,
            mode TEXT,
            soc_pct REAL,
            power_mw REAL,
            temperature_c REAL,
            readback_mw REAL,
            reasons TEXT
        )""",
        "CREATE INDEX decisions_ts ON decisions(ts)",
        """CREATE TABLE alarms (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            device TEXT,
            cause TEXT,
            message TEXT,
            raised_ts REAL NOT NULL,
            cleared_ts REAL
        )""",
        # at most one active row per key: this is what makes raise_alarm idempotent
        "CREATE UNIQUE INDEX alarms_active_key ON alarms(key) WHERE cleared_ts IS NULL",
        "CREATE INDEX alarms_cleared ON alarms(cleared_ts)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            who TEXT NOT NULL,
            action TEXT NOT NULL,
            details TEXT NOT NULL
        )""",
        "CREATE INDEX audit_ts ON audit(ts)",
        """CREATE TABLE state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_ts REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE shortfalls (
            period_start REAL PRIMARY KEY,
            position_mw REAL NOT NULL,
            delivered_mwh REAL NOT NULL,
            shortfall_mwh REAL NOT NULL,
            recorded_ts REAL NOT NULL
        )""",
    ],
    [
        # When the broker took our ack of an MQTT trade (its PUBACK). NULL while unconfirmed: a crash between
        # storing a trade and its ack reaching the broker leaves the exchange without an answer, so its
        # redelivery of that very trade is answered "accepted" again instead of "duplicate".
        "ALTER TABLE trade_ids ADD COLUMN ack_confirmed_ts REAL",
        "UPDATE trade_ids SET ack_confirmed_ts = first_seen_ts",  # ids stored before this: answered back then
    ],
    [
        # An order's intent, committed before the order is sent: after a timeout, an error or a kill -9 the site
        # asks the exchange by client_order_id whether it took the order, instead of sending it again. state:
        # pending (stored; maybe sent, maybe taken), placed (the exchange has it: order_id), refused (the
        # exchange said no), not_placed (the exchange never took it, and no longer can).
        """CREATE TABLE order_intents (
            client_order_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            order_id TEXT,
            side TEXT NOT NULL,
            quantity_mw REAL NOT NULL,
            delivery_start TEXT NOT NULL,
            created_ts REAL NOT NULL,
            updated_ts REAL NOT NULL,
            reason TEXT,
            json TEXT NOT NULL
        )""",
        "CREATE INDEX order_intents_state ON order_intents(state)",
    ],
    [
        # Market history (issue 14): a price per delivery period and source ("auction": day-ahead results,
        # "intraday": the period's traded VWAP, "forecast": an external forecast), what the forecast's
        # similar-day model reads; and the front product's mark/EMA/VWAP sampled over time, what the dashboard's
        # market chart shows when a page is opened. `meta` on an intent: who placed it and why (the auto-trader
        # records its plan id and reason).
        """CREATE TABLE market_prices (
            period_start REAL NOT NULL,
            source TEXT NOT NULL,
            price_eur_mwh REAL NOT NULL,
            volume_mw REAL,
            updated_ts REAL NOT NULL,
            PRIMARY KEY (period_start, source)
        )""",
        """CREATE TABLE market_samples (
            ts REAL PRIMARY KEY,
            mark REAL,
            ema REAL,
            vwap REAL
        )""",
        "ALTER TABLE order_intents ADD COLUMN meta TEXT",
    ],
    [
        # Grid services' provision records (issue 15): per second, what FCR/aFRR required and what the plant
        # delivered, with the frequency: the operator's evidence for the TSO. ts is the whole second (Unix s).
        """CREATE TABLE provision (
            ts INTEGER PRIMARY KEY,
            frequency_hz REAL,
            fcr_required_mw REAL,
            fcr_delivered_mw REAL,
            afrr_required_mw REAL,
            afrr_delivered_mw REAL,
            base_mw REAL,
            power_mw REAL,
            within_tolerance INTEGER
        )""",
    ],
]
INTENT_STATES = ("pending", "placed", "refused", "not_placed")
PROVISION_COLUMNS = (
    "ts",
    "frequency_hz",
    "fcr_required_mw",
    "fcr_delivered_mw",
    "afrr_required_mw",
    "afrr_delivered_mw",
    "base_mw",
    "power_mw",
    "within_tolerance",
)
SCHEMA_VERSION = len(MIGRATIONS)

_ORDER_COLUMNS = (
    "status",
    "side",
    "quantity_mw",
    "price_eur_mwh",
    "delivery_start",
    "market",
    "filled_mw",
    "remaining_mw",
)
_DECISION_COLUMNS = (
    "ts",
    "target_mw",
    "setpoint_mw",
    "binding",
    "mode",
    "soc_pct",
    "power_mw",
    "temperature_c",
    "readback_mw",
    "reasons",
)


# one alarm raised (idempotent: an active one stays as it is) and one cleared; raise_alarm, clear_alarm and
# change_alarms (a cycle's changes in one transaction) all write through these
_RAISE_ALARM_SQL = "INSERT OR IGNORE INTO alarms (key, device, cause, message, raised_ts) VALUES (?,?,?,?,?)"
_CLEAR_ALARM_SQL = "UPDATE alarms SET cleared_ts = ? WHERE key = ? AND cleared_ts IS NULL"


class StoreError(Exception):
    """The database cannot be used as asked: a newer schema, WAL refused, or a record missing a key field."""


def _ts(value: Any, field: str) -> float:
    """A trade's time field (ISO 8601 text, aware datetime or Unix seconds) -> Unix seconds."""
    if isinstance(value, bool):
        raise StoreError(f"trade field {field}: not a time ({value!r})")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise StoreError(f"trade field {field}: naive datetime, use UTC")
        return value.timestamp()
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError as e:
            raise StoreError(f"trade field {field}: {e}") from e
    raise StoreError(f"trade field {field}: not a time ({value!r})")


def _json(value: Any) -> str:
    # default=str so that a datetime or Decimal inside a message to be audited never makes the audit fail
    return json.dumps(value, separators=(",", ":"), default=str)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Store:
    """The controller's durable state. Methods are synchronous; see the module docstring for cost."""

    def __init__(self, path: str | Path, *, now: Callable[[], float] = time.time):
        """Open (creating directories, file and schema as needed) the database at `path`.

        `now` gives the wall time stamped on rows whose caller passes none (stored_ts, updated_ts).
        """
        self.path = Path(path)
        self._now = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._buf_lock = threading.Lock()
        self._pending: list[tuple] = []
        self._pending_since_mono: float | None = None
        self._dropped_decisions = 0
        self._closed = False
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{self.path}: SQLite refused WAL mode (journal_mode={mode}); "
                    "the state directory must be on a local filesystem"
                )
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, **kwargs: Any) -> "Store":
        """The store of a state directory: `<state_dir>/bess-edge.db`."""
        return cls(Path(state_dir) / DB_FILENAME, **kwargs)

    def close(self) -> None:
        """Write the buffered decisions and close. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                self._flush_decisions()
            finally:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    # ---------------------------------------------------------------- plumbing
    def _migrate(self) -> None:
        with self._tx() as c:
            # read inside the write transaction: two processes opening a new file at once migrate once
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this program's "
                    f"{SCHEMA_VERSION}; upgrade the program or restore an older state directory"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1]:
                    c.execute(statement)
                c.execute(f"PRAGMA user_version={target}")
                log.info("store schema migrated", extra={"path": str(self.path), "version": target})

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (durably, per `synchronous`) when the block ends."""
        with self._lock:
            # IMMEDIATE takes the write lock now, so a read-then-write inside cannot fail half-way as BUSY
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # some errors (disk full, I/O) already rolled back; a second ROLLBACK would hide the first error
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, params).fetchall()]

    # ---------------------------------------------------------------- trades
    def add_trade(self, trade: dict[str, Any], source: str) -> bool:
        """Store a trade; True if it is new (committed and fsynced before this returns), False if its id was
        seen before (then nothing changes). `trade` is the trade's JSON (`model_dump(mode="json")`)."""
        trade_id = trade.get("trade_id")
        if not isinstance(trade_id, str) or not trade_id:
            raise StoreError(f"trade without a trade_id: {trade!r}")
        side = trade.get("side")
        if side not in ("buy", "sell"):
            raise StoreError(f"trade {trade_id}: side must be 'buy' or 'sell' (got {side!r})")
        start_ts = _ts(trade.get("delivery_start"), "delivery_start")
        end_ts = _ts(trade.get("delivery_end"), "delivery_end")
        now = self._now()
        executed = trade.get("executed_at")
        executed_ts = _ts(executed, "executed_at") if executed is not None else now
        body = _json(trade)
        with self._tx() as c:
            if (
                c.execute(
                    "INSERT OR IGNORE INTO trade_ids (trade_id, first_seen_ts) VALUES (?, ?)", (trade_id, now)
                ).rowcount
                == 0
            ):
                return False
            c.execute(
                "INSERT INTO trades VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    trade_id,
                    side,
                    _num(trade.get("quantity_mw")),
                    _num(trade.get("price_eur_mwh")),
                    start_ts,
                    end_ts,
                    trade.get("market"),
                    executed_ts,
                    source,
                    now,
                    body,
                ),
            )
        return True

    def stored_trade(self, trade_id: str) -> dict[str, Any] | None:
        """What the store holds for a seen id: `{trade, source, ack_confirmed_ts}`, where `trade` is the stored
        JSON (None if retention deleted the row; the id stays seen). None if the id was never seen."""
        with self._lock:
            row = self._conn.execute(
                "SELECT i.ack_confirmed_ts, t.json, t.source FROM trade_ids i "
                "LEFT JOIN trades t ON t.trade_id = i.trade_id WHERE i.trade_id = ?",
                (trade_id,),
            ).fetchone()
        if row is None:
            return None
        return {
            "trade": json.loads(row["json"]) if row["json"] is not None else None,
            "source": row["source"],
            "ack_confirmed_ts": row["ack_confirmed_ts"],
        }

    def confirm_trade_ack(self, trade_id: str, ts: float | None = None) -> bool:
        """Record that the broker took our ack of this trade (first confirmation wins). True if recorded now."""
        with self._tx() as c:
            return (
                c.execute(
                    "UPDATE trade_ids SET ack_confirmed_ts = ? WHERE trade_id = ? AND ack_confirmed_ts IS NULL",
                    (self._now() if ts is None else ts, trade_id),
                ).rowcount
                == 1
            )

    def has_trade(self, trade_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM trade_ids WHERE trade_id = ?", (trade_id,)).fetchone() is not None

    def trades_mark(self) -> tuple[int, int]:
        """(trade ids ever seen, trades kept): it changes whenever a trade is stored (trade_ids is never pruned)
        or pruned, so a reader can tell that its copy of the trades is current without reading them again."""
        row = self._query("SELECT (SELECT count(*) FROM trade_ids) AS seen, (SELECT count(*) FROM trades) AS kept")
        return int(row[0]["seen"]), int(row[0]["kept"])

    def trades(self, since_ts: float | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Trades executed at or after `since_ts` (all if None), newest first. Each is the stored trade plus
        `source` (who delivered it: mqtt, exchange, cli...) and `stored_ts`."""
        rows = self._query(
            "SELECT json, source, stored_ts FROM trades WHERE executed_ts >= ? "
            "ORDER BY executed_ts DESC, stored_ts DESC LIMIT ?",
            (-math.inf if since_ts is None else since_ts, limit),
        )
        return [{**json.loads(r["json"]), "source": r["source"], "stored_ts": r["stored_ts"]} for r in rows]

    def trades_for_schedule(self, from_ts: float) -> list[dict[str, Any]]:
        """Trades whose delivery ends after `from_ts`, as stored (exactly the trade's JSON), in delivery order:
        what the schedule is rebuilt from on restart."""
        rows = self._query(
            "SELECT json FROM trades WHERE delivery_end_ts > ? ORDER BY delivery_start_ts, stored_ts", (from_ts,)
        )
        return [json.loads(r["json"]) for r in rows]

    def record_rejected_trade(self, message: Any, reason: str, ts: float | None = None) -> None:
        """Keep a rejected trade message (whatever arrived: dict, text, anything) and why it was rejected."""
        trade_id = message.get("trade_id") if isinstance(message, dict) else None
        text = message if isinstance(message, str) else _json(message)
        with self._tx() as c:
            c.execute(
                "INSERT INTO rejected_trades (ts, trade_id, reason, message) VALUES (?,?,?,?)",
                (self._now() if ts is None else ts, trade_id if isinstance(trade_id, str) else None, reason, text),
            )

    def rejected_trades(self, limit: int = 100) -> list[dict[str, Any]]:
        """Rejected messages, newest first: {id, ts, trade_id, reason, message (the text as received)}."""
        return self._query("SELECT * FROM rejected_trades ORDER BY ts DESC, id DESC LIMIT ?", (limit,))

    # ---------------------------------------------------------------- orders
    def add_order(self, order: dict[str, Any]) -> None:
        """Insert an order (the exchange's order JSON), or replace the one with the same order_id."""
        order_id = order.get("order_id")
        if not isinstance(order_id, str) or not order_id:
            raise StoreError(f"order without an order_id: {order!r}")
        with self._tx() as c:
            self._upsert_order(c, order, self._now())

    def _upsert_order(self, c: sqlite3.Connection, order: dict[str, Any], now: float) -> None:
        """Insert or replace an order inside the caller's transaction."""
        c.execute(
            "INSERT INTO orders (order_id, status, side, quantity_mw, price_eur_mwh, delivery_start, market, "
            "filled_mw, remaining_mw, created_ts, updated_ts, json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(order_id) DO UPDATE SET status=excluded.status, side=excluded.side, "
            "quantity_mw=excluded.quantity_mw, price_eur_mwh=excluded.price_eur_mwh, "
            "delivery_start=excluded.delivery_start, market=excluded.market, filled_mw=excluded.filled_mw, "
            "remaining_mw=excluded.remaining_mw, updated_ts=excluded.updated_ts, json=excluded.json",
            (order["order_id"], *self._order_columns(order), now, now, _json(order)),
        )

    # ---------------------------------------------------------------- order intents
    def add_order_intent(
        self, client_order_id: str, order: dict[str, Any], ts: float, meta: dict[str, Any] | None = None
    ) -> None:
        """Store the intent to send `order` (the request body, with its client_order_id), state pending,
        committed and fsynced before this returns: the order may be sent only after that. `meta`: who placed it
        and why (e.g. the auto-trader's {who, plan_id, reason}), kept with the intent, never sent."""
        if not client_order_id or order.get("client_order_id") != client_order_id:
            raise StoreError(f"order intent: client_order_id {client_order_id!r} missing or not the order's")
        side, qty, start = order.get("side"), _num(order.get("quantity_mw")), order.get("delivery_start")
        if side not in ("buy", "sell") or qty is None or not isinstance(start, str):
            raise StoreError(f"order intent {client_order_id}: side, quantity_mw and delivery_start are required")
        with self._tx() as c:
            c.execute(
                "INSERT INTO order_intents (client_order_id, state, side, quantity_mw, delivery_start, "
                "created_ts, updated_ts, json, meta) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    client_order_id,
                    "pending",
                    side,
                    qty,
                    start,
                    ts,
                    ts,
                    _json(order),
                    None if meta is None else _json(meta),
                ),
            )

    def resolve_order_intent(
        self, client_order_id: str, state: str, order: dict[str, Any] | None = None, reason: str | None = None
    ) -> bool:
        """Settle a pending intent: `state` placed (with the exchange's `order`, stored in the same transaction),
        refused (with the exchange's rejected `order` if it sent one) or not_placed. False, and nothing changes,
        if the intent is not pending any more (settled by someone else first) or unknown."""
        if state not in INTENT_STATES or state == "pending":
            raise StoreError(f"order intent {client_order_id}: cannot settle as {state!r}")
        order_id = order.get("order_id") if isinstance(order, dict) else None
        if state == "placed" and not (isinstance(order_id, str) and order_id):
            raise StoreError(f"order intent {client_order_id}: placed needs the exchange's order with its order_id")
        now = self._now()
        with self._tx() as c:
            n = c.execute(
                "UPDATE order_intents SET state=?, order_id=?, reason=?, updated_ts=? "
                "WHERE client_order_id=? AND state='pending'",
                (state, order_id, reason, now, client_order_id),
            ).rowcount
            if n and isinstance(order_id, str) and order_id:
                self._upsert_order(c, order, now)
        return n == 1

    def order_intents(self, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Intents, oldest first: {client_order_id, state, order_id, side, quantity_mw, delivery_start,
        created_ts, updated_ts, reason, order (the request body), meta (dict or None)}; only those in `state` if
        given."""
        where, params = ("WHERE state = ?", (state, limit)) if state else ("", (limit,))
        rows = self._query(f"SELECT * FROM order_intents {where} ORDER BY created_ts, rowid LIMIT ?", params)
        for r in rows:
            r["order"] = json.loads(r.pop("json"))
            r["meta"] = json.loads(r["meta"]) if r.get("meta") else None
        return rows

    def intents_by(self, who: str, since_ts: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Intents created at or after `since_ts` whose meta names `who` (e.g. "auto"), newest first, each with the
        stored order's status/filled_mw when the exchange took it (`order_status`, `filled_mw`)."""
        rows = self._query(
            "SELECT i.*, o.status AS order_status, o.filled_mw AS filled_mw FROM order_intents i "
            "LEFT JOIN orders o ON o.order_id = i.order_id WHERE i.created_ts >= ? "
            "AND json_extract(i.meta, '$.who') = ? ORDER BY i.created_ts DESC, i.rowid DESC LIMIT ?",
            (since_ts, who, limit),
        )
        for r in rows:
            r["order"] = json.loads(r.pop("json"))
            r["meta"] = json.loads(r["meta"]) if r.get("meta") else None
        return rows

    # ---------------------------------------------------------------- market history
    def record_market_prices(self, source: str, prices: list[tuple[float, float, float | None]]) -> int:
        """Store (period start, price EUR/MWh, volume MW or None) rows of one source ("auction", "intraday",
        "forecast"), replacing what the source said before for those periods; returns how many rows."""
        rows = [
            (float(p), source, float(price), _num(vol), self._now())
            for p, price, vol in prices
            if _num(p) is not None and _num(price) is not None and math.isfinite(p) and math.isfinite(price)
        ]
        if rows:
            with self._tx() as c:
                c.executemany(
                    "INSERT INTO market_prices VALUES (?,?,?,?,?) ON CONFLICT(period_start, source) DO UPDATE SET "
                    "price_eur_mwh=excluded.price_eur_mwh, volume_mw=excluded.volume_mw, updated_ts=excluded.updated_ts",
                    rows,
                )
        return len(rows)

    def market_prices(self, from_ts: float, to_ts: float, source: str | None = None) -> list[dict[str, Any]]:
        """Stored prices of periods in [from_ts, to_ts), oldest first: {period_start, source, price_eur_mwh,
        volume_mw, updated_ts}; only `source`'s if given."""
        where, params = ("AND source = ?", (from_ts, to_ts, source)) if source else ("", (from_ts, to_ts))
        return self._query(
            f"SELECT * FROM market_prices WHERE period_start >= ? AND period_start < ? {where} "
            "ORDER BY period_start, source",
            params,
        )

    def record_market_sample(self, ts: float, mark: Any, ema: Any, vwap: Any) -> None:
        """One sample of the front product's mark, EMA and VWAP (None: unknown) at `ts`."""
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO market_samples VALUES (?,?,?,?)", (float(ts), _num(mark), _num(ema), _num(vwap))
            )

    def market_samples(self, from_ts: float, to_ts: float, max_points: int = 1440) -> list[dict[str, Any]]:
        """Samples in [from_ts, to_ts), oldest first, thinned to at most `max_points` (every n-th row):
        {ts, mark, ema, vwap}."""
        with self._lock:
            n = self._conn.execute(
                "SELECT count(*) FROM market_samples WHERE ts >= ? AND ts < ?", (from_ts, to_ts)
            ).fetchone()[0]
        step = max(1, -(-n // max(1, max_points)))
        return self._query(
            "SELECT ts, mark, ema, vwap FROM (SELECT *, row_number() OVER (ORDER BY ts) - 1 AS k FROM market_samples "
            "WHERE ts >= ? AND ts < ?) WHERE k % ? = 0 ORDER BY ts",
            (from_ts, to_ts, step),
        )

    def update_order(self, order_id: str, **fields: Any) -> None:
        """Change fields of a stored order (status, filled_mw, remaining_mw, ...). A None value means
        "unknown" and leaves the field as it is. An unknown order_id changes nothing (logged)."""
        fields = {k: v for k, v in fields.items() if v is not None and k != "order_id"}
        with self._tx() as c:
            row = c.execute("SELECT json FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            if row is None:
                log.debug("update of an order not in the store ignored", extra={"order_id": order_id})
                return
            if not fields:
                return
            order = {**json.loads(row["json"]), **fields}
            c.execute(
                "UPDATE orders SET status=?, side=?, quantity_mw=?, price_eur_mwh=?, delivery_start=?, "
                "market=?, filled_mw=?, remaining_mw=?, updated_ts=?, json=? WHERE order_id=?",
                (*self._order_columns(order), self._now(), _json(order), order_id),
            )

    @staticmethod
    def _order_columns(order: dict[str, Any]) -> tuple:
        status = order.get("status") or "open"
        return (
            str(status),
            order.get("side"),
            _num(order.get("quantity_mw")),
            _num(order.get("price_eur_mwh")),
            order.get("delivery_start"),
            order.get("market"),
            _num(order.get("filled_mw")),
            _num(order.get("remaining_mw")),
        )

    def orders(self, active_only: bool = True, limit: int = 200) -> list[dict[str, Any]]:
        """Orders, newest first, as stored (the order JSON with its updates). `active_only`: open or
        partially filled."""
        where = f"WHERE status IN ({','.join('?' * len(ACTIVE_ORDER_STATUSES))})" if active_only else ""
        params = (*ACTIVE_ORDER_STATUSES, limit) if active_only else (limit,)
        rows = self._query(f"SELECT json FROM orders {where} ORDER BY created_ts DESC, rowid DESC LIMIT ?", params)
        return [json.loads(r["json"]) for r in rows]

    # ---------------------------------------------------------------- decision log
    def record_decision(
        self,
        ts: float,
        target_mw: float,
        setpoint_mw: float,
        binding: str,
        mode: str,
        soc_pct: float | None,
        power_mw: float | None,
        temperature_c: float | None,
        readback_mw: float | None,
        reasons: str = "",
    ) -> None:
        """Log one cycle's decision. Hot path: buffered, written in batches (a decision acknowledges nothing,
        so up to ~1 s of log may be lost to a kill -9). Never raises for a database error: the cycle must go
        on; the error is logged and the rows are kept for the next flush."""
        if self._closed:
            raise StoreError(f"{self.path}: decision recorded after close")
        row = (ts, target_mw, setpoint_mw, binding, mode, soc_pct, power_mw, temperature_c, readback_mw, reasons)
        mono = time.monotonic()
        with self._buf_lock:
            self._pending.append(row)
            if self._pending_since_mono is None:
                self._pending_since_mono = mono
            due = len(self._pending) >= DECISION_BATCH_ROWS or mono - self._pending_since_mono >= DECISION_FLUSH_S
        # Don't wait behind another thread's transaction (a prune chunk, a web read): try again next cycle.
        if due and self._lock.acquire(blocking=False):
            try:
                if not self._closed:
                    self._flush_decisions(hot=True)
            finally:
                self._lock.release()

    def flush(self) -> None:
        """Write the buffered decisions now (housekeeping, before a clean stop)."""
        with self._lock:
            self._flush_decisions()

    def _flush_decisions(self, hot: bool = False) -> None:
        """Write the buffer (the caller holds self._lock). `hot`: called from the cycle, so wait at most
        HOT_BUSY_TIMEOUT_MS for another connection and log instead of raising; the rows wait for the next try."""
        with self._buf_lock:
            rows, self._pending, self._pending_since_mono = self._pending, [], None
        if not rows:
            return
        try:
            self._write_unsynced(
                "INSERT INTO decisions (ts, target_mw, setpoint_mw, binding, mode, soc_pct, "
                "power_mw, temperature_c, readback_mw, reasons) VALUES (?,?,?,?,?,?,?,?,?,?)",
                rows,
                hot,
            )
        except sqlite3.Error as e:
            with self._buf_lock:
                self._pending[:0] = rows
                if self._pending_since_mono is None:
                    self._pending_since_mono = time.monotonic()
                excess = len(self._pending) - DECISION_BUFFER_MAX
                if excess > 0:
                    del self._pending[:excess]
                    self._dropped_decisions += excess
            log.log(
                logging.WARNING if hot else logging.ERROR,
                "decision log write failed; rows kept for the next try",
                extra={"rows": len(rows), "error": str(e), "dropped_total": self._dropped_decisions},
            )
            if not hot:
                raise

    def decisions(self, before_ts: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Decisions with ts < `before_ts` (all if None), newest first. Page by passing the last row's ts."""
        self.flush()
        return self._query(
            "SELECT ts, target_mw, setpoint_mw, binding, mode, soc_pct, power_mw, temperature_c, readback_mw, "
            "reasons FROM decisions WHERE ts < ? ORDER BY ts DESC, id DESC LIMIT ?",
            (math.inf if before_ts is None else before_ts, limit),
        )

    def decision_history(self, from_ts: float, to_ts: float, max_points: int = 1000) -> list[dict[str, Any]]:
        """Decisions in [from_ts, to_ts) averaged into at most `max_points` equal time buckets, oldest first:
        {ts, power_mw, soc_pct, setpoint_mw} (for the dashboard's today chart; not for the hot path)."""
        self.flush()
        bucket = max((to_ts - from_ts) / max(1, max_points), 1e-3)
        return self._query(
            "SELECT MIN(ts) AS ts, AVG(power_mw) AS power_mw, AVG(soc_pct) AS soc_pct, AVG(setpoint_mw) AS setpoint_mw "
            "FROM decisions WHERE ts >= ? AND ts < ? GROUP BY CAST((ts - ?) / ? AS INTEGER) ORDER BY 1",
            (from_ts, to_ts, from_ts, bucket),
        )

    # ---------------------------------------------------------------- alarms
    def raise_alarm(self, key: str, device: str, cause: str, message: str, ts: float) -> bool:
        """Raise alarm `key`; True if newly raised, False if it is already active (nothing changes)."""
        with self._tx() as c:
            cur = c.execute(_RAISE_ALARM_SQL, (key, device, cause, message, ts))
            return cur.rowcount == 1

    def clear_alarm(self, key: str, ts: float) -> bool:
        """Clear the active alarm `key`; True if there was one."""
        with self._tx() as c:
            cur = c.execute(_CLEAR_ALARM_SQL, (ts, key))
            return cur.rowcount > 0

    def change_alarms(self, raised: list[tuple[str, str, str, str, float]], cleared: list[tuple[str, float]]) -> None:
        """A cycle's alarm changes in one transaction (one commit, not one each): `raised` as raise_alarm's
        (key, device, cause, message, ts), then `cleared` as clear_alarm's (key, ts); each idempotent as those."""
        if not raised and not cleared:
            return
        with self._tx() as c:
            c.executemany(_RAISE_ALARM_SQL, raised)
            c.executemany(_CLEAR_ALARM_SQL, [(ts, k) for k, ts in cleared])

    def active_alarms(self) -> list[dict[str, Any]]:
        """Active alarms, oldest first: {id, key, device, cause, message, raised_ts, cleared_ts: None}."""
        return self._query("SELECT * FROM alarms WHERE cleared_ts IS NULL ORDER BY raised_ts, id")

    def alarm_history(self, limit: int = 100) -> list[dict[str, Any]]:
        """Alarms active and cleared, most recently raised first."""
        return self._query("SELECT * FROM alarms ORDER BY raised_ts DESC, id DESC LIMIT ?", (limit,))

    # ---------------------------------------------------------------- audit log
    def audit(self, who: str, action: str, details: dict[str, Any], ts: float) -> None:
        """Record a mutating call: who (api key name, scada-modbus, controller...), what, when."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO audit (ts, who, action, details) VALUES (?,?,?,?)", (ts, who, action, _json(details))
            )

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """Audit rows, newest first: {id, ts, who, action, details (dict)}."""
        rows = self._query("SELECT * FROM audit ORDER BY ts DESC, id DESC LIMIT ?", (limit,))
        for r in rows:
            r["details"] = json.loads(r["details"])
        return rows

    # ---------------------------------------------------------------- key-value state
    def get_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def set_state(self, key: str, value: Any) -> None:
        """Set `key` to a JSON-serialisable value, committed before this returns."""
        text = json.dumps(value, separators=(",", ":"))  # no default=: a value that won't round-trip is a bug
        with self._tx() as c:
            c.execute(
                "INSERT INTO state VALUES (?,?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
                "updated_ts=excluded.updated_ts",
                (key, text, self._now()),
            )

    # ---------------------------------------------------------------- shortfalls
    def record_shortfall(
        self, period_start: float, position_mw: float, delivered_mwh: float, shortfall_mwh: float
    ) -> None:
        """Record (or replace) the delivery shortfall of the period starting at `period_start`."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO shortfalls VALUES (?,?,?,?,?) ON CONFLICT(period_start) DO UPDATE SET "
                "position_mw=excluded.position_mw, delivered_mwh=excluded.delivered_mwh, "
                "shortfall_mwh=excluded.shortfall_mwh, recorded_ts=excluded.recorded_ts",
                (period_start, position_mw, delivered_mwh, shortfall_mwh, self._now()),
            )

    def shortfalls(self, limit: int = 100) -> list[dict[str, Any]]:
        """Shortfalls, latest period first: {period_start, position_mw, delivered_mwh, shortfall_mwh, recorded_ts}."""
        return self._query("SELECT * FROM shortfalls ORDER BY period_start DESC LIMIT ?", (limit,))

    # ---------------------------------------------------------------- provision records (grid services)
    def add_provision(self, rows: list[tuple]) -> None:
        """Store per-second provision rows (PROVISION_COLUMNS order; a second seen again replaces its row).
        Evidence, not an acknowledgement: written with synchronous=NORMAL like the decision log, in batches."""
        if not rows:
            return
        with self._lock:
            self._write_unsynced(
                f"INSERT OR REPLACE INTO provision ({','.join(PROVISION_COLUMNS)}) "
                f"VALUES ({','.join('?' * len(PROVISION_COLUMNS))})",
                rows,
            )

    def _write_unsynced(self, sql: str, rows: list[tuple], hot: bool = False) -> None:
        """`sql` for every row in one transaction committed with synchronous=NORMAL (no fsync: the decision log
        and the provision records are evidence, not acknowledgements; the next FULL commit syncs them anyway).
        `hot` (from the cycle): wait at most HOT_BUSY_TIMEOUT_MS for another connection. The caller holds
        self._lock."""
        self._conn.execute("PRAGMA synchronous=NORMAL")
        if hot:
            self._conn.execute(f"PRAGMA busy_timeout={HOT_BUSY_TIMEOUT_MS}")
        try:
            with self._tx() as c:
                c.executemany(sql, rows)
        finally:
            self._conn.execute("PRAGMA synchronous=FULL")
            if hot:
                self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def provision(self, from_ts: float, to_ts: float) -> list[dict[str, Any]]:
        """Provision rows with from_ts <= ts < to_ts, oldest first."""
        return self._query(
            f"SELECT {','.join(PROVISION_COLUMNS)} FROM provision WHERE ts >= ? AND ts < ? ORDER BY ts",
            (from_ts, to_ts),
        )

    # ---------------------------------------------------------------- retention
    def prune(
        self,
        now_ts: float,
        decision_retention_days: float,
        *,
        alarm_retention_days: float = 90,
        audit_retention_days: float = 365,
        rejected_trade_retention_days: float = 90,
        shortfall_retention_days: float = 365,
        order_retention_days: float = 90,
        trade_retention_days: float | None = None,
        provision_retention_days: float = 90,
    ) -> dict[str, int]:
        """Delete rows older than their retention; returns rows deleted per table. Only cleared alarms and
        finished orders are pruned; provision records (grid services) go after `provision_retention_days`
        (services.records_retention_days). Trades are kept unless `trade_retention_days` is given (by delivery end);
        their ids stay in the seen set either way, so a replay is still a duplicate. Runs in chunks of
        `PRUNE_CHUNK_ROWS` rows, releasing the database between them."""
        self.flush()
        active = ",".join(f"'{s}'" for s in ACTIVE_ORDER_STATUSES)
        plan: list[tuple[str, str, float | None]] = [
            ("decisions", "ts < ?", decision_retention_days),
            ("alarms", "cleared_ts IS NOT NULL AND cleared_ts < ?", alarm_retention_days),
            ("audit", "ts < ?", audit_retention_days),
            ("rejected_trades", "ts < ?", rejected_trade_retention_days),
            ("shortfalls", "period_start < ?", shortfall_retention_days),
            ("orders", f"status NOT IN ({active}) AND updated_ts < ?", order_retention_days),
            ("order_intents", "state != 'pending' AND updated_ts < ?", order_retention_days),
            ("trades", "delivery_end_ts < ?", trade_retention_days),
            ("market_prices", "period_start < ?", order_retention_days),
            ("market_samples", "ts < ?", decision_retention_days),
            ("provision", "ts < ?", provision_retention_days),
        ]
        return {
            table: 0 if days is None else self._prune_table(table, where, now_ts - days * DAY_S)
            for table, where, days in plan
        }

    def _prune_table(self, table: str, where: str, cutoff: float) -> int:
        """Delete the rows of `table` matching `where` (one `?`: the cutoff) in chunks of PRUNE_CHUNK_ROWS, each
        its own transaction; returns rows deleted."""
        deleted = 0
        while True:
            with self._tx() as c:
                n = c.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {where} LIMIT ?)",
                    (cutoff, PRUNE_CHUNK_ROWS),
                ).rowcount
            deleted += n
            if n < PRUNE_CHUNK_ROWS:
                return deleted

    def counts(self) -> dict[str, int]:
        """Rows per table (for metrics and the health endpoint)."""
        tables = (
            "trades",
            "trade_ids",
            "rejected_trades",
            "orders",
            "order_intents",
            "decisions",
            "alarms",
            "audit",
            "state",
            "shortfalls",
            "market_prices",
            "market_samples",
            "provision",
        )
        self.flush()
        with self._lock:
            return {t: self._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
