"""MQTT uplink throughput: telemetry msgs/s through the SQLite outbox to Mosquitto at QoS 1, and the backlog
drain rate after an outage of 100,000 messages with the real 0.1 s control cycle running (its p99 measured with
an idle uplink, the floor, and while draining), each beside a bare paho QoS 1 publisher's raw rate to the same
broker in the same run.

    .venv/bin/python bench/mqtt.py [--n 20000] [--backlog 100000] [--runs 3] [--drain-rate R] [--idle-s 5]

The plant runs as `bess-edge simulate` in its own process (a copy of demo-single-modbus.yaml with free ports), the
controller and the uplink in this one, wired by the Daemon as `bess-edge run` wires them. Starts its own
Mosquitto on a free loopback port (max_queued_messages 0 = unlimited). Rates are publisher-side (first publish
to last PUBACK); no subscriber. Targets (issue 4): drain >= 0.7x raw, cycle p99 < 20 ms while draining.
Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.clock import Clock, iso  # noqa: E402
from controller.config import load_config, load_secrets  # noqa: E402
from controller.cycle.phases import Phase  # noqa: E402
from controller.uplink.mqtt import Uplink  # noqa: E402
from controller.uplink.outbox import Outbox  # noqa: E402

SITE = ROOT / "config" / "demo-single-modbus.yaml"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PAYLOAD = {
    "ts": "2026-11-01T12:00:00.000Z",
    "soc_pct": 51.234,
    "power_mw": 2.0,
    "setpoint_mw": 2.0,
    "target_mw": 2.0,
    "temperature_c": 27.5,
    "status": "online",
    "mode": "auto",
    "binding": "none",
}
CYCLE_P99_TARGET_MS = 20.0  # issue 3's target for the control cycle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_inflight_messages 20\nlog_dest none\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(200):  # bounded: up to 10 s
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None


def raw_rate(port: int, n: int) -> float:
    """A bare paho QoS 1 publisher: n messages of the telemetry size, first publish to last PUBACK."""
    done = threading.Event()
    count = [0]

    def on_publish(client, userdata, mid, reason_code, properties):
        count[0] += 1
        if count[0] >= n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.loop_start()
    payload = json.dumps({"seq": 1, **PAYLOAD}, separators=(",", ":")).encode()
    t0 = time.perf_counter()
    for _ in range(n):
        c.publish("bench/raw", payload, qos=1)
    if not done.wait(120):
        raise RuntimeError(f"raw publisher: only {count[0]} of {n} PUBACKs")
    rate = n / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    return rate


def site(tmp: Path, port: int, **mqtt_over):
    cfg = load_config(ROOT / "config" / "demo-single-modbus.yaml")
    cfg = cfg.model_copy(update={"mode": "demo", "mqtt": cfg.mqtt.model_copy(update=mqtt_over)})
    secrets = load_secrets(
        cfg, {"API_KEY": "demo", "HMAC_SECRET": "phoenyra_demo_secret", "MQTT_URL": f"mqtt://127.0.0.1:{port}"}
    )
    return cfg, secrets


def write_site(tmp: Path, drain_rate_per_s: float | None) -> Path:
    """demo-single-modbus.yaml with the simulators on free ports (no OPC UA face, no control app), every device polled
    every 0.1 s cycle, telemetry every cycle, no web or SCADA face: the site `bess-edge simulate` and the
    benchmark's Daemon share. No drain_rate_per_s: the config's default."""
    raw = yaml.safe_load(SITE.read_text())
    bms_port, pcs_port = free_port(), free_port()
    raw["simulator"].update(bms_modbus_port=bms_port, pcs_modbus_port=pcs_port, bms_opcua_port=None, control_port=None)
    for dev in raw["devices"].values():
        dev["port"] = pcs_port if dev["role"] == "pcs" else bms_port
        dev["profile"] = str((SITE.parent / dev["profile"]).resolve())
        dev["poll_interval_s"] = 0.1
    raw["cycle"]["period_s"] = 0.1
    raw["mqtt"]["telemetry_interval_s"] = 0.1
    if drain_rate_per_s is not None:
        raw["mqtt"]["drain_rate_per_s"] = drain_rate_per_s
    raw["web"]["enabled"] = False
    raw["scada"] = {"modbus": {"enabled": False}, "opcua": {"enabled": False}}
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class PlantProcess:
    """`bess-edge simulate --config <site>` in its own process (a site's plant is other hardware, and in this
    process its Modbus servers would compete with the controller and the uplink for the GIL)."""

    def __init__(self, site_file: Path):
        self.site_file = site_file
        cfg = load_config(site_file)
        self.ports = [cfg.simulator.bms_modbus_port, cfg.simulator.pcs_modbus_port]
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        exe = Path(sys.executable).with_name("bess-edge")
        self.proc = subprocess.Popen(
            [str(exe), "simulate", "--config", str(self.site_file)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bess-edge simulate exited: {self.proc.stderr.read().decode()}")
            if all(listening(p) for p in self.ports):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("bess-edge simulate did not serve its ports within 30 s")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 5)
        self.proc = None


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def wait_until(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def outbox_rate(tmp: Path, port: int, n: int) -> float:
    """publish_telemetry n times flat out through a running Uplink; first hand-off to the last PUBACK's delete."""
    cfg, secrets = site(tmp, port, drain_rate_per_s=1e9)
    up = Uplink(cfg, secrets, Outbox(tmp / "throughput.db", 10_000_000, 86400), lambda *a, **k: None, Clock())
    await up.start()
    try:
        await wait_until(lambda: up.connected, 10, "uplink connected")
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        for _ in range(n):
            up.publish_telemetry(dict(PAYLOAD))
        await wait_until(lambda: up.stats.get("acked", 0) >= n and up.stats["outbox_depth"] == 0, 120, "outbox empty")
        return n / (time.perf_counter() - t0)
    finally:
        await up.stop()


