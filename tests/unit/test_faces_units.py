"""The faces' per-unit projections of a PlantState (issue 13): the SCADA Modbus unit blocks and POI block as
table tests (state in -> registers out), and the metrics' `unit` label and POI gauges."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from controller.cycle.state import PlantState, PoiState, UnitState
from controller.metrics import Metrics
from controller.scada.points import (
    BINDING_CODES,
    CONTROL,
    LAYOUT,
    MAX_UNITS,
    NA,
    POI,
    STATUS,
    UNIT_BASE,
    UNIT_POINTS,
    UNIT_STRIDE,
    input_registers,
    input_words,
    status_values,
    unit_points,
)

TS = 1_796_000_000.0
U1 = UnitState("u1", soc_pct=61.25, power_mw=2.5, setpoint_mw=2.5, temperature_c=30.4, available=True, binding=None)
U2 = UnitState(
    "u2", soc_pct=38.0, power_mw=-1.234, setpoint_mw=0.0, temperature_c=-5.5, available=False, binding="stale"
)
POI_OK = PoiState(power_mw=4.321, frequency_hz=49.987, ts=TS - 0.4)


def plant(units=(U1, U2), poi=POI_OK) -> PlantState:
    return PlantState(
        ts=TS,
        soc_pct=49.6,
        power_mw=3.7,
        setpoint_mw=2.5,
        target_mw=5.0,
        online=True,
        binding="none",
        units=tuple(units),
        poi=poi,
    )


def i32(v: int) -> list[int]:
    v &= 0xFFFFFFFF
    return [v >> 16, v & 0xFFFF]


def words_at(regs: dict[int, int], address: int, n: int) -> list[int]:
    return [regs[address + i] for i in range(n)]


# (unit state, its block's raw words from offset 0: soc u16, power i32, setpoint i32, temperature i16, available,
#  binding)
BLOCKS = {
    "available, nothing binds": (U1, [6125, *i32(2500), *i32(2500), 304, 1, 0]),
    "unavailable, stale, charging, below 0 °C": (
        U2,
        [3800, *i32(-1234), *i32(0), (-55) & 0xFFFF, 0, BINDING_CODES["stale"]],
    ),
    "unknown values read NA": (UnitState("u1"), [NA["u16"], *i32(NA["i32"]), *i32(NA["i32"]), NA["i16"], 0, 0]),
}


@pytest.mark.parametrize("case", list(BLOCKS))
@pytest.mark.parametrize("k", [0, 1])
def test_a_units_block_at_base_plus_k_stride(case, k):
    unit, expected = BLOCKS[case]
    names = ["a", "b"]
    names[k] = unit.unit
    regs = input_registers(plant(units=(unit,)), names)
    assert words_at(regs, UNIT_BASE + k * UNIT_STRIDE, len(expected)) == expected


def test_two_units_in_site_file_order_whatever_the_states_order():
    regs = input_registers(plant(units=(U2, U1)), ["u1", "u2"])
    assert regs[UNIT_BASE] == 6125 and regs[UNIT_BASE + UNIT_STRIDE] == 3800
    assert regs[UNIT_BASE + 6] == 1 and regs[UNIT_BASE + UNIT_STRIDE + 6] == 0  # available
    assert words_at(regs, 23, 3) == [2, UNIT_BASE, UNIT_STRIDE]  # the layout registers


def test_a_unit_the_state_does_not_carry_reads_na():
    """Before the first cycle (or a name the state lacks) the block is all "not available"."""
    regs = input_registers(plant(units=()), ["u1"])
    assert words_at(regs, UNIT_BASE, 8) == [
        NA["u16"],
        *i32(NA["i32"]),
        *i32(NA["i32"]),
        NA["i16"],
        NA["u16"],
        NA["u16"],
    ]


@pytest.mark.parametrize(
    "poi, expected",
    [
        (POI_OK, [*i32(4321), 49987]),
        (PoiState(power_mw=-0.5, frequency_hz=50.2, ts=TS), [*i32(-500), 50200]),
        (PoiState(power_mw=None, frequency_hz=None, ts=None), [*i32(NA["i32"]), NA["u16"]]),  # meter lost
        (None, [*i32(NA["i32"]), NA["u16"]]),  # no meter
    ],
)
def test_the_poi_block(poi, expected):
    regs = input_registers(plant(poi=poi), ["u1", "u2"])
    assert words_at(regs, 30, 3) == expected


def test_the_status_table_is_unchanged_inside_the_full_map():
    """Today's registers keep their addresses and values; the new tables only append."""
    state = plant()
    regs = input_registers(state, ["u1", "u2"])
    values = status_values(state)
    for p in STATUS:
        assert words_at(regs, p.address, p.words) == p.to_registers(values[p.name]), p.name
    assert max(p.address + p.words for p in STATUS) == 23


