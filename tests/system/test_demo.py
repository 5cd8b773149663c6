"""`bess-edge demo` as a user runs it: it starts everything on DESIGN.md's fixed ports, the controller runs
the plant (the two-unit demo, and the one-unit plant with --config config/demo-single.yaml), and Ctrl-C stops every
process on its SIGTERM (none needs killing) with the ports freed."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.fixtures.demo import ALL_PORTS, PORTS, ROOT, TWO_UNIT_PORTS, port_open, running_demo

pytestmark = pytest.mark.timeout(240)


def get_json(path: str, key: str = "demo"):
    req = urllib.request.Request(f"http://127.0.0.1:5000{path}", headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def post_json(path: str, body: dict, key: str = "demo"):
    req = urllib.request.Request(
        f"http://127.0.0.1:5000{path}",
        data=json.dumps(body).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def wait_status(cond, timeout_s: float = 30) -> dict:
    """/api/bess-status once `cond(status)` holds (bounded; the last status is returned either way)."""
    deadline = time.monotonic() + timeout_s
    status = get_json("/api/bess-status")
    while not cond(status) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = get_json("/api/bess-status")
    return status


def auto_start(period: dict) -> float:
    """A plan period's start, Unix seconds."""
    from controller.clock import parse_iso

    return parse_iso(period["period_start"])


@pytest.fixture
def demo(tmp_path, request):
    """`bess-edge demo` (with `--config` when the test names one), up to its 'Press Ctrl-C' line; stopped with its
    own orderly stop when the test did not stop it."""
    config = getattr(request, "param", None)
    with running_demo(tmp_path, *(["--config", str(ROOT / config)] if config else [])) as demo:
        yield demo


def check_auto_trading(proc) -> None:
    """The site trades on its own: the auto-trader's plan (the demo says it), and its orders through the site's own
    order desk to the exchange wherever the plan needs a trade in the next hours."""
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


def stop_cleanly(proc) -> None:
    proc.send_signal(signal.SIGINT)
    # bounded wait: the demo gives its processes 8 s after SIGTERM, then kills what is left and says so
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert "stopped: all demo processes ended" in rest
    assert "did not stop" not in rest, f"a demo process had to be killed:\n{rest}"
    still = [n for n, p in ALL_PORTS.items() if port_open(p)]
    assert not still, f"ports still open after stop: {still}"


def test_demo_serves_every_port_runs_both_units_and_the_poi_and_stops_cleanly(demo):
    """The two-unit demo (config/demo.yaml): both units online at their different SoCs, the POI meter read, a
    manual setpoint through the API shared by both units, the auto-trader at work, a clean stop."""
    proc, lines = demo
    text = "".join(lines)
    assert "http://127.0.0.1:5000/" in text and "API key: demo" in text
    assert "unit u1" in text and "unit u2" in text and "POI meter" in text and ":1512" in text and ":1513" in text
    for name, port in ALL_PORTS.items():
        assert port_open(port), f"{name} port {port} is not open"
    status = wait_status(
        lambda s: s["status"] == "online" and len(s["units"]) == 2 and all(u["available"] for u in s["units"])
    )
    assert status["status"] == "online", status
    units = {u["unit"]: u for u in status["units"]}
    assert set(units) == {"u1", "u2"} and all(u["available"] for u in units.values()), status["units"]
    assert units["u1"]["soc_pct"] > units["u2"]["soc_pct"] + 10, units  # started at 60 and 40 %
    assert 0 < status["soc_pct"] < 100 and status["temperature_c"] is not None
    poi = wait_status(lambda s: s["poi"] is not None and s["poi"]["power_mw"] is not None)["poi"]
    assert poi is not None and poi["power_mw"] is not None and 49 < poi["frequency_hz"] < 51, poi
    md = get_json("/api/market-data")
    assert {"mark", "ema", "vwap", "series"} <= set(md)
    check_auto_trading(proc)
    # 4 MW to discharge, by hand: the allocation shares it, the fuller unit 1 taking more
    post_json("/api/mode", {"mode": "manual", "setpoint_mw": 4.0, "expires_s": 120})
    status = wait_status(lambda s: abs(sum(u["setpoint_mw"] or 0 for u in s["units"]) - 4.0) < 0.01)
    shares = {u["unit"]: u["setpoint_mw"] for u in status["units"]}
    assert abs(sum(shares.values()) - 4.0) < 0.01 and shares["u1"] > shares["u2"] > 0, status
    post_json("/api/mode", {"mode": "auto"})
    stop_cleanly(proc)


@pytest.mark.parametrize("demo", ["config/demo-single.yaml"], indirect=True)
def test_demo_single_runs_the_one_unit_plant(demo):
    """`bess-edge demo --config config/demo-single.yaml`: the one-unit plant on its ports, no meter; the demo says
    at once that this site file does not trade on its own."""
    proc, lines = demo
    text = "".join(lines)
    assert "BMS simulator" in text and "unit u2" not in text and "POI meter" not in text
    for name, port in PORTS.items():
        assert port_open(port), f"{name} port {port} is not open"
    assert not any(port_open(p) for p in TWO_UNIT_PORTS.values())
    status = wait_status(lambda s: s["status"] == "online")
    assert status["status"] == "online", status
    assert [u["unit"] for u in status["units"]] == ["u1"] and status["poi"] is None
    assert 0 < status["soc_pct"] < 100 and status["temperature_c"] is not None
    said = proc.stdout.readline()
    assert "auto-trading   off" in said, said
    stop_cleanly(proc)


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
