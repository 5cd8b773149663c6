"""A connect flood against `bess-edge run`: does it move the plant? Every part a process of its own, as on site: the
plant simulator, the daemon (this checkout's `bess-edge run`, demo-single-modbus.yaml's one-unit plant at its 1 s
cycle, on free loopback ports, under the descriptor limit systemd gives a service by default: RLIMIT_NOFILE 1024)
and the attacker (--waves waves of --per-wave connections opened at once to the --face port, each sending one
unauthenticated HTTP request, garbage to a SCADA face, and closing after its first line or --answer-wait-s).

While the flood lasts, this process samples the daemon's open descriptors and RSS (from /proc) and the PCS's
active power at the simulator (GET /sim/state) every 0.1 s. The plant holds a manual setpoint of --setpoint-mw
from before the flood to after it. Figures: the attack's connects per second and how they were answered; the
daemon's descriptor peak, its RSS growth, and asyncio's "out of system resource" (EMFILE) lines in its log; the
cycles, overruns, device errors and the cycle's p99 (the daemon's own /metrics, before and after); the PCS's
power through the flood.

    .venv/bin/python bench/flood.py [--face web|modbus|opcua|iec104] [--waves 8] [--per-wave 6000]
                                    [--fd-limit 1024] [--period-s 1.0] [--setpoint-mw 1.0]

Target (issue 11: hostile input never moves the plant): no EMFILE, 0 device errors, 0 overruns, and the
PCS within 1 % of the setpoint in every sample. Prints figures and pass/fail, then one JSON line. All on
127.0.0.1; every process stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import Simulator, free_port, stop_process, wait_port  # noqa: E402

BASE = ROOT / "config" / "demo-single-modbus.yaml"
KEY = "bench-flood-key-0123456789"
SECRET = "bench-flood-hmac-secret-0123456789"
SAMPLE_S = 0.1
HOLD_SHARE = 0.01  # the PCS within 1 % of the setpoint

# The attacker, run as `python -c ATTACKER port waves per_wave answer_wait_s`: one JSON line of what it saw.
ATTACKER = r"""
import asyncio, collections, json, resource, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, waves, per, wait_s = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
seen = collections.Counter()
async def one():
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except Exception as e:
        seen["connect " + type(e).__name__] += 1
        return
    try:
        w.write(b"GET /api/bess-status HTTP/1.1\r\nHost: flood\r\n\r\n")
        line = await asyncio.wait_for(r.readline(), wait_s)
        seen[line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed"] += 1
    except Exception as e:
        seen[type(e).__name__] += 1
    finally:
        w.close()
async def main():
    t0 = time.monotonic()
    for _ in range(waves):
        await asyncio.gather(*(one() for _ in range(per)))
    print(json.dumps({"seconds": time.monotonic() - t0, "answers": dict(seen), "fd_limit": hard}))
asyncio.run(main())
"""


def write_site(tmp: Path, period_s: float, face: str) -> tuple[Path, dict[str, Any]]:
    """demo-single-modbus.yaml on free loopback ports at a cycle of `period_s` (each device read as often): devices
    and the simulator's faces where they meet, the web on its own port, MQTT off, and of the SCADA faces only
    `face` (when it is one)."""
    raw = yaml.safe_load(BASE.read_text())
    raw["cycle"]["period_s"] = period_s
    ports = {name: free_port() for name in raw["devices"]}
    for name, dev in raw["devices"].items():
        dev["host"], dev["port"] = "127.0.0.1", ports[name]
        dev["profile"] = str((BASE.parent / dev["profile"]).resolve())
        dev["poll_interval_s"] = period_s
    bms = next(n for n, d in raw["devices"].items() if d["role"] == "bms")
    pcs = next(n for n, d in raw["devices"].items() if d["role"] == "pcs")
    raw["simulator"].update(
        bms_modbus_port=ports[bms], pcs_modbus_port=ports[pcs], bms_opcua_port=free_port(), control_port=free_port()
    )
    raw["mqtt"]["enabled"] = False
    raw["scada"] = {
        "modbus": {"enabled": face == "modbus", "host": "127.0.0.1", "port": free_port()},
        "opcua": {"enabled": face == "opcua", "host": "127.0.0.1", "port": free_port(), "allow_none_security": True},
        "iec104": {"enabled": face == "iec104", "host": "127.0.0.1", "port": free_port()},
    }
    raw["web"].update(host="127.0.0.1", port=free_port())
    site = tmp / "site.yaml"
    site.write_text(yaml.safe_dump(raw, sort_keys=False))
    return site, raw


def metric(text: str, name: str) -> float:
    """A counter's value summed over its labels (0 when absent)."""
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def cycle_quantile_ms(before: str, after: str, q: float) -> float | None:
    """The q-quantile of the cycles between two scrapes, as the upper bound of its bess_cycle_duration_seconds
    bucket."""

    def buckets(text: str) -> dict[float, float]:
        pattern = r'^bess_cycle_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$'
        return {float(le): float(v) for le, v in re.findall(pattern, text, re.M)}

    b0, b1 = buckets(before), buckets(after)
    les = sorted(b1)
    counts = [b1[le] - b0.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return None
    le = next(le for le, c in zip(les, counts) if c >= q * counts[-1])
    return None if le == float("inf") else round(le * 1000, 1)


class Sampler:
    """The daemon's open descriptors and RSS, and the PCS's active power at the simulator, every SAMPLE_S."""

    def __init__(self, pid: int, sim_url: str):
        self.pid, self.sim_url = pid, sim_url
        self.fds: list[int] = []
        self.rss_kb: list[int] = []
        self.pcs_mw: list[float] = []
        self.sim_errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.sim_url, timeout=2) as sim:
            while not stop.is_set():
                self.fds.append(len(os.listdir(f"/proc/{self.pid}/fd")))
                status = Path(f"/proc/{self.pid}/status").read_text()
                self.rss_kb.append(int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1)))
                try:
                    self.pcs_mw.append(float((await sim.get("/sim/state")).json()["power_mw"]))
                except (httpx.HTTPError, KeyError, ValueError):
                    self.sim_errors += 1
                try:
                    await asyncio.wait_for(stop.wait(), SAMPLE_S)
                except TimeoutError:
                    pass


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    site, raw = write_site(tmp, args.period_s, args.face)
    url = f"http://127.0.0.1:{raw['web']['port']}"
    target = raw["web"]["port"] if args.face == "web" else raw["scada"][args.face]["port"]
    sim_url = f"http://127.0.0.1:{raw['simulator']['control_port']}"
    headers, scrape = {"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}
    env = {**os.environ, "API_KEY": KEY, "HMAC_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    log_path = tmp / "daemon.log"
    argv = [sys.executable, "-m", "controller.cli", "run", "--config", str(site), "--state-dir", str(tmp / "state")]
    argv += ["--log-format", "text"]

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.fd_limit, args.fd_limit))

    out: dict[str, Any] = {
        "face": args.face,
        "fd_limit": args.fd_limit,
        "setpoint_mw": args.setpoint_mw,
        "period_s": args.period_s,
    }
    async with Simulator(site, tmp):
        with open(log_path, "ab") as log:
            daemon = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_fds
            )
        try:
            await wait_port(raw["web"]["port"])
            await wait_port(target)
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                for _ in range(300):  # bounded: the first good cycle
                    if (await c.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                r = await c.post("/api/mode", headers=headers, json={"mode": "manual", "setpoint_mw": args.setpoint_mw})
                r.raise_for_status()
                for _ in range(100):  # bounded: the PCS at the setpoint
                    if abs((await c.get(f"{sim_url}/sim/state")).json()["power_mw"] - args.setpoint_mw) < 1e-3:
                        break
                    await asyncio.sleep(0.1)
                before = (await c.get("/metrics", headers=scrape)).text
                base_fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
                sampler, stop = Sampler(daemon.pid, sim_url), asyncio.Event()
                sampling = asyncio.create_task(sampler.run(stop))
                attack = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    ATTACKER,
                    str(target),
                    str(args.waves),
                    str(args.per_wave),
                    str(args.answer_wait_s),
                    stdout=asyncio.subprocess.PIPE,
                )
                try:
                    said, _ = await asyncio.wait_for(attack.communicate(), args.waves * 60)
                finally:
                    if attack.returncode is None:
                        attack.kill()
                        await attack.wait()
                await asyncio.sleep(args.settle_s)  # the flood's last connections closed, a few cycles after it
                stop.set()
                await sampling
                after = (await c.get("/metrics", headers=scrape)).text
                fds_after = len(os.listdir(f"/proc/{daemon.pid}/fd"))
        finally:
            stop_process(daemon, 20)
    attacker = json.loads(said.decode().strip().splitlines()[-1])
    connects = args.waves * args.per_wave
    log_text = log_path.read_text(errors="replace")
    setpoint = args.setpoint_mw
    out["attack"] = {
        "connections": connects,
        "seconds": round(attacker["seconds"], 1),
        "connects_per_s": round(connects / attacker["seconds"]),
        "answers": attacker["answers"],
    }
    out["daemon"] = {
        "fds_base": base_fds,
        "fds_peak": max(sampler.fds),
        "fds_after": fds_after,
        "rss_growth_kb": max(sampler.rss_kb) - sampler.rss_kb[0],
        "emfile_lines": log_text.count("out of system resource"),
        "rc": daemon.returncode,
    }
    out["plant"] = {
        "cycles": int(metric(after, "bess_cycles_total") - metric(before, "bess_cycles_total")),
        "overruns": int(metric(after, "bess_cycle_overruns_total") - metric(before, "bess_cycle_overruns_total")),
        "device_errors": int(metric(after, "bess_device_errors_total") - metric(before, "bess_device_errors_total")),
        "cycle_median_ms_le": cycle_quantile_ms(before, after, 0.5),
        "cycle_p99_ms_le": cycle_quantile_ms(before, after, 0.99),
        "pcs_samples": len(sampler.pcs_mw),
        "pcs_min_mw": round(min(sampler.pcs_mw), 4) if sampler.pcs_mw else None,
        "pcs_max_mw": round(max(sampler.pcs_mw), 4) if sampler.pcs_mw else None,
        "simulator_unanswered_samples": sampler.sim_errors,
    }
    held = bool(sampler.pcs_mw) and all(abs(p - setpoint) <= HOLD_SHARE * setpoint for p in sampler.pcs_mw)
    out["met"] = {
        "no_emfile": out["daemon"]["emfile_lines"] == 0,
        "no_device_error": out["plant"]["device_errors"] == 0,
        "no_overrun": out["plant"]["overruns"] == 0,
        "pcs_held": held,
    }
    return out


