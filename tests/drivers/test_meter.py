"""The POI meter: the SunSpec meter simulator (models 1 + 203) read through the real SunSpec driver with the
shipped profile (signs, scale factors, plausible frequency), scanned by pysunspec2's own client, a meter that
carries model 201/204 instead of 203, the generic (plain Modbus) meter profile, and the grid frequency's
wander, steps and ramps as the driver sees them."""

from __future__ import annotations

import asyncio
import statistics

import pytest
import sunspec2.modbus.client as sunspec_client

from drivers.modbus import ModbusDriver
from drivers.profile import Profile, load_profile
from drivers.sunspec import SunSpecDriver
from simulators.meter import GridFrequency, GridParams, Meter, MeterParams
from simulators.modbus_server import ModbusSimServer
from tests.fixtures.drivers import PROFILES, MeterSim, meter_profile, meter_sim  # noqa: F401 - fixtures

TIMEOUT_S = 1.0


@pytest.fixture
async def meter_driver(meter_sim: MeterSim):
    driver = SunSpecDriver("poi", meter_sim.profile, "127.0.0.1", meter_sim.port, timeout_s=TIMEOUT_S, rating_mw=10)
    try:
        yield driver
    finally:
        await driver.close()


def values(readings) -> dict:
    return {k: r.value for k, r in readings.items()}


async def test_driver_reads_the_meter_in_our_units_and_signs(meter_sim: MeterSim, meter_driver):
    v = values(await meter_driver.read())
    assert meter_driver.map.ids == [1, 203]
    assert v["manufacturer"] == "Phoenyra" and v["model"] == "BESS-SIM-METER"
    # 4 + 3 MW from the units, minus 50 kW aux, minus 1 % losses: exported, so positive in our convention
    assert v["power_mw"] == pytest.approx(7.0 - 0.05 - 0.07, abs=1e-3)
    assert v["frequency_hz"] == pytest.approx(50.0)
    assert v["voltage_ll_v"] == pytest.approx(20000) and v["apparent_power_mva"] == pytest.approx(6.88, abs=1e-3)
    assert v["current_a"] == pytest.approx(6.88e6 / (3**0.5 * 20000), abs=0.1)
    # the registers themselves carry the meter's convention: W positive for import (the profile's sign: -1)
    assert meter_sim.server.get("203.W") == pytest.approx(-6.88e6, abs=1e3)


async def test_charging_reads_as_import_and_counts_imported_energy(meter_sim: MeterSim, meter_driver):
    meter_sim.meter.sources = [lambda: -5.0, lambda: -4.0]
    for _ in range(36):
        meter_sim.meter.step(100.0)  # one hour
    v = values(await meter_driver.read())
    assert v["power_mw"] == pytest.approx(-9.0 - 0.05 - 0.09, abs=1e-3)
    assert meter_sim.server.get("203.W") > 0  # the meter's W: + import
    assert v["energy_imported_mwh"] == pytest.approx(9.14, abs=0.01)
    assert v["energy_exported_mwh"] == pytest.approx(0.0, abs=0.01)


async def test_aux_load_and_losses_show_at_the_poi(meter_sim: MeterSim, meter_driver):
    meter_sim.meter.sources = [lambda: 0.0]
    meter_sim.meter.p.aux_load_mw = 0.5
    meter_sim.meter.step(0.1)
    assert values(await meter_driver.read())["power_mw"] == pytest.approx(-0.5, abs=1e-3)


async def test_frequency_steps_and_ramps_through_the_driver(meter_sim: MeterSim, meter_driver):
    grid = meter_sim.meter.grid
    grid.step_hz(-0.2)
    meter_sim.meter.step(0.1)
    assert values(await meter_driver.read())["frequency_hz"] == pytest.approx(49.8)
    grid.ramp_to(50.2, ramp_s=10.0)
    seen = []
    for _ in range(10):  # 1 s steps of clock time: counted, not timed
        meter_sim.meter.step(1.0)
        seen.append(values(await meter_driver.read())["frequency_hz"])
    assert seen == sorted(seen) and seen[0] == pytest.approx(49.84) and seen[-1] == pytest.approx(50.2)
    assert not grid.ramping


