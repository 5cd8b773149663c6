"""The MQTT telemetry outbox: a SQLite table in the store's file (its own connection) that numbers every
telemetry message with the next `seq`, keeps it until its PUBACK, and bounds itself by rows and age.

Durability. Rows are written with `synchronous=NORMAL`: in WAL mode a commit survives a kill -9 of the process
(not a power loss before the next checkpoint); telemetry acknowledges nothing to anyone, so an fsync per
message would only cost the store's writers. `seq` (and the drop counter) live in a meta table updated in
the same transaction as the rows, so they survive restarts even when the outbox is empty.

Sharing. Every transaction is short (one batch of at most `BATCH_ROWS` rows) and `busy_timeout` lets the
store's writer and ours take turns; the store's tables are never touched here. Thread-safe (one lock).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger("bess.outbox")

BUSY_TIMEOUT_MS = 5000
BATCH_ROWS = 1000  # rows per write transaction: keeps each hold of the write lock well under a millisecond or so

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS mqtt_outbox (
        seq INTEGER PRIMARY KEY,
        created_ts REAL NOT NULL,
        payload BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS mqtt_outbox_meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "INSERT OR IGNORE INTO mqtt_outbox_meta VALUES ('last_seq', 0)",
    "INSERT OR IGNORE INTO mqtt_outbox_meta VALUES ('dropped', 0)",
]


class OutboxError(Exception):
    """The outbox's database cannot be used (closed, unreadable)."""


