"""SunSpec against the PCS simulator on loopback: discovery of the published model chain, points mapped by
model, verified writes with scale factors both ways, and a scan by pysunspec2's own client (a SunSpec client
this project did not write)."""

from __future__ import annotations

import asyncio

import pytest
import sunspec2.modbus.client as sunspec_client
import sunspec2.modbus.modbus as sunspec_modbus
from pymodbus.client import AsyncModbusTcpClient

from controller.clock import Clock
from drivers.errors import ModbusError, WriteRefused
from drivers.profile import Profile
from drivers.sunspec import SunSpecDriver, SunSpecNotFound, concrete_profile, discover, model_definition
from simulators.battery import BatteryModel, BatteryParams
from simulators.modbus_server import ModbusSimServer
from simulators.pcs import ENABLED, Pcs, PcsParams
from tests.fixtures.drivers import PcsSim, bms_profile, bms_server, pcs_profile, pcs_sim  # noqa: F401 - fixtures

MODELS = [1, 701, 704, 713, 802]
# Model lengths (L) as published by the SunSpec Alliance (the models' JSON definitions, pysunspec2 1.3.7).
PUBLISHED_LENGTHS = {1: 66, 701: 153, 704: 65, 713: 7, 802: 62}
TIMEOUT_S = 1.0


def definition_length(model_id: int) -> int:
    """L from the definition: its declared value, or the points' sizes after the two header registers
    (fixed groups, once each), as pysunspec2 computes it."""
    top = model_definition(model_id)["group"]

    def size(group: dict) -> int:
        return sum(p["size"] for p in group.get("points", [])) + sum(size(g) for g in group.get("groups", []))

    declared = next(p.get("value") for p in top["points"] if p["name"] == "L")
    return declared if declared is not None else size(top) - 2


async def run_pcs(sim: PcsSim, setpoint_w: float, seconds: float) -> None:
    """Enable WSet at `setpoint_w` (validated by the PCS's write hook, as a client's write would be, then
    stored) and step the PCS for `seconds`."""
    assert sim.pcs.on_write({"704.WSet": setpoint_w, "704.WSetEna": ENABLED}) is None
    sim.server.update({"704.WSet": setpoint_w, "704.WSetEna": ENABLED})
    for _ in range(round(seconds / 0.1)):
        sim.pcs.step(0.1)


@pytest.fixture
async def pcs_driver(pcs_sim: PcsSim):
    driver = SunSpecDriver("pcs", pcs_sim.profile, "127.0.0.1", pcs_sim.port, timeout_s=TIMEOUT_S)
    try:
        yield driver
    finally:
        await driver.close()


# --- discovery ----------------------------------------------------------------------------------------------


async def test_published_lengths_are_the_definitions():
    assert {m: definition_length(m) for m in MODELS} == PUBLISHED_LENGTHS


async def test_discovery_walks_the_published_model_chain(pcs_sim: PcsSim):
    client = AsyncModbusTcpClient("127.0.0.1", port=pcs_sim.port, timeout=TIMEOUT_S, retries=0)
    await client.connect()
    try:
        marker = await client.read_holding_registers(40000, count=2, device_id=1)
        assert bytes.fromhex("".join(f"{r:04x}" for r in marker.registers)) == b"SunS"
        smap = await discover(client, device_id=1)
        assert smap.base_address == 40000
        assert smap.ids == MODELS
        assert {m.id: m.length for m in smap.models} == PUBLISHED_LENGTHS
        # the chain is contiguous: each model starts right after the previous one's body
        address = 40002
        for m in smap.models:
            assert m.address == address
            header = await client.read_holding_registers(m.address, count=2, device_id=1)
            assert header.registers == [m.id, m.length]
            address += 2 + m.length
        end = await client.read_holding_registers(address, count=2, device_id=1)
        assert end.registers == [0xFFFF, 0]
    finally:
        client.close()


async def test_discovery_finds_a_chain_at_another_base_address():
    data = pcs_profile().model_dump()
    data["sunspec"]["base_address"] = 50000
    profile = Profile.model_validate(data)
    server = ModbusSimServer.from_profile(profile, port=0, name="pcs50000")
    Pcs(BatteryModel(BatteryParams()), server, PcsParams(), Clock())
    await server.start()
    # the driver tries 40000 first (its profile says so), gets exception 02 there, and moves on
    driver = SunSpecDriver("pcs", pcs_profile(), "127.0.0.1", server.port, timeout_s=TIMEOUT_S)
    try:
        readings = await driver.read()
        assert driver.map is not None and driver.map.base_address == 50000
        assert driver.map.ids == MODELS
        assert readings["manufacturer"].value == "Phoenyra"
    finally:
        await driver.close()
        await server.stop()