def test_the_tables_do_not_overlap_and_64_units_fit():
    used: dict[int, str] = {}
    for table, points in [("status", STATUS), ("layout", LAYOUT), ("poi", POI)] + [
        (f"unit {k}", unit_points(k)) for k in range(MAX_UNITS)
    ]:
        for p in points:
            for a in range(p.address, p.address + p.words):
                assert a not in used, f"{table}.{p.name} at {a} overlaps {used[a]}"
                used[a] = f"{table}.{p.name}"
    assert max(p.address + p.words for p in UNIT_POINTS) <= UNIT_STRIDE
    assert max(used) < input_words(MAX_UNITS) <= 0xFFFF
    assert min(p.address for p in CONTROL) == 100  # controls are holding registers: a table of their own


# ---------------------------------------------------------------------------------------------- metrics
def samples(m: Metrics, name: str) -> dict[tuple, float]:
    out = {}
    for fam in m.registry.collect():
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_carry_a_unit_label():
    m = Metrics(CollectorRegistry())
    m.on_cycle(plant())
    assert samples(m, "bess_unit_soc_pct") == {(("unit", "u1"),): 61.25, (("unit", "u2"),): 38.0}
    assert samples(m, "bess_unit_power_mw") == {(("unit", "u1"),): 2.5, (("unit", "u2"),): -1.234}
    assert samples(m, "bess_unit_setpoint_mw") == {(("unit", "u1"),): 2.5, (("unit", "u2"),): 0.0}
    assert samples(m, "bess_unit_temperature_celsius") == {(("unit", "u1"),): 30.4, (("unit", "u2"),): -5.5}
    assert samples(m, "bess_unit_available") == {(("unit", "u1"),): 1.0, (("unit", "u2"),): 0.0}


def test_unknown_unit_values_are_nan():
    m = Metrics(CollectorRegistry())
    m.on_cycle(plant(units=(UnitState("u1"),)))
    assert math.isnan(samples(m, "bess_unit_soc_pct")[(("unit", "u1"),)])
    assert samples(m, "bess_unit_available") == {(("unit", "u1"),): 0.0}


def test_poi_gauges_follow_the_meter_and_stay_nan_without_one():
    m = Metrics(CollectorRegistry())
    m.on_cycle(plant(poi=None))
    for name in ("bess_poi_power_mw", "bess_poi_frequency_hz", "bess_poi_meter_up"):
        assert math.isnan(samples(m, name)[()]), name  # NaN == 0 is false: no "meter lost" alert without a meter
    m.on_cycle(plant(poi=POI_OK))
    assert samples(m, "bess_poi_power_mw")[()] == 4.321
    assert samples(m, "bess_poi_frequency_hz")[()] == 49.987
    assert samples(m, "bess_poi_meter_up")[()] == 1.0
    m.on_cycle(plant(poi=PoiState()))  # the meter lost: no reading
    assert samples(m, "bess_poi_meter_up")[()] == 0.0
    assert math.isnan(samples(m, "bess_poi_power_mw")[()])
    m.on_cycle(plant(poi=None))  # once seen, a missing meter is a lost one
    assert samples(m, "bess_poi_meter_up")[()] == 0.0


def test_no_unit_series_before_a_cycle():
    m = Metrics(CollectorRegistry())
    m.on_cycle(PlantState(units=(U1,)))  # no process image yet
    assert samples(m, "bess_unit_soc_pct") == {}
