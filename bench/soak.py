"""Soak benchmark (issue 11): the demo stack for a long time with a fault every few minutes; does the controller
keep its memory, file descriptors, threads and tasks flat, keep pinging the watchdog, and lose nothing it
acknowledged?

    .venv/bin/python bench/soak.py                       # the full run: 60 minutes, a fault every 5 minutes
    .venv/bin/python bench/soak.py --minutes 8 --fault-every-s 60 --fault-hold-s 20 --sample-s 15   # a check

The stack, each part its own process on free 127.0.0.1 ports, in a temporary directory (kept when a target
fails or something goes wrong, so its logs can be read; --keep keeps it always):
  Mosquitto (persistent, nothing dropped), `bess-edge simulate` (plant: BMS over Modbus and OPC UA, PCS SunSpec,
  the control API), `bess-edge exchange` (with counterparties), and `bess-edge run` on a copy of the site file
  (default config/demo-single.yaml, the one-unit demo plant, mode demo) with NOTIFY_SOCKET set to a datagram socket this program reads and
  WATCHDOG_USEC set to --watchdog-s.

Faults, one every --fault-every-s, in turn (--faults picks and orders them), each held --fault-hold-s, then
cleared, and the recovery waited for (bounded by --recover-s, reported, never fatal):
  bms_silent     the BMS face the controller reads stops answering (simulator control API `silent`)
  pcs_drop       the PCS face closes every connection (`drop`)
  broker_down    Mosquitto stopped (SIGTERM, it saves its sessions), started again on the same port
  exchange_down  the exchange simulator's process stopped, started again (a fresh order book)
  garbage        the BMS serves garbage: a raw 0xFFFF SoC and 0x8000 temperature (Modbus) or a Bad StatusCode
                 (OPC UA); a simulator that does not know the fields yet answers 422, which is said, not fatal
Trades flow all the time: every --order-every-s a small IOC order (alternately sell and buy, priced to cross the
counterparties' quotes) goes through the site's own API (POST /api/orders), the exchange fills it and publishes
the trade over MQTT, the controller stores and acks it. An MQTT subscriber of this program (a persistent
session, so the broker keeps its messages across the broker's restart) records every telemetry `seq` and every
ack.

Every --sample-s: the controller process's RSS, open fds and threads (/proc/<pid>), asyncio tasks
(bess_asyncio_tasks) and the cycle's p99 over the window (bess_cycle_duration_seconds buckets, from /metrics).
A sample whose window saw a fault (held, or not yet recovered from) is kept and printed but left out of the
figures: a leak stays after its fault has gone, a fault's transient does not.

At the end: per quantity the first and last value and the least-squares slope per hour over the quiet samples
after --warmup-s; the watchdog pings (a gap between two WATCHDOG=1 longer than WatchdogSec is a missed ping); every
trade acked accepted is in the controller's store; the telemetry seq the subscriber saw has no gap (a seq the
broker took but the subscriber never saw, and that is no longer in the outbox, is lost). Targets beside the
figures with PASS/FAIL: RSS slope < 5 MB/h; fds, threads, tasks flat (the fitted change over the run within
max(2, 5 %)); no missed ping; nothing acknowledged lost. The last line is one JSON object with every figure.
Exit code 0 when every target passed, 1 when one failed, 2 when the stack could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import paho.mqtt.client as mqtt
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api import window_quantile  # noqa: E402
from controller.clock import iso  # noqa: E402
from controller.config import DEMO_API_KEY, DEMO_HMAC_SECRET, ConfigError, load_config  # noqa: E402
from controller.demo import mosquitto_binary, write_mosquitto_conf  # noqa: E402
from controller.store import DB_FILENAME  # noqa: E402
from controller.trading.market import (  # noqa: E402
    GATE_CLOSURE_S,  # noqa: E402
    PERIOD_S,
    period_start,
)

HOST = "127.0.0.1"
FAULTS = ("bms_silent", "pcs_drop", "broker_down", "exchange_down", "garbage")
RSS_SLOPE_TARGET_MB_H = 5.0
GARBAGE_STATUS_CODE = 0x80000000  # OPC UA Bad
GARBAGE_RAW = {"soc_pct": 0xFFFF, "temperature_max_c": 0x8000}  # marker values a plain-Modbus BMS may serve
START_TIMEOUT_S = 45.0
OUTBOX_IDLE_ROWS = 2


class StackError(RuntimeError):
    """The stack could not be started or a part of it died."""


# set by SIGINT/SIGTERM: their handler also raises KeyboardInterrupt, but one raised while Python runs a finalizer
# is printed and dropped, so the waits check this too
STOP = threading.Event()


def on_stop_signal(signum: int, frame: Any) -> None:
    STOP.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


def clock_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------------------------ processes
@dataclass
class Proc:
    """One part of the stack in its own session (a Ctrl-C at the terminal reaches only us; we stop it)."""

    name: str
    argv: list[str]
    ports: list[int]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    pgids: list[int] = field(default_factory=list)  # one per start: its own session and process group

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(ROOT),
            )
        self.pgids.append(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(port_open(p) for p in self.ports):
            if self.proc.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {self.proc.returncode}; log {self.log_path}:\n" + tail(self.log_path)
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} did not open ports {self.ports} within {START_TIMEOUT_S:g} s; "
                    f"log {self.log_path}:\n" + tail(self.log_path)
                )
            check_stop()
            time.sleep(0.1)

    def left_behind(self) -> bool:
        """Is any process of any of its starts still there? (signal 0 to each process group: none -> ESRCH)"""
        for pgid in self.pgids:
            try:
                os.killpg(pgid, 0)
                return True
            except ProcessLookupError:
                continue
            except PermissionError:
                return True
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to its process group, then SIGKILL if it is still there after timeout_s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        with_group(proc.pid, signal.SIGKILL)  # anything it started and left behind in its session


def with_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ site file
@dataclass
class Ports:
    mqtt: int = field(default_factory=free_port)
    exchange: int = field(default_factory=free_port)
    bms_modbus: int = field(default_factory=free_port)
    pcs: int = field(default_factory=free_port)
    bms_opcua: int = field(default_factory=free_port)
    control: int = field(default_factory=free_port)
    web: int = field(default_factory=free_port)
    scada_modbus: int = field(default_factory=free_port)
    scada_opcua: int = field(default_factory=free_port)


def write_site(base: Path, ports: Ports, out: Path) -> Path:
    """`base` with mode demo, every device, simulator face, web and SCADA face on our free loopback ports, and
    the profiles' paths made absolute. One BMS and one PCS (the demo's plant); other roles are refused."""
    raw = yaml.safe_load(base.read_text())
    raw["mode"] = "demo"
    for name, dev in raw["devices"].items():
        if dev["role"] == "pcs":
            dev["port"] = ports.pcs
        elif dev["role"] == "bms":
            dev["port"] = ports.bms_opcua if dev["protocol"] == "opcua" else ports.bms_modbus
        else:
            raise StackError(f"{base}: devices.{name}: role {dev['role']!r}: the soak runs a one-BMS, one-PCS plant")
        dev["host"] = HOST
        dev["profile"] = str((base.parent / dev["profile"]).resolve())
    raw.setdefault("simulator", {}).update(
        bms_modbus_port=ports.bms_modbus,
        pcs_modbus_port=ports.pcs,
        bms_opcua_port=ports.bms_opcua,
        control_port=ports.control,
    )
    raw.setdefault("web", {}).update(host=HOST, port=ports.web)
    raw["web"].setdefault("tls", {})["enabled"] = False
    scada = raw.setdefault("scada", {})
    scada.setdefault("modbus", {}).update(host=HOST, port=ports.scada_modbus)
    scada.setdefault("opcua", {}).update(host=HOST, port=ports.scada_opcua)
    raw.setdefault("mqtt", {})["enabled"] = True
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        load_config(out)  # the real loader: a base file it refuses stops us here with its message
    except ConfigError as e:
        raise StackError(f"{base}: the site file for the soak is not valid:\n  " + "\n  ".join(e.errors)) from None
    return out


# ------------------------------------------------------------------------------------------------ watchdog
class NotifyListener(threading.Thread):
    """The systemd side of sd_notify: binds NOTIFY_SOCKET and records when each WATCHDOG=1 / READY=1 came."""

    def __init__(self, path: Path):
        super().__init__(name="notify", daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self.pings: list[float] = []
        self.ready_at: float | None = None
        self.stopping_at: float | None = None
        self._closing = threading.Event()

    def run(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            lines = data.decode(errors="replace").splitlines()
            if "WATCHDOG=1" in lines:
                self.pings.append(now)
            if "READY=1" in lines and self.ready_at is None:
                self.ready_at = now
            if "STOPPING=1" in lines and self.stopping_at is None:
                self.stopping_at = now

    def close(self) -> None:
        self._closing.set()
        self.join(timeout=2)
        self.sock.close()

    def figures(self, watchdog_s: float, until: float, started_at: float, t0: float) -> dict[str, Any]:
        """Gaps between pings from the first one until `until` (when the controller was told to stop), the
        last ping to `until` included: each gap longer than watchdog_s is a missed ping (systemd would have
        restarted the daemon). Each missed gap: its start (s after t0) and length."""
        pings = [t for t in self.pings if t <= until]
        gaps = [(a, b - a) for a, b in zip(pings, pings[1:])] + ([(pings[-1], until - pings[-1])] if pings else [])
        missed = [{"at_s": round(a - t0, 1), "gap_s": round(g, 2)} for a, g in gaps if g > watchdog_s]
        return {
            "watchdog_s": watchdog_s,
            "pings": len(pings),
            "missed": len(missed),
            "longest_gap_s": round(max(g for _, g in gaps), 2) if gaps else None,
            "missed_gaps": missed,
            "first_ping_after_start_s": round(pings[0] - started_at, 2) if pings else None,
            "ready": self.ready_at is not None,
        }


# ------------------------------------------------------------------------------------------------ MQTT subscriber
class Subscriber:
    """The cloud's view: telemetry seq, trades published to the site and the site's acks. A persistent session
    (clean_session false, QoS 1) on a persistent broker, so what arrives while we are reconnecting is kept."""

    def __init__(self, port: int, site: str):
        self.site = site
        self.lock = threading.Lock()
        self.seqs: set[int] = set()
        self.duplicates = 0
        self.acks: dict[str, bool] = {}
        self.trades_seen: set[str] = set()
        self.connects = 0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"bench-soak-{os.getpid()}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.port = port
        self.connected = threading.Event()

    def start(self) -> None:
        self.client.connect_async(HOST, self.port, keepalive=15)
        self.client.loop_start()
        if not self.connected.wait(15):
            raise StackError(f"the bench's MQTT subscriber could not connect to 127.0.0.1:{self.port}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.connects += 1
        client.subscribe(
            [(f"bess/{self.site}/telemetry", 1), (f"bess/{self.site}/trades", 1), (f"bess/{self.site}/trades/ack", 1)]
        )
        self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            if msg.topic.endswith("/telemetry") and isinstance(body.get("seq"), int):
                if body["seq"] in self.seqs:
                    self.duplicates += 1
                self.seqs.add(body["seq"])
            elif msg.topic.endswith("/trades/ack") and isinstance(body.get("trade_id"), str):
                # a redelivered trade may be acked again: accepted once is accepted
                self.acks[body["trade_id"]] = self.acks.get(body["trade_id"], False) or body.get("accepted") is True
            elif msg.topic.endswith("/trades") and isinstance(body.get("trade_id"), str):
                self.trades_seen.add(body["trade_id"])

    def snapshot(self) -> tuple[set[int], dict[str, bool], set[str], int]:
        with self.lock:
            return set(self.seqs), dict(self.acks), set(self.trades_seen), self.duplicates


# ------------------------------------------------------------------------------------------------ probes
def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {"name{labels}": value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def buckets(metrics: dict[str, float]) -> dict[float, float]:
    out = {}
    for key, v in metrics.items():
        m = re.fullmatch(r'bess_cycle_duration_seconds_bucket\{le="([^"]+)"\}', key)
        if m:
            out[float(m.group(1))] = v
    return out


def proc_figures(pid: int) -> dict[str, float]:
    """RSS (MB), threads and open fds of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
    return {"rss_mb": round(rss_kb / 1024, 2), "threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Site:
    """The controller's web face, as an operator's tools use it (API key in the headers)."""

    def __init__(self, base: str, key: str):
        self.http = httpx.Client(
            base_url=base, timeout=5.0, headers={"X-API-Key": key, "Authorization": f"Bearer {key}"}
        )

    def close(self) -> None:
        self.http.close()

    def metrics(self) -> dict[str, float] | None:
        try:
            r = self.http.get("/metrics")
            return parse_metrics(r.text) if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def status(self) -> dict[str, Any] | None:
        try:
            r = self.http.get("/api/bess-status")
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def market(self) -> dict[str, Any]:
        """The site's market data; `stale` is true when the exchange did not answer (the last data is served)."""
        try:
            r = self.http.get("/api/market-data")
            body = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            body = None
        return body if isinstance(body, dict) else {"mark": None, "stale": True}

    def mark(self) -> float | None:
        return self.market().get("mark")


# ------------------------------------------------------------------------------------------------ trading
class Trader:
    """A small IOC order through the site's API every call, alternately sell and buy, priced across the
    counterparties' quotes so it fills; the net position of any period stays within one order."""

    def __init__(self, site: Site, quantity_mw: float):
        self.site = site
        self.quantity_mw = quantity_mw
        self.sides = ("sell", "buy")
        self.n = 0
        self.results: dict[str, int] = {}
        self.filled_mw = 0.0
        self.last: str = ""

    def _count(self, what: str) -> str:
        self.results[what] = self.results.get(what, 0) + 1
        self.last = what
        return what

    def place(self) -> str:
        mark = self.site.mark()
        if mark is None:
            return self._count("no market price (exchange down?)")
        side = self.sides[self.n % 2]
        self.n += 1
        start = period_start(time.time()) + PERIOD_S
        if start - time.time() <= GATE_CLOSURE_S + 30:
            start += PERIOD_S
        order = {
            "side": side,
            "quantity_mw": self.quantity_mw,
            "market": "intraday",
            "time_in_force": "IOC",
            "price_eur_mwh": round(mark - 30 if side == "sell" else mark + 30, 2),
            "delivery_start": iso(start).replace(".000Z", "Z"),
        }
        try:
            r = self.site.http.post("/api/orders", json=order)
        except httpx.HTTPError as e:
            return self._count(f"request failed: {type(e).__name__}")
        if r.status_code == 201:
            body = r.json()
            self.filled_mw += body.get("filled_mw") or 0.0
            return self._count(f"placed ({body.get('status')})")
        try:
            detail = str(r.json().get("detail"))
        except (ValueError, AttributeError):
            detail = r.text
        return self._count(f"{r.status_code}: {detail.split(': ')[0][:60]}")  # the kind, not the particulars


# ------------------------------------------------------------------------------------------------ faults
class Injector:
    """Injects and clears the faults; says what happened in one line each time (never raises for a fault that
    cannot be injected: the soak goes on and the line says why)."""

    def __init__(self, control_url: str, bms_face: str, broker: Proc, exchange: Proc):
        self.http = httpx.Client(base_url=control_url, timeout=5.0)
        self.bms_face = bms_face
        self.broker = broker
        self.exchange = exchange

    def close(self) -> None:
        self.http.close()

    def _post(self, face: str, body: dict[str, Any]) -> tuple[bool, str]:
        try:
            r = self.http.post(f"/sim/faults/{face}", json=body)
        except httpx.HTTPError as e:
            return False, f"simulator control API unreachable: {e}"
        if r.status_code == 200:
            return True, f"POST /sim/faults/{face} {json.dumps(body)}"
        return False, f"POST /sim/faults/{face} {json.dumps(body)} -> {r.status_code} {r.text[:300]}"

    def garbage_body(self) -> dict[str, Any]:
        if self.bms_face == "bms_opcua":
            return {"status_codes": {p: GARBAGE_STATUS_CODE for p in GARBAGE_RAW}}
        return {"raw": dict(GARBAGE_RAW)}

    def inject(self, kind: str) -> tuple[bool, str]:
        if kind == "bms_silent":
            return self._post(self.bms_face, {"silent": True})
        if kind == "pcs_drop":
            return self._post("pcs", {"drop": True})
        if kind == "garbage":
            ok, note = self._post(self.bms_face, self.garbage_body())
            if not ok and "-> 422" in note:
                note = (
                    "the plant simulator does not take raw values / status codes yet (422; they land with the "
                    "'readings' change of issue 11): " + note
                )
            return ok, note
        if kind == "broker_down":
            self.broker.stop()
            return True, "mosquitto stopped (SIGTERM)"
        if kind == "exchange_down":
            self.exchange.stop()
            return True, "exchange simulator stopped (SIGTERM)"
        raise ValueError(f"fault: unknown {kind!r}")

    def clear(self, kind: str) -> tuple[bool, str]:
        if kind == "broker_down":
            self.broker.start()
            return True, "mosquitto started again"
        if kind == "exchange_down":
            self.exchange.start()
            return True, "exchange simulator started again"
        try:
            r = self.http.delete("/sim/faults")
        except httpx.HTTPError as e:
            return False, f"DELETE /sim/faults failed: {e}"
        return r.status_code == 200, f"DELETE /sim/faults -> {r.status_code}"


def recovered(kind: str, site: Site) -> bool:
    """The stack is back to normal after `kind` was cleared."""
    if kind == "broker_down":
        m = site.metrics() or {}
        return m.get("bess_mqtt_connected") == 1 and outbox_idle(m)
    if kind == "exchange_down":
        md = site.market()
        return md.get("mark") is not None and not md.get("stale")
    st = site.status() or {}
    return st.get("status") == "online" and st.get("soc_pct") is not None


def outbox_idle(metrics: dict[str, float]) -> bool:
    """The outbox holds no backlog: at most the telemetry of the last cycle or two, still waiting for its
    PUBACK when the cycle set the gauge (an idle uplink shows 1)."""
    depth = metrics.get("bess_mqtt_outbox_depth")
    return depth is not None and depth <= OUTBOX_IDLE_ROWS


def fault_at(faults: list[dict[str, Any]], t_s: float) -> str | None:
    """The fault held, or being recovered from, at t_s (s after the start), if any."""
    for f in faults:
        if f.get("injected") and f["at_s"] - 2 <= t_s <= f.get("cleared_at_s", t_s) + (f.get("recovered_s") or 0) + 1:
            return f["kind"]
    return None


def observe(site: Site) -> dict[str, Any]:
    """What the controller shows near the end of a fault's hold."""
    st = site.status() or {}
    m = site.metrics() or {}
    up = {re.search(r'device="([^"]+)"', k).group(1): int(v) for k, v in m.items() if k.startswith("bess_device_up{")}
    return {
        "status": st.get("status"),
        "soc_pct": st.get("soc_pct"),
        "setpoint_mw": st.get("setpoint_mw"),
        "device_up": up,
        "mqtt_connected": m.get("bess_mqtt_connected"),
        "outbox_depth": m.get("bess_mqtt_outbox_depth"),
        "market_stale": site.market().get("stale"),
        "alarms": (st.get("alarms") or [])[:3],
    }


# ------------------------------------------------------------------------------------------------ figures
def slope_per_h(ts_s: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over time, per hour."""
    if len(ts_s) < 2:
        return None
    tm, ym = sum(ts_s) / len(ts_s), sum(ys) / len(ys)
    den = sum((t - tm) ** 2 for t in ts_s)
    if den == 0:
        return None
    return sum((t - tm) * (y - ym) for t, y in zip(ts_s, ys)) / den * 3600.0


QUANTITIES = (  # key, label, unit, target kind
    ("rss_mb", "RSS", "MB", "rss"),
    ("fds", "open fds", "", "flat"),
    ("threads", "threads", "", "flat"),
    ("tasks", "asyncio tasks", "", "flat"),
    ("cycle_p99_ms", "cycle p99 (window)", "ms", None),
)


def quantity_figures(samples: list[dict[str, Any]], key: str, kind: str | None, warmup_s: float) -> dict[str, Any]:
    """First/last/min/max and the least-squares slope per hour of one quantity over the quiet samples (after the
    warm-up, no fault in their window): a leak stays after its fault has gone, a fault's transient does not."""
    pts = [
        (s["t_s"], s[key]) for s in samples if s["t_s"] >= warmup_s and not s.get("fault") and s.get(key) is not None
    ]
    if not pts:
        return {"first": None, "last": None, "slope_per_h": None, "target": None, "pass": None, "samples": 0}
    ts, ys = [p[0] for p in pts], [p[1] for p in pts]
    slope = slope_per_h(ts, ys)
    out: dict[str, Any] = {
        "first": ys[0],
        "last": ys[-1],
        "min": min(ys),
        "max": max(ys),
        "samples": len(ys),
        "slope_per_h": None if slope is None else round(slope, 3),
    }
    if kind == "rss":
        out["target"] = f"slope < {RSS_SLOPE_TARGET_MB_H:g} MB/h"
        out["pass"] = slope is not None and slope < RSS_SLOPE_TARGET_MB_H
    elif kind == "flat":
        tol = max(2.0, 0.05 * ys[0])
        rise = None if slope is None else slope * (ts[-1] - ts[0]) / 3600.0
        out["fitted_change"] = None if rise is None else round(rise, 2)
        out["target"] = f"flat (fitted change within ±{tol:g})"
        out["pass"] = rise is not None and abs(rise) <= tol
    else:
        out["target"], out["pass"] = None, None
    return out


def outbox_after_stop(state_dir: Path) -> tuple[int, set[int], int]:
    """(last seq numbered, seqs still waiting in the outbox, rows dropped by its bound), read from the
    controller's database after it stopped."""
    db = sqlite3.connect(f"file:{state_dir / DB_FILENAME}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM mqtt_outbox_meta").fetchall())
        waiting = {r[0] for r in db.execute("SELECT seq FROM mqtt_outbox")}
        return int(meta.get("last_seq", 0)), waiting, int(meta.get("dropped", 0))
    finally:
        db.close()


def stored_trade_ids(state_dir: Path) -> set[str]:
    db = sqlite3.connect(f"file:{state_dir / DB_FILENAME}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT trade_id FROM trades")}
    finally:
        db.close()


