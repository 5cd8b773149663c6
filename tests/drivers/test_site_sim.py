"""The N-unit plant simulator (simulators/site.py) from config/demo.yaml (the two-unit demo) on free loopback ports, read
through the real drivers: two units on their own ports with their own batteries, two units behind one gateway
port (unit ids), per-unit faults and state through the control API, the POI meter measuring the units' sum with
frequency steps and ramps and an aux load injected through the control API, and `bess-edge simulate` serving it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.clock import Clock
from controller.config import SiteConfig, load_config
from drivers.errors import DeviceError, DeviceTimeout, ModbusError
from drivers.modbus import ModbusDriver
from drivers.sunspec import SunSpecDriver
from simulators.site import SitePlant
from tests.conftest import eventually, free_port
from tests.fixtures.site_sim import MANUAL, two_unit_config

SETTLES = {"within_s": 5.0, "every_s": 0.05}  # what a control change or a reconnect takes to show in reads

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
TIMEOUT_S = 0.5


@asynccontextmanager
async def running(cfg: SiteConfig, **kwargs: Any) -> AsyncIterator[SitePlant]:
    site = SitePlant(cfg, **kwargs)
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


@asynccontextmanager
async def drivers_for(cfg: SiteConfig, *names: str) -> AsyncIterator[dict[str, Any]]:
    out: dict[str, Any] = {}
    for name in names:
        dev = cfg.devices[name]
        cls = SunSpecDriver if dev.protocol == "sunspec" else ModbusDriver
        out[name] = cls(
            name, cfg.load_profile(dev), dev.host, dev.port, unit_id=dev.unit_id, timeout_s=TIMEOUT_S, rating_mw=10
        )
    try:
        yield out
    finally:
        for d in out.values():
            await d.close()


def v(readings) -> dict:
    return {k: r.value for k, r in readings.items()}


async def test_two_units_on_their_own_ports_with_their_own_batteries(tmp_path):
    cfg = load_config(two_unit_config(tmp_path))
    async with running(cfg, tick_s=MANUAL) as site, drivers_for(cfg, "pcs1", "pcs2", "bms2", "poi") as d:
        assert set(site.ports) >= {"u1.pcs", "u1.bms_opcua", "u1.bms_modbus", "u2.pcs", "u2.bms_modbus", "meter"}
        p1, p2, b2 = v(await d["pcs1"].read()), v(await d["pcs2"].read()), v(await d["bms2"].read())
        assert p1["soc_pct"] == pytest.approx(60, abs=0.1) and p2["soc_pct"] == pytest.approx(40, abs=0.1)
        assert b2["soc_pct"] == pytest.approx(40, abs=0.1)
        assert p1["capacity_mwh"] == pytest.approx(10) and p1["max_discharge_mw"] == pytest.approx(5)
        assert p1["serial"] == "SIM-PCS-u1" and p2["serial"] == "SIM-PCS-u2"
        # each PCS drives its own battery; the meter sees the sum minus aux (20 kW) and 1 % losses
        for name, mw in (("pcs1", 4.0), ("pcs2", -1.0)):
            await d[name].write("setpoint_mw", mw)
            await d[name].write("wset_ena", 1)
        site.step(1.0)
        assert site.units["u1"].model.power_mw == pytest.approx(4.0)
        assert site.units["u2"].model.power_mw == pytest.approx(-1.0)
        poi = v(await d["poi"].read())
        assert poi["power_mw"] == pytest.approx(3.0 - 0.02 - 0.03, abs=1e-3)
        site.step(60.0)
        assert v(await d["pcs1"].read())["soc_pct"] < 60 < 100 and v(await d["bms2"].read())["soc_pct"] > 40


async def test_opcua_bms_of_unit_one_serves_its_own_battery(tmp_path):
    from drivers.opcua import OpcUaDriver

    cfg = load_config(two_unit_config(tmp_path))
    async with running(cfg, tick_s=MANUAL) as site:
        dev = cfg.devices["bms1"]
        bms = OpcUaDriver("bms1", cfg.load_profile(dev), dev.endpoint, timeout_s=2.0, subscribe=False)
        try:
            assert v(await bms.read())["soc_pct"] == pytest.approx(60, abs=0.1)
        finally:
            await bms.close()
        assert site.ports["u1.bms_opcua"] == dev.port


async def test_per_unit_faults_state_and_meter_through_the_control_api(tmp_path):
    cfg = load_config(two_unit_config(tmp_path))
    port = cfg.simulator.control_port
    async with (
        running(cfg, control_port=port, clock=Clock()) as site,
        drivers_for(cfg, "pcs1", "pcs2", "bms2", "poi") as d,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http,
    ):
        state = (await http.get("/sim/state")).json()
        assert set(state["units"]) == {"u1", "u2"} and state["soc_pct"] == pytest.approx(50, abs=0.1)
        assert {"u1.pcs", "u2.pcs", "u2.bms_modbus", "meter"} <= set(state["faults"])
        # unit 2's BMS silent: it times out, unit 1 and the meter answer
        assert (await http.post("/sim/faults/u2.bms_modbus", json={"silent": True})).status_code == 200
        with pytest.raises(DeviceTimeout):
            await d["bms2"].read()
        await d["pcs1"].read() and await d["pcs2"].read() and await d["poi"].read()
        assert (await http.post("/sim/faults/u1.pcs", json={"exception_code": 4})).status_code == 200
        with pytest.raises(ModbusError):
            await d["pcs1"].read()
        await d["pcs2"].read()
        assert (await http.post("/sim/faults/u3.pcs", json={"silent": True})).status_code == 404
        await http.delete("/sim/faults")
        await eventually(lambda: _attempt(d["bms2"]), lambda r: r is not None, **SETTLES)
        # state of one unit
        r = await http.post("/sim/state", json={"unit": "u2", "soc_pct": 80})
        assert r.status_code == 200 and r.json()["units"]["u2"]["soc_pct"] == pytest.approx(80)
        assert r.json()["units"]["u1"]["soc_pct"] == pytest.approx(60, abs=0.1)
        await eventually(d["pcs2"].read, lambda r: r["soc_pct"].value == pytest.approx(80, abs=0.1), **SETTLES)
        assert (await http.post("/sim/state", json={"unit": "u9", "soc_pct": 80})).status_code == 404
        # the meter: no wander, a step, a ramp, an aux load
        await http.post("/sim/frequency", json={"wander": False, "hz": 50.0})
        r = await http.post("/sim/frequency", json={"step_hz": -0.3})
        assert r.status_code == 200 and r.json()["frequency_hz"] == pytest.approx(49.7)
        await eventually(d["poi"].read, lambda r: r["frequency_hz"].value == pytest.approx(49.7), **SETTLES)
        await http.post("/sim/frequency", json={"ramp_to_hz": 50.1, "ramp_s": 0.5})
        await eventually(d["poi"].read, lambda r: r["frequency_hz"].value == pytest.approx(50.1), **SETTLES)
        assert (await http.post("/sim/frequency", json={"ramp_to_hz": 50.1})).status_code == 422
        assert (await http.post("/sim/frequency", json={"hz": 80})).status_code == 422
        assert (await http.post("/sim/aux", json={"aux_load_mw": 0.4})).json()["aux_load_mw"] == 0.4
        await eventually(d["poi"].read, lambda r: r["power_mw"].value == pytest.approx(-0.4, abs=1e-3), **SETTLES)
        assert site.meter.poi_mw == pytest.approx(-0.4)
        assert (await http.post("/sim/faults/meter", json={"silent": True})).status_code == 200
        with pytest.raises(DeviceTimeout):
            await d["poi"].read()


async def _attempt(driver):
    try:
        return await driver.read()
    except DeviceError:
        return None


async def test_two_units_behind_one_gateway_port(tmp_path):
    cfg = load_config(two_unit_config(tmp_path, gateway=True))
    async with running(cfg, tick_s=MANUAL) as site, drivers_for(cfg, "bms1", "bms2", "pcs1", "pcs2") as d:
        ports = site.ports
        assert ports["u1.bms_modbus"] == ports["u2.bms_modbus"] and ports["u1.pcs"] == ports["u2.pcs"]
        assert v(await d["bms1"].read())["soc_pct"] == pytest.approx(60, abs=0.1)
        assert v(await d["bms2"].read())["soc_pct"] == pytest.approx(40, abs=0.1)
        assert v(await d["pcs2"].read())["serial"] == "SIM-PCS-u2"
        # unit 2 behind the gateway silent: its requests time out; unit 1's, on the same port, are answered
        site.faults["u2.pcs"].silent = True
        with pytest.raises(DeviceTimeout):
            await d["pcs2"].read()
        assert v(await d["pcs1"].read())["serial"] == "SIM-PCS-u1"
        # a unit the gateway lost (drop): exception 0A for it, the shared connection stays up for the other
        site.faults["u2.pcs"].clear()
        site.faults["u2.bms_modbus"].drop = True
        with pytest.raises(ModbusError) as e:
            await d["bms2"].read()
        assert e.value.code == 0x0A
        await d["bms1"].read()
        # a unit id nobody answers for behind the gateway: 0B
        dev = cfg.devices["bms1"]
        stranger = ModbusDriver("u9", cfg.load_profile(dev), dev.host, dev.port, unit_id=9, timeout_s=TIMEOUT_S)
        try:
            with pytest.raises(ModbusError) as e:
                await stranger.read()
            assert e.value.code == 0x0B
        finally:
            await stranger.close()


async def test_a_one_unit_file_with_a_meter_keeps_its_faces_and_adds_the_meter(tmp_path):
    raw = yaml.safe_load((CONFIG / "demo-single-modbus.yaml").read_text())
    for dev in raw["devices"].values():
        dev["profile"] = str(CONFIG / dev["profile"])
    sim = raw["simulator"]
    sim.update(bms_modbus_port=free_port(), pcs_modbus_port=free_port(), bms_opcua_port=None, control_port=None)
    raw["devices"]["bms"]["port"], raw["devices"]["pcs"]["port"] = sim["bms_modbus_port"], sim["pcs_modbus_port"]
    raw["devices"]["poi"] = {
        "role": "meter",
        "protocol": "sunspec",
        "port": free_port(),
        "profile": str(CONFIG / "profiles" / "sunspec-meter.yaml"),
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    async with running(cfg, tick_s=MANUAL) as site, drivers_for(cfg, "pcs", "poi") as d:
        assert set(site.ports) == {"bms_modbus", "pcs", "meter"}
        assert set(site.faults) == {"bms_modbus", "pcs", "bms_opcua", "meter"}
        await d["pcs"].write("setpoint_mw", 2.0)
        await d["pcs"].write("wset_ena", 1)
        site.step(1.0)
        assert v(await d["poi"].read())["power_mw"] == pytest.approx(2.0 - 0.02 - 0.02, abs=1e-3)


async def test_bess_edge_simulate_serves_a_two_unit_plant(tmp_path):
    path = two_unit_config(tmp_path)
    cfg = load_config(path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "simulate", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with drivers_for(cfg, "pcs2", "poi") as d:
            readings = await eventually(lambda: _attempt(d["poi"]), lambda r: r is not None, within_s=30.0, every_s=0.1)
            assert readings["frequency_hz"].value == pytest.approx(50, abs=0.2)
            assert v(await d["pcs2"].read())["soc_pct"] == pytest.approx(40, abs=0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
    assert proc.returncode == 0, out
    for text in (
        "unit u1 10 MWh / 5 MW",
        "unit u2 10 MWh / 5 MW",
        "u2 PCS Modbus TCP (SunSpec)",
        "u1 BMS OPC UA",
        "POI meter Modbus TCP",
        "control HTTP",
        "plant simulator: stopping",
    ):
        assert text in out, out
