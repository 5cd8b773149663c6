"""kill -9 of a real process writing to the store: every trade it acknowledged (printed after add_trade
returned) is in the database afterwards, the state it committed is there, and the file passes
PRAGMA integrity_check. A second thread in the child writes its own table on its own connection (as the MQTT
outbox does) and the decision log is written on every iteration, so the kill lands amid mixed writes."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from controller.store import Store

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 4
MAX_ITERATIONS = 50_000  # the child stops by itself even if nobody kills it

CHILD = r"""
import sqlite3, sys, threading, time
from controller.store import Store

path, round_no, previous_id, max_iter = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
store = Store(path)

def outbox():  # its own connection and table, like controller/uplink/outbox.py
    c = sqlite3.connect(path, timeout=5, isolation_level=None)
    c.execute("PRAGMA busy_timeout=5000")
    c.execute("CREATE TABLE IF NOT EXISTS crash_outbox (seq INTEGER PRIMARY KEY, payload TEXT)")
    for i in range(max_iter):
        c.execute("INSERT INTO crash_outbox (payload) VALUES (?)", ("x" * 200,))
        # 500 messages/s, far above the real outbox's rate; a writer that never pauses would starve
        # the other connection's BEGIN IMMEDIATE past busy_timeout (SQLite's busy handler polls, it has no queue)
        time.sleep(0.002)

threading.Thread(target=outbox, daemon=True).start()
if previous_id != "-" and store.add_trade({"trade_id": previous_id, "side": "sell", "quantity_mw": 1.0,
        "price_eur_mwh": 1.0, "delivery_start": "2027-01-15T00:00:00Z", "delivery_end": "2027-01-15T00:15:00Z",
        "market": "intraday", "executed_at": "2027-01-14T23:00:00Z"}, "replay"):
    print("DUPLICATE-ACCEPTED", previous_id, flush=True)
for i in range(max_iter):
    trade_id = f"r{round_no}-{i}"
    start = 1_800_000_000 + 900 * (i % 96)
    iso = lambda ts: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    trade = {"trade_id": trade_id, "side": "buy" if i % 2 else "sell", "quantity_mw": 1.0 + i % 5,
             "price_eur_mwh": 80.0, "delivery_start": iso(start), "delivery_end": iso(start + 900),
             "market": "intraday", "executed_at": "2027-01-14T23:00:00Z"}
    if not store.add_trade(trade, "crash-test"):
        print("NEW-TRADE-REFUSED", trade_id, flush=True)
    store.record_decision(float(i), 1.0, 1.0, "none", "auto", 50.0, 1.0, 25.0, 1.0, "")
    store.set_state(f"acked_{round_no}", i)
    print(trade_id, flush=True)   # the acknowledgement: only after add_trade and set_state returned
"""


def run_round(db: Path, round_no: int, previous_id: str, rng: random.Random) -> list[str]:
    """Start the child, kill -9 it at a random moment, return the trade ids it acknowledged."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(round_no), previous_id, str(MAX_ITERATIONS)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    first = threading.Event()  # the first acknowledgement, or the child's end

    def read() -> None:
        try:
            for line in proc.stdout:
                if line.endswith("\n"):  # a torn last line is not an acknowledgement
                    lines.append(line.strip())
                    first.set()
        finally:
            first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first.wait(30), "child acknowledged nothing within 30 s"
        time.sleep(rng.uniform(0.05, 0.6))  # the random moment
        assert proc.poll() is None, f"child exited early ({proc.returncode}): {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    assert not [line for line in lines if " " in line], f"child reported a store error: {lines[:5]}"
    return lines


def test_kill_9_loses_no_acknowledged_trade(tmp_path):
    db = tmp_path / "state" / "bess-edge.db"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acked_all: list[str] = []
    previous = "-"
    for round_no in range(ROUNDS):
        acked = run_round(db, round_no, previous, rng)
        assert acked, f"round {round_no} (seed {seed}) acknowledged nothing"
        acked_all += acked
        print(f"round {round_no}: {len(acked)} acknowledged before kill -9")

        c = sqlite3.connect(db)  # before any Store opens it: the raw file as the kill left it (plus WAL)
        try:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"seed {seed}"
        finally:
            c.close()
        store = Store(db)
        try:
            missing = [t for t in acked_all if not store.has_trade(t)]
            assert not missing, f"seed {seed}: acknowledged trades lost after kill -9: {missing[:10]}"
            stored = {t["trade_id"] for t in store.trades(limit=len(acked_all) + 10)}
            assert set(acked_all) <= stored
            last_index = int(acked[-1].rsplit("-", 1)[1])
            # the state write of the last acknowledged iteration was committed before its line was printed
            assert store.get_state(f"acked_{round_no}") >= last_index
        finally:
            store.close()
        previous = acked[len(acked) // 2]

    c = sqlite3.connect(db)
    try:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("SELECT count(*) FROM trade_ids").fetchone()[0] >= len(acked_all)
    finally:
        c.close()