def wait_until(pred: Callable[[], bool], timeout_s: float, step_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_stop()
        if pred():
            return True
        time.sleep(step_s)
    return pred()


# ------------------------------------------------------------------------------------------------ the run
class Soak:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.a = args
        self.work = work
        self.ports = Ports()
        self.site_file = write_site(Path(args.config).resolve(), self.ports, work / "site.yaml")
        cfg = load_config(self.site_file)
        self.site_id = cfg.site.id
        bms = next(d for d in cfg.devices.values() if d.role == "bms")
        self.bms_face = "bms_opcua" if bms.protocol == "opcua" else "bms_modbus"
        self.state_dir = work / "state"
        (work / "logs").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
        env.update(
            API_KEY=DEMO_API_KEY,
            EXCHANGE_API_KEY=DEMO_API_KEY,
            HMAC_SECRET=DEMO_HMAC_SECRET,
            MQTT_URL=f"mqtt://{HOST}:{self.ports.mqtt}",
            EXCHANGE_BASE_URL=f"http://{HOST}:{self.ports.exchange}",
            PYTHONUNBUFFERED="1",
        )
        self.notify_path = work / "notify.sock"
        ctl_env = dict(env, NOTIFY_SOCKET=str(self.notify_path), WATCHDOG_USEC=str(int(args.watchdog_s * 1e6)))
        exe = [sys.executable, "-m", "controller.cli"]
        broker_bin = mosquitto_binary()
        if broker_bin is None:
            raise StackError(
                "mosquitto not found (scripts/setup.sh installs it): the broker outage needs a real broker"
            )
        conf = write_mosquitto_conf(work / "mosquitto", self.ports.mqtt)
        log = lambda name: work / "logs" / f"{name}.log"  # noqa: E731
        self.broker = Proc("mosquitto", [broker_bin, "-c", str(conf)], [self.ports.mqtt], env, log("mosquitto"))
        self.plant = Proc(
            "plant simulators",
            exe + ["simulate", "--config", str(self.site_file)],
            [self.ports.bms_modbus, self.ports.pcs, self.ports.bms_opcua, self.ports.control],
            env,
            log("plant"),
        )
        self.exchange = Proc(
            "exchange simulator",
            exe + ["exchange", "--port", str(self.ports.exchange), "--counterparties", str(args.counterparties)],
            [self.ports.exchange],
            env,
            log("exchange"),
        )
        self.controller = Proc(
            "controller",
            exe + ["run", "--config", str(self.site_file), "--state-dir", str(self.state_dir), "--log-format", "json"],
            [self.ports.web],
            ctl_env,
            log("controller"),
        )
        self.procs = [self.broker, self.plant, self.exchange, self.controller]
        self.notify: NotifyListener | None = None
        self.sub: Subscriber | None = None
        self.site = Site(f"http://{HOST}:{self.ports.web}", DEMO_API_KEY)
        self.injector = Injector(f"http://{HOST}:{self.ports.control}", self.bms_face, self.broker, self.exchange)
        self.trader = Trader(self.site, args.order_mw)
        self.samples: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.active: dict[str, Any] | None = None  # the fault being held
        self.recovering: dict[str, Any] | None = None  # a cleared fault whose recovery we wait for
        self._fault_in_window = False
        self.t0 = 0.0
        self.controller_started_at = 0.0
        self._last_buckets: dict[float, float] = {}

    def say(self, text: str) -> None:
        print(f"[{clock_s(time.monotonic() - self.t0) if self.t0 else '--:--'}] {text}", flush=True)

    # ---- start and stop
    def start(self) -> None:
        self.notify = NotifyListener(self.notify_path)
        self.notify.start()
        for p in (self.broker, self.plant, self.exchange):
            p.start()
            self.say(f"{p.name} up (pid {p.pid}, ports {p.ports})")
        self.sub = Subscriber(self.ports.mqtt, self.site_id)
        self.sub.start()
        self.controller_started_at = time.monotonic()
        self.controller.start()
        if not wait_until(self.site.ready, 60):
            raise StackError(
                "the controller did not become ready (/readyz) within 60 s; log:\n" + tail(self.controller.log_path)
            )
        self.say(f"controller up (pid {self.controller.pid}, {self.site.http.base_url}), ready")

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p is self.broker and self.sub is not None:
                self.sub.stop()
                self.sub = None
            p.stop()
        if self.sub is not None:
            self.sub.stop()
        if self.notify is not None:
            self.notify.close()
        self.site.close()
        self.injector.close()

    def check_alive(self, expected_down: set[str]) -> None:
        for p in self.procs:
            if p.name not in expected_down and not p.running():
                code = p.proc.returncode if p.proc else None
                raise StackError(f"{p.name} died (exit code {code}); log {p.log_path}:\n{tail(p.log_path)}")

    # ---- samples
    def sample(self) -> dict[str, Any]:
        """One sample. `fault`: a fault was held or being recovered from at some time since the last sample (its
        window's cycle p99 then says how the fault went, not how the controller ages: slopes leave it out)."""
        t = round(time.monotonic() - self.t0, 1)
        s: dict[str, Any] = {"t_s": t, **proc_figures(self.controller.pid), "fault": self._fault_in_window}
        self._fault_in_window = self.active is not None or self.recovering is not None
        m = self.site.metrics()
        if m is not None:
            s["tasks"] = m.get("bess_asyncio_tasks")
            now_buckets = buckets(m)
            w = window_quantile(self._last_buckets, now_buckets, 0.99)
            self._last_buckets = now_buckets
            s["cycle_p99_ms"], s["cycles"] = w["p99_ms"], w["cycles"]
            rolling = m.get("bess_cycle_duration_p99_seconds")
            s["cycle_p99_rolling_ms"] = None if rolling is None else round(rolling * 1000, 2)
            s["outbox_depth"] = m.get("bess_mqtt_outbox_depth")
        self.samples.append(s)
        self.say(
            f"sample: RSS {s['rss_mb']:.1f} MB, fds {s['fds']}, threads {s['threads']}, tasks {s.get('tasks')}, "
            f"cycle p99 {s.get('cycle_p99_ms')} ms over {s.get('cycles')} cycles, outbox {s.get('outbox_depth')}"
            + ("  (fault in this window)" if s["fault"] else "")
        )
        return s

    # ---- faults on the timeline
    def inject_next(self, now: float) -> None:
        kind = self.a.faults[len(self.faults) % len(self.a.faults)]
        ok, note = self.injector.inject(kind)
        f = {"kind": kind, "at_s": round(now - self.t0, 1), "injected": ok, "inject_note": note}
        self.say(f"fault {kind}: {'injected' if ok else 'NOT injected'}: {note}")
        if not ok:  # nothing to hold, clear or recover from: said, recorded, and the soak goes on
            self.faults.append(dict(f, cleared=None, recovered_s=None))
            return
        self.active = dict(f, clear_at=now + self.a.fault_hold_s, observed=None)
        self._fault_in_window = True

    def hold_or_clear(self, now: float) -> None:
        f = self.active
        if f["observed"] is None and now >= f["clear_at"] - min(3.0, self.a.fault_hold_s / 4):
            f["observed"] = observe(self.site)
        if now < f["clear_at"]:
            return
        ok, note = self.injector.clear(f["kind"])
        del f["clear_at"]
        f.update(cleared=ok, clear_note=note, cleared_at_s=round(now - self.t0, 1))
        self.say(
            f"fault {f['kind']}: {'cleared' if ok else 'NOT cleared'}: {note}; near the end of the hold: "
            f"{json.dumps(f['observed'])}"
        )
        self.faults.append(f)
        self.active, self.recovering = None, {"fault": f, "since": now}

    def check_recovery(self) -> None:
        f, since = self.recovering["fault"], self.recovering["since"]
        if recovered(f["kind"], self.site):
            f["recovered_s"] = round(time.monotonic() - since, 1)
            self.say(f"fault {f['kind']}: recovered {f['recovered_s']} s after clearing")
            self.recovering = None
        elif time.monotonic() - since > self.a.recover_s:
            f["recovered_s"] = None
            self.say(f"fault {f['kind']}: NOT recovered within {self.a.recover_s:g} s of clearing")
            self.recovering = None

    def expected_down(self) -> set[str]:
        kind = self.active["kind"] if self.active else None
        return {"broker_down": {self.broker.name}, "exchange_down": {self.exchange.name}}.get(kind, set())

    # ---- the timeline
    def run(self) -> None:
        """Samples, orders and faults until --minutes have passed (a fault is held to its end), then wait for the
        last recovery and take a last sample."""
        a = self.a
        self.t0 = time.monotonic()
        end = self.t0 + a.minutes * 60
        next_sample, next_order, next_fault = self.t0, self.t0 + min(30.0, a.order_every_s), self.t0 + a.fault_every_s
        self._last_buckets = buckets(self.site.metrics() or {})
        while True:
            check_stop()
            now = time.monotonic()
            if now >= end and self.active is None:
                break
            self.check_alive(self.expected_down())
            if now >= next_sample:
                self.sample()
                next_sample += a.sample_s
            if now >= next_order:
                self.say(f"order: {self.trader.place()}")
                next_order += a.order_every_s
            if self.active is None and self.recovering is None and now >= next_fault:
                if now + a.fault_hold_s < end:
                    self.inject_next(now)
                    next_fault += a.fault_every_s
                else:
                    next_fault = math.inf  # no room for another hold before the end
            if self.active is not None:
                self.hold_or_clear(now)
            if self.recovering is not None:
                self.check_recovery()
            wake = min(next_sample, next_order, next_fault, end, self.active["clear_at"] if self.active else math.inf)
            time.sleep(max(0.05, min(1.0, wake - time.monotonic())))
        while self.recovering is not None:
            check_stop()
            self.check_recovery()
            time.sleep(0.5)
        self.sample()

    # ---- the end
    def settle(self) -> dict[str, Any]:
        """Let the outbox drain and the trades in flight be acked, then stop the controller (the watchdog's
        accounting ends there) and read its store."""
        drained = wait_until(lambda: outbox_idle(self.site.metrics() or {}), 60)

        def acked_all() -> bool:
            _, acks, seen, _ = self.sub.snapshot()
            return seen <= set(acks)

        acked = wait_until(acked_all, 30)
        time.sleep(2.0)  # the last telemetry's way to the subscriber
        stop_at = time.monotonic()
        self.controller.stop()
        wd = self.notify.figures(self.a.watchdog_s, stop_at, self.controller_started_at, self.t0)
        for gap in wd["missed_gaps"]:
            gap["fault"] = fault_at(self.faults, gap["at_s"])
        time.sleep(1.0)
        seqs, acks, trades_seen, dups = self.sub.snapshot()
        last_seq, waiting, dropped = outbox_after_stop(self.state_dir)
        stored = stored_trade_ids(self.state_dir)
        accepted = {t for t, ok in acks.items() if ok}
        missing_trades = sorted(accepted - stored)
        lost = sorted(set(range(1, last_seq + 1)) - seqs - waiting)
        return {
            "watchdog": wd,
            "trades": {
                "orders": dict(self.trader.results),
                "filled_mw": round(self.trader.filled_mw, 1),
                "published_to_site": len(trades_seen),
                "acked": len(acks),
                "acked_accepted": len(accepted),
                "acked_rejected": len(acks) - len(accepted),
                "stored": len(stored),
                "acked_accepted_not_stored": missing_trades,
                "published_without_ack": len(trades_seen - set(acks)),
                "all_acked_before_stop": acked,
            },
            "telemetry": {
                "last_seq": last_seq,
                "seen": len(seqs),
                "duplicates": dups,
                "still_in_outbox": len(waiting),
                "outbox_dropped": dropped,
                "drained_before_stop": drained,
                "lost": len(lost),
                "lost_seqs": lost[:50],
                "subscriber_connects": self.sub.connects,
            },
        }


# ------------------------------------------------------------------------------------------------ report
def report(args: argparse.Namespace, soak: Soak, end: dict[str, Any]) -> dict[str, Any]:
    qs = {key: quantity_figures(soak.samples, key, kind, args.warmup_s) for key, _, _, kind in QUANTITIES}
    wd, tr, te = end["watchdog"], end["trades"], end["telemetry"]
    nothing_lost = not tr["acked_accepted_not_stored"] and te["lost"] == 0
    targets = {
        "rss_slope": qs["rss_mb"]["pass"],
        "fds_flat": qs["fds"]["pass"],
        "threads_flat": qs["threads"]["pass"],
        "tasks_flat": qs["tasks"]["pass"],
        "no_missed_ping": wd["missed"] == 0,
        "nothing_acknowledged_lost": nothing_lost,
    }
    verdict = lambda ok: "PASS" if ok else ("FAIL" if ok is False else "n/a")  # noqa: E731

    span = soak.samples[-1]["t_s"] if soak.samples else 0
    print()
    quiet = qs["rss_mb"]["samples"]
    print(
        f"soak: {span / 60:.1f} min, {len(soak.samples)} samples every {args.sample_s:g} s; figures over the {quiet} "
        f"taken after {args.warmup_s:g} s of warm-up with no fault in their window"
        + ("  (a short run: per-hour slopes extrapolate it)" if span < 1800 else "")
    )
    all_rss = [s["rss_mb"] for s in soak.samples]
    print(
        f"every sample: RSS {min(all_rss):g}-{max(all_rss):g} MB, fds {min(s['fds'] for s in soak.samples)}-"
        f"{max(s['fds'] for s in soak.samples)}, threads {min(s['threads'] for s in soak.samples)}-"
        f"{max(s['threads'] for s in soak.samples)}, worst window's cycle p99 "
        f"{max((s.get('cycle_p99_ms') or 0) for s in soak.samples):g} ms"
    )
    print(f"{'quantity':<20}{'first':>10}{'last':>10}{'min':>10}{'max':>10}{'slope/h':>10}   {'target':<34}result")
    for key, label, unit, _ in QUANTITIES:
        q = qs[key]
        name = f"{label} ({unit})" if unit else label
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        print(
            f"{name:<20}{fmt(q['first']):>10}{fmt(q['last']):>10}{fmt(q.get('min')):>10}{fmt(q.get('max')):>10}"
            f"{fmt(q['slope_per_h']):>10}   {q['target'] or '-':<34}{verdict(q['pass']) if q['target'] else ''}"
        )
    gaps = ", ".join(
        f"{g['gap_s']:g} s at {clock_s(g['at_s'])} ({g['fault'] or 'no fault'})" for g in wd["missed_gaps"]
    )
    print(
        f"watchdog: {wd['pings']} pings, {wd['missed']} gaps > WatchdogSec {wd['watchdog_s']:g} s"
        f"{': ' + gaps if gaps else ''}; longest gap {wd['longest_gap_s']} s   target: no missed ping   "
        f"{verdict(targets['no_missed_ping'])}"
    )
    print(
        f"trades: orders {tr['orders']}, {tr['filled_mw']} MW filled; {tr['published_to_site']} trades published "
        f"to the site, {tr['acked_accepted']} acked accepted ({tr['acked_rejected']} rejected), {tr['stored']} in "
        f"the store; acked accepted but not stored: {len(tr['acked_accepted_not_stored'])}"
    )
    print(
        f"telemetry: seq 1..{te['last_seq']}, {te['seen']} seen by the subscriber ({te['duplicates']} duplicates), "
        f"{te['still_in_outbox']} still in the outbox, {te['outbox_dropped']} dropped by its bound, lost {te['lost']}"
    )
    print(f"nothing acknowledged lost   {verdict(nothing_lost)}")
    print("faults:")
    for f in soak.faults:
        rec = f.get("recovered_s")
        if not f["injected"]:
            print(f"  {clock_s(f['at_s'])} {f['kind']:<14} NOT INJECTED: {f['inject_note'][:200]}")
            continue
        print(
            f"  {clock_s(f['at_s'])} {f['kind']:<14} injected, {'cleared' if f.get('cleared') else 'NOT cleared'}, "
            + (f"recovered after {rec} s" if rec is not None else f"NOT recovered within {args.recover_s:g} s")
        )
    kinds_seen = {f["kind"] for f in soak.faults if f["injected"]}
    not_run = [k for k in args.faults if k not in kinds_seen]
    if not_run:
        print(f"  faults never injected: {', '.join(not_run)}")
    print(f"targets: {json.dumps(targets)}")
    return {
        "bench": "soak",
        "minutes": args.minutes,
        "fault_every_s": args.fault_every_s,
        "fault_hold_s": args.fault_hold_s,
        "sample_s": args.sample_s,
        "warmup_s": args.warmup_s,
        "config": str(args.config),
        "bms_face": soak.bms_face,
        "quantities": qs,
        **end,
        "faults": soak.faults,
        "faults_not_injected": not_run,
        "targets": targets,
        "all_passed": all(v is True for v in targets.values()),
        "samples": soak.samples,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="how long the soak runs (default 60)")
    ap.add_argument("--fault-every-s", type=float, default=300.0, help="a fault every this many s (default 300)")
    ap.add_argument("--fault-hold-s", type=float, default=60.0, help="each fault is held this long (default 60)")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"which faults, in turn (default {','.join(FAULTS)})")
    ap.add_argument("--sample-s", type=float, default=60.0, help="sample the controller every this many s (default 60)")
    ap.add_argument(
        "--warmup-s", type=float, default=120.0, help="samples before this are left out of the slopes (default 120)"
    )
    ap.add_argument(
        "--recover-s",
        type=float,
        default=60.0,
        help="how long to wait for the stack to recover after a fault is cleared (default 60)",
    )
    ap.add_argument("--watchdog-s", type=float, default=10.0, help="WatchdogSec given to the controller (default 10)")
    ap.add_argument("--order-every-s", type=float, default=60.0, help="an order through the site API every this many s")
    ap.add_argument("--order-mw", type=float, default=0.5, help="each order's quantity (multiple of 0.1 MW)")
    ap.add_argument("--counterparties", type=int, default=8, help="the exchange simulator's counterparties")
    ap.add_argument(
        "--config",
        default=str(ROOT / "config" / "demo-single.yaml"),
        help="the site file to start from (default config/demo-single.yaml; config/demo-single-modbus.yaml reads the "
        "BMS over Modbus); ports, mode and paths are rewritten",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state) even on success")
    a = ap.parse_args(argv)
    a.faults = [f.strip() for f in a.faults.split(",") if f.strip()]
    bad = [f for f in a.faults if f not in FAULTS]
    if bad or not a.faults:
        ap.error(f"--faults: unknown {bad} (choose from {', '.join(FAULTS)})")
    for name in ("minutes", "fault_every_s", "fault_hold_s", "sample_s", "watchdog_s", "order_every_s", "order_mw"):
        v = getattr(a, name)
        if not (math.isfinite(v) and v > 0):
            ap.error(f"--{name.replace('_', '-')}: must be a positive number (got {v})")
    if a.fault_hold_s >= a.fault_every_s:
        ap.error(f"--fault-hold-s ({a.fault_hold_s:g}) must be shorter than --fault-every-s ({a.fault_every_s:g})")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    keep = True  # until the run ends well: its logs are what tells why it did not

    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C and SIGTERM: the same way out, through every finally
        signal.signal(sig, on_stop_signal)
    soak = None
    code = 2
    try:
        soak = Soak(args, work)
        print(
            f"soak: {args.minutes:g} min, faults {args.faults} every {args.fault_every_s:g} s held "
            f"{args.fault_hold_s:g} s, samples every {args.sample_s:g} s; work dir {work}",
            flush=True,
        )
        soak.start()
        soak.run()
        end = soak.settle()
        out = report(args, soak, end)
        code = 0 if out["all_passed"] else 1
        keep = args.keep or code != 0
        print(json.dumps(out), flush=True)
    except StackError as e:
        print(f"soak: {e}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr, flush=True)
        code = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave a process behind
            signal.signal(sig, signal.SIG_IGN)
        if soak is not None:
            soak.stop_all()
            left = [p.name for p in soak.procs if p.left_behind()]
            print(
                f"soak: every process it started ({sum(len(p.pgids) for p in soak.procs)}, restarts included) has ended"
                if not left
                else f"soak: STILL RUNNING: {left}",
                flush=True,
            )
        if keep:
            print(f"soak: logs and state kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
