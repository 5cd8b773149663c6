"""Full-snapshot poll latency: the BMS (generic Modbus map) and the PCS (SunSpec) read concurrently by our
drivers from the plant simulator, against a floor of bare asyncio sockets sending the same Modbus frames.

The plant runs as `bess-edge simulate` in its own process (free loopback ports, OPC UA and control faces off),
as a real device would. Driver and floor rounds alternate so that load from other processes hits both alike.
Prints median / p99 per snapshot, requests per snapshot, the ratio, and a final JSON line.

    .venv/bin/python bench/poll.py [--n 2000] [--rounds 20] [--in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import free_port, pct  # noqa: E402
from controller.config import load_config  # noqa: E402
from drivers.modbus import ModbusDriver, ReadRequest  # noqa: E402
from drivers.sunspec import SunSpecDriver  # noqa: E402

CONFIG = ROOT / "config" / "demo-single-modbus.yaml"
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
TARGET_RATIO = 3.0
TARGET_MEDIAN_MS = 5.0


def figures(samples_s: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples_s) * 1e3, 3),
        "p99_ms": round(pct(samples_s, 0.99) * 1e3, 3),
        "max_ms": round(max(samples_s) * 1e3, 3),
    }


# --- the plant --------------------------------------------------------------------------------------------


class PlantProcess:
    """`bess-edge simulate` on free ports, from a copy of the demo Modbus config; stopped with SIGTERM."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-poll-"))
        data = yaml.safe_load(CONFIG.read_text())
        sim = data["simulator"]
        sim.update(bms_modbus_port=free_port(), pcs_modbus_port=free_port(), bms_opcua_port=None, control_port=None)
        shutil.copytree(CONFIG.parent / "profiles", self.dir / "profiles")
        self.config = self.dir / "site.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.ports = {"bms": sim["bms_modbus_port"], "pcs": sim["pcs_modbus_port"]}
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        exe = Path(sys.executable).parent / "bess-edge"
        self.proc = subprocess.Popen(
            [str(exe), "simulate", "--config", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bess-edge simulate exited: {self.proc.stderr.read().decode()}")
            if all(_listening(p) for p in self.ports.values()):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("bess-edge simulate did not serve its ports within 30 s")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


class PlantInProcess:
    """The Plant in this process's loop (--in-process): server work then shares the client's core."""

    def __init__(self) -> None:
        from simulators.plant import Plant

        self.plant = Plant.from_config(
            load_config(CONFIG), bms_modbus_port=0, pcs_modbus_port=0, bms_opcua_port=None, control_port=None
        )
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        await self.plant.start()
        self.ports = {"bms": self.plant.ports["bms_modbus"], "pcs": self.plant.ports["pcs"]}

    async def stop(self) -> None:
        await self.plant.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- the floor: hand-built MBAP frames on a bare asyncio socket -------------------------------------------


class BareDevice:
    """One TCP connection that sends the driver's read plan as raw Modbus TCP frames, one after the other."""

    def __init__(self, port: int, plan: list[ReadRequest], unit_id: int = 1):
        self.port = port
        self.unit_id = unit_id
        self.plan = [(FUNCTION_CODES[r.function], r.address, r.count) for r in plan]
        self.tid = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def read(self) -> int:
        """Every request of the plan; returns the payload bytes received (checked, not decoded)."""
        assert self.reader is not None and self.writer is not None
        received = 0
        for fc, address, count in self.plan:
            self.tid = (self.tid + 1) & 0xFFFF
            # MBAP: transaction id, protocol 0, length (unit + PDU), unit id; PDU: function, address, count
            self.writer.write(struct.pack(">HHHBBHH", self.tid, 0, 6, self.unit_id, fc, address, count))
            header = await self.reader.readexactly(7)
            tid, proto, length, _unit = struct.unpack(">HHHB", header)
            body = await self.reader.readexactly(length - 1)
            if tid != self.tid or proto != 0 or body[0] != fc:
                raise RuntimeError(f"floor: bad answer to fc {fc} at {address}+{count}: {header.hex()} {body.hex()}")
            received += len(body)
        return received

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


# --- the run ----------------------------------------------------------------------------------------------


async def run(n: int, rounds: int, in_process: bool) -> dict:
    cfg = load_config(CONFIG)
    bms_profile = cfg.load_profile(cfg.devices["bms"])
    pcs_profile = cfg.load_profile(cfg.devices["pcs"])
    plant = PlantInProcess() if in_process else PlantProcess()
    await plant.start()
    bms = ModbusDriver("bms", bms_profile, "127.0.0.1", plant.ports["bms"], timeout_s=1.0)
    pcs = SunSpecDriver("pcs", pcs_profile, "127.0.0.1", plant.ports["pcs"], timeout_s=1.0)
    floors: list[BareDevice] = []
    try:
        await bms.connect()
        await pcs.connect()  # SunSpec discovery happens here, once, outside the timed loop
        floors = [BareDevice(plant.ports["bms"], bms.plan), BareDevice(plant.ports["pcs"], pcs.modbus.plan)]
        for f in floors:
            await f.connect()

        async def snapshot() -> None:
            b, p = await asyncio.gather(bms.read(), pcs.read())
            if "soc_pct" not in b or "power_mw" not in p:
                raise RuntimeError("snapshot without soc_pct/power_mw")

        async def floor() -> None:
            await asyncio.gather(*(f.read() for f in floors))

        for _ in range(min(200, n)):  # warm-up: connections, caches, the server's first answers
            await snapshot()
            await floor()
        driver_s: list[float] = []
        floor_s: list[float] = []
        per_round = max(1, n // rounds)
        clock = time.perf_counter
        while len(driver_s) < n:
            k = min(per_round, n - len(driver_s))
            for _ in range(k):
                t0 = clock()
                await snapshot()
                driver_s.append(clock() - t0)
            for _ in range(k):
                t0 = clock()
                await floor()
                floor_s.append(clock() - t0)
        requests = bms.requests_per_read + pcs.requests_per_read
        plan = {
            "bms": [(r.function, r.address, r.count) for r in bms.plan],
            "pcs": [(r.function, r.address, r.count) for r in pcs.modbus.plan],
        }
    finally:
        for f in floors:
            await f.close()
        await bms.close()
        await pcs.close()
        await plant.stop()
    d, f = figures(driver_s), figures(floor_s)
    ratio = round(d["median_ms"] / f["median_ms"], 2)
    ratio_p99 = round(d["p99_ms"] / f["p99_ms"], 2)
    return {
        "bench": "poll",
        "n": n,
        "plant": "in-process" if in_process else "subprocess",
        "requests_per_snapshot": requests,
        "plan": plan,
        "driver": d,
        "floor": f,
        "ratio_median": ratio,
        "ratio_p99": ratio_p99,
        "target": {"ratio_max": TARGET_RATIO, "median_ms_max": TARGET_MEDIAN_MS},
        "meets_target": ratio <= TARGET_RATIO and d["median_ms"] < TARGET_MEDIAN_MS,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="snapshots to time (and as many floor rounds)")
    ap.add_argument("--rounds", type=int, default=20, help="driver/floor alternations")
    ap.add_argument("--in-process", action="store_true", help="run the plant in this process's event loop")
    args = ap.parse_args()
    res = asyncio.run(run(args.n, args.rounds, args.in_process))
    print(f"plant: {res['plant']}; snapshot = BMS (generic Modbus) + PCS (SunSpec), read concurrently")
    print(
        f"requests per snapshot: {res['requests_per_snapshot']}  "
        f"(BMS {len(res['plan']['bms'])}, PCS {len(res['plan']['pcs'])})"
    )
    for name in ("driver", "floor"):
        r = res[name]
        print(f"{name:7s} median {r['median_ms']:7.3f} ms   p99 {r['p99_ms']:7.3f} ms   max {r['max_ms']:7.3f} ms")
    print(
        f"ratio   median {res['ratio_median']:.2f}x   p99 {res['ratio_p99']:.2f}x   "
        f"(target: <= {TARGET_RATIO:g}x the floor, median < {TARGET_MEDIAN_MS:g} ms) -> "
        f"{'met' if res['meets_target'] else 'MISSED'}"
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