class Outbox:
    """Telemetry rows waiting for their PUBACK, oldest first.

    `append_many(payloads) -> [seq...]` numbers and stores; `peek(after_seq, limit)` reads in seq order;
    `delete(seqs)` on PUBACK; `depth`, `dropped`, `last_seq` for metrics.
    """

    def __init__(
        self,
        path: str | Path,
        max_rows: int = 1_000_000,
        max_age_s: float = 7 * 86400,
        *,
        now: Callable[[], float] = time.time,
    ):
        if max_rows < 1:
            raise ValueError(f"outbox max_rows must be >= 1 (got {max_rows})")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._now = now
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        c = self._conn
        c.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("outbox database not in WAL mode", extra={"journal_mode": mode, "path": str(self.path)})
        c.execute("PRAGMA synchronous=NORMAL")
        with self._tx() as tx:
            for stmt in SCHEMA:
                tx.execute(stmt)
        self._last_seq = self._meta("last_seq")
        self._dropped = self._meta("dropped")
        row = c.execute("SELECT COUNT(*), MAX(seq) FROM mqtt_outbox").fetchone()
        self._depth = int(row[0])
        if row[1] is not None and row[1] > self._last_seq:  # a meta row older than its rows: never reuse a seq
            self._last_seq = int(row[1])
        log.info(
            "outbox opened",
            extra={"path": str(self.path), "depth": self._depth, "last_seq": self._last_seq, "dropped": self._dropped},
        )

    # ---------------------------------------------------------------- plumbing
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._conn is None:
            raise OutboxError("outbox is closed")
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def _meta(self, key: str) -> int:
        assert self._conn is not None
        return int(self._conn.execute("SELECT value FROM mqtt_outbox_meta WHERE key = ?", (key,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---------------------------------------------------------------- state
    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        """Rows dropped by the row/age bound since the outbox was created (persistent)."""
        return self._dropped

    @property
    def last_seq(self) -> int:
        return self._last_seq

    # ---------------------------------------------------------------- writes
    def append(self, payload: dict[str, Any]) -> int:
        return self.append_many([payload])[0]

    def append_many(self, payloads: Iterable[dict[str, Any]]) -> list[int]:
        """Give each payload the next `seq` (as its `seq` field), store them, enforce the bound; the seqs."""
        items = list(payloads)
        seqs: list[int] = []
        with self._lock:
            for start in range(0, len(items), BATCH_ROWS):
                chunk = items[start : start + BATCH_ROWS]
                now = self._now()
                first = self._last_seq + 1
                rows = [
                    (
                        first + i,
                        now,
                        json.dumps(
                            {"seq": first + i, **{k: v for k, v in p.items() if k != "seq"}}, separators=(",", ":")
                        ).encode(),
                    )
                    for i, p in enumerate(chunk)
                ]
                last = first + len(rows) - 1
                excess = self._depth + len(rows) - self.max_rows
                with self._tx() as c:
                    c.executemany("INSERT INTO mqtt_outbox VALUES (?,?,?)", rows)
                    c.execute("UPDATE mqtt_outbox_meta SET value = ? WHERE key = 'last_seq'", (last,))
                    dropped = self._drop_oldest(c, excess) if excess > 0 else 0
                self._last_seq = last
                self._depth += len(rows) - dropped
                seqs.extend(range(first, last + 1))
        return seqs

    def _drop_oldest(self, c: sqlite3.Connection, n: int) -> int:
        """Inside a transaction: delete the `n` oldest rows and count them as dropped."""
        cut = c.execute("SELECT seq FROM mqtt_outbox ORDER BY seq LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
        if cut is None:
            return 0
        deleted = c.execute("DELETE FROM mqtt_outbox WHERE seq <= ?", (cut[0],)).rowcount
        c.execute("UPDATE mqtt_outbox_meta SET value = value + ? WHERE key = 'dropped'", (deleted,))
        self._dropped += deleted
        log.warning(
            "outbox bound reached: oldest telemetry dropped",
            extra={
                "dropped_now": deleted,
                "dropped_total": self._dropped,
                "up_to_seq": cut[0],
                "max_rows": self.max_rows,
            },
        )
        return deleted

    def expire(self) -> int:
        """Drop rows older than `max_age_s` (counted as dropped); how many. Cheap when nothing is old."""
        with self._lock:
            if self._conn is None:
                raise OutboxError("outbox is closed")
            cutoff = self._now() - self.max_age_s
            oldest = self._conn.execute("SELECT created_ts FROM mqtt_outbox ORDER BY seq LIMIT 1").fetchone()
            if oldest is None or oldest[0] >= cutoff:
                return 0
            total = 0
            while True:  # bounded: each round removes up to BATCH_ROWS rows, and rows are finite
                with self._tx() as c:
                    seqs = [
                        r[0]
                        for r in c.execute(
                            "SELECT seq FROM mqtt_outbox WHERE created_ts < ? ORDER BY seq LIMIT ?",
                            (cutoff, BATCH_ROWS),
                        )
                    ]
                    if not seqs:
                        break
                    c.execute(
                        "DELETE FROM mqtt_outbox WHERE seq BETWEEN ? AND ? AND created_ts < ?",
                        (seqs[0], seqs[-1], cutoff),
                    )
                    c.execute("UPDATE mqtt_outbox_meta SET value = value + ? WHERE key = 'dropped'", (len(seqs),))
                total += len(seqs)
                self._dropped += len(seqs)
                self._depth -= len(seqs)
                if len(seqs) < BATCH_ROWS:
                    break
            log.warning(
                "outbox age bound reached: old telemetry dropped",
                extra={"dropped_now": total, "dropped_total": self._dropped, "max_age_s": self.max_age_s},
            )
            return total

    def delete(self, seqs: Iterable[int]) -> int:
        """Remove delivered rows (on PUBACK); rows already dropped are ignored. How many were deleted."""
        todo = sorted(set(seqs))
        deleted = 0
        with self._lock:
            for start in range(0, len(todo), BATCH_ROWS):
                chunk = todo[start : start + BATCH_ROWS]
                with self._tx() as c:
                    # a contiguous run (the usual case: PUBACKs come in order) is one range delete
                    if chunk[-1] - chunk[0] + 1 == len(chunk):
                        n = c.execute(
                            "DELETE FROM mqtt_outbox WHERE seq BETWEEN ? AND ?", (chunk[0], chunk[-1])
                        ).rowcount
                    else:
                        n = sum(c.execute("DELETE FROM mqtt_outbox WHERE seq = ?", (s,)).rowcount for s in chunk)
                deleted += n
                self._depth -= n
        return deleted

    # ---------------------------------------------------------------- reads
    def peek(self, after_seq: int = 0, limit: int = BATCH_ROWS) -> list[tuple[int, bytes]]:
        """Up to `limit` rows with seq > after_seq, in seq order, as (seq, payload bytes)."""
        with self._lock:
            if self._conn is None:
                raise OutboxError("outbox is closed")
            # sqlite3 hands INTEGER back as int and BLOB as bytes: the rows go to paho as they are
            return self._conn.execute(
                "SELECT seq, payload FROM mqtt_outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
