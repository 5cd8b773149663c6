"""MQTT uplink throughput: telemetry msgs/s through the SQLite outbox to Mosquitto at QoS 1, and the backlog
drain rate after an outage of 100,000 messages (with the real control cycle running on the plant simulators,
its p99 measured while draining), each beside a bare paho QoS 1 publisher's raw rate to the same broker.

    .venv/bin/python bench/mqtt.py [--n 20000] [--backlog 100000]

Starts its own Mosquitto on a free loopback port (max_queued_messages 0 = unlimited). Rates are
publisher-side (first publish to last PUBACK); no subscriber. Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.clock import Clock, iso  # noqa: E402
from controller.config import load_config, load_secrets  # noqa: E402
from controller.outbox import Outbox  # noqa: E402
from controller.uplink import Uplink  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PAYLOAD = {"ts": "2026-11-01T12:00:00.000Z", "soc_pct": 51.234, "power_mw": 2.0, "setpoint_mw": 2.0,
           "target_mw": 2.0, "temperature_c": 27.5, "status": "online", "mode": "auto", "binding": "none"}
CYCLE_P99_TARGET_MS = 20.0  # issue 3's target for the control cycle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "max_queued_messages 0\nmax_inflight_messages 20\nlog_dest none\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
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
    cfg = load_config(ROOT / "config" / "demo-modbus.yaml")
    cfg = cfg.model_copy(update={"mode": "demo", "mqtt": cfg.mqtt.model_copy(update=mqtt_over)})
    secrets = load_secrets(cfg, {"API_KEY": "demo", "HMAC_SECRET": "phoenyra_demo_secret",
                                 "MQTT_URL": f"mqtt://127.0.0.1:{port}"})
    return cfg, secrets


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


async def drain(tmp: Path, broker: Broker, backlog: int, drain_rate_per_s: float) -> dict:
    """An outbox holding `backlog` rows (an outage's worth), a Daemon (real control cycle at 0.1 s on the plant
    simulators, telemetry every cycle) started against the broker: time to empty, and the cycle while draining."""
    from controller.daemon import Daemon
    from simulators.plant import Plant

    plant = Plant.from_config(load_config(ROOT / "config" / "demo-modbus.yaml"), bms_modbus_port=0,
                              pcs_modbus_port=0, bms_opcua_port=None, control_port=None)
    await plant.start()
    state = tmp / "drain-state"
    state.mkdir()
    cfg, secrets = site(tmp, broker.port, drain_rate_per_s=drain_rate_per_s, telemetry_interval_s=0.1)
    devices = {}
    for name, dev in cfg.devices.items():
        port = plant.ports["pcs" if dev.role == "pcs" else "bms_modbus"]
        devices[name] = dev.model_copy(update={"port": port, "poll_interval_s": 0.1})
    cfg = cfg.model_copy(update={"devices": devices, "cycle": cfg.cycle.model_copy(update={"period_s": 0.1}),
                                 "web": cfg.web.model_copy(update={"enabled": False}),
                                 "scada": cfg.scada.model_copy(update={
                                     "modbus": cfg.scada.modbus.model_copy(update={"enabled": False}),
                                     "opcua": cfg.scada.opcua.model_copy(update={"enabled": False})})})
    box = Outbox(state / "bess-edge.db", 10_000_000, 86400)
    t0 = time.perf_counter()
    for i in range(0, backlog, 5000):
        box.append_many([dict(PAYLOAD, ts=iso(time.time())) for _ in range(min(5000, backlog - i))])
    fill_s = time.perf_counter() - t0
    box.close()
    d = Daemon(cfg, secrets, state)
    try:
        await d.start()
        await wait_until(lambda: d.uplink.connected, 10, "uplink connected")
        t_conn = time.perf_counter()
        cycles0 = len(d.controller.stats.durations_s)
        await wait_until(lambda: d.uplink.stats.get("acked", 0) >= backlog, 300, "backlog drained")
        drain_s = time.perf_counter() - t_conn
        durs = sorted(list(d.controller.stats.durations_s)[cycles0:])
        overruns = d.controller.stats.overruns
    finally:
        await d.stop()
        await plant.stop()
    p = lambda q: durs[min(len(durs) - 1, int(len(durs) * q))] * 1e3 if durs else float("nan")  # noqa: E731
    return {"backlog": backlog, "fill_s": round(fill_s, 2), "drain_s": round(drain_s, 2),
            "drain_msgs_per_s": round(backlog / drain_s), "cycles_during_drain": len(durs),
            "cycle_median_ms": round(statistics.median(durs) * 1e3, 2) if durs else None,
            "cycle_p99_ms": round(p(0.99), 2), "cycle_overruns": overruns}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000, help="messages per throughput run")
    ap.add_argument("--backlog", type=int, default=100_000, help="outbox rows to drain")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--drain-rate", type=float, default=1e9, help="mqtt.drain_rate_per_s for the drain (default: no cap)")
    args = ap.parse_args()
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
        print(f"telemetry through the outbox  median {box_med:8.0f} msg/s   runs {[round(r) for r in box]}"
              f"   = {box_med / raw_med:.2f}x raw")
        raw_before = await asyncio.to_thread(raw_rate, broker.port, args.n)
        dr = await drain(tmp, broker, args.backlog, args.drain_rate)
        raw_after = await asyncio.to_thread(raw_rate, broker.port, args.n)
        raw_ref = statistics.median(raw + [raw_before, raw_after])
        ratio = dr["drain_msgs_per_s"] / raw_ref
        print(f"backlog of {dr['backlog']} rows (filled in {dr['fill_s']} s): drained in {dr['drain_s']} s = "
              f"{dr['drain_msgs_per_s']} msg/s = {ratio:.2f}x raw ({raw_ref:.0f} msg/s)  target >= 0.70x")
        print(f"control cycle at 0.1 s while draining: {dr['cycles_during_drain']} cycles, median "
              f"{dr['cycle_median_ms']} ms, p99 {dr['cycle_p99_ms']} ms (target < {CYCLE_P99_TARGET_MS:g} ms), "
              f"overruns {dr['cycle_overruns']}")
        print(json.dumps({"bench": "mqtt", "n": args.n, "raw_msgs_per_s": round(raw_ref),
                          "outbox_msgs_per_s": round(box_med), "outbox_vs_raw": round(box_med / raw_med, 2),
                          **dr, "drain_rate_cap_per_s": args.drain_rate, "drain_vs_raw": round(ratio, 2), "drain_target_met": ratio >= 0.7,
                          "cycle_p99_target_ms": CYCLE_P99_TARGET_MS,
                          "cycle_p99_target_met": dr["cycle_p99_ms"] < CYCLE_P99_TARGET_MS}))
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
