"""An alarm or fault word that cannot be decoded is an alarm (issue 11), never "no alarms": the snapshot built
by DeviceSet from what a device (of our DeviceDriver interface, its answers set by the test) reports, and the
decision the limit function takes on it. The real drivers and simulators: tests/drivers/test_readings.py."""

from __future__ import annotations

import math

import pytest

from controller.clock import Clock
from controller.config import load_config
from controller.cycle.devices import DeviceSet
from controller.cycle.limits import limit
from drivers.base import Reading
from tests.fixtures.dummy_devices import HEALTHY_BMS, DummyDevice, site_file

BMS = HEALTHY_BMS


async def snapshot_with(tmp_path, drop: tuple[str, ...] = (), **bms: object):
    clock = Clock()
    cfg = load_config(site_file(tmp_path))
    dev = DummyDevice("bms", clock, {k: v for k, v in {**BMS, **bms}.items() if k not in drop})
    ds = DeviceSet(cfg, clock, drivers={"bms": dev, "pcs": DummyDevice("pcs", clock, {"power_mw": 0.0})})
    now = clock.now()
    await ds.poll(now, force=True)
    return ds.snapshot(now), cfg


@pytest.mark.parametrize("value", [-1, 2.5, math.nan, math.inf, "x", None, True, 2**64])
async def test_an_undecodable_alarm_word_is_an_alarm(tmp_path, value):
    snap, cfg = await snapshot_with(tmp_path, alarm_bits=value)
    assert "bms:invalid_alarm_bits" in snap.alarms
    bad = next(b for b in snap.invalid if b.point == "alarm_bits")
    assert bad.device == "bms" and "alarm_bits" in bad.message and repr(value)[:10] in bad.message
    d = limit(5.0, snap, cfg.limits, 5.0, 1.0)
    assert d.setpoint_mw == 0.0 and d.binding == "alarm"


async def test_an_undecodable_fault_word_is_an_alarm_too(tmp_path):
    snap, _ = await snapshot_with(tmp_path, fault_bits=None)
    assert "bms:invalid_fault_bits" in snap.alarms and not snap.faults


async def test_a_missing_alarm_word_is_an_alarm(tmp_path):
    snap, _ = await snapshot_with(tmp_path, drop=("alarm_bits",))
    assert "bms:invalid_alarm_bits" in snap.alarms and "missing" in snap.invalid[0].message


@pytest.mark.parametrize(
    "value,names",
    [(0, []), (0.0, []), (4.0, ["bms:over_temperature"]), (1 << 15, ["bms:external"]), (1 << 40, ["bms:bit40"])],
)
async def test_a_decodable_word_gives_its_bits_by_name(tmp_path, value, names):
    snap, _ = await snapshot_with(tmp_path, alarm_bits=value)
    assert list(snap.alarms) == names and not snap.invalid


async def test_an_untrusted_reading_is_listed_but_only_its_direction_stops(tmp_path):
    """A reading the driver marked invalid is unknown and listed (an alarm names it), but it is no safe state:
    unknown SoC stops both directions through the SoC limits, unknown soh_pct stops nothing."""
    clock = Clock()
    cfg = load_config(site_file(tmp_path))
    dev = DummyDevice("bms", clock, BMS)
    ds = DeviceSet(cfg, clock, drivers={"bms": dev, "pcs": DummyDevice("pcs", clock, {"power_mw": 0.0})})

    async def read() -> dict[str, Reading]:
        now = clock.now()
        out = {k: Reading(v, now) for k, v in BMS.items()}
        out["soh_pct"] = Reading(None, now, "0xFFFF", "a marker value meaning 'no value'")
        return out

    dev.read = read  # type: ignore[method-assign]
    await ds.poll(clock.now(), force=True)
    snap = ds.snapshot(clock.now())
    assert [b.key for b in snap.invalid] == ["bms:invalid_soh_pct"] and not snap.alarms
    assert "0xFFFF" in snap.invalid[0].message and "soh_pct" in snap.invalid[0].message
    assert limit(5.0, snap, cfg.limits, 5.0, 1.0).setpoint_mw == 5.0
