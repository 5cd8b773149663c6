"""FCR response time: a frequency step at the POI meter simulator -> the new setpoint read back from the PCS
simulator, through the controller's fast path (services.fcr.fast_path_s) with the cycle at its usual 1 s.
The simulators run in another process (`bess-edge simulate`, as in the demo); the controller runs here with real
drivers. The floor is one Modbus write + read-back of the PCS setpoint by the same driver, in the same run.

    .venv/bin/python bench/frequency.py [--steps 100] [--fast-path-s 0.1]

The step goes in through the simulator's control API (POST /sim/frequency, timed from before the request is
sent); the setpoint is the first read-back that differs from the settled one. Steps alternate 50.0 <-> 49.9 Hz
(0 <-> 4 MW of an 8 MW band) at a random phase against the fast path's rhythm. Target (issue 15): p99 <= 200 ms.
The fast path reads every fast_path_s, so the figure is about uniform on [0, fast_path_s] plus one meter read and
one write + read-back: its p99 is near fast_path_s. Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import Running, Simulator, free_port, no_faces, pct  # noqa: E402
from bench._common import ms as _ms  # noqa: E402
from controller.config import load_config  # noqa: E402
from controller.cycle.loop import Controller  # noqa: E402

BASE = ROOT / "config" / "demo-single-modbus.yaml"
TARGET_P99_MS = 200.0


def ms(x: float) -> float:
    return _ms(x, 2)


def write_site(tmp: Path, fast_path_s: float) -> Path:
    """demo-single-modbus.yaml plus a SunSpec POI meter, every port free, FCR on (8 MW), the ramp wide open (so the
    figure is the software path's, not a ramp's), no faces besides the cycle."""
    raw = yaml.safe_load(BASE.read_text())
    raw["devices"]["poi"] = {"role": "meter", "protocol": "sunspec", "profile": "profiles/sunspec-meter.yaml"}
    for dev in raw["devices"].values():
        dev.update(host="127.0.0.1", port=free_port(), profile=str((BASE.parent / dev["profile"]).resolve()))
    raw["simulator"].update(
        bms_modbus_port=raw["devices"]["bms"]["port"],
        pcs_modbus_port=raw["devices"]["pcs"]["port"],
        bms_opcua_port=None,
        control_port=free_port(),
    )
    no_faces(raw)
    raw["services"] = {"fcr": {"enabled": True, "capacity_mw": 8, "fast_path_s": fast_path_s}}
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


async def floor(cfg, n: int) -> list[float]:
    """One Modbus write + read-back of the PCS setpoint (0 MW), n times, by the same driver the controller uses."""
    from drivers.sunspec import SunSpecDriver

    dev = cfg.devices["pcs"]
    d = SunSpecDriver("pcs", cfg.load_profile(dev), dev.host, dev.port, timeout_s=1.0, rating_mw=10)
    out = []
    try:
        await d.write("setpoint_mw", 0.0, verify=True)  # connect, discover, scale factors
        for _ in range(n):
            t0 = time.perf_counter()
            await d.write("setpoint_mw", 0.0, verify=True)
            out.append(time.perf_counter() - t0)
    finally:
        await d.close()
    return out


def record_readbacks(c: Controller) -> list[tuple[float, float | None]]:
    """Every read-back the dispatcher gets, timestamped as it returns (the controller is not changed)."""
    seen: list[tuple[float, float | None]] = []
    apply = c.dispatcher.apply

    async def timed(decision):
        back = await apply(decision)
        seen.append((time.perf_counter(), back))
        return back

    c.dispatcher.apply = timed  # type: ignore[method-assign]
    return seen


async def settle(c: Controller, mw: float, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if c.dispatcher.last_readback_mw is not None and abs(c.dispatcher.last_readback_mw - mw) < 0.01:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"setpoint did not settle at {mw} MW (at {c.dispatcher.last_readback_mw})")


async def steps(c: Controller, control: str, n: int, seed: int) -> tuple[list[float], int]:
    rng = random.Random(seed)
    seen = record_readbacks(c)
    out: list[float] = []
    fast0 = c.fast_path.writes
    async with httpx.AsyncClient(timeout=5.0) as http:
        await http.post(f"{control}/sim/frequency", json={"wander": False, "hz": 50.0})
        await settle(c, 0.0)
        hz, mw = 50.0, 0.0
        for _ in range(n):
            await asyncio.sleep(0.05 + rng.random() * 0.3)  # a random phase against the fast path
            hz, mw = (49.9, 4.0) if hz == 50.0 else (50.0, 0.0)
            mark = len(seen)
            t0 = time.perf_counter()
            r = await http.post(f"{control}/sim/frequency", json={"hz": hz})
            r.raise_for_status()
            await settle(c, mw)
            first = next(t for t, back in seen[mark:] if back is not None and abs(back - mw) < 0.01)
            out.append(first - t0)
    return out, c.fast_path.writes - fast0


async def main_async(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        site = write_site(tmp, args.fast_path_s)
        cfg = load_config(site)
        async with Simulator(site, tmp):
            floor_s = await floor(cfg, args.floor)
            async with Running(site, tmp, first_cycle_s=20.0) as c:
                lat, fast = await steps(c, f"http://127.0.0.1:{cfg.simulator.control_port}", args.steps, args.seed)
                cycles = c.stats.cycles
    return {
        "bench": "frequency",
        "steps": len(lat),
        "fast_path_s": args.fast_path_s,
        "step_to_setpoint_median_ms": ms(pct(lat, 0.5)),
        "step_to_setpoint_p99_ms": ms(pct(lat, 0.99)),
        "step_to_setpoint_max_ms": ms(max(lat)),
        "floor_write_read_median_ms": ms(pct(floor_s, 0.5)),
        "floor_write_read_p99_ms": ms(pct(floor_s, 0.99)),
        "fast_path_writes": fast,
        "cycles": cycles,
        "target_p99_ms": TARGET_P99_MS,
        "met": pct(lat, 0.99) * 1e3 <= TARGET_P99_MS,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--floor", type=int, default=200, help="write + read-back round trips for the floor")
    ap.add_argument("--fast-path-s", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()
    r = asyncio.run(main_async(args))
    print(f"FCR fast path every {r['fast_path_s']:g} s, {r['steps']} frequency steps (50.0 <-> 49.9 Hz)")
    print(
        f"  step at the meter -> setpoint read back from the PCS: median {r['step_to_setpoint_median_ms']} ms, "
        f"p99 {r['step_to_setpoint_p99_ms']} ms, max {r['step_to_setpoint_max_ms']} ms "
        f"(target p99 <= {TARGET_P99_MS:g} ms: {'met' if r['met'] else 'NOT met'})"
    )
    print(
        f"  floor, one Modbus write + read-back: median {r['floor_write_read_median_ms']} ms, "
        f"p99 {r['floor_write_read_p99_ms']} ms"
    )
    print(f"  fast-path writes {r['fast_path_writes']}, cycles {r['cycles']}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
