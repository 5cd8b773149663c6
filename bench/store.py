"""Store costs: add_trade, record_decision, set_state, get_state (median/p99 µs over N calls)."""
import json, statistics, sys, tempfile, time
from pathlib import Path
from controller.store import Store
from controller.clock import iso

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
d = Path(tempfile.mkdtemp())
s = Store.in_state_dir(d)
def stats(xs):
    xs = sorted(xs); return {"median_us": round(statistics.median(xs) * 1e6, 1), "p99_us": round(xs[int(len(xs) * 0.99)] * 1e6, 1), "max_us": round(xs[-1] * 1e6, 1)}
out = {}
t = []
for i in range(N):
    st = 1_800_000_000 + 900 * i
    tr = {"trade_id": f"T{i}", "side": "sell", "quantity_mw": 2.0, "price_eur_mwh": 80.0, "delivery_start": iso(st), "delivery_end": iso(st + 900), "market": "intraday", "executed_at": iso(st - 60)}
    t0 = time.perf_counter(); s.add_trade(tr, "bench"); t.append(time.perf_counter() - t0)
out["add_trade"] = stats(t)
t = []
for i in range(N):
    t0 = time.perf_counter(); s.add_trade({"trade_id": f"T{i}", "side": "sell", "delivery_start": iso(0), "delivery_end": iso(900)}, "bench"); t.append(time.perf_counter() - t0)
out["add_trade_duplicate"] = stats(t)
for label, sleep_s in (("record_decision_burst", 0.0), ("record_decision_0.1s_cycle_sim", 0.002)):
    t = []
    for i in range(N):
        t0 = time.perf_counter(); s.record_decision(float(i), 1.0, 1.0, "none", "auto", 50.0, 1.0, 25.0, 1.0, ""); t.append(time.perf_counter() - t0)
        if sleep_s: time.sleep(sleep_s)
    out[label] = stats(t)
t = []
for i in range(N):
    t0 = time.perf_counter(); s.set_state("last_soc_pct", 50.0 + i); t.append(time.perf_counter() - t0)
out["set_state"] = stats(t)
t = []
for i in range(N):
    t0 = time.perf_counter(); s.get_state("last_soc_pct"); t.append(time.perf_counter() - t0)
out["get_state"] = stats(t)
t0 = time.perf_counter(); s.flush(); out["flush_us"] = round((time.perf_counter() - t0) * 1e6, 1)
t0 = time.perf_counter(); n = s.prune(1e12, 0.0); out["prune_all_ms"] = round((time.perf_counter() - t0) * 1e3, 1); out["pruned"] = n
s.close()
for k, v in out.items(): print(f"{k:32s} {v}")
print(json.dumps({"bench": "store", "n": N, **out}))
