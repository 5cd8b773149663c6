"""Plants of several units and the POI meter in the site file (issue 13): the typed view the rest of the code uses
(unit_plan, meter), today's one-unit form as one implicit unit, every inconsistency named with its YAML path (the
must-fail examples in config/must-fail/ run through check-config in test_config_strict.py), and the cycle's
grouping of a multi-unit plant's devices into its units and the meter."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.clock import Clock
from controller.config import IMPLICIT_UNIT, RESERVED_DEVICE_NAMES, ConfigError, SiteConfig, load_config
from controller.cycle.alarms import CYCLE_FAILED, EXCHANGE_DOWN_ALARM, SCHEDULE_INFEASIBLE, readback_key, service_key
from controller.cycle.devices import DeviceSet

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
TWO_UNIT = CONFIG / "demo.yaml"  # the two-unit demo


def two_unit() -> dict[str, Any]:
    raw = yaml.safe_load(TWO_UNIT.read_text())
    for dev in raw["devices"].values():
        dev["profile"] = str(CONFIG / dev["profile"])
    return raw


def load(tmp_path: Path, raw: dict[str, Any]) -> SiteConfig:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def errors_of(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, raw)
    return e.value.errors


def test_two_unit_demo_plan_and_meter():
    cfg = load_config(TWO_UNIT)
    plan = cfg.unit_plan()
    assert [(u.unit, u.pcs_name, u.bms_name, u.rated_mw, u.capacity_mwh) for u in plan] == [
        ("u1", "pcs1", "bms1", 5, 10),
        ("u2", "pcs2", "bms2", 5, 10),
    ]
    assert plan[0].bms.protocol == "opcua" and plan[1].pcs.port == 1513
    name, meter = cfg.meter()
    assert name == "poi" and meter.role == "meter" and meter.port == 1505 and meter.unit is None
    assert cfg.load_profile(meter).points["power_mw"].sign == -1
    assert cfg.simulator.units["u1"].initial_soc_pct != cfg.simulator.units["u2"].initial_soc_pct


@pytest.mark.parametrize("name", ["demo-single.yaml", "demo-single-modbus.yaml", "site.example.yaml"])
def test_todays_one_unit_files_are_one_implicit_unit_without_meter(name):
    cfg = load_config(CONFIG / name)
    (unit,) = cfg.unit_plan()
    assert unit.unit == IMPLICIT_UNIT and (unit.pcs_name, unit.bms_name) == (cfg.device("pcs")[0], cfg.device("bms")[0])
    assert unit.rated_mw == max(cfg.limits.p_charge_max_mw, cfg.limits.p_discharge_max_mw)
    assert unit.capacity_mwh == cfg.battery.capacity_mwh
    assert cfg.meter() is None and cfg.units == {}


def test_a_one_unit_file_may_add_a_meter(tmp_path):
    raw = yaml.safe_load((CONFIG / "demo-single-modbus.yaml").read_text())
    for dev in raw["devices"].values():
        dev["profile"] = str(CONFIG / dev["profile"])
    raw["devices"]["poi"] = {
        "role": "meter",
        "protocol": "sunspec",
        "port": 1505,
        "profile": str(CONFIG / "profiles" / "sunspec-meter.yaml"),
    }
    cfg = load(tmp_path, raw)
    assert cfg.meter()[0] == "poi" and len(cfg.unit_plan()) == 1


def test_one_unit_in_units_form_is_one_unit(tmp_path):
    raw = two_unit()
    for name in ("bms2", "pcs2"):
        del raw["devices"][name]
    del raw["units"]["u2"], raw["simulator"]["units"]["u2"]
    raw["units"]["u1"]["rated_mw"] = 10
    raw["battery"]["capacity_mwh"] = 10
    (unit,) = load(tmp_path, raw).unit_plan()
    assert (unit.unit, unit.rated_mw, unit.capacity_mwh) == ("u1", 10, 10)


def test_every_inconsistency_is_named_at_once(tmp_path):
    raw = two_unit()
    raw["devices"]["pcs2"]["unit"] = "u9"  # a unit not in units:
    raw["units"]["u3"] = {"rated_mw": 1, "capacity_mwh": 1}  # a unit nobody names
    raw["units"]["u1"]["rated_mw"] = 1  # 1 + 5 + 1 < 10
    text = "\n".join(errors_of(tmp_path, raw))
    assert "devices.pcs2.unit (line" in text and "unit 'u9' is not in units: (u1, u2, u3)" in text
    assert "units.u2 (line" in text and "no device with role pcs names this unit" in text
    assert "units.u3 (line" in text and "no device names this unit" in text
    assert "the units' ratings add up to 7 MW, below limits.p_discharge_max_mw (10 MW)" in text
    assert "battery.capacity_mwh (line" in text and "must be the units' total capacity 21 MWh (got 20)" in text


def test_device_names_that_alarm_keys_reserve_are_refused(tmp_path):
    """A device may not take the device part of the controller's own alarm keys, nor contain ':' (alarm keys are
    '<device>:<alarm>'): refused with the device's YAML path; the reserved set covers every fixed key."""
    fixed = [SCHEDULE_INFEASIBLE, CYCLE_FAILED, EXCHANGE_DOWN_ALARM, service_key("fcr_reserve")]
    parts = {k.device for k in fixed} | {str(readback_key("pcs1")).partition(":")[0]}
    assert parts == set(RESERVED_DEVICE_NAMES)
    for name in [*RESERVED_DEVICE_NAMES, "poi:1"]:
        raw = two_unit()
        raw["devices"][name] = raw["devices"].pop("poi")
        errors = errors_of(tmp_path, raw)
        assert len(errors) == 1 and errors[0].startswith(f"devices.{name} (line "), errors
        assert "rename the device" in errors[0] and (":" in name or "reserved" in errors[0]), errors
    raw = two_unit()
    raw["devices"]["Controller"] = raw["devices"].pop("poi")  # keys are case-sensitive: not reserved
    assert load(tmp_path, raw).meter()[0] == "Controller"