async def test_implausible_frequency_reads_as_unknown(meter_sim: MeterSim, meter_driver):
    meter_sim.server.set("203.Hz", 70.0)  # a meter that lost its voltage reference, say
    r = (await meter_driver.read())["frequency_hz"]
    assert r.value is None and "plausible" in r.invalid


def test_frequency_wanders_around_50_hz_seeded():
    def run(seed: int) -> list[float]:
        grid = GridFrequency(GridParams(seed=seed))
        return [grid.step(1.0) for _ in range(3600)]

    one_hour = run(7)
    assert run(7) == one_hour  # seeded: repeatable
    assert run(8) != one_hour
    assert 49.9 < min(one_hour) and max(one_hour) < 50.1  # a synchronous grid, not a random walk
    assert statistics.pstdev(one_hour) > 0.005  # it does wander
    # slow: neighbouring seconds differ by far less than the spread (noise 2 mHz, wander over minutes)
    steps = [abs(b - a) for a, b in zip(one_hour, one_hour[1:])]
    assert statistics.mean(steps) < statistics.pstdev(one_hour) / 2


# --- pysunspec2's own client ------------------------------------------------------------------------------------


def scan_with_pysunspec2(port: int) -> dict[int, dict[str, tuple]]:
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


async def test_pysunspec2_scans_the_meter_and_reads_model_203(meter_sim: MeterSim):
    models = await asyncio.wait_for(asyncio.to_thread(scan_with_pysunspec2, meter_sim.port), 20)
    assert sorted(models) == [1, 203]
    assert models[1]["Mn"][1] == "Phoenyra" and models[1]["SN"][1] == "SIM-METER-0001"
    m = models[203]
    assert m["ID"][0] == 203 and m["L"][0] == 105
    assert m["Hz"][1] == pytest.approx(50.0)
    assert m["W"][1] == pytest.approx(-6.88e6, abs=1e3)  # + import: exporting 6.88 MW
    assert sum(m[p][1] for p in ("WphA", "WphB", "WphC")) == pytest.approx(m["W"][1], abs=3e3)
    assert m["PhVphA"][1] == pytest.approx(11547, abs=1) and m["PPV"][1] == pytest.approx(20000, abs=1)
    assert m["PF"][1] == pytest.approx(100.0) and m["VAR"][1] == 0
    assert m["A"][1] == pytest.approx(198.6, abs=0.1)


# --- other meter models, the generic profile -----------------------------------------------------------------


@pytest.mark.parametrize("model_id", [201, 204])
async def test_a_203_profile_reads_a_meter_with_another_meter_model(model_id: int):
    data = meter_profile().model_dump()
    data["sunspec"]["models"] = [1, model_id]
    served = Profile.model_validate(data)
    server = ModbusSimServer.from_profile(served, port=0, name=f"meter{model_id}")
    meter = Meter(server, [lambda: 2.0], MeterParams(loss_fraction=0.0))
    meter.grid.set_wander(False)
    meter.step(1.0)
    await server.start()
    driver = SunSpecDriver("poi", meter_profile(), "127.0.0.1", server.port, timeout_s=TIMEOUT_S, rating_mw=10)
    try:
        v = values(await driver.read())
        assert driver.map.ids == [1, model_id]
        assert v["power_mw"] == pytest.approx(2.0, abs=1e-3) and v["frequency_hz"] == pytest.approx(50.0)
    finally:
        await driver.close()
        await server.stop()


async def test_generic_meter_profile_through_the_modbus_driver():
    profile = load_profile(PROFILES / "generic-meter.yaml")
    server = ModbusSimServer.from_profile(profile, port=0, name="generic-meter")
    meter = Meter(server, [lambda: 3.0, lambda: -1.0], MeterParams(aux_load_mw=0.1, loss_fraction=0.0))
    meter.grid.set_wander(False)
    meter.grid.set_hz(49.95)
    meter.step(1.0)
    await server.start()
    driver = ModbusDriver("poi", profile, "127.0.0.1", server.port, timeout_s=TIMEOUT_S, rating_mw=10)
    try:
        v = values(await driver.read())
        assert v["power_mw"] == pytest.approx(1.9, abs=1e-4)
        assert server.get("power_mw") == pytest.approx(-1900.0, abs=0.1)  # kW, + import on the wire
        assert v["frequency_hz"] == pytest.approx(49.95, abs=1e-4)
        assert driver.requests_per_read == 1
    finally:
        await driver.close()
        await server.stop()
