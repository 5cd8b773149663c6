"""The durable store on a real SQLite file: every method, idempotency, pagination, retention, reopening,
and a second connection (as the MQTT outbox has) seeing and writing alongside."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import store as store_mod
from controller.clock import iso
from controller.store import DB_FILENAME, SCHEMA_VERSION, Store, StoreError

T0 = 1_800_000_000 - 1_800_000_000 % 900  # a period boundary
DAY = 86400.0


def make_trade(
    trade_id: str,
    start: float = T0,
    side: str = "sell",
    quantity_mw: float = 2.0,
    executed: float | None = None,
    periods: int = 1,
) -> dict:
    return {
        "trade_id": trade_id,
        "side": side,
        "quantity_mw": quantity_mw,
        "price_eur_mwh": 81.25,
        "delivery_start": iso(start).replace(".000", ""),
        "delivery_end": iso(start + 900 * periods).replace(".000", ""),
        "market": "intraday",
        "executed_at": iso(start - 3600 if executed is None else executed),
    }


class WallClock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
def store(tmp_path, wall):
    s = Store.in_state_dir(tmp_path / "state", now=wall)
    try:
        yield s
    finally:
        s.close()


@contextmanager
def raw(store: Store) -> Iterator[sqlite3.Connection]:
    """A second, independent connection to the same file (what the outbox or an operator's sqlite3 has)."""
    c = sqlite3.connect(store.path, timeout=5)
    try:
        yield c
    finally:
        c.close()


# ---------------------------------------------------------------- opening
def test_open_creates_dirs_schema_and_pragmas(tmp_path):
    s = Store.in_state_dir(tmp_path / "a" / "b")
    try:
        assert s.path == tmp_path / "a" / "b" / DB_FILENAME
        assert s.path.exists()
        assert s.schema_version == SCHEMA_VERSION >= 1
        c = s._conn
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] == store_mod.BUSY_TIMEOUT_MS
    finally:
        s.close()
    with raw(s) as c:  # WAL is a property of the file: a fresh connection sees it too
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_reopen_keeps_version_and_does_not_migrate_twice(tmp_path):
    Store(tmp_path / "x.db").close()
    s = Store(tmp_path / "x.db")
    try:
        assert s.schema_version == SCHEMA_VERSION
    finally:
        s.close()


def test_newer_schema_is_refused(tmp_path):
    Store(tmp_path / "x.db").close()
    c = sqlite3.connect(tmp_path / "x.db")
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(StoreError, match="newer than this program"):
        Store(tmp_path / "x.db")


def test_close_is_idempotent_and_context_manager_closes(tmp_path):
    with Store(tmp_path / "x.db") as s:
        s.record_decision(T0, 1, 1, "none", "auto", 50, 1, 20, 1)
    s.close()
    with pytest.raises(sqlite3.ProgrammingError):
        s.has_trade("x")
    with pytest.raises(StoreError, match="after close"):
        s.record_decision(T0 + 1, 1, 1, "none", "auto", 50, 1, 20, 1)
    with Store(tmp_path / "x.db") as s2:
        assert len(s2.decisions()) == 1  # close flushed the buffered decision


# ---------------------------------------------------------------- trades
def test_add_trade_is_idempotent_and_persists(tmp_path, wall):
    s = Store(tmp_path / "t.db", now=wall)
    t = make_trade("T-1")
    assert s.add_trade(t, "mqtt") is True
    assert s.add_trade(t, "mqtt") is False
    assert s.add_trade({**t, "quantity_mw": 9.0}, "exchange") is False  # same id, other body: still a duplicate
    assert s.has_trade("T-1") and not s.has_trade("T-2")
    s.close()
    s = Store(tmp_path / "t.db", now=wall)
    try:
        assert s.has_trade("T-1")
        assert s.add_trade(t, "mqtt") is False
        [got] = s.trades()
        assert got["quantity_mw"] == 2.0 and got["source"] == "mqtt" and got["stored_ts"] == wall.t
    finally:
        s.close()


