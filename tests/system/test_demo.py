"""`bess-edge demo` as a user runs it: it starts everything on DESIGN.md's fixed ports, the controller runs
the plant, and Ctrl-C stops every process on its SIGTERM (none needs killing) with the ports freed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PORTS = {
    "dashboard": 5000,
    "exchange": 9000,
    "mqtt": 1883,
    "bms modbus": 1502,
    "pcs modbus": 1503,
    "bms opcua": 4841,
    "scada modbus": 5020,
    "scada opcua": 4840,
}

pytestmark = pytest.mark.timeout(180)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def get_json(path: str, key: str = "demo"):
    req = urllib.request.Request(f"http://127.0.0.1:5000{path}", headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def auto_start(period: dict) -> float:
    """A plan period's start, Unix seconds."""
    from controller.clock import parse_iso

    return parse_iso(period["period_start"])


@pytest.fixture
def demo(tmp_path):
    busy = [n for n, p in PORTS.items() if port_open(p)]
    assert not busy, f"demo ports already in use: {busy}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "demo", "--state-dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        assert proc.poll() is None, "demo exited:\n" + "".join(lines)
        yield proc, lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_demo_serves_every_port_runs_the_plant_and_stops_cleanly(demo):
    proc, lines = demo
    text = "".join(lines)
    assert "http://127.0.0.1:5000/" in text and "API key: demo" in text
    for name, port in PORTS.items():
        assert port_open(port), f"{name} port {port} is not open"
    deadline = time.monotonic() + 30
    status = {}
    while time.monotonic() < deadline:
        status = get_json("/api/bess-status")
        if status["status"] == "online":
            break
        time.sleep(0.5)
    assert status["status"] == "online", status
    assert 0 < status["soc_pct"] < 100 and status["temperature_c"] is not None
    md = get_json("/api/market-data")
    assert {"mark", "ema", "vwap", "series"} <= set(md)
    # the site trades on its own: the auto-trader's plan (the demo says it), and its orders through the site's own
    # order desk to the exchange wherever the plan needs a trade in the next hours
    said = ""
    while "auto-trading" not in said:
        said = proc.stdout.readline()
        assert said, "demo output ended"
    assert "auto-trading   running: plan optimal" in said, said
    plan = get_json("/api/plan")
    assert set(plan) == {"generated_at", "status", "solve_ms", "objective_eur", "periods"} and len(plan["periods"]) > 96
    now = time.time()
    needs = [
        p
        for p in plan["periods"]
        if abs(p["plan_mw"] - p["position_mw"]) >= 0.1 and 300 < auto_start(p) - now < 4 * 3600
    ]
    deadline = time.monotonic() + 60
    auto = get_json("/api/auto")
    while needs and auto["orders_placed"] < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
        auto = get_json("/api/auto")
    assert not needs or auto["orders_placed"] >= 1, (auto, needs[:3])
    assert auto["state"] == "running" and get_json("/api/bess-status")["auto_trading"]["enabled"] is True, auto
    proc.send_signal(signal.SIGINT)
    # bounded wait: the demo gives its processes 8 s after SIGTERM, then kills what is left and says so
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert "stopped: all demo processes ended" in rest
    assert "did not stop" not in rest, f"a demo process had to be killed:\n{rest}"
    still = [n for n, p in PORTS.items() if port_open(p)]
    assert not still, f"ports still open after stop: {still}"


def test_demo_broker_persists_its_state_in_a_private_directory(tmp_path):
    """The demo's mosquitto keeps its state in the demo's private (0700) state directory. Started by root it used to
    drop to the user `mosquitto`, and every save failed with 'Permission denied': a retained message did not
    survive a restart of the broker."""
    import paho.mqtt.client as mqtt

    from controller.demo import mosquitto_binary, write_mosquitto_conf
    from tests.conftest import free_port

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    conf = write_mosquitto_conf(state / "mosquitto", port)
    errors = tmp_path / "mosquitto.stderr"

    def broker() -> subprocess.Popen:
        with errors.open("a") as err:
            proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
        for _ in range(250):  # bounded: up to 5 s
            if port_open(port):
                return proc
            time.sleep(0.02)
        proc.kill()
        raise AssertionError("mosquitto did not listen within 5 s")

    def stop(proc: subprocess.Popen) -> None:
        proc.terminate()  # mosquitto saves its state as it exits
        assert proc.wait(10) == 0

    def client() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        c.connect("127.0.0.1", port)
        c.loop_start()
        return c

    proc = broker()
    try:
        c = client()
        c.publish("bess/demo/status", b'{"online":true}', qos=1, retain=True).wait_for_publish(5)
        c.disconnect()
        c.loop_stop()
    finally:
        stop(proc)
    assert (state / "mosquitto" / "mosquitto.db").exists(), errors.read_text()

    proc = broker()
    try:
        got = []
        c = client()
        c.on_message = lambda _c, _u, msg: got.append((msg.topic, msg.payload, msg.retain))
        c.subscribe("bess/demo/status", qos=1)
        for _ in range(250):  # bounded: up to 5 s
            if got:
                break
            time.sleep(0.02)
        c.disconnect()
        c.loop_stop()
    finally:
        stop(proc)
    assert got == [("bess/demo/status", b'{"online":true}', True)], errors.read_text()
    assert "Error" not in errors.read_text(), errors.read_text()
