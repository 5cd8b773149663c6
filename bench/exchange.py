"""Exchange simulator throughput and latency: orders/s through the matching engine in process, and through
the REST API (a real uvicorn in a child process on loopback, signed requests from an httpx client),
with median/p99 order latency. The floor for the REST figures is GET /healthz (no auth, no engine) in the
same run. Bounded in count and time; prints the figures and a final JSON line.

    .venv/bin/python bench/exchange.py [--engine-orders 200000] [--rest-orders 3000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from controller.clock import iso  # noqa: E402
from controller.trading.exchange import ExchangeClient  # noqa: E402
from simulators.exchange.engine import MatchingEngine, TickOrder  # noqa: E402

SECRET = "bench-secret"
KEYS = {"bench-a": "site-a", "bench-b": "site-b"}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def random_orders(n: int, products: list[int], seed: int = 1) -> list[TickOrder]:
    """Orders around 100 EUR/MWh, both sides, four participants, mostly GTC: books stay deep and cross often."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        side = rng.choice(("buy", "sell"))
        price = 10_000 + int(rng.gauss(0, 150)) + (-60 if side == "buy" else 60)
        out.append(
            TickOrder(
                participant=rng.choice("abcd"),
                side=side,
                price_ticks=price,
                quantity_lots=rng.randint(1, 50),
                delivery_start=rng.choice(products),
                time_in_force=rng.choice(("GTC",) * 8 + ("IOC", "FOK")),
            )
        )
    return out


def bench_engine(n: int, time_cap_s: float) -> dict:
    now = float(int(time.time()) // 900 * 900)
    eng = MatchingEngine()
    products = eng.open_products(now, 16)
    orders = random_orders(n, products)
    lat_us: list[float] = []
    trades = 0
    t_start = time.perf_counter()
    for i, req in enumerate(orders):
        t0 = time.perf_counter_ns()
        r = eng.submit(req, now + i * 1e-4)
        lat_us.append((time.perf_counter_ns() - t0) / 1000)
        trades += len(r.trades)
        if i % 1000 == 0 and time.perf_counter() - t_start > time_cap_s:
            break
    wall = time.perf_counter() - t_start
    resting = sum(len(b) for b in eng.books.values())
    return {
        "orders": len(lat_us),
        "orders_per_s": round(len(lat_us) / wall),
        "trades": trades,
        "resting_at_end": resting,
        "median_us": round(statistics.median(lat_us), 1),
        "p99_us": round(pct(lat_us, 0.99), 1),
    }


def start_server(port: int) -> subprocess.Popen:
    code = (
        "import asyncio, logging; from simulators.exchange.app import serve; "
        f"asyncio.run(serve('127.0.0.1', {port}, participants={KEYS!r}, hmac_secret={SECRET!r}, "
        "counterparties=0, mqtt_url=None))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            try:
                if (await c.get(url + "/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"exchange at {url} not ready in {timeout_s} s")


async def bench_rest(url: str, n: int, concurrency: int, time_cap_s: float) -> dict:
    now = time.time()
    products = MatchingEngine().open_products(now, 8)
    reqs = random_orders(n, products, seed=2)
    clients = {k: ExchangeClient(url, k, SECRET, timeout_s=10) for k in KEYS}
    keys = list(KEYS)

    def body(req: TickOrder) -> dict:
        return {
            "side": req.side,
            "quantity_mw": req.quantity_lots / 10,
            "price_eur_mwh": req.price_ticks / 100,
            "delivery_start": iso(req.delivery_start),
            "market": "intraday",
            "time_in_force": req.time_in_force,
        }

    async with httpx.AsyncClient(base_url=url) as plain:
        floor = []
        for _ in range(300):
            t0 = time.perf_counter()
            (await plain.get("/healthz")).raise_for_status()
            floor.append((time.perf_counter() - t0) * 1000)

    # sequential: one order at a time, the latency a single site sees
    seq_n = min(n // 3, 1000)
    seq_lat = []
    t_start = time.perf_counter()
    for i, req in enumerate(reqs[:seq_n]):
        t0 = time.perf_counter()
        await clients[keys[i % 2]].place_order(body(req))
        seq_lat.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - t_start > time_cap_s / 2:
            break
    seq_wall = time.perf_counter() - t_start

    # concurrent: `concurrency` workers share the rest
    queue = list(reversed(reqs[seq_n:]))
    conc_lat: list[float] = []
    deadline = time.perf_counter() + time_cap_s / 2

    async def worker(w: int) -> None:
        client = clients[keys[w % 2]]
        while queue and time.perf_counter() < deadline:
            req = queue.pop()
            t0 = time.perf_counter()
            await client.place_order(body(req))
            conc_lat.append((time.perf_counter() - t0) * 1000)

    t_start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    conc_wall = time.perf_counter() - t_start
    for c in clients.values():
        await c.aclose()
    return {
        "floor_healthz_median_ms": round(statistics.median(floor), 3),
        "floor_healthz_p99_ms": round(pct(floor, 0.99), 3),
        "sequential": {
            "orders": len(seq_lat),
            "orders_per_s": round(len(seq_lat) / seq_wall),
            "median_ms": round(statistics.median(seq_lat), 3),
            "p99_ms": round(pct(seq_lat, 0.99), 3),
        },
        "concurrent": {
            "concurrency": concurrency,
            "orders": len(conc_lat),
            "orders_per_s": round(len(conc_lat) / conc_wall),
            "median_ms": round(statistics.median(conc_lat), 3),
            "p99_ms": round(pct(conc_lat, 0.99), 3),
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine-orders", type=int, default=200_000)
    p.add_argument("--rest-orders", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--time-cap-s", type=float, default=30.0, help="per part")
    args = p.parse_args()

    eng = bench_engine(args.engine_orders, args.time_cap_s)
    print(
        f"engine (in process): {eng['orders']} orders, {eng['orders_per_s']} orders/s, {eng['trades']} trades, "
        f"latency median {eng['median_us']} µs, p99 {eng['p99_us']} µs"
    )

    port = free_port()
    proc = start_server(port)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(url))
        rest = asyncio.run(bench_rest(url, args.rest_orders, args.concurrency, args.time_cap_s))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    s, c = rest["sequential"], rest["concurrent"]
    print(
        f"REST floor GET /healthz: median {rest['floor_healthz_median_ms']} ms, p99 {rest['floor_healthz_p99_ms']} ms"
    )
    print(
        f"REST sequential: {s['orders']} orders, {s['orders_per_s']} orders/s, "
        f"median {s['median_ms']} ms, p99 {s['p99_ms']} ms"
    )
    print(
        f"REST {c['concurrency']} concurrent: {c['orders']} orders, {c['orders_per_s']} orders/s, "
        f"median {c['median_ms']} ms, p99 {c['p99_ms']} ms"
    )
    print(json.dumps({"bench": "exchange", "engine": eng, "rest": rest}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