async def test_a_device_without_sunspec_is_not_found(bms_server: ModbusSimServer):  # noqa: F811
    driver = SunSpecDriver("bms", pcs_profile(), "127.0.0.1", bms_server.port, timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(SunSpecNotFound, match="no 'SunS' marker"):
            await driver.connect()
    finally:
        await driver.close()


# --- points by model ----------------------------------------------------------------------------------------


async def test_driver_maps_every_profile_point_to_the_simulators_address(pcs_sim: PcsSim, pcs_driver):
    await pcs_driver.connect()
    resolved = pcs_driver.modbus.profile
    for name, p in pcs_sim.profile.points.items():
        assert resolved.points[name].address == pcs_sim.server.layout.point(p.sunspec).address, name
    # the whole profile (five models, ~350 registers) reads in a handful of requests
    assert pcs_driver.requests_per_read <= 5


async def test_common_model_read_once_per_connection(pcs_sim: PcsSim, pcs_driver):
    """Model 1 (manufacturer, model, serial) does not change while the device runs: read on a connection's first
    read, kept after; a new connection reads it again."""
    first = await pcs_driver.read()
    n0 = pcs_driver.stats.requests
    again = await pcs_driver.read()
    per_read = pcs_driver.stats.requests - n0
    assert per_read == pcs_driver.requests_per_read
    assert again["serial"].value == first["serial"].value == "SIM-PCS-0001"
    assert again["manufacturer"].value == "Phoenyra"
    pcs_driver.modbus.connection.drop()  # a new connection: the common model is read again
    n1 = pcs_driver.stats.requests
    third = await pcs_driver.read()
    assert pcs_driver.stats.requests - n1 > per_read
    assert third["model"].value == "BESS-SIM-PCS"


async def test_driver_reads_canonical_values(pcs_sim: PcsSim, pcs_driver):
    await run_pcs(pcs_sim, 4_000_000, seconds=2.0)
    readings = await pcs_driver.read()
    values = {k: r.value for k, r in readings.items()}
    assert values["manufacturer"] == "Phoenyra" and values["model"] == "BESS-SIM-PCS"
    assert values["serial"] == "SIM-PCS-0001"
    # 701.W is int16 with W_SF = 3 (kW resolution): the driver returns MW
    assert values["power_mw"] == pytest.approx(pcs_sim.model.power_mw, abs=1e-3)
    assert values["power_mw"] == pytest.approx(4.0, abs=1e-3)
    assert values["soc_pct"] == pytest.approx(pcs_sim.model.soc_pct, abs=0.05)
    assert values["capacity_mwh"] == pytest.approx(20.0)
    assert values["setpoint_mw"] == pytest.approx(4.0)
    assert values["wset_rvrt_tms"] == 10
    assert values["frequency_hz"] == pytest.approx(50.0)
    # the scale-factor points the driver needed are not handed to the caller
    assert not any("_SF" in k for k in values)
    # every reading carries the time its request was answered
    assert all(r.ts > 0 for r in readings.values())


async def test_concrete_profile_uses_the_models_scale_factors(pcs_sim: PcsSim, pcs_driver):
    await pcs_driver.connect()
    resolved, hidden = concrete_profile(pcs_sim.profile, pcs_driver.map)
    assert resolved.points["power_mw"].scale == "701.W_SF"
    assert resolved.points["soc_pct"].scale == "713.Pct_SF"
    assert {"701.W_SF", "713.Pct_SF", "704.WSet_SF"} <= hidden


# --- writes -------------------------------------------------------------------------------------------------


async def test_write_wset_with_read_back(pcs_sim: PcsSim, pcs_driver):
    back = await pcs_driver.write("setpoint_mw", -3.25)
    assert back == pytest.approx(-3.25)
    # WSet is int32 with WSet_SF = 0: the device holds watts
    assert pcs_sim.server.get("704.WSet") == -3_250_000
    assert await pcs_driver.write("wset_ena", 1) == 1
    assert pcs_sim.server.get("704.WSetEna") == ENABLED
    assert pcs_sim.pcs.requested_mw() == pytest.approx(-3.25)


async def test_a_device_with_function_23_takes_a_verified_write_in_one_request(pcs_sim: PcsSim, pcs_driver):
    """A profile that declares read_write_multiple writes and reads back in one request (function 23, the write
    done first); without it, a write and a read. Either way the read-back is checked and a refusal is an error."""
    await pcs_driver.read()  # discovery and the scale factors, off the count
    n0 = pcs_driver.stats.requests
    assert await pcs_driver.write("setpoint_mw", 1.5) == pytest.approx(1.5)
    assert pcs_driver.stats.requests - n0 == 2
    one = SunSpecDriver(
        "pcs-fc23",
        pcs_sim.profile.model_copy(update={"read_write_multiple": True}),
        "127.0.0.1",
        pcs_sim.port,
        timeout_s=TIMEOUT_S,
    )
    try:
        await one.read()
        n0 = one.stats.requests
        assert await one.write("setpoint_mw", -2.25) == pytest.approx(-2.25)
        assert one.stats.requests - n0 == 1
        assert pcs_sim.server.get("704.WSet") == -2_250_000
        pcs_sim.pcs.p.rated_power_mw = 5.0
        with pytest.raises(ModbusError) as e:  # the device's own refusal (03) still comes back as an error
            await one.write("setpoint_mw", 6.0)
        assert e.value.code == 3
        assert pcs_sim.server.get("704.WSet") == -2_250_000
    finally:
        await one.close()


async def raw_registers(port: int, address: int, count: int) -> list[int]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=TIMEOUT_S, retries=0)
    await client.connect()
    try:
        return list((await client.read_holding_registers(address, count=count, device_id=1)).registers)
    finally:
        client.close()


