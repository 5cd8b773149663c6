"""Plausible readings or none (issue 11): the real drivers against the real simulators told to serve garbage.

A marker value (plain Modbus `invalid_values` and their defaults, SunSpec 'not implemented'), a value outside
the point's plausible range, NaN/inf, or an OPC UA value whose StatusCode is not Good (from the subscription
and from a poll) reads as unknown: value None, with the raw value and the reason, never as a number. The
simulators' control API serves any raw value and status code (the contract the soak benchmark uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controller.config import load_config
from drivers.modbus import ModbusDriver
from drivers.opcua import OpcUaDriver
from drivers.profile import Profile
from drivers.sunspec import SunSpecDriver
from simulators.modbus_server import ModbusSimServer
from simulators.plant import Plant
from tests.conftest import free_port
from tests.fixtures.drivers import bms_profile, bms_server, pcs_sim  # noqa: F401 - fixtures
from tests.fixtures.plant import CONFIG as PLANT_CONFIG
from tests.fixtures.plant import plant_kwargs

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 0.5
RATING_MW = 10.0


def f32_regs(value: float) -> list[int]:
    raw = struct.unpack(">I", struct.pack(">f", value))[0]
    return [raw >> 16, raw & 0xFFFF]


async def bms_reading(server: ModbusSimServer, **raw: Any) -> dict:
    """One read of the generic BMS served by `server` with `raw` register contents in place."""
    server.faults.raw = dict(raw)
    d = ModbusDriver("bms", bms_profile(), "127.0.0.1", server.port, timeout_s=TIMEOUT_S, rating_mw=RATING_MW)
    try:
        return await d.read()
    finally:
        await d.close()


def healthy(server: ModbusSimServer) -> None:
    server.update(
        {
            "soc_pct": 55.0,
            "temperature_max_c": 30.0,
            "temperature_min_c": 21.0,
            "allowed_charge_mw": 8000.0,
            "allowed_discharge_mw": 9000.0,
            "cell_v_sf": -3,
            "cell_voltage_max_v": 3.6,
        }
    )


# --- plain Modbus ----------------------------------------------------------------------------------------------


async def test_soc_0xffff_over_plain_modbus_is_unknown_and_names_the_raw_value(bms_server):
    healthy(bms_server)
    r = await bms_reading(bms_server, soc_pct=0xFFFF)
    soc = r["soc_pct"]
    assert soc.value is None  # was 655.35 %
    assert soc.raw == "0xFFFF" and "marker" in soc.invalid
    # the other points of the same request are untouched
    assert r["temperature_max_c"].value == pytest.approx(30.0) and r["temperature_max_c"].invalid is None
    # one below the marker is no marker but still no SoC: outside 0..100 %, and the alarm text says so
    soc = (await bms_reading(bms_server, soc_pct=0xFFFE))["soc_pct"]
    assert soc.value is None and soc.invalid == "outside the plausible range 0..100 %"
    assert soc.raw == "0xFFFE (655.34 %)"


@pytest.mark.parametrize("raw", [0x8000, 0x7FFF])
async def test_temperature_markers_of_a_signed_register_are_unknown(bms_server, raw):
    healthy(bms_server)
    t = (await bms_reading(bms_server, temperature_max_c=raw))["temperature_max_c"]
    assert t.value is None and t.raw == f"0x{raw:04X}" and "marker" in t.invalid


async def test_a_temperature_outside_its_role_range_is_unknown(bms_server):
    healthy(bms_server)
    t = (await bms_reading(bms_server, temperature_min_c=0xF9C0))["temperature_min_c"]  # -160.0 °C
    assert t.value is None and t.invalid == "outside the plausible range -40..100 °C"


@pytest.mark.parametrize(
    "value,why",
    [
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        (-math.inf, "not a finite number"),
        (1e9, "outside the plausible range -15000..15000 kW"),
    ],
)
async def test_allowed_power_nan_inf_or_beyond_the_rating_is_unknown(bms_server, value, why):
    healthy(bms_server)
    r = await bms_reading(bms_server, allowed_discharge_mw=f32_regs(value))
    assert r["allowed_discharge_mw"].value is None and r["allowed_discharge_mw"].invalid == why
    assert r["allowed_charge_mw"].value == pytest.approx(8.0)  # kW -> MW, untouched


async def test_an_unknown_scale_factor_makes_the_points_it_scales_unknown(bms_server):
    healthy(bms_server)
    r = await bms_reading(bms_server, cell_v_sf=0x8000)
    assert r["cell_v_sf"].value is None
    assert r["cell_voltage_max_v"].value is None and "cell_v_sf" in r["cell_voltage_max_v"].invalid
    r = await bms_reading(bms_server, cell_v_sf=0x7FFE)  # 10**32766 would be inf: a scale factor is -10..10
    assert r["cell_v_sf"].value is None and r["cell_voltage_max_v"].value is None


async def test_an_alarm_word_with_a_marker_is_unknown(bms_server):
    healthy(bms_server)
    r = await bms_reading(bms_server, alarm_bits=0xFFFF)
    assert r["alarm_bits"].value is None and r["alarm_bits"].raw == "0xFFFF"
    # bit 15 alone is an alarm, not a marker: 0x8000 is an ordinary value of an unsigned register
    assert (await bms_reading(bms_server, alarm_bits=0x8000))["alarm_bits"].value == 0x8000


async def test_invalid_values_are_configurable_per_point():
    profile = Profile.model_validate(
        {
            "name": "t",
            "protocol": "modbus",
            "points": {
                "level_pct": {"address": 0, "type": "u16", "invalid_values": [0x7FFF]},
                "count": {"address": 1, "type": "u16", "invalid_values": []},
                "signed": {"address": 2, "type": "i16", "invalid_values": [-1]},
                "total": {"address": 3, "type": "u32"},
            },
        }
    )
    server = ModbusSimServer(dict(profile.points), port=0, name="t")
    async with server:
        server.faults.raw = {"level_pct": 0x7FFF, "count": 0xFFFF, "signed": 0x7FFF, "total": 0xFFFFFFFF}
        d = ModbusDriver("t", profile, "127.0.0.1", server.port, timeout_s=TIMEOUT_S)
        try:
            r = await d.read()
            assert r["level_pct"].value is None  # listed
            assert r["count"].value == 0xFFFF  # [] = no markers: 65535 is a count
            assert r["signed"].value == 0x7FFF  # only -1 listed: the defaults are replaced
            assert r["total"].value is None and r["total"].raw == "0xFFFFFFFF"  # u32 default
            server.faults.raw = {"signed": 0xFFFF, "level_pct": 0xFFFF}
            r = await d.read()
            assert r["signed"].value is None  # -1, listed in its signed form
            assert r["level_pct"].value == 0xFFFF  # not listed
        finally:
            await d.close()
    with pytest.raises(ValueError, match="invalid_values"):
        Profile.model_validate(
            {"name": "t", "protocol": "modbus", "points": {"x": {"address": 0, "type": "u16", "invalid_values": [-1]}}}
        )


# --- SunSpec ---------------------------------------------------------------------------------------------------


async def test_sunspec_not_implemented_and_implausible_values_are_unknown(pcs_sim):
    pcs_sim.server.faults.raw = {"alarm_bits": 0xFFFFFFFF, "soc_pct": 0x7FFE, "713.Pct_SF": 0x8000}
    d = SunSpecDriver("pcs", pcs_sim.profile, "127.0.0.1", pcs_sim.port, timeout_s=TIMEOUT_S, rating_mw=RATING_MW)
    try:
        r = await d.read()
    finally:
        await d.close()
    assert r["alarm_bits"].value is None and "not implemented" in r["alarm_bits"].invalid
    assert r["alarm_bits"].raw == "0xFFFFFFFF"
    assert r["soc_pct"].value is None and "713.Pct_SF" in r["soc_pct"].invalid  # its SF is not implemented
    assert r["battery_soc_pct"].value == pytest.approx(50.0)  # 802.SoC: its own SF


# --- OPC UA ----------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def opcua_plant(**overrides: Any) -> AsyncIterator[Plant]:
    plant = Plant.from_config(load_config(PLANT_CONFIG), **plant_kwargs(True, **overrides))
    await plant.start()
    try:
        yield plant
    finally:
        await plant.stop()


@contextlib.asynccontextmanager
async def opcua_driver(plant: Plant, subscribe: bool) -> AsyncIterator[OpcUaDriver]:
    d = OpcUaDriver(
        "bms",
        plant.opcua.profile,
        plant.opcua.endpoint,
        timeout_s=TIMEOUT_S,
        subscribe=subscribe,
        publishing_interval_s=0.1,
        rating_mw=RATING_MW,
    )
    try:
        yield d
    finally:
        await d.close()


async def read_until(d: OpcUaDriver, check, what: str, within_s: float = 5.0) -> dict:
    """Read as the cycle would until `check(readings)` holds; bounded in time and count."""
    deadline = time.monotonic() + within_s
    r: dict = {}
    for _ in range(int(within_s / 0.05) + 2):
        r = await d.read()
        if check(r):
            return r
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last readings {r}")


async def test_opcua_bad_status_from_the_subscription_is_unknown():
    async with opcua_plant() as plant, opcua_driver(plant, subscribe=True) as d:
        await read_until(
            d, lambda r: d.mode == "subscription" and r["soc_pct"].value is not None, "a fresh subscription"
        )
        plant.faults["bms_opcua"].status_codes = {"soc_pct": 0x80000000, "temperature_max_c": 0x408F0000}
        polls = d.stats.polls
        r = await read_until(
            d,
            lambda r: r["soc_pct"].value is None and r["temperature_max_c"].value is None,
            "the bad status to arrive by subscription",
        )
        assert d.stats.polls == polls and d.mode == "subscription"  # served from the subscription
        assert r["soc_pct"].invalid == "not Good (Bad)" and "Bad" in r["soc_pct"].raw
        assert "Uncertain" in r["temperature_max_c"].invalid  # Uncertain is not Good either
        assert r["temperature_min_c"].value is not None  # the others still good
        plant.faults["bms_opcua"].clear()
        await read_until(d, lambda r: r["soc_pct"].value is not None, "a good value again")


async def test_opcua_bad_status_from_a_poll_is_unknown_not_a_failed_read():
    async with opcua_plant() as plant, opcua_driver(plant, subscribe=False) as d:
        plant.faults["bms_opcua"].status_codes = {"soc_pct": 0x808D0000}
        await plant.opcua._write_values()  # serve it now rather than at the next 0.1 s update
        r = await d.read()
        assert d.mode == "polling"
        assert r["soc_pct"].value is None and r["soc_pct"].invalid == "not Good (BadOutOfService)"
        assert r["temperature_max_c"].value is not None and r["alarm_bits"].value == 0


@pytest.mark.parametrize(
    "point,value,why",
    [
        ("soc_pct", math.nan, "not a finite number"),
        ("soc_pct", 655.35, "outside the plausible range 0..100 %"),
        ("soc_pct", "garbage", "not what a f32 point holds"),
        ("soc_pct", None, "an empty value"),
        ("temperature_max_c", -math.inf, "not a finite number"),
        ("alarm_bits", 2.5, "not a bit field (a whole number >= 0)"),
        ("allowed_discharge_mw", 1e12, "outside the plausible range -15000..15000 kW"),
    ],
)
async def test_opcua_garbage_values_are_unknown(point, value, why):
    async with opcua_plant() as plant, opcua_driver(plant, subscribe=False) as d:
        plant.faults["bms_opcua"].raw = {point: value}
        await plant.opcua._write_values()
        r = await d.read()
        assert r[point].value is None and r[point].invalid == why


# --- the control API contract --------------------------------------------------------------------------------


async def test_control_api_serves_raw_values_and_status_codes_and_clears_them():
    async with (
        opcua_plant(control_port=free_port()) as plant,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{plant.ports['control']}", timeout=5) as http,
    ):
        bms = ModbusDriver(
            "bms", plant.bms_profile, "127.0.0.1", plant.ports["bms_modbus"], timeout_s=TIMEOUT_S, rating_mw=RATING_MW
        )
        pcs = SunSpecDriver(
            "pcs", plant.pcs_profile, "127.0.0.1", plant.ports["pcs"], timeout_s=TIMEOUT_S, rating_mw=RATING_MW
        )
        try:
            r = await http.post("/sim/faults/bms_modbus", json={"raw": {"soc_pct": 0xFFFF}})
            assert r.status_code == 200 and r.json()["faults"]["bms_modbus"]["raw"] == {"soc_pct": 0xFFFF}
            r = await http.post("/sim/faults/bms_modbus", json={"raw": {"allowed_charge_mw": [0x7FC0, 0]}})
            assert r.json()["faults"]["bms_modbus"]["raw"] == {"soc_pct": 0xFFFF, "allowed_charge_mw": [0x7FC0, 0]}
            got = await bms.read()
            assert got["soc_pct"].value is None and got["allowed_charge_mw"].value is None  # 0x7FC00000 is NaN
            assert (await http.post("/sim/faults/pcs", json={"raw": {"701.Alrm": 0xFFFFFFFF}})).status_code == 200
            assert (await pcs.read())["alarm_bits"].value is None
            r = await http.post(
                "/sim/faults/bms_opcua", json={"raw": {"soc_pct": 42.5}, "status_codes": {"soc_pct": 0x80000000}}
            )
            assert r.status_code == 200 and r.json()["faults"]["bms_opcua"]["status_codes"] == {"soc_pct": 0x80000000}
            # NaN travels as JSON's NaN token and comes back as text (JSON has no number for it)
            r = await http.post(
                "/sim/faults/bms_opcua",
                content=b'{"raw": {"temperature_max_c": NaN}}',
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 200 and r.json()["faults"]["bms_opcua"]["raw"]["temperature_max_c"] == "nan"

            # every bad request is a 4xx naming what was wrong
            for face, body, text in [
                ("bms_modbus", {"raw": {"nope": 1}}, "raw.nope"),
                ("bms_modbus", {"raw": {"soc_pct": 0x10000}}, "raw.soc_pct"),
                ("bms_modbus", {"raw": {"allowed_charge_mw": [1]}}, "raw.allowed_charge_mw"),
                ("bms_modbus", {"status_codes": {"soc_pct": 0x80000000}}, "status_codes"),
                ("bms_opcua", {"status_codes": {"soc_pct": -1}}, "status_codes.soc_pct"),
                ("bms_opcua", {"raw": {"nope": 1}}, "raw.nope"),
                ("bms_opcua", {"raw": {"soc_pct": [1, 2]}}, "raw.soc_pct"),
            ]:
                r = await http.post(f"/sim/faults/{face}", json=body)
                assert r.status_code == 422 and text in r.text, (face, body, r.text)

            r = await http.delete("/sim/faults")
            assert r.status_code == 200
            assert all(f["raw"] == {} and f["status_codes"] == {} for f in r.json()["faults"].values())
            got = await bms.read()
            assert got["soc_pct"].value == pytest.approx(50.0, abs=0.1) and got["allowed_charge_mw"].value > 0
            assert (await pcs.read())["alarm_bits"].value == 0
        finally:
            await bms.close()
            await pcs.close()