def test_trade_ack_confirmation_is_recorded_once(store, wall):
    t = make_trade("T-1")
    assert store.stored_trade("T-1") is None
    assert store.add_trade(t, "mqtt")
    assert store.stored_trade("T-1") == {"trade": t, "source": "mqtt", "ack_confirmed_ts": None}
    wall.t += 0.5
    assert store.confirm_trade_ack("T-1") is True
    wall.t += 10
    assert store.confirm_trade_ack("T-1") is False  # the first confirmation stands
    assert store.stored_trade("T-1")["ack_confirmed_ts"] == T0 + 0.5
    assert store.confirm_trade_ack("T-unknown") is False


def test_migration_marks_trades_stored_before_it_as_answered(tmp_path):
    """A state directory of schema 1 (no ack confirmations): its trades were answered back then, so a replay of
    one after the upgrade is still a refused duplicate."""
    path = tmp_path / "old.db"
    c = sqlite3.connect(path)
    for stmt in store_mod.MIGRATIONS[0]:
        c.execute(stmt)
    c.execute("PRAGMA user_version=1")
    c.execute("INSERT INTO trade_ids VALUES ('T-old', ?)", (T0,))
    c.execute(
        "INSERT INTO trades VALUES ('T-old','sell',2.0,81.25,?,?,'intraday',?,'mqtt',?,'{}')",
        (T0, T0 + 900, T0 - 3600, T0),
    )
    c.commit()
    c.close()
    s = Store(path)
    try:
        assert s.schema_version == SCHEMA_VERSION
        assert s.stored_trade("T-old")["ack_confirmed_ts"] == T0
        assert s.add_trade(make_trade("T-new"), "mqtt")
        assert s.stored_trade("T-new")["ack_confirmed_ts"] is None
    finally:
        s.close()


def test_trades_newest_first_with_since_and_limit(store):
    for i in range(10):
        assert store.add_trade(make_trade(f"T-{i}", executed=T0 + i), "mqtt")
    ids = [t["trade_id"] for t in store.trades()]
    assert ids == [f"T-{i}" for i in reversed(range(10))]
    assert [t["trade_id"] for t in store.trades(limit=3)] == ["T-9", "T-8", "T-7"]
    assert [t["trade_id"] for t in store.trades(since_ts=T0 + 7)] == ["T-9", "T-8", "T-7"]
    assert store.trades(since_ts=T0 + 100) == []


def test_trades_for_schedule_returns_exact_trade_json_for_unfinished_deliveries(store):
    past = make_trade("past", start=T0 - 3600)
    ending = make_trade("ending", start=T0 - 900)  # ends exactly at T0: done
    running = make_trade("running", start=T0 - 900, periods=2)
    future = make_trade("future", start=T0 + 3600, side="buy")
    for t in (future, past, running, ending):
        store.add_trade(t, "mqtt")
    got = store.trades_for_schedule(T0)
    assert got == [running, future]  # delivery order, byte-for-byte the stored trade, no store metadata


def test_add_trade_accepts_aware_datetimes_and_refuses_bad_records(store):
    start = datetime.fromtimestamp(T0, tz=timezone.utc)
    t = {
        "trade_id": "D-1",
        "side": "buy",
        "quantity_mw": 1,
        "price_eur_mwh": 50,
        "delivery_start": start,
        "delivery_end": start + timedelta(minutes=15),
        "market": "da",
        "executed_at": start,
    }
    assert store.add_trade(t, "test")
    assert store.trades_for_schedule(T0 - 1)[0]["delivery_start"] == str(start)
    with pytest.raises(StoreError, match="trade_id"):
        store.add_trade({**make_trade("x"), "trade_id": ""}, "test")
    with pytest.raises(StoreError, match="side"):
        store.add_trade({**make_trade("y"), "side": "hold"}, "test")
    with pytest.raises(StoreError, match="timezone"):
        store.add_trade({**make_trade("z"), "delivery_start": "2027-01-01T00:00:00"}, "test")
    with pytest.raises(StoreError, match="naive"):
        store.add_trade({**make_trade("w"), "delivery_end": datetime(2027, 1, 1)}, "test")
    assert not store.has_trade("y") and not store.has_trade("z") and not store.has_trade("w")


