"""Property (issue 11): whatever the plant serves, the decision only acts on plausible values.

The REAL plant simulator serves random raw register contents, marker values and OPC UA values and status codes
for the points the limits read; the REAL drivers read them (BMS over plain Modbus, and over OPC UA by polls; PCS
over SunSpec) into the real DeviceSet's snapshot. For every snapshot: each value is exactly what an independent
decoding of the raw value gives when it is plausible, else unknown; an alarm word that cannot be decoded is an
alarm; the decided setpoint is within what the limits allow for the plausible values; it never discharges on
unknown SoC nor charges on unknown temperature.

Hypothesis cannot drive an async test, so the module owns one event loop that runs the plant, the drivers and
each example. The example count is modest: each one is a few real requests (~20-40 ms).
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.clock import Clock
from controller.config import SiteConfig, load_config
from controller.cycle.devices import DeviceSet
from controller.cycle.limits import limit
from controller.cycle.snapshot import Snapshot
from simulators.plant import Plant
from tests.fixtures.controller import ROOT, device_ports, site_config
from tests.fixtures.plant import CONFIG as PLANT_CONFIG
from tests.fixtures.plant import plant_kwargs

pytestmark = pytest.mark.timeout(120)

RATING_MW = 10.0  # demo limits: 10 MW each way, so power is plausible within +-15 MW
MAX_DT_S = 0.4  # the cycle's ramp cap (two 0.2 s periods)
EPS = 1e-9

# --- the plant and the two device sets, in the module's own loop ---------------------------------------------


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    plant: Plant
    modbus: DeviceSet  # BMS over plain Modbus, PCS over SunSpec
    opcua: DeviceSet  # BMS over OPC UA (polls), the same PCS
    config: SiteConfig

    def run(self, coro):
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    plant = Plant.from_config(load_config(PLANT_CONFIG), **plant_kwargs(True))
    loop.run_until_complete(plant.start())
    sets: list[DeviceSet] = []
    try:
        clock = Clock()
        base_ua = ROOT / "config" / "demo-single.yaml"
        cfg_mb = site_config(tmp_path_factory.mktemp("mb"), device_ports(plant))
        cfg_ua = site_config(
            tmp_path_factory.mktemp("ua"), device_ports(plant, base_ua), base_ua, devices={"bms": {"subscribe": False}}
        )
        sets = [DeviceSet(cfg_mb, clock), DeviceSet(cfg_ua, clock)]
        yield Rig(loop, plant, sets[0], sets[1], cfg_mb)
    finally:
        for ds in sets:
            loop.run_until_complete(ds.close())
        loop.run_until_complete(plant.stop())
        loop.close()


# --- what the plant serves ---------------------------------------------------------------------------------------


def f32_bits(v: float) -> int:
    return struct.unpack(">I", struct.pack(">f", v))[0]


def f32_of(raw: int) -> float:
    return struct.unpack(">f", struct.pack(">I", raw))[0]


def to_f32(v: float) -> float:
    return struct.unpack(">f", struct.pack(">f", v))[0]


U16 = st.integers(0, 0xFFFF)
SOC_RAW = st.one_of(st.sampled_from([0xFFFF, 0xFFFE, 10000, 10001, 0, 1000, 9000]), U16, st.integers(0, 10000))
TEMP_RAW = st.one_of(
    st.sampled_from([0x7FFF, 0x8000, 0xFE70, 0xFE6F, 1000, 1001, 250, 0]),
    U16,
    st.integers(-400, 1000).map(lambda v: v & 0xFFFF),
)
POWER_RAW = st.one_of(
    st.floats(width=32).map(f32_bits),
    st.integers(0, 0xFFFFFFFF),
    st.floats(-15000, 15000, width=32).map(f32_bits),
    st.sampled_from([0x7FC00000, 0xFFFFFFFF, 0x7F800000, 0xFF800000, f32_bits(8000.0)]),
)
WORD_RAW = st.one_of(st.just(0), st.just(0xFFFF), U16)
PCS_ALRM_RAW = st.sampled_from([0, 0, 0xFFFFFFFF, 1 << 7, 1 << 16])

UA_NUMBER = st.one_of(
    st.floats(width=32), st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, None, "garbage"])
)
UA_SOC = st.one_of(UA_NUMBER, st.floats(-1, 101))
UA_TEMP = st.one_of(UA_NUMBER, st.floats(-45, 105))
UA_POWER = st.one_of(UA_NUMBER, st.floats(-16000, 16000))
UA_WORD = st.one_of(st.just(0), U16, st.sampled_from([2.5, -1, math.nan, None, 3.0]))
STATUS = st.sampled_from([0, 0, 0, 0x80000000, 0x40000000, 0x808D0000, 0x408F0000])

BMS_NUMBERS = ("soc_pct", "temperature_max_c", "temperature_min_c", "allowed_charge_mw", "allowed_discharge_mw")
WORDS = ("alarm_bits", "fault_bits")


@st.composite
def plant_garbage(draw) -> dict[str, Any]:
    modbus = {
        "soc_pct": draw(SOC_RAW),
        "temperature_max_c": draw(TEMP_RAW),
        "temperature_min_c": draw(TEMP_RAW),
        "allowed_charge_mw": draw(POWER_RAW),
        "allowed_discharge_mw": draw(POWER_RAW),
        "alarm_bits": draw(WORD_RAW),
        "fault_bits": draw(WORD_RAW),
    }
    ua = {
        "soc_pct": draw(UA_SOC),
        "temperature_max_c": draw(UA_TEMP),
        "temperature_min_c": draw(UA_TEMP),
        "allowed_charge_mw": draw(UA_POWER),
        "allowed_discharge_mw": draw(UA_POWER),
        "alarm_bits": draw(UA_WORD),
        "fault_bits": draw(UA_WORD),
    }
    status = {p: draw(STATUS) for p in ua}
    return {
        "modbus": modbus,
        "ua": ua,
        "status": status,
        "pcs_alrm": draw(PCS_ALRM_RAW),
        "target": draw(st.floats(-15, 15)),
        "previous": draw(st.floats(-10, 10)),
        "dt": draw(st.one_of(st.floats(0, 1), st.floats(1, 1e4))),
    }


# --- an independent decoding: what each raw value means when it is plausible ------------------------------------


def in_range(v: float, lo: float, hi: float) -> float | None:
    return v if math.isfinite(v) and lo <= v <= hi else None


def expected_modbus(raw: dict[str, int]) -> dict[str, Any]:
    def i16(r: int) -> int:
        return r - 0x10000 if r & 0x8000 else r

    def temp(r: int) -> float | None:
        return None if r in (0x7FFF, 0x8000) else in_range(i16(r) / 10, -40, 100)

    def power(r: int) -> float | None:
        kw = in_range(f32_of(r), -1.5 * RATING_MW * 1000, 1.5 * RATING_MW * 1000)
        return None if kw is None else kw / 1000

    return {
        "soc_pct": None if raw["soc_pct"] == 0xFFFF else in_range(raw["soc_pct"] / 100, 0, 100),
        "temperature_max_c": temp(raw["temperature_max_c"]),
        "temperature_min_c": temp(raw["temperature_min_c"]),
        "allowed_charge_mw": power(raw["allowed_charge_mw"]),
        "allowed_discharge_mw": power(raw["allowed_discharge_mw"]),
        "alarm_bits": None if raw["alarm_bits"] == 0xFFFF else raw["alarm_bits"],
        "fault_bits": None if raw["fault_bits"] == 0xFFFF else raw["fault_bits"],
    }


def expected_ua(values: dict[str, Any], status: dict[str, int]) -> dict[str, Any]:
    def number(name: str, lo: float, hi: float, factor: float = 1.0) -> float | None:
        v = values[name]
        if status[name] != 0 or isinstance(v, str) or v is None:
            return None
        if math.isfinite(v) and abs(v) <= 3.4028234663852886e38:
            v = to_f32(v)  # served as the point's Float
        v = in_range(v, lo, hi)
        return None if v is None else v * factor if factor == 1.0 else v / 1000

    def word(name: str) -> int | None:
        v = values[name]
        if status[name] != 0 or v is None or not math.isfinite(v) or v < 0 or v != int(v):
            return None
        return int(v)

    p = 1.5 * RATING_MW * 1000
    return {
        "soc_pct": number("soc_pct", 0, 100),
        "temperature_max_c": number("temperature_max_c", -40, 100),
        "temperature_min_c": number("temperature_min_c", -40, 100),
        "allowed_charge_mw": number("allowed_charge_mw", -p, p, 1e-3),
        "allowed_discharge_mw": number("allowed_discharge_mw", -p, p, 1e-3),
        "alarm_bits": word("alarm_bits"),
        "fault_bits": word("fault_bits"),
    }


def expected_alarms(ds: DeviceSet, bms: dict[str, Any], pcs_alrm: int) -> tuple[set[str], set[str]]:
    """(alarms, faults) the snapshot must carry: each set bit by its profile name, and an undecodable word as
    the alarm `<device>:invalid_<point>`."""
    alarms: set[str] = set()
    faults: set[str] = set()
    words = [
        (ds.bms, "alarm_bits", bms["alarm_bits"], alarms),
        (ds.bms, "fault_bits", bms["fault_bits"], faults),
        (ds.pcs, "alarm_bits", None if pcs_alrm == 0xFFFFFFFF else pcs_alrm, alarms),
    ]
    for link, point, v, into in words:
        if v is None:
            alarms.add(f"{link.name}:invalid_{point}")
            continue
        names = link.profile.points[point].bits or {}
        into.update(f"{link.name}:{names.get(b, f'bit{b}')}" for b in range(64) if v >> b & 1)
    return alarms, faults


# --- the property ----------------------------------------------------------------------------------------------


async def serve_and_read(rig: Rig, g: dict[str, Any]) -> tuple[Snapshot, Snapshot]:
    faults = rig.plant.faults
    faults["bms_modbus"].raw = dict(g["modbus"])
    faults["pcs"].raw = {"alarm_bits": g["pcs_alrm"]}
    faults["bms_opcua"].raw = dict(g["ua"])
    faults["bms_opcua"].status_codes = {k: v for k, v in g["status"].items() if v}
    await rig.plant.opcua._write_values()  # serve the OPC UA values now, not at the next 0.1 s update
    snaps = []
    for ds in (rig.modbus, rig.opcua):
        now = ds.clock.now()
        await ds.poll(now, force=True)
        snaps.append(ds.snapshot(now))
    return snaps[0], snaps[1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plant_garbage())
def test_decisions_act_only_on_plausible_readings(rig: Rig, g: dict[str, Any]) -> None:
    snap_mb, snap_ua = rig.run(serve_and_read(rig, g))
    for ds, snap, exp in (
        (rig.modbus, snap_mb, expected_modbus(g["modbus"])),
        (rig.opcua, snap_ua, expected_ua(g["ua"], g["status"])),
    ):
        assert not snap.stale and not snap.comm_loss, snap.devices  # garbage points, not a dead device
        for name in BMS_NUMBERS:
            got = getattr(snap, name.replace("allowed_", "bms_allowed_"))
            want = exp[name]
            assert (got is None) == (want is None) and (want is None or got == pytest.approx(want, rel=1e-12)), (
                ds.bms.name,
                name,
                got,
                want,
                ds.bms.readings.get(name),
            )
        alarms, faults = expected_alarms(ds, exp, g["pcs_alrm"])
        assert set(snap.alarms) == alarms and set(snap.faults) == faults
        # every unknown reading of the limits' points is listed, with its raw value, for the alarm
        listed = {b.point for b in snap.invalid if b.device == ds.bms.name}
        assert {n for n in (*BMS_NUMBERS, *WORDS) if exp[n] is None} <= listed

        # the decision: within what the limits allow for the plausible values
        lim = rig.config.limits
        plausible = Snapshot(
            ts=snap.ts,
            soc_pct=exp["soc_pct"],
            temperature_max_c=exp["temperature_max_c"],
            temperature_min_c=exp["temperature_min_c"],
            bms_allowed_charge_mw=exp["allowed_charge_mw"],
            bms_allowed_discharge_mw=exp["allowed_discharge_mw"],
            alarms=tuple(sorted(alarms)),
            faults=tuple(sorted(faults)),
        )
        d = limit(g["target"], snap, lim, g["previous"], g["dt"], "auto", max_dt_s=MAX_DT_S)
        allowed = limit(g["target"], plausible, lim, g["previous"], g["dt"], "auto", max_dt_s=MAX_DT_S)
        assert allowed.lower_mw - EPS <= d.setpoint_mw <= allowed.upper_mw + EPS
        assert d.setpoint_mw == pytest.approx(allowed.setpoint_mw, abs=EPS)
        if exp["soc_pct"] is None:
            assert d.setpoint_mw <= 0.0, "discharge on unknown SoC"
        if exp["temperature_max_c"] is None or exp["temperature_min_c"] is None:
            assert d.setpoint_mw >= 0.0, "charge on unknown temperature"
        if exp["allowed_discharge_mw"] is None:
            assert d.setpoint_mw <= 0.0
        if exp["allowed_charge_mw"] is None:
            assert d.setpoint_mw >= 0.0