async def test_scale_factors_apply_both_ways(pcs_sim: PcsSim, pcs_driver):
    # WMaxLimPct_SF = -1: 55.5 % goes on the wire as 555 and comes back as 55.5
    assert await pcs_driver.write("wmax_lim_pct", 55.5) == pytest.approx(55.5)
    assert await raw_registers(pcs_sim.port, pcs_sim.server.layout.point("704.WMaxLimPct").address, 1) == [555]
    # a device that counts WSet in kW (WSet_SF = 3): a fresh driver reads the factor and scales by it
    pcs_sim.server.set("704.WSet_SF", 3)
    other = SunSpecDriver("pcs-kw", pcs_sim.profile, "127.0.0.1", pcs_sim.port, timeout_s=TIMEOUT_S)
    try:
        assert await other.write("setpoint_mw", 2.5) == pytest.approx(2.5)
        assert await raw_registers(pcs_sim.port, pcs_sim.server.layout.point("704.WSet").address, 2) == [0, 2500]
        assert pcs_sim.server.get("704.WSet") == pytest.approx(2_500_000)
        assert (await other.read())["setpoint_mw"].value == pytest.approx(2.5)
        # and the other way: 701.W with W_SF = 3 reads 1234 kW as 1.234 MW
        pcs_sim.server.set("701.W", 1_234_000)
        assert await raw_registers(pcs_sim.port, pcs_sim.server.layout.point("701.W").address, 1) == [1234]
        assert (await other.read())["power_mw"].value == pytest.approx(1.234)
    finally:
        await other.close()


async def test_out_of_range_writes_are_refused(pcs_sim: PcsSim, pcs_driver):
    # the profile's range stops it before the wire ...
    with pytest.raises(WriteRefused):
        await pcs_driver.write("setpoint_mw", 12.0)
    with pytest.raises(WriteRefused):
        await pcs_driver.write("power_mw", 1.0)  # 701.W is a measurement
    # ... and the device refuses what the profile lets through but its ratings do not (exception 03)
    pcs_sim.pcs.p.rated_power_mw = 5.0
    with pytest.raises(ModbusError) as e:
        await pcs_driver.write("setpoint_mw", 6.0)
    assert e.value.code == 3
    assert pcs_sim.server.get("704.WSet") == 0


# --- a SunSpec client this project did not write ------------------------------------------------------------


