"""The plant simulator as a device: the PCS ramps to the written setpoint, refuses bad writes with Modbus
exceptions, reverts to 0 MW when its reversion timeout passes, stops on a BMS fault; each injected fault on
the BMS and PCS faces behaves as specified and clears; the control app changes the plant; `bess-edge
simulate` serves the demo plant. Real servers on loopback, real drivers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from controller.clock import Clock
from controller.config import SiteConfig, load_config
from drivers.errors import DeviceError, DeviceTimeout, Disconnected, ModbusError
from drivers.modbus import ModbusDriver
from drivers.sunspec import SunSpecDriver
from simulators.battery import ALARM_INJECTED
from simulators.pcs import ALRM_MANUFACTURER, INVST_FAULT, STA_WARNING, STATE_FAULT
from simulators.plant import Plant
from tests.conftest import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODBUS = ROOT / "config" / "demo-single-modbus.yaml"
DEMO = ROOT / "config" / "demo-single.yaml"
TIMEOUT_S = 0.3
MANUAL = 3600.0  # tick period that leaves stepping to the test


def demo_config(**simulator: Any) -> SiteConfig:
    cfg = load_config(DEMO_MODBUS)
    for k, v in simulator.items():
        setattr(cfg.simulator, k, v)
    return cfg


@contextlib.asynccontextmanager
async def running_plant(config: SiteConfig | None = None, **overrides: Any) -> AsyncIterator[Plant]:
    """The demo plant (Modbus BMS + SunSpec PCS) on free loopback ports, always stopped."""
    kwargs: dict[str, Any] = dict(bms_modbus_port=0, pcs_modbus_port=0, bms_opcua_port=None, control_port=None)
    kwargs.update(overrides)
    plant = Plant.from_config(config or demo_config(), **kwargs)
    await plant.start()
    try:
        yield plant
    finally:
        await plant.stop()


@contextlib.asynccontextmanager
async def drivers_for(plant: Plant) -> AsyncIterator[tuple[ModbusDriver, SunSpecDriver]]:
    bms = ModbusDriver("bms", plant.bms_profile, "127.0.0.1", plant.ports["bms_modbus"], timeout_s=TIMEOUT_S)
    pcs = SunSpecDriver("pcs", plant.pcs_profile, "127.0.0.1", plant.ports["pcs"], timeout_s=TIMEOUT_S)
    try:
        await bms.connect()
        await pcs.connect()
        yield bms, pcs
    finally:
        await bms.close()
        await pcs.close()


# --- PCS behaviour ------------------------------------------------------------------------------------------


async def test_pcs_follows_the_setpoint_with_its_configured_ramp():
    async with running_plant(demo_config(ramp_mw_per_s=2.0), tick_s=MANUAL) as plant, drivers_for(plant) as (_, pcs):
        assert (await pcs.read())["power_mw"].value == 0
        await pcs.write("setpoint_mw", 6.0)
        await pcs.write("wset_ena", 1)
        seen = []
        for _ in range(8):  # 2 MW/s: 1 MW per half second, 6 MW after 3 s, then flat
            plant.step(0.5)
            seen.append((await pcs.read())["power_mw"].value)
        assert seen == pytest.approx([1, 2, 3, 4, 5, 6, 6, 6], abs=1e-3)
        await pcs.write("setpoint_mw", -4.0)  # 10 MW down at 2 MW/s: 5 s, through zero into charging
        seen = []
        for _ in range(6):
            plant.step(1.0)
            seen.append((await pcs.read())["power_mw"].value)
        assert seen == pytest.approx([4, 2, 0, -2, -4, -4], abs=1e-3)
        assert plant.model.power_mw == pytest.approx(-4.0)


async def raw_client(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
    assert await client.connect()
    return client


async def test_pcs_refuses_bad_writes_with_modbus_exceptions():
    async with running_plant() as plant:
        layout = plant.pcs_server.layout
        client = await raw_client(plant.ports["pcs"])
        try:
            wset = layout.point("704.WSet").address
            over = 20_000_000  # 20 MW on a 10 MW PCS
            rr = await client.write_registers(wset, [over >> 16, over & 0xFFFF], device_id=1)
            assert rr.isError() and rr.exception_code == 3
            rr = await client.write_register(layout.point("704.WSetEna").address, 7, device_id=1)  # not an enum value
            assert rr.isError() and rr.exception_code == 3
            rr = await client.write_register(layout.point("701.W").address, 1, device_id=1)  # a measurement
            assert rr.isError() and rr.exception_code == 2
            rr = await client.write_register(30000, 1, device_id=1)  # nothing there
            assert rr.isError() and rr.exception_code == 2
            rr = await client.read_holding_registers(1000, count=2, device_id=1)
            assert rr.isError() and rr.exception_code == 2
            rr = await client.write_registers(wset, [0, 5_000], device_id=1)  # 5 kW is fine
            assert not rr.isError()
            assert plant.pcs_server.get("704.WSet") == 5_000
        finally:
            client.close()
        client = await raw_client(plant.ports["bms_modbus"])
        try:
            rr = await client.write_register(50, 1, device_id=1)  # the BMS has no holding register 50
            assert rr.isError() and rr.exception_code == 2
            rr = await client.write_register(100, 42, device_id=1)  # its heartbeat is writable
            assert not rr.isError()
        finally:
            client.close()


async def test_pcs_reverts_to_zero_when_the_reversion_timeout_passes():
    # clock x20: the 10 s reversion time is 0.5 real seconds, ten heartbeat periods (robust on a busy machine)
    async with running_plant(clock=Clock(speed=20), tick_s=0.01) as plant, drivers_for(plant) as (_, pcs):
        assert await pcs.write("wset_rvrt_tms", 10) == 10
        await pcs.write("setpoint_mw", 3.0)
        await pcs.write("wset_ena", 1)
        await eventually(pcs.read, lambda r: r["power_mw"].value == pytest.approx(3.0))
        # a heartbeat every 0.05 real s (1 clock s) keeps the setpoint for 24 clock s, 2.4 timeouts' worth
        for hb in range(1, 25):  # counted, not a wall-time window
            await pcs.write("heartbeat", hb)
            await asyncio.sleep(0.05)
        readings = await pcs.read()
        assert readings["power_mw"].value == pytest.approx(3.0) and plant.pcs.reversions == 0
        assert 0 < readings["wset_rvrt_rem_s"].value <= 10
        # silence: WSetRvrtTms passes, WSet falls back to WSetRvrt (0 W) and the PCS ramps to 0 MW
        readings = await eventually(pcs.read, lambda r: r["power_mw"].value == 0, within_s=2.0)
        assert readings["setpoint_mw"].value == 0 and readings["wset_rvrt_rem_s"].value == 0
        assert plant.pcs.reversions == 1 and plant.model.power_mw == 0
        # a new setpoint takes over again (and rearms the timer)
        await pcs.write("setpoint_mw", 1.0)
        await eventually(pcs.read, lambda r: r["power_mw"].value == pytest.approx(1.0))


async def test_pcs_stops_on_a_bms_fault_and_resumes_after_it_clears():
    async with running_plant(tick_s=MANUAL) as plant, drivers_for(plant) as (bms, pcs):
        await pcs.write("setpoint_mw", 5.0)
        await pcs.write("wset_ena", 1)
        plant.step(1.0)
        assert (await pcs.read())["power_mw"].value == pytest.approx(5.0)
        plant.faults["bms_modbus"].fault_bits = 1 << 1  # insulation fault
        plant.step(0.05)  # a trip is not ramped
        b, p = await bms.read(), await pcs.read()
        assert b["fault_bits"].value == 2 and b["allowed_charge_mw"].value == 0
        assert b["allowed_discharge_mw"].value == 0 and b["contactor_closed"].value == 0
        assert p["power_mw"].value == 0 and p["inverter_state"].value == INVST_FAULT
        assert p["battery_state"].value == STATE_FAULT and p["connection_state"].value == 0
        plant.step(5.0)
        assert (await pcs.read())["power_mw"].value == 0  # stays stopped while the fault lasts
        plant.faults["bms_modbus"].clear()
        plant.step(0.2)  # resumes, ramped (10 MW/s)
        assert (await pcs.read())["power_mw"].value == pytest.approx(2.0)
        assert (await bms.read())["contactor_closed"].value == 1


# --- fault injection ----------------------------------------------------------------------------------------

FACES = ("bms_modbus", "pcs")


async def read_face(plant: Plant, drivers: tuple[ModbusDriver, SunSpecDriver], face: str):
    return await (drivers[0] if face == "bms_modbus" else drivers[1]).read()


async def recovers(plant: Plant, drivers, face: str) -> None:
    """After a fault clears, the face answers again by itself (bounded: drivers back off up to 10 s)."""

    async def attempt():
        try:
            return await read_face(plant, drivers, face)
        except DeviceError:
            return None

    await eventually(attempt, lambda r: r is not None, within_s=3.0, every_s=0.05)


@pytest.mark.parametrize("face", FACES)
async def test_silent_face_times_out_then_recovers(face: str):
    async with running_plant() as plant, drivers_for(plant) as drivers:
        server = plant.bms if face == "bms_modbus" else plant.pcs_server
        plant.faults[face].silent = True
        on_wire = server.requests
        # the driver's own timer fails the read (bounded here: a read that never gives up fails the wait)
        with pytest.raises(DeviceTimeout, match=f"no answer within {TIMEOUT_S} s"):
            await asyncio.wait_for(read_face(plant, drivers, face), 10)
        assert server.requests - on_wire == 1, "the face took the request and never answered it"
        other = "pcs" if face == "bms_modbus" else "bms_modbus"
        await read_face(plant, drivers, other)  # only the faulted face is silent
        plant.faults[face].clear()
        await recovers(plant, drivers, face)


@pytest.mark.parametrize("face", FACES)
async def test_late_face_answers_late_or_times_out(face: str):
    async with running_plant() as plant, drivers_for(plant) as drivers:
        driver = drivers[0] if face == "bms_modbus" else drivers[1]
        server = plant.bms if face == "bms_modbus" else plant.pcs_server
        await read_face(plant, drivers, face)  # the first read on a connection also reads the static points (once)
        plant.faults[face].delay_s = 0.1  # late but within the timeout: answered
        on_wire, errors = server.requests, driver.stats.errors
        t0 = time.perf_counter()
        await read_face(plant, drivers, face)
        # every request of the read was held back by the delay (a lower bound: a loaded machine only adds to it)
        assert time.perf_counter() - t0 >= 0.1 * driver.requests_per_read
        assert server.requests - on_wire == driver.requests_per_read and driver.stats.errors == errors
        plant.faults[face].delay_s = TIMEOUT_S + 0.2  # later than the timeout: DeviceTimeout
        with pytest.raises(DeviceTimeout):
            await read_face(plant, drivers, face)
        plant.faults[face].clear()
        await recovers(plant, drivers, face)


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("code", [4, 6])
async def test_exception_face_answers_the_code_then_recovers(face: str, code: int):
    async with running_plant() as plant, drivers_for(plant) as drivers:
        plant.faults[face].exception_code = code
        with pytest.raises(ModbusError) as e:
            await read_face(plant, drivers, face)
        assert e.value.code == code
        plant.faults[face].clear()
        await read_face(plant, drivers, face)  # no reconnect needed: at once


@pytest.mark.parametrize("face", FACES)
async def test_drop_face_disconnects_then_recovers(face: str):
    async with running_plant() as plant, drivers_for(plant) as drivers:
        plant.faults[face].drop = True

        # the open connection is cut too (the drop watch looks every 50 ms), and new ones are refused
        async def failure():
            try:
                await read_face(plant, drivers, face)
            except DeviceError as e:
                return e
            return None

        err = await eventually(failure, lambda e: e is not None, within_s=3.0, every_s=0.05)
        assert isinstance(err, Disconnected), repr(err)
        with pytest.raises(Disconnected):
            await read_face(plant, drivers, face)
        plant.faults[face].clear()
        await recovers(plant, drivers, face)


@pytest.mark.parametrize("face", FACES)
async def test_alarm_on_any_face_shows_on_every_face_then_clears(face: str):
    async with running_plant(tick_s=MANUAL) as plant, drivers_for(plant) as (bms, pcs):
        plant.faults[face].alarm_bits = ALARM_INJECTED
        plant.step(0.05)
        b, p = await bms.read(), await pcs.read()
        assert b["alarm_bits"].value & ALARM_INJECTED
        assert p["storage_status"].value == STA_WARNING
        if face == "pcs":  # the PCS's own alarm is a manufacturer alarm in 701.Alrm
            assert p["alarm_bits"].value & ALRM_MANUFACTURER
        assert b["fault_bits"].value == 0 and p["power_mw"].value == 0  # an alarm is not a trip
        plant.faults[face].clear()
        plant.step(0.05)
        b, p = await bms.read(), await pcs.read()
        assert b["alarm_bits"].value == 0 and p["alarm_bits"].value == 0 and p["storage_status"].value == 0


# --- control app --------------------------------------------------------------------------------------------


async def test_control_app_changes_the_plant():
    async with (
        running_plant(control_port=free_port()) as plant,
        drivers_for(plant) as (bms, pcs),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{plant.ports['control']}", timeout=5) as http,
    ):
        state = (await http.get("/sim/state")).json()
        assert state["soc_pct"] == pytest.approx(50, abs=0.1) and set(state["faults"]) >= set(FACES)

        r = await http.post("/sim/state", json={"soc_pct": 80, "temperature_c": 40})
        assert r.status_code == 200 and r.json()["soc_pct"] == pytest.approx(80)
        await eventually(
            bms.read,
            lambda r: (
                r["soc_pct"].value == pytest.approx(80, abs=0.05)
                and r["temperature_max_c"].value == pytest.approx(40, abs=0.2)
            ),
        )
        await eventually(pcs.read, lambda r: r["soc_pct"].value == pytest.approx(80, abs=0.1))
        assert (await http.post("/sim/state", json={"soc_pct": 150})).status_code == 422

        r = await http.post("/sim/faults/pcs", json={"exception_code": 4})
        assert r.status_code == 200 and r.json()["faults"]["pcs"]["exception_code"] == 4
        with pytest.raises(ModbusError):
            await pcs.read()
        await http.post("/sim/faults/bms_modbus", json={"alarm_bits": ALARM_INJECTED})
        await eventually(bms.read, lambda r: r["alarm_bits"].value & ALARM_INJECTED)
        assert (await http.post("/sim/faults/nope", json={"silent": True})).status_code == 404
        assert (await http.post("/sim/faults/pcs", json={"bogus": 1})).status_code == 422

        r = await http.delete("/sim/faults")
        assert r.status_code == 200 and not any(f["exception_code"] for f in r.json()["faults"].values())
        await pcs.read()
        await eventually(bms.read, lambda r: r["alarm_bits"].value == 0)


# --- bess-edge simulate -------------------------------------------------------------------------------------


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def simulate_config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """config/demo-single.yaml when its fixed ports are free, else a copy (with the profiles) on free ports."""
    data = yaml.safe_load(DEMO.read_text())
    sim = data["simulator"]
    keys = ("bms_modbus_port", "pcs_modbus_port", "bms_opcua_port", "control_port")
    if not any(port_busy(sim[k]) for k in keys):
        return DEMO, {k: sim[k] for k in keys}
    for k in keys:
        sim[k] = free_port()
    shutil.copytree(DEMO.parent / "profiles", tmp_path / "profiles")
    path = tmp_path / "demo-single.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, {k: sim[k] for k in keys}


async def test_bess_edge_simulate_serves_the_demo_ports(tmp_path: Path):
    config, ports = simulate_config(tmp_path)
    exe = Path(sys.executable).parent / "bess-edge"
    proc = subprocess.Popen(
        [str(exe), "simulate", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        for _ in range(300):
            if all(port_busy(p) for p in ports.values()) or proc.poll() is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert all(port_busy(p) for p in ports.values()), ports
        pcs = SunSpecDriver(
            "pcs",
            load_config(config).load_profile(load_config(config).devices["pcs"]),
            "127.0.0.1",
            ports["pcs_modbus_port"],
            timeout_s=1.0,
        )
        try:
            readings = await pcs.read()
            assert readings["manufacturer"].value == "Phoenyra" and pcs.map.ids == [1, 701, 704, 713, 802]
            assert readings["soc_pct"].value == pytest.approx(50, abs=0.5)
        finally:
            await pcs.close()
        bms = ModbusDriver(
            "bms",
            load_config(DEMO_MODBUS).load_profile(load_config(DEMO_MODBUS).devices["bms"]),
            "127.0.0.1",
            ports["bms_modbus_port"],
            timeout_s=1.0,
        )
        try:
            assert (await bms.read())["soc_pct"].value == pytest.approx(50, abs=0.5)
        finally:
            await bms.close()
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"http://127.0.0.1:{ports['control_port']}/sim/state")
            assert r.status_code == 200 and r.json()["soc_pct"] == pytest.approx(50, abs=0.5)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
            pytest.fail(f"bess-edge simulate did not stop within 10 s of SIGTERM:\n{out}")
    assert proc.returncode == 0, out
    assert "plant simulator: stopping" in out
    for name in ("BMS Modbus TCP", "PCS Modbus TCP (SunSpec)", "BMS OPC UA", "control HTTP"):
        assert name in out
    assert not any(port_busy(p) for p in ports.values())
