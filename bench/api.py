"""API benchmark: /api/bess-status under 50 concurrent clients (paced at a target rate and flat out), and the
websocket fan-out to 100 clients, against the full demo stack (`bess-edge demo`, started here on the fixed
demo ports unless --url is given).

The load comes from a lean client in this process (raw HTTP/1.1 keep-alive over asyncio sockets, one connection
per client, the whole response read and its status checked), so that the 2 cores go to the server, not to the
load generator; GET /healthz (no auth, no controller) at the same rate is the floor. The control cycle's
duration during each load window comes from the controller's own histogram (/metrics bucket deltas, the
quantile interpolated within its bucket as Prometheus's histogram_quantile does). The websocket fan-out is timed
as the spread between the first and the last of the 100 clients receiving the same cycle's message.

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


async def cycle_histogram(client: httpx.AsyncClient, key: str) -> dict[float, float]:
    """Cumulative bucket counts of bess_cycle_duration_seconds, by upper bound (s). /metrics takes the key as
    Prometheus sends it (Authorization: Bearer)."""
    text = (await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})).text
    out = {}
    for le, v in re.findall(r'^bess_cycle_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        out[float(le)] = float(v)
    return out


def window_quantile(before: dict[float, float], after: dict[float, float], q: float) -> dict:
    """Cycles in the window between two scrapes, and their q-quantile (ms) interpolated within its bucket."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return {"cycles": 0, "p99_ms": None, "max_bucket_ms": None}
    rank, lo, prev = q * total, 0.0, 0.0
    value = les[-1]
    for le, c in zip(les, counts):
        if c >= rank:
            value = lo + (le - lo) * ((rank - prev) / (c - prev) if c > prev else 1.0)
            break
        lo, prev = le, c
    top = next(le for le, c in zip(les, counts) if c >= total)
    return {
        "cycles": int(total),
        "p99_ms": round(value * 1000, 2),
        "max_bucket_ms": None if top == float("inf") else round(top * 1000, 2),
    }


class Conn:
    """One HTTP/1.1 keep-alive connection that GETs a path and reads the whole response."""

    def __init__(self, host: str, port: int, path: str, key: str | None):
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if key:
            head += f"X-API-Key: {key}\r\n"
        self.request = (head + "\r\n").encode()
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if not m:
            raise ValueError("response without content-length")
        await self.reader.readexactly(int(m.group(1)))
        if re.search(rb"(?i)\r\nconnection: *close", head):
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(base: str, path: str, key: str | None, clients: int, rate: float | None, duration_s: float) -> dict:
    """`clients` connections; with `rate`, requests are paced to that total rate (each client on its own
    schedule, latency counted from when the request was due, so a slow server cannot hide behind the pacing)."""
    url = httpx.URL(base)
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + duration_s
    interval = clients / rate if rate else 0.0

    async def worker(i: int) -> None:
        nonlocal errors
        conn = Conn(url.host, url.port or 80, path, key)
        due = time.perf_counter() + (interval * i / clients if rate else 0.0)
        try:
            while True:
                now = time.perf_counter()
                if now >= end:
                    return
                if rate and due > now:
                    await asyncio.sleep(due - now)
                t0 = due if rate else time.perf_counter()
                try:
                    if await conn.get() != 200:
                        errors += 1
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    conn.close()
                lat.append(time.perf_counter() - t0)
                due += interval
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "requests": len(lat),
        "errors": errors,
        "rps": round(len(lat) / wall, 1),
        "median_ms": round(statistics.median(lat) * 1000, 2),
        "p99_ms": round(pct(lat, 0.99) * 1000, 2),
        "max_ms": round(max(lat) * 1000, 2),
    }