def cycle_figures(durs_s: list[float]) -> dict:
    durs = sorted(durs_s)
    p = lambda q: durs[min(len(durs) - 1, int(len(durs) * q))] * 1e3 if durs else float("nan")  # noqa: E731
    return {
        "cycles": len(durs),
        "median_ms": round(statistics.median(durs) * 1e3, 2) if durs else None,
        "p99_ms": round(p(0.99), 2),
        "max_ms": round(durs[-1] * 1e3, 2) if durs else None,
    }


HOOK = {"cycle": True}


async def start_daemon(d) -> None:
    """Daemon.start() (it wires the uplink's on_cycle callback: the pump's quiet window around each cycle);
    --no-cycle-hook takes it out (without the hook the drain competes with the cycle)."""
    await d.start()
    if not HOOK["cycle"] and d.uplink is not None:
        d.controller.faces.detach(Phase.AFTER_WRITE, d.uplink.on_cycle)


async def drain(tmp: Path, broker: Broker, backlog: int, drain_rate_per_s: float | None, idle_s: float) -> dict:
    """A Daemon (real 0.1 s control cycle on the plant simulators in their own process, telemetry every cycle)
    connected to the broker: the cycle for `idle_s` with an empty outbox (the floor); then an outage (broker
    stopped) during which the outbox gets `backlog` rows on top of the live telemetry; then the broker back: the
    time from reconnect until the outbox is empty, and the cycle meanwhile."""
    from controller.daemon import Daemon

    work = tmp / "drain"
    work.mkdir()
    site_file = write_site(work, drain_rate_per_s)
    plant = PlantProcess(site_file)
    await plant.start()
    cfg = load_config(site_file)
    secrets = load_secrets(
        cfg, {"API_KEY": "demo", "HMAC_SECRET": "phoenyra_demo_secret", "MQTT_URL": f"mqtt://127.0.0.1:{broker.port}"}
    )
    d = Daemon(cfg, secrets, work / "state")
    try:
        await start_daemon(d)
        up = d.uplink
        await wait_until(lambda: up.connected and d.controller.stats.good_cycles > 0, 20, "uplink and cycle")
        await asyncio.sleep(1.0)  # first connections, SunSpec discovery
        c0 = len(d.controller.stats.durations_s)
        await asyncio.sleep(idle_s)
        idle = cycle_figures(list(d.controller.stats.durations_s)[c0:])

        broker.stop()
        await wait_until(lambda: not up.connected, 10, "uplink sees the outage")
        # an outage's worth of rows, through the running uplink's own outbox (its seq), beside the live telemetry
        t0 = time.perf_counter()
        for i in range(0, backlog, 5000):
            rows = [dict(PAYLOAD, ts=iso(time.time())) for _ in range(min(5000, backlog - i))]
            await asyncio.to_thread(up.outbox.append_many, rows)
        fill_s = time.perf_counter() - t0
        depth = up.stats["outbox_depth"]
        acked0 = up.stats.get("acked", 0)
        broker.start()
        await wait_until(lambda: up.connected, 30, "uplink reconnected")  # paho's backoff: 1 s, then more
        t_conn = time.perf_counter()
        c0 = len(d.controller.stats.durations_s)
        overruns0 = d.controller.stats.overruns
        await wait_until(lambda: up.stats["outbox_depth"] == 0, 300, "backlog drained")
        drain_s = time.perf_counter() - t_conn
        busy = cycle_figures(list(d.controller.stats.durations_s)[c0:])
        overruns = d.controller.stats.overruns - overruns0
        delivered = up.stats.get("acked", 0) - acked0
        hooked = up.on_cycle in d.controller.faces.attached(Phase.AFTER_WRITE)
    finally:
        await d.stop()
        await plant.stop()
    if delivered < depth:
        raise RuntimeError(f"{depth} rows waiting at reconnect, only {delivered} acknowledged")
    return {
        "backlog": backlog,
        "rows_at_reconnect": depth,
        "rows_delivered": delivered,
        "drain_rate_per_s": cfg.mqtt.drain_rate_per_s,
        "fill_s": round(fill_s, 2),
        "drain_s": round(drain_s, 2),
        "drain_msgs_per_s": round(delivered / drain_s),
        "cycle_idle": idle,
        "cycle_draining": busy,
        "cycle_overruns": overruns,
        "uplink_on_cycle": hooked,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000, help="messages per throughput run")
    ap.add_argument("--backlog", type=int, default=100_000, help="outbox rows to drain")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--drain-rate",
        type=float,
        default=None,
        help="mqtt.drain_rate_per_s for the drain (default: the config's default)",
    )
    ap.add_argument("--idle-s", type=float, default=5.0, help="seconds of cycle measured with an empty outbox")
    ap.add_argument(
        "--no-cycle-hook",
        action="store_true",
        help="take uplink.on_cycle out of the controller's callbacks (the drain then competes with the cycle)",
    )
    args = ap.parse_args()
    HOOK["cycle"] = not args.no_cycle_hook
    tmp = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    broker = Broker(tmp)
    broker.start()
    try:
        raw, box = [], []
        for i in range(args.runs):
            raw.append(await asyncio.to_thread(raw_rate, broker.port, args.n))
            (tmp / f"run{i}").mkdir()
            box.append(await outbox_rate(tmp / f"run{i}", broker.port, args.n))
        raw_med, box_med = statistics.median(raw), statistics.median(box)
        print(f"raw paho QoS 1 publisher      median {raw_med:8.0f} msg/s   runs {[round(r) for r in raw]}")
        print(
            f"telemetry through the outbox  median {box_med:8.0f} msg/s   runs {[round(r) for r in box]}"
            f"   = {box_med / raw_med:.2f}x raw"
        )
        raw_before = await asyncio.to_thread(raw_rate, broker.port, args.n)
        dr = await drain(tmp, broker, args.backlog, args.drain_rate, args.idle_s)
        raw_after = await asyncio.to_thread(raw_rate, broker.port, args.n)
        raw_ref = statistics.median(raw + [raw_before, raw_after])
        ratio = dr["drain_msgs_per_s"] / raw_ref
        idle, busy = dr["cycle_idle"], dr["cycle_draining"]
        print(
            f"outage backlog of {dr['rows_at_reconnect']} rows (filled in {dr['fill_s']} s), drain_rate_per_s "
            f"{dr['drain_rate_per_s']:g}: {dr['rows_delivered']} rows drained in {dr['drain_s']} s = "
            f"{dr['drain_msgs_per_s']} msg/s = {ratio:.2f}x raw ({raw_ref:.0f} msg/s)  target >= 0.70x"
        )
        print(
            f"control cycle at 0.1 s, idle uplink:   {idle['cycles']} cycles, median {idle['median_ms']} ms, "
            f"p99 {idle['p99_ms']} ms, max {idle['max_ms']} ms"
        )
        print(
            f"control cycle at 0.1 s while draining: {busy['cycles']} cycles, median {busy['median_ms']} ms, "
            f"p99 {busy['p99_ms']} ms, max {busy['max_ms']} ms (target p99 < {CYCLE_P99_TARGET_MS:g} ms), "
            f"overruns {dr['cycle_overruns']}, uplink.on_cycle {'on' if dr['uplink_on_cycle'] else 'OFF'}"
        )
        print(
            json.dumps(
                {
                    "bench": "mqtt",
                    "plant": "subprocess",
                    "n": args.n,
                    "raw_msgs_per_s": round(raw_ref),
                    "outbox_msgs_per_s": round(box_med),
                    "outbox_vs_raw": round(box_med / raw_med, 2),
                    **dr,
                    "drain_vs_raw": round(ratio, 2),
                    "drain_target_met": ratio >= 0.7,
                    "cycle_p99_target_ms": CYCLE_P99_TARGET_MS,
                    "cycle_p99_target_met": busy["p99_ms"] < CYCLE_P99_TARGET_MS,
                }
            )
        )
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