def test_devices_behind_one_gateway_need_their_own_unit_ids(tmp_path):
    raw = two_unit()
    raw["devices"]["pcs2"]["port"] = 1503  # same host:port as pcs1: a gateway
    raw["simulator"]["units"]["u1"]["bms_modbus_port"] = 1502
    text = "\n".join(errors_of(tmp_path, raw))
    assert "devices.pcs2 (line" in text and "the same device as devices.pcs1" in text
    raw["devices"]["pcs2"]["unit_id"] = 2  # now it is another device behind the gateway
    assert [u.pcs.unit_id for u in load(tmp_path, raw).unit_plan()] == [1, 2]


@pytest.mark.parametrize(
    "path,value",
    [
        (("units", "u1", "rated_mw"), math.nan),
        (("units", "u2", "capacity_mwh"), math.inf),
        (("simulator", "units", "u1", "initial_soc_pct"), math.nan),
    ],
)
def test_unit_numbers_are_finite(tmp_path, path, value):
    raw = two_unit()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(line.startswith(".".join(path) + " (line") and "finite" in line for line in errors_of(tmp_path, raw))


def test_simulator_units_must_be_units(tmp_path):
    raw = two_unit()
    raw["simulator"]["units"]["u7"] = {"initial_soc_pct": 20}
    assert any(line.startswith("simulator.units.u7 (line") for line in errors_of(tmp_path, raw))


def test_device_unit_names_are_plain(tmp_path):
    raw = copy.deepcopy(two_unit())
    raw["devices"]["pcs2"]["unit"] = "u 2!"
    assert any(line.startswith("devices.pcs2.unit (line") for line in errors_of(tmp_path, raw))


def test_the_cycle_takes_a_multi_unit_plant_as_its_units_and_the_meter():
    """The guard that refused multi-unit files is gone: the cycle's DeviceSet groups each unit's BMS and PCS
    with its rating and capacity, and the POI meter apart (no device is contacted here)."""
    ds = DeviceSet(load_config(TWO_UNIT), Clock())
    got = [(u.unit, u.bms.name, u.pcs.name, u.rated_mw, u.capacity_mwh) for u in ds.units]
    assert got == [("u1", "bms1", "pcs1", 5.0, 10.0), ("u2", "bms2", "pcs2", 5.0, 10.0)]
    assert ds.meter is not None and ds.meter.name == "poi"
    assert (ds.bms.name, ds.pcs.name) == ("bms1", "pcs1")