def scan_with_pysunspec2(port: int) -> dict[int, dict[str, tuple]]:
    """pysunspec2's blocking client: scan, then read every model; {model id: {point: (raw, scaled)}}."""
    device = sunspec_client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    device.connect()
    try:
        device.scan()
        out = {}
        for mid in sorted(k for k in device.models if isinstance(k, int)):
            model = device.models[mid][0]
            model.read()
            out[mid] = {k: (v.value, v.cvalue) for k, v in model.points.items()}
        return out
    finally:
        device.disconnect()


def write_with_pysunspec2(port: int, points: dict[str, float]) -> None:
    """pysunspec2 writes 704 points (scaled values) and writes them to the device."""
    device = sunspec_client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    device.connect()
    try:
        device.scan()
        model = device.models[704][0]
        model.read()
        for name, value in points.items():
            model.points[name].cvalue = value
        model.write()
    finally:
        device.disconnect()


async def test_pysunspec2_scans_the_pcs_simulator(pcs_sim: PcsSim):
    await run_pcs(pcs_sim, -6_000_000, seconds=1.0)  # charging at 6 MW
    models = await asyncio.wait_for(asyncio.to_thread(scan_with_pysunspec2, pcs_sim.port), 20)
    assert sorted(models) == MODELS
    assert {mid: m["L"][0] for mid, m in models.items()} == PUBLISHED_LENGTHS
    assert {mid: m["ID"][0] for mid, m in models.items()} == {mid: mid for mid in MODELS}

    common = models[1]
    assert common["Mn"][1] == "Phoenyra" and common["Md"][1] == "BESS-SIM-PCS"
    assert common["SN"][1] == "SIM-PCS-0001" and common["DA"][1] == 1

    ac = models[701]
    w_raw, w = ac["W"]
    assert ac["W_SF"][0] == 3 and w == pytest.approx(w_raw * 1000)
    assert w == pytest.approx(pcs_sim.model.power_mw * 1e6, abs=500)  # half an LSB of 1 kW
    assert w == pytest.approx(-6e6, abs=500)  # SunSpec: negative = absorbing
    assert ac["Hz"][1] == pytest.approx(50.0) and ac["LLV"][1] == 690
    assert ac["St"][1] == 1 and ac["ConnSt"][1] == 1 and ac["Alrm"][1] == 0

    ctl = models[704]
    assert ctl["WSet"][1] == pytest.approx(-6e6) and ctl["WSetEna"][1] == 1
    assert ctl["WSetRvrtTms"][1] == 10 and 0 <= ctl["WSetRvrtRem"][1] <= 10
    assert ctl["WSetMod"][1] == 1 and ctl["WMaxLimPct"][1] == pytest.approx(100.0)

    storage = models[713]
    assert storage["WHRtg"][1] == pytest.approx(20e6)
    assert storage["SoC"][1] == pytest.approx(pcs_sim.model.soc_pct, abs=0.05)
    assert 0 < storage["WHAvail"][1] <= storage["WHRtg"][1]

    battery = models[802]
    assert battery["SoC"][1] == pytest.approx(storage["SoC"][1])
    assert battery["SoH"][1] == pytest.approx(pcs_sim.model.p.soh_pct)
    assert battery["WHRtg"][1] == pytest.approx(20e6)
    assert battery["ChaSt"][1] == 4  # charging
    assert battery["State"][1] == 3  # connected
    assert 500 < battery["V"][1] < 1500
    assert battery["CellVMin"][1] <= battery["CellVAvg"][1] <= battery["CellVMax"][1]


async def test_pysunspec2_writes_are_followed_and_range_checked(pcs_sim: PcsSim):
    await asyncio.wait_for(
        asyncio.to_thread(write_with_pysunspec2, pcs_sim.port, {"WSet": 2_000_000, "WSetEna": 1}), 20
    )
    assert pcs_sim.pcs.requested_mw() == pytest.approx(2.0)
    for _ in range(20):
        pcs_sim.pcs.step(0.1)
    assert pcs_sim.model.power_mw == pytest.approx(2.0)
    # 20 MW is beyond the 10 MW rating: the device answers exception 03 and keeps 2 MW
    with pytest.raises(sunspec_modbus.ModbusClientException, match="Modbus exception: 3$"):
        await asyncio.wait_for(asyncio.to_thread(write_with_pysunspec2, pcs_sim.port, {"WSet": 20_000_000}), 20)
    assert pcs_sim.server.get("704.WSet") == 2_000_000