def test_record_rejected_trade_keeps_any_message(store, wall):
    store.record_rejected_trade({"trade_id": "bad-1", "side": "hold"}, "side: must be buy or sell")
    store.record_rejected_trade("not json {", "invalid JSON")
    store.record_rejected_trade(["odd", 1], "not an object", ts=T0 + 5)
    rows = store.rejected_trades()
    assert [r["reason"] for r in rows] == ["not an object", "invalid JSON", "side: must be buy or sell"]
    assert rows[0]["message"] == '["odd",1]' and rows[0]["trade_id"] is None
    assert rows[1]["message"] == "not json {"
    assert rows[2]["trade_id"] == "bad-1" and rows[2]["ts"] == wall.t
    assert not store.has_trade("bad-1")  # a rejection is not a seen id: a corrected resend is accepted


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.sampled_from([f"T{i}" for i in range(8)]), min_size=1, max_size=25))
def test_property_add_trade_true_exactly_once_per_id(tmp_path_factory, ids):
    s = Store(tmp_path_factory.mktemp("prop") / "p.db")
    try:
        seen: set[str] = set()
        for i in ids:
            assert s.add_trade(make_trade(i), "mqtt") is (i not in seen)
            seen.add(i)
        assert {t["trade_id"] for t in s.trades(limit=100)} == seen
    finally:
        s.close()


# ---------------------------------------------------------------- orders
def order(order_id: str, status: str = "open", **kw) -> dict:
    return {
        "order_id": order_id,
        "status": status,
        "side": "sell",
        "quantity_mw": 3.0,
        "price_eur_mwh": 90.0,
        "delivery_start": iso(T0 + 3600),
        "market": "intraday",
        "filled_mw": 0.0,
        "remaining_mw": 3.0,
        "time_in_force": "GTC",
        **kw,
    }


def test_orders_add_update_filter_and_order(store, wall):
    store.add_order(order("O-1"))
    wall.t += 1
    store.add_order(order("O-2", status="partially_filled", filled_mw=1.0, remaining_mw=2.0))
    wall.t += 1
    store.add_order(order("O-3", status="rejected", reason="gate closed"))
    assert [o["order_id"] for o in store.orders()] == ["O-2", "O-1"]
    assert [o["order_id"] for o in store.orders(active_only=False)] == ["O-3", "O-2", "O-1"]
    assert [o["order_id"] for o in store.orders(active_only=False, limit=1)] == ["O-3"]
    assert store.orders(active_only=False)[0]["reason"] == "gate closed"

    store.update_order("O-1", status="filled", filled_mw=3.0, remaining_mw=0.0)
    store.update_order("O-2", status=None, filled_mw=1.5, remaining_mw=None)  # None: unknown, leave as is
    store.update_order("O-unknown", status="cancelled")  # not ours: nothing happens
    assert [o["order_id"] for o in store.orders()] == ["O-2"]
    o2 = store.orders()[0]
    assert o2["status"] == "partially_filled" and o2["filled_mw"] == 1.5 and o2["remaining_mw"] == 2.0
    o1 = next(o for o in store.orders(active_only=False) if o["order_id"] == "O-1")
    assert o1["status"] == "filled" and o1["remaining_mw"] == 0.0 and o1["time_in_force"] == "GTC"

    store.add_order(order("O-1", status="open"))  # the same id again replaces it (the exchange's view wins)
    assert {o["order_id"] for o in store.orders()} == {"O-1", "O-2"}
    assert len(store.orders(active_only=False)) == 3
    with pytest.raises(StoreError):
        store.add_order({"status": "open"})


# ---------------------------------------------------------------- decisions
def decision(store: Store, ts: float, setpoint_mw: float = 1.0) -> None:
    store.record_decision(ts, 2.0, setpoint_mw, "soc_taper", "auto", 55.5, 0.9, 31.0, setpoint_mw, "soc taper")


def test_decisions_are_buffered_then_flushed_in_batches(store):
    n = store_mod.DECISION_BATCH_ROWS
    with raw(store) as other:
        for i in range(n - 1):
            decision(store, T0 + i)
        assert other.execute("SELECT count(*) FROM decisions").fetchone()[0] == 0  # still in the buffer
        decision(store, T0 + n)  # the batch is full: written without asking
        assert other.execute("SELECT count(*) FROM decisions").fetchone()[0] == n
        decision(store, T0 + n + 1)
        store.flush()
        assert other.execute("SELECT count(*) FROM decisions").fetchone()[0] == n + 1