def report(res: dict[str, Any]) -> None:
    a, d, p = res["attack"], res["daemon"], res["plant"]
    answers = ", ".join(f"{k} {v}" for k, v in sorted(a["answers"].items(), key=lambda kv: -kv[1]))
    print(
        f"attack on the {res['face']} face: {a['connections']} connections in {a['seconds']} s ({a['connects_per_s']}/s); answers: {answers}"
    )
    print(
        f"daemon (RLIMIT_NOFILE {res['fd_limit']}): fds {d['fds_base']} -> peak {d['fds_peak']} -> {d['fds_after']} after; "
        f"RSS +{d['rss_growth_kb'] / 1024:.1f} MB; EMFILE lines {d['emfile_lines']}; exit {d['rc']}"
    )
    print(
        f"plant (cycle {res['period_s']:g} s): {p['cycles']} cycles, {p['overruns']} overruns, {p['device_errors']} device errors, cycle median <= "
        f"{p['cycle_median_ms_le']} ms, p99 <= {p['cycle_p99_ms_le']} ms (histogram buckets); PCS {p['pcs_min_mw']} .. {p['pcs_max_mw']} MW in {p['pcs_samples']} samples "
        f"(setpoint {res['setpoint_mw']} MW)"
    )
    for name, ok in res["met"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name.replace('_', ' ')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--face", choices=("web", "modbus", "opcua", "iec104"), default="web", help="the port attacked")
    ap.add_argument("--waves", type=int, default=8)
    ap.add_argument("--per-wave", type=int, default=6000, help="connections opened at once in each wave")
    ap.add_argument("--answer-wait-s", type=float, default=2.0, help="how long a connection waits for its answer")
    ap.add_argument("--fd-limit", type=int, default=1024, help="the daemon's RLIMIT_NOFILE (systemd's default)")
    ap.add_argument("--setpoint-mw", type=float, default=1.0)
    ap.add_argument("--period-s", type=float, default=1.0, help="the cycle's period (the demo's: 1 s)")
    ap.add_argument("--settle-s", type=float, default=3.0, help="sampling goes on this long after the flood")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    try:
        res = asyncio.run(run(args, tmp))
    except BaseException:
        print(f"bench/flood.py: stopped; the site file and logs are in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    report(res)
    print(json.dumps({"bench": "flood", **res}))
    return 0 if all(res["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
