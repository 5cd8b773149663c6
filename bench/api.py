"""API benchmark: /api/bess-status under 50 concurrent clients (paced at a target rate and flat out), and the
websocket fan-out to 100 clients, against the full demo stack (`bess-edge demo`, started here on the fixed
demo ports unless --url is given). The control cycle's p99 is read from /metrics before and after.

Prints figures and a final JSON line. Targets (issue 6): p99 under 20 ms at 500 req/s; cycle p99 stays under
20 ms meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


async def cycle_p99_ms(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    m = re.search(r"^bess_cycle_duration_p99_seconds (\S+)$", text, re.M)
    return float(m.group(1)) * 1000 if m else float("nan")


async def load(client: httpx.AsyncClient, key: str, clients: int, rate: float | None, duration_s: float):
    """`clients` workers; with `rate`, requests are paced to that total rate (open loop per worker)."""
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + duration_s
    interval = clients / rate if rate else 0.0

    async def worker(i: int) -> None:
        nonlocal errors
        nxt = time.perf_counter() + (interval * i / clients if rate else 0.0)
        while True:
            now = time.perf_counter()
            if now >= end:
                return
            if rate and nxt > now:
                await asyncio.sleep(nxt - now)
            t0 = time.perf_counter()
            try:
                r = await client.get("/api/bess-status", headers={"X-API-Key": key})
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            lat.append(time.perf_counter() - t0)
            nxt += interval

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "errors": errors, "rps": round(len(lat) / wall, 1),
            "median_ms": round(statistics.median(lat) * 1000, 2), "p99_ms": round(pct(lat, 0.99) * 1000, 2)}


async def fanout(base: str, key: str, n: int, duration_s: float) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        tokens = [(await c.get("/api/ws-token", headers={"X-API-Key": key})).json()["token"] for _ in range(n)]
    ws_base = base.replace("http", "ws", 1)
    counts = [0] * n
    gaps: list[float] = []

    async def client(i: int) -> None:
        async with websockets.connect(f"{ws_base}/ws?token={tokens[i]}", open_timeout=10) as ws:
            end = time.monotonic() + duration_s
            last = None
            while time.monotonic() < end:
                try:
                    await asyncio.wait_for(ws.recv(), timeout=max(0.05, end - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                now = time.monotonic()
                if last is not None:
                    gaps.append(now - last)
                last = now
                counts[i] += 1

    await asyncio.gather(*(client(i) for i in range(n)))
    return {"clients": n, "messages": sum(counts), "min_per_client": min(counts),
            "msgs_per_s_per_client": round(sum(counts) / n / duration_s, 2),
            "gap_p99_ms": round(pct(gaps, 0.99) * 1000, 1) if gaps else None}


async def run(base: str, key: str, duration_s: float) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=10,
                                 limits=httpx.Limits(max_connections=60, max_keepalive_connections=60)) as c:
        for _ in range(100):  # bounded wait for the controller's first cycles
            if (await c.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        before = await cycle_p99_ms(c)
        paced = await load(c, key, 50, 500.0, duration_s)
        during_paced = await cycle_p99_ms(c)
        flat = await load(c, key, 50, None, duration_s)
        during_flat = await cycle_p99_ms(c)
    ws = await fanout(base, key, 100, duration_s)
    return {"paced_500rps": paced, "flat_out": flat, "websocket": ws,
            "cycle_p99_ms": {"before": round(before, 2), "after_paced": round(during_paced, 2),
                             "after_flat_out": round(during_flat, 2)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", help="a running controller (default: start the demo here)")
    ap.add_argument("--key", default="demo")
    ap.add_argument("--duration-s", type=float, default=10.0)
    a = ap.parse_args()
    demo = None
    base = a.url
    if not base:
        from controller.demo import Demo

        tmp = tempfile.mkdtemp(prefix="bench-api-")
        demo = Demo(str(Path(__file__).resolve().parent.parent / "config" / "demo.yaml"), Path(tmp), 8, quiet=True)
        demo.start()
        base = "http://127.0.0.1:5000"
    try:
        res = asyncio.run(run(base, a.key, a.duration_s))
    finally:
        if demo:
            demo.stop()
    p, f, w, cyc = res["paced_500rps"], res["flat_out"], res["websocket"], res["cycle_p99_ms"]
    print(f"/api/bess-status, 50 clients paced at 500 req/s: {p['rps']} req/s, median {p['median_ms']} ms, "
          f"p99 {p['p99_ms']} ms, errors {p['errors']}")
    print(f"/api/bess-status, 50 clients flat out:           {f['rps']} req/s, median {f['median_ms']} ms, "
          f"p99 {f['p99_ms']} ms, errors {f['errors']}")
    print(f"websocket fan-out: {w['clients']} clients, {w['msgs_per_s_per_client']} msg/s each, "
          f"min {w['min_per_client']} msgs per client, gap p99 {w['gap_p99_ms']} ms")
    print(f"control cycle p99: before {cyc['before']} ms, after paced load {cyc['after_paced']} ms, "
          f"after flat-out load {cyc['after_flat_out']} ms")
    print(json.dumps({"bench": "api", **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
