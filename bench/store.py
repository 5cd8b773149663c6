"""Store costs: add_trade (committed and fsynced before the ack), a duplicate add_trade, record_decision (buffered,
as each cycle calls it), set_state and get_state, median/p99 µs over N calls each. The floor is a bare sqlite3
connection in the same mode (WAL, synchronous=FULL) inserting one row and committing, in the same directory
and run: what any durable acknowledged write costs on this disk.

    .venv/bin/python bench/store.py [--n 2000]

Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.clock import iso  # noqa: E402
from controller.store import Store  # noqa: E402


def figures(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {
        "median_us": round(statistics.median(xs) * 1e6, 1),
        "p99_us": round(xs[int(len(xs) * 0.99)] * 1e6, 1),
        "max_us": round(xs[-1] * 1e6, 1),
    }


def timed(n: int, call, pause_s: float = 0.0) -> dict:
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        took.append(time.perf_counter() - t0)
        if pause_s:
            time.sleep(pause_s)
    return figures(took)


def floor(work: Path, n: int) -> dict:
    conn = sqlite3.connect(work / "floor.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, json TEXT NOT NULL)")
    body = json.dumps(
        {
            "trade_id": "x",
            "side": "sell",
            "quantity_mw": 2.0,
            "price_eur_mwh": 80.0,
            "delivery_start": iso(0),
            "delivery_end": iso(900),
            "market": "intraday",
        }
    )

    def insert(i: int) -> None:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"F{i}", body))
        conn.execute("COMMIT")

    try:
        return timed(n, insert)
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    out: dict = {"floor_insert_commit": floor(work, n)}
    s = Store.in_state_dir(work / "state")
    try:

        def trade(i: int) -> dict:
            start = 1_800_000_000 + 900 * i
            return {
                "trade_id": f"T{i}",
                "side": "sell",
                "quantity_mw": 2.0,
                "price_eur_mwh": 80.0,
                "delivery_start": iso(start),
                "delivery_end": iso(start + 900),
                "market": "intraday",
                "executed_at": iso(start - 60),
            }

        out["add_trade"] = timed(n, lambda i: s.add_trade(trade(i), "bench"))
        out["add_trade_duplicate"] = timed(n, lambda i: s.add_trade(trade(i), "bench"))
        decide = lambda i: s.record_decision(float(i), 1.0, 1.0, "none", "auto", 50.0, 1.0, 25.0, 1.0, "")  # noqa: E731
        out["record_decision_burst"] = timed(n, decide)
        out["record_decision_0.1s_cycle_sim"] = timed(n, decide, pause_s=0.002)
        out["set_state"] = timed(n, lambda i: s.set_state("last_soc_pct", 50.0 + i))
        out["get_state"] = timed(n, lambda i: s.get_state("last_soc_pct"))
        t0 = time.perf_counter()
        s.flush()
        out["flush_us"] = round((time.perf_counter() - t0) * 1e6, 1)
        t0 = time.perf_counter()
        out["pruned"] = s.prune(1e12, 0.0)
        out["prune_all_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    finally:
        s.close()
    out["add_trade_vs_floor"] = round(out["add_trade"]["median_us"] / out["floor_insert_commit"]["median_us"], 2)
    for k, v in out.items():
        print(f"{k:32s} {v}")
    print(json.dumps({"bench": "store", "n": n, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
