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
    # the demo's two orders through the site API: a sell and its buy-back, matched on the exchange, and the
    # trades back over MQTT into the schedule (the demo says it either way, so these reads end)
    said: list[str] = []
    while len(said) < 2:
        line = proc.stdout.readline()
        assert line, "demo output ended"
        if "demo order" in line:
            said.append(line)
            assert "demo order: " in line and "->" in line, line  # placed, not refused or skipped
    filled = {("sell" if "sell" in x else "buy"): "(2 MW filled)" in x for x in said}
    want = {2.0 if side == "sell" else -2.0 for side, ok in filled.items() if ok}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))  # near midnight too
        positions = {p["position_mw"] for p in get_json(f"/api/schedule?from={hour_ago}")["periods"]}
        if want <= positions:
            break
        time.sleep(0.5)
    assert want <= positions, (said, positions)
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