def test_decisions_flush_after_the_interval(store, monkeypatch):
    monkeypatch.setattr(store_mod, "DECISION_FLUSH_S", 0.05)
    decision(store, T0)
    time.sleep(0.06)
    decision(store, T0 + 1)
    with raw(store) as other:
        assert other.execute("SELECT count(*) FROM decisions").fetchone()[0] == 2


def test_decision_fields_and_pagination_newest_first(store):
    for i in range(250):
        decision(store, T0 + i * 0.1, setpoint_mw=i)
    first = store.decisions(limit=100)
    assert first[0] == {
        "ts": pytest.approx(T0 + 24.9),
        "target_mw": 2.0,
        "setpoint_mw": 249.0,
        "binding": "soc_taper",
        "mode": "auto",
        "soc_pct": 55.5,
        "power_mw": 0.9,
        "temperature_c": 31.0,
        "readback_mw": 249.0,
        "reasons": "soc taper",
    }
    pages, before = [], None
    for _ in range(10):  # bounded walk
        page = store.decisions(before_ts=before, limit=100)
        if not page:
            break
        pages.append(page)
        before = page[-1]["ts"]
    assert [len(p) for p in pages] == [100, 100, 50]
    flat = [r["setpoint_mw"] for p in pages for r in p]
    assert flat == [float(i) for i in reversed(range(250))]