async def fanout(base: str, key: str, n: int, duration_s: float) -> dict:
    """n websocket clients for duration_s: messages per client, and per broadcast (the same message text reaching
    every client) the spread from the first client's receipt to the last one's."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        tokens = [(await c.get("/api/ws-token", headers={"X-API-Key": key})).json()["token"] for _ in range(n)]
    ws_base = base.replace("http", "ws", 1)
    counts = [0] * n
    seen: dict[str, list[float]] = {}
    connected = 0
    all_in = asyncio.Event()

    async def client(i: int) -> None:
        nonlocal connected
        async with websockets.connect(f"{ws_base}/ws?token={tokens[i]}", open_timeout=10) as ws:
            connected += 1
            if connected == n:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 30)
            end = time.monotonic() + duration_s
            while time.monotonic() < end:
                try:
                    text = await asyncio.wait_for(ws.recv(), timeout=max(0.05, end - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                seen.setdefault(text, []).append(time.perf_counter())
                counts[i] += 1

    await asyncio.gather(*(client(i) for i in range(n)))
    spreads = [max(ts) - min(ts) for ts in seen.values() if len(ts) == n]
    return {
        "clients": n,
        "messages": sum(counts),
        "min_per_client": min(counts),
        "msgs_per_s_per_client": round(sum(counts) / n / duration_s, 2),
        "broadcasts_to_all": len(spreads),
        "spread_median_ms": round(statistics.median(spreads) * 1000, 2) if spreads else None,
        "spread_p99_ms": round(pct(spreads, 0.99) * 1000, 2) if spreads else None,
    }


async def run(base: str, key: str, duration_s: float) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        for _ in range(100):  # bounded wait for the controller's first cycles
            if (await c.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        out: dict = {}
        for name, path, auth, rate in (
            ("healthz_500rps", "/healthz", None, 500.0),
            ("paced_500rps", "/api/bess-status", key, 500.0),
            ("flat_out", "/api/bess-status", key, None),
        ):
            h0 = await cycle_histogram(c, key)
            out[name] = await load(base, path, auth, 50, rate, duration_s)
            out[name]["cycle"] = window_quantile(h0, await cycle_histogram(c, key), 0.99)
        h0 = await cycle_histogram(c, key)
        out["websocket"] = await fanout(base, key, 100, duration_s)
        out["websocket"]["cycle"] = window_quantile(h0, await cycle_histogram(c, key), 0.99)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", help="a running controller (default: start the demo here)")
    ap.add_argument("--key", default="demo")
    ap.add_argument("--duration-s", type=float, default=20.0)
    a = ap.parse_args()
    demo = None
    base = a.url
    if not base:
        import yaml

        from controller.demo import Demo

        tmp = tempfile.mkdtemp(prefix="bench-api-")
        # every client here comes from 127.0.0.1: the per-client cap on open connections (64, against one client
        # holding the server's connections) would refuse the 100 websockets; a site's dashboards come from many hosts
        config_dir = Path(__file__).resolve().parent.parent / "config"
        raw = yaml.safe_load((config_dir / "demo-single.yaml").read_text())
        raw["web"]["max_connections_per_client"] = 200
        for device in raw["devices"].values():  # the copy lives elsewhere: its profiles by absolute path
            device["profile"] = str(config_dir / device["profile"])
        site = Path(tmp) / "demo-single-bench.yaml"
        site.write_text(yaml.safe_dump(raw, sort_keys=False))
        demo = Demo(str(site), Path(tmp), 8, quiet=True)
        demo.start()
        base = "http://127.0.0.1:5000"
    try:
        res = asyncio.run(run(base, a.key, a.duration_s))
    finally:
        if demo:
            demo.stop()

    def line(label: str, r: dict) -> str:
        cy = r["cycle"]
        return (
            f"{label}: {r['rps']:7.1f} req/s  median {r['median_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
            f"max {r['max_ms']:7.2f} ms  errors {r['errors']}  | cycle p99 {cy['p99_ms']} ms over {cy['cycles']}"
        )

    print(line("/healthz (floor), 50 clients paced at 500 req/s ", res["healthz_500rps"]))
    print(line("/api/bess-status, 50 clients paced at 500 req/s ", res["paced_500rps"]))
    print(line("/api/bess-status, 50 clients flat out           ", res["flat_out"]))
    w = res["websocket"]
    print(
        f"websocket fan-out: {w['clients']} clients, {w['msgs_per_s_per_client']} msg/s each (min {w['min_per_client']} "
        f"per client), {w['broadcasts_to_all']} broadcasts reached all; first-to-last spread median "
        f"{w['spread_median_ms']} ms p99 {w['spread_p99_ms']} ms | cycle p99 {w['cycle']['p99_ms']} ms"
    )
    p = res["paced_500rps"]
    cyc = [res[k]["cycle"]["p99_ms"] for k in ("paced_500rps", "flat_out", "websocket")]
    res["met"] = {
        "p99_under_20ms_at_500rps": p["p99_ms"] < 20 and p["rps"] >= 490 and p["errors"] == 0,
        "cycle_p99_under_20ms": all(x is not None and x < 20 for x in cyc),
    }
    print(f"targets met: {res['met']}")
    print(json.dumps({"bench": "api", **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
