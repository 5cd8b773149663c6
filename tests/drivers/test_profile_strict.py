"""Device profiles are strict (issue 11): finite numbers only, ranges, no unknown keys, and every error names
the file and the YAML path of what is wrong. Also: the plausible ranges a profile and the points' roles give."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.errors import ProfileError
from drivers.profile import Point, Profile, load_profile, plausible_range

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "config" / "profiles"

BASE: dict[str, Any] = {
    "name": "strict",
    "protocol": "modbus",
    "publishing_interval_s": 0.2,
    "points": {
        "soc_pct": {
            "address": 0,
            "type": "u16",
            "scale": 0.01,
            "unit": "%",
            "offset": 0.0,
            "min": 0,
            "max": 100,
            "plausible": [0, 100],
        },
        "power_mw": {"address": 2, "type": "i32", "unit": "kW"},
        "alarm_bits": {"address": 4, "type": "u16", "bits": {0: "hot"}},
    },
}


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path (list indexes as numbers) replaced."""
    data = copy.deepcopy(BASE)
    keys = path.split(".")
    node: Any = data
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_the_base_and_the_shipped_profiles_load(tmp_path):
    load_profile(write(tmp_path, BASE))
    for path in PROFILES.glob("*.yaml"):
        load_profile(path)


NUMBERS = [
    "points.soc_pct.scale",
    "points.soc_pct.offset",
    "points.soc_pct.min",
    "points.soc_pct.max",
    "points.soc_pct.plausible.0",
    "points.soc_pct.plausible.1",
    "publishing_interval_s",
]


@pytest.mark.parametrize("path", NUMBERS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_number_must_be_finite_and_the_error_names_its_path(tmp_path, path, value):
    with pytest.raises(ProfileError) as e:
        load_profile(write(tmp_path, with_(path, value)))
    text = str(e.value)
    assert str(tmp_path / "profile.yaml") in text and path in text and f"(got {value!r})" in text, text


@pytest.mark.parametrize(
    "path,value,expect",
    [
        ("points.soc_pct.plausibel", [0, 100], "points.soc_pct.plausibel: unknown key"),
        ("vendorr", "x", "vendorr: unknown key"),
        ("points.soc_pct.scale", 0, "points.soc_pct.scale: "),
        ("points.soc_pct.plausible", [100, 0], "points.soc_pct: plausible: low must be < high"),
        ("points.soc_pct.plausible", [0, 50, 100], "points.soc_pct.plausible"),
        ("points.soc_pct.invalid_values", [0x10000], "points.soc_pct: invalid_values: [65536] do not fit"),
        ("points.soc_pct.invalid_values", [-1], "points.soc_pct: invalid_values: [-1] do not fit"),
        ("points.soc_pct.words", 2, "points.soc_pct: words: only a string point"),
        ("points.soc_pct.address", 70000, "points.soc_pct.address"),
        ("points.power_mw.address", 65535, "points.power_mw: address: 65535 + 2 registers runs past"),
        ("points.alarm_bits.bits", {16: "x"}, "points.alarm_bits: bits: bit numbers must be 0..15"),
        ("points.power_mw.plausible", [-1, 1], "points.power_mw: plausible"),
        ("rated_power_mw", -5, "rated_power_mw"),
        ("rated_power_mw", float("nan"), "rated_power_mw"),
        ("publishing_interval_s", 0, "publishing_interval_s"),
        ("name", "", "name"),
    ],
)
def test_bad_values_are_refused_naming_their_path(tmp_path, path, value, expect):
    data = with_(path, value)
    if path == "points.power_mw.plausible":  # allowed on a number point: the refusal is on a bit field
        data["points"]["alarm_bits"]["plausible"] = [0, 1]
        expect = "points.alarm_bits: plausible: a string or bit-field point has no plausible range"
    with pytest.raises(ProfileError) as e:
        load_profile(write(tmp_path, data))
    assert expect in str(e.value), str(e.value)


def test_invalid_values_are_for_plain_modbus_only(tmp_path):
    data = {
        "name": "ua",
        "protocol": "opcua",
        "points": {"soc_pct": {"node_id": "ns=2;s=SoC", "type": "f32", "invalid_values": [0]}},
    }
    with pytest.raises(ProfileError, match="points.soc_pct.invalid_values: only for plain Modbus"):
        load_profile(write(tmp_path, data))


def test_function_23_is_for_modbus_devices_only(tmp_path):
    data = {"name": "ua", "protocol": "opcua", "read_write_multiple": True, "points": {}}
    with pytest.raises(ProfileError, match="read_write_multiple: a Modbus function"):
        load_profile(write(tmp_path, data))


def test_a_scale_factor_point_must_be_a_16_bit_integer(tmp_path):
    data = copy.deepcopy(BASE)
    data["points"]["sf"] = {"address": 10, "type": "f32"}
    data["points"]["power_mw"]["scale"] = "sf"
    with pytest.raises(ProfileError, match="points.power_mw.scale: scale-factor point 'sf' must be an i16"):
        load_profile(write(tmp_path, data))


# --- plausible ranges ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,point,rating,expected",
    [
        ("soc_pct", {"unit": "%"}, None, (0.0, 100.0)),
        ("battery_soc_pct", {"unit": "%"}, None, (0.0, 100.0)),
        ("soh_pct", {}, None, (0.0, 100.0)),
        ("temperature_max_c", {"unit": "°C"}, None, (-40.0, 100.0)),
        ("cabinet_temperature_c", {}, None, (-40.0, 100.0)),
        ("power_mw", {"unit": "kW"}, 10.0, (-15000.0, 15000.0)),  # device unit, like min/max
        ("power_mw", {"unit": "W"}, 2.0, (-3e6, 3e6)),
        ("power_mw", {"unit": "MW"}, None, None),  # no rating known: no power range
        ("soc_pct", {"plausible": [5, 95]}, None, (5.0, 95.0)),  # the profile's own wins
        ("voltage_v", {}, 10.0, None),  # no role
        ("alarm_bits", {"bits": {0: "x"}}, 10.0, None),
    ],
)
def test_roles_give_default_plausible_ranges(name, point, rating, expected):
    assert plausible_range(name, Point(**point), rating) == expected


def test_a_scale_factor_is_plausible_within_minus_10_to_10():
    assert plausible_range("cell_v_sf", Point(type="i16"), None, scale_factor=True) == (-10.0, 10.0)


def test_the_profile_rating_is_used_by_the_drivers():
    p = Profile.model_validate({**BASE, "rated_power_mw": 2.0})
    from drivers.modbus import ModbusDriver

    d = ModbusDriver("x", p, "127.0.0.1", 1, rating_mw=10.0)
    plans = {pl.name: pl for req in d._decoders for pl in req}
    assert plans["power_mw"].plausible == (-3000.0, 3000.0)  # 1.5 x 2 MW, in kW