def test_record_decision_does_not_wait_for_another_thread(store):
    """A prune or a web read in a worker thread holds the store: the cycle must not wait for it."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock:
            held.set()
            release.wait(30)

    th = threading.Thread(target=hold)
    th.start()
    try:
        assert held.wait(5)
        for i in range(store_mod.DECISION_BATCH_ROWS + 5):
            decision(store, T0 + i)
        assert th.is_alive()  # done while the other thread still held the store: the flush was skipped, not waited for
    finally:
        release.set()
        th.join(5)
    assert len(store.decisions(limit=1000)) == store_mod.DECISION_BATCH_ROWS + 5  # nothing lost


def test_record_decision_keeps_rows_when_another_connection_holds_the_write_lock(store, caplog):
    """The cycle's flush gives up after the short hot-path timeout, not BUSY_TIMEOUT_MS: seen as the order of
    events, not as elapsed time. Another connection holds the write lock until the cycle's recording is done,
    but lets go after half of BUSY_TIMEOUT_MS at the latest: a flush that waited the long timeout would then
    get the lock and succeed, and nothing would be logged."""
    held, done, released = threading.Event(), threading.Event(), []

    def hold():
        with raw(store) as other:
            other.isolation_level = None
            other.execute("BEGIN IMMEDIATE")  # e.g. the outbox in the middle of a write
            held.set()
            released.append(
                "after the recording"
                if done.wait(store_mod.BUSY_TIMEOUT_MS / 1000 / 2)
                else "before the recording was done"
            )
            other.execute("COMMIT")

    th = threading.Thread(target=hold)
    th.start()
    try:
        assert held.wait(5)
        for i in range(store_mod.DECISION_BATCH_ROWS):
            decision(store, T0 + i)
    finally:
        done.set()
        th.join(10)
    assert released == ["after the recording"], "the hot-path flush waited for the other connection"
    assert "decision log write failed" in caplog.text
    assert len(store.decisions(limit=1000)) == store_mod.DECISION_BATCH_ROWS


# ---------------------------------------------------------------- alarms
def test_alarms_raise_idempotent_clear_reraise_history(tmp_path):
    s = Store(tmp_path / "a.db")
    assert s.raise_alarm("bms:comm", "bms", "timeout", "bms: no fresh readings", T0) is True
    assert s.raise_alarm("bms:comm", "bms", "timeout", "again", T0 + 1) is False
    assert s.raise_alarm("pcs:fault", "pcs", "fault", "pcs reports fault", T0 + 2) is True
    assert [a["key"] for a in s.active_alarms()] == ["bms:comm", "pcs:fault"]
    assert s.active_alarms()[0]["message"] == "bms: no fresh readings"  # the first raise stands
    assert s.clear_alarm("bms:comm", T0 + 3) is True
    assert s.clear_alarm("bms:comm", T0 + 4) is False
    assert s.clear_alarm("never", T0 + 4) is False
    assert [a["key"] for a in s.active_alarms()] == ["pcs:fault"]
    assert s.raise_alarm("bms:comm", "bms", "disconnected", "back again", T0 + 5) is True
    s.close()
    s = Store(tmp_path / "a.db")
    try:
        assert {a["key"] for a in s.active_alarms()} == {"pcs:fault", "bms:comm"}
        hist = s.alarm_history()
        assert [(a["key"], a["raised_ts"], a["cleared_ts"]) for a in hist] == [
            ("bms:comm", T0 + 5, None),
            ("pcs:fault", T0 + 2, None),
            ("bms:comm", T0, T0 + 3),
        ]
        assert [a["cause"] for a in s.alarm_history(limit=1)] == ["disconnected"]
    finally:
        s.close()


# ---------------------------------------------------------------- audit, state, shortfalls
def test_audit_log_newest_first(store):
    store.audit("api:key1", "set_mode", {"mode": "manual", "setpoint_mw": 2.5}, T0)
    store.audit("scada-modbus", "write", {"when": datetime(2027, 1, 1, tzinfo=timezone.utc)}, T0 + 1)
    log = store.audit_log()
    assert [(r["who"], r["action"], r["ts"]) for r in log] == [
        ("scada-modbus", "write", T0 + 1),
        ("api:key1", "set_mode", T0),
    ]
    assert log[1]["details"] == {"mode": "manual", "setpoint_mw": 2.5}
    assert log[0]["details"] == {"when": "2027-01-01 00:00:00+00:00"}  # not JSON itself: kept as text
    assert len(store.audit_log(limit=1)) == 1


def test_state_round_trips_json_and_persists(tmp_path):
    s = Store(tmp_path / "s.db")
    values = {
        "mode": {"mode": "manual", "manual_setpoint_mw": -3.5, "manual_expires_ts": T0 + 60.5, "source": "api"},
        "last_setpoint_mw": 4.25,
        "flag": True,
        "none": None,
        "list": [1, "a", {"b": 2}],
        "text": "ü",
    }
    for k, v in values.items():
        s.set_state(k, v)
    s.set_state("last_setpoint_mw", 5.0)  # overwrite
    assert s.get_state("missing") is None and s.get_state("missing", 7) == 7
    assert s.get_state("none", "default") is None  # a stored null is a value, not a missing key
    with pytest.raises(TypeError):
        s.set_state("bad", object())
    s.close()
    s = Store(tmp_path / "s.db")
    try:
        assert {k: s.get_state(k) for k in values} == {**values, "last_setpoint_mw": 5.0}
        assert s.get_state("bad", "absent") == "absent"
    finally:
        s.close()


def test_shortfalls_upsert_per_period(store):
    store.record_shortfall(T0, 4.0, 0.5, 0.5)
    store.record_shortfall(T0 + 900, -2.0, -0.3, 0.2)
    store.record_shortfall(T0, 4.0, 0.6, 0.4)  # recomputed for the same period: replaces
    rows = store.shortfalls()
    assert [(r["period_start"], r["shortfall_mwh"]) for r in rows] == [(T0 + 900, 0.2), (T0, 0.4)]
    assert rows[1]["delivered_mwh"] == 0.6 and rows[1]["position_mw"] == 4.0
    assert len(store.shortfalls(limit=1)) == 1


# ---------------------------------------------------------------- retention
def test_prune_deletes_only_what_is_old_and_finished(store, wall, monkeypatch):
    monkeypatch.setattr(store_mod, "PRUNE_CHUNK_ROWS", 7)  # several chunks per table
    now = T0 + 100 * DAY
    for i in range(30):
        decision(store, now - 10 * DAY - i)  # old
    for i in range(5):
        decision(store, now - i)  # recent
    store.raise_alarm("old", "bms", "x", "m", now - 200 * DAY)
    store.clear_alarm("old", now - 199 * DAY)
    store.raise_alarm("old-active", "pcs", "x", "m", now - 200 * DAY)  # active: kept however old
    store.raise_alarm("recent", "bms", "x", "m", now - 2 * DAY)
    store.clear_alarm("recent", now - DAY)
    store.audit("a", "old", {}, now - 400 * DAY)
    store.audit("a", "new", {}, now - DAY)
    store.record_rejected_trade("old", "r", ts=now - 100 * DAY)
    store.record_rejected_trade("new", "r", ts=now - DAY)
    store.record_shortfall(now - 400 * DAY, 1, 0, 0.25)
    store.record_shortfall(now - DAY, 1, 0, 0.25)
    wall.t = now - 200 * DAY
    store.add_order(order("old-filled", status="filled"))
    store.add_order(order("old-open"))
    store.add_order_intent("old-settled", intent_body("old-settled"), now - 200 * DAY)
    store.resolve_order_intent("old-settled", "not_placed")
    store.add_order_intent("old-pending", intent_body("old-pending"), now - 200 * DAY)  # pending: kept
    wall.t = now
    store.add_order(order("new-filled", status="filled"))
    store.add_trade(make_trade("old-trade", start=T0), "mqtt")
    store.add_trade(make_trade("new-trade", start=now + 900), "mqtt")

    deleted = store.prune(now, decision_retention_days=7)
    assert deleted == {
        "decisions": 30,
        "alarms": 1,
        "audit": 1,
        "rejected_trades": 1,
        "shortfalls": 1,
        "orders": 1,
        "order_intents": 1,
        "trades": 0,
        "market_prices": 0,
        "market_samples": 0,
        "provision": 0,
    }
    assert [i["client_order_id"] for i in store.order_intents()] == ["old-pending"]
    assert len(store.decisions(limit=1000)) == 5
    assert {a["key"] for a in store.alarm_history()} == {"old-active", "recent"}
    assert {o["order_id"] for o in store.orders(active_only=False)} == {"old-open", "new-filled"}
    assert len(store.trades()) == 2  # trades are kept unless asked

    deleted = store.prune(now, decision_retention_days=7, trade_retention_days=30)
    assert deleted["trades"] == 1 and deleted["decisions"] == 0
    assert [t["trade_id"] for t in store.trades()] == ["new-trade"]
    # the seen set outlives the row: a replay of the pruned trade is still a duplicate
    assert store.has_trade("old-trade")
    assert store.add_trade(make_trade("old-trade", start=T0), "mqtt") is False
    assert store.prune(now, decision_retention_days=7, trade_retention_days=30) == dict.fromkeys(deleted, 0)


# ---------------------------------------------------------------- sharing the file
def test_second_connection_sees_committed_rows_without_close(store):
    store.add_trade(make_trade("T-shared"), "mqtt")
    store.set_state("mode", {"mode": "stopped"})
    store.raise_alarm("k", "bms", "c", "m", T0)
    with raw(store) as other:
        assert other.execute("SELECT trade_id FROM trades").fetchall()[0][0] == "T-shared"
        assert other.execute("SELECT value FROM state WHERE key='mode'").fetchone()[0] == '{"mode":"stopped"}'
        assert other.execute("SELECT count(*) FROM alarms WHERE cleared_ts IS NULL").fetchone()[0] == 1


def test_second_store_on_the_same_file_sees_rows(tmp_path):
    a = Store(tmp_path / "x.db")
    b = Store(tmp_path / "x.db")
    try:
        assert a.add_trade(make_trade("T-a"), "mqtt")
        assert b.has_trade("T-a")
        assert b.add_trade(make_trade("T-a"), "exchange") is False  # idempotent across connections too
        b.set_state("k", 1)
        assert a.get_state("k") == 1
    finally:
        a.close()
        b.close()


def test_outbox_like_writer_in_other_threads_and_store_writers_interleave(store):
    """The outbox keeps its own table and connection in the same file; both write at once without errors."""
    errors: list[BaseException] = []
    n = 60

    def outbox() -> None:
        try:
            c = sqlite3.connect(store.path, timeout=5, isolation_level=None)
            c.execute("PRAGMA busy_timeout=5000")
            c.execute("CREATE TABLE IF NOT EXISTS outbox_test (seq INTEGER PRIMARY KEY, payload TEXT)")
            for i in range(n):
                c.execute("INSERT INTO outbox_test (payload) VALUES (?)", (f"m{i}",))
            c.close()
        except BaseException as e:  # collected and re-raised by the test below
            errors.append(e)

    def web_reader() -> None:
        try:
            for _ in range(n):
                store.trades(limit=5)
                store.active_alarms()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=outbox), threading.Thread(target=web_reader)]
    for th in threads:
        th.start()
    for i in range(n):
        assert store.add_trade(make_trade(f"T-{i}", executed=T0 + i), "mqtt")
        decision(store, T0 + i)
    for th in threads:
        th.join(30)
    assert not errors, errors
    assert store.schema_version == SCHEMA_VERSION  # the other table did not disturb the migrations
    with raw(store) as other:
        assert other.execute("SELECT count(*) FROM outbox_test").fetchone()[0] == n
        assert other.execute("SELECT count(*) FROM trades").fetchone()[0] == n
        assert other.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------- order intents (schema 3)


def intent_body(cid: str, side: str = "sell", quantity_mw: float = 2.0) -> dict:
    return {
        "side": side,
        "quantity_mw": quantity_mw,
        "price_eur_mwh": 80.0,
        "market": "intraday",
        "delivery_start": "2026-11-25T15:00Z",
        "time_in_force": "GTC",
        "participant": "demo",
        "client_order_id": cid,
    }


def test_order_intent_is_durable_and_settles_once(tmp_path, wall):
    """An intent is committed before the order is sent (a reopened store has it, pending); settling it as placed
    stores the exchange's order in the same transaction; a second settlement changes nothing."""
    path = tmp_path / "state"
    with Store.in_state_dir(path, now=wall) as s:
        s.add_order_intent("demo-1", intent_body("demo-1"), T0)
        s.add_order_intent("demo-2", intent_body("demo-2", "buy"), T0 + 1)
        with pytest.raises(sqlite3.IntegrityError):
            s.add_order_intent("demo-1", intent_body("demo-1"), T0 + 2)  # one intent per client_order_id
        with pytest.raises(StoreError, match="client_order_id"):
            s.add_order_intent("demo-3", intent_body("demo-x"), T0)
    with Store.in_state_dir(path, now=wall) as s:  # as after a kill -9: committed means on disk
        pending = s.order_intents("pending")
        assert [(i["client_order_id"], i["side"], i["quantity_mw"]) for i in pending] == [
            ("demo-1", "sell", 2.0),
            ("demo-2", "buy", 2.0),
        ]
        assert pending[0]["order"] == intent_body("demo-1") and pending[0]["created_ts"] == T0
        assert s.orders(active_only=False) == []
        order = {**intent_body("demo-1"), "order_id": "O-1", "status": "open", "filled_mw": 0.0, "remaining_mw": 2.0}
        assert s.resolve_order_intent("demo-1", "placed", order)
        assert not s.resolve_order_intent("demo-1", "not_placed", reason="late")  # already settled
        assert s.resolve_order_intent("demo-2", "not_placed", reason="never reached the exchange")
        assert not s.resolve_order_intent("demo-unknown", "refused")
        with pytest.raises(StoreError):
            s.resolve_order_intent("demo-2", "placed", {"status": "open"})  # placed needs an order_id
        assert s.order_intents("pending") == []
        settled = {i["client_order_id"]: (i["state"], i["order_id"], i["reason"]) for i in s.order_intents()}
        assert settled == {
            "demo-1": ("placed", "O-1", None),
            "demo-2": ("not_placed", None, "never reached the exchange"),
        }
        assert [o["order_id"] for o in s.orders()] == ["O-1"]
        assert s.counts()["order_intents"] == 2


def test_migration_from_schema_2_adds_order_intents(tmp_path):
    path = tmp_path / "v2.db"
    c = sqlite3.connect(path)
    for migration in store_mod.MIGRATIONS[:2]:
        for stmt in migration:
            c.execute(stmt)
    c.execute("PRAGMA user_version=2")
    c.execute(
        "INSERT INTO orders (order_id, status, created_ts, updated_ts, json) VALUES ('O-old','open',?,?,'{}')", (T0, T0)
    )
    c.commit()
    c.close()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION >= 3
        assert s.order_intents() == [] and s.orders() == [{}]
        s.add_order_intent("demo-1", intent_body("demo-1"), T0)
        assert len(s.order_intents("pending")) == 1
