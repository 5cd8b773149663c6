"""Allocation over a plant's units: OpenEMS-style tables (inputs -> expected setpoints and bindings), then
hypothesis properties (shares sum, unit limits, unavailable units, balancing, POI, non-finite inputs, one unit
equals limit())."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import Limits
from controller.cycle.allocation import SITE_BINDINGS, Allocation, PlantView, UnitView, allocate, unit_limits
from controller.cycle.limits import limit
from controller.cycle.poi import PoiRange, TrimState
from controller.cycle.snapshot import Snapshot
from tests.fixtures.limit_checks import EPS, check_site, check_units
from tests.strategies import (
    BASE_LIMITS,
    BASE_SNAPSHOT,
    FRACTION,
    PLANT_BYTES,
    Decoder,
    decode_limits,
    plants,
    scenarios,
)

# a 2 x 5 MW / 10 MWh plant: the limit tables' plant with 10 MW each way and the ramp wide open unless a case is
# about it
PLANT = dict(BASE_LIMITS, p_charge_max_mw=10, p_discharge_max_mw=10, ramp_mw_per_s=100, grid_limit_mw=10)
UNIT_SNAP = dict(BASE_SNAPSHOT, ts=0.0, bms_allowed_charge_mw=10.0, bms_allowed_discharge_mw=10.0)


def poi(lower: float, upper: float, safe: bool = False) -> PoiRange:
    return PoiRange(lower, upper, 0.0, 0.0, None if safe else 0.0, safe, safe, "test range", TrimState())


@dataclass
class Case:
    name: str
    target: float
    setpoint: float
    binding: str
    units: list[tuple[float, str]]  # expected (setpoint, binding) per unit
    snaps: list[dict] = field(default_factory=lambda: [{}, {}])  # per unit, over UNIT_SNAP
    previous: list[float] | None = None  # None: each unit's expected setpoint (the ramp stays out of the way)
    plant: dict = field(default_factory=dict)  # over PLANT
    view: dict = field(default_factory=dict)  # PlantView fields
    available: list[bool] | None = None
    rated: float = 5.0
    dt: float = 1.0


CASES = [
    Case("two equal units share alike", 6, 6, "none", [(3, "none"), (3, "none")]),
    Case("two equal units charge alike", -6, -6, "none", [(-3, "none"), (-3, "none")]),
    Case("zero target", 0, 0, "none", [(0, "none"), (0, "none")], previous=[4, 4]),
    Case(
        "site limit binds before the split", 12, 10, "p_discharge_max", [(5, "p_discharge_max"), (5, "p_discharge_max")]
    ),
    Case(
        "fuller unit discharges more",
        6,
        6,
        "none",
        [(2.4, "none"), (3.6, "none")],
        snaps=[{"soc_pct": 40}, {"soc_pct": 60}],
    ),
    Case(
        "fuller unit charges less",
        -6,
        -6,
        "none",
        [(-3.6, "none"), (-2.4, "none")],
        snaps=[{"soc_pct": 40}, {"soc_pct": 60}],
    ),
    Case(
        "one full one empty: the full one discharges alone",
        4,
        4,
        "none",
        [(4, "none"), (0, "soc_min")],
        snaps=[{"soc_pct": 90}, {"soc_pct": 10}],
    ),
    Case(
        "one full one empty: the plant falls short by the empty one",
        9,
        5,
        "soc_min",
        [(5, "p_discharge_max"), (0, "soc_min")],
        snaps=[{"soc_pct": 90}, {"soc_pct": 10}],
    ),
    Case(
        "one full one empty: the empty one charges alone",
        -9,
        -5,
        "soc_max",
        [(0, "soc_max"), (-5, "p_charge_max")],
        snaps=[{"soc_pct": 90}, {"soc_pct": 10}],
    ),
    Case(
        "one unit stale: the other takes what it can",
        8,
        5,
        "unit_unavailable",
        [(5, "p_discharge_max"), (0, "stale")],
        snaps=[{}, {"stale": ("bms2",)}],
        previous=[4, 4],
    ),
    Case(
        "one unit stale: the other takes all of a small target",
        4,
        4,
        "none",
        [(4, "none"), (0, "stale")],
        snaps=[{}, {"stale": ("bms2",)}],
    ),
    Case("one unit alarmed", -3, -3, "none", [(0, "alarm"), (-3, "none")], snaps=[{"alarms": ("bms1:x",)}, {}]),
    Case(
        "one unit taken out of service",
        7,
        5,
        "unit_unavailable",
        [(0, "unit_unavailable"), (5, "p_discharge_max")],
        available=[False, True],
    ),
    Case(
        "a lost unit's BMS missing from the plant's sum",
        8,
        4,
        "unit_unavailable",
        [(4, "bms_allowed_discharge"), (0, "comm_loss")],
        snaps=[{"bms_allowed_discharge_mw": 4}, {"comm_loss": ("pcs2",)}],
    ),
    Case(
        "every unit stale: the plant's safe state",
        5,
        0,
        "unit_unavailable",
        [(0, "stale"), (0, "stale")],
        snaps=[{"stale": ("bms1",)}, {"stale": ("bms2",)}],
        previous=[3, 3],
    ),
    Case("POI limit binds", 9, 7, "poi_limit", [(3.5, "none"), (3.5, "none")], view={"poi": poi(-7, 7)}),
    Case("POI limit binds on charge", -9, -6, "poi_limit", [(-3, "none"), (-3, "none")], view={"poi": poi(-6, 7)}),
    Case(
        "POI range above the grid limit (aux load)",
        12,
        10.3,
        "poi_limit",
        [(5.15, "none"), (5.15, "none")],
        plant={"p_discharge_max_mw": 12},
        view={"poi": poi(-9.7, 10.3)},
        rated=6,
    ),
    Case(
        "POI meter required and lost",
        5,
        0,
        "comm_loss",
        [(0, "comm_loss"), (0, "comm_loss")],
        view={"poi": poi(-9.5, 9.5, safe=True)},
        previous=[2, 2],
    ),
    Case(
        "one unit saturated at its BMS limit, the other takes the rest",
        6,
        6,
        "none",
        [(2, "bms_allowed_discharge"), (4, "none")],
        snaps=[{"soc_pct": 60, "bms_allowed_discharge_mw": 2}, {"soc_pct": 40}],
    ),
    Case(
        "both at their BMS limits",
        -8,
        -5,
        "bms_allowed_charge",
        [(-1, "bms_allowed_charge"), (-4, "bms_allowed_charge")],
        snaps=[{"bms_allowed_charge_mw": 1}, {"bms_allowed_charge_mw": 4}],
    ),
    Case(
        "a hot unit is derated: shares follow headroom",
        7,
        7,
        "none",
        [(7 / 3, "none"), (14 / 3, "none")],
        snaps=[{"temperature_max_c": 50}, {}],
    ),
    Case(
        "a hot unit at its derating, the cool one takes the rest",
        7,
        7,
        "none",
        [(2.5, "temperature"), (4.5, "none")],
        snaps=[{"temperature_max_c": 50, "soc_pct": 70}, {"soc_pct": 30}],
    ),
    Case(
        "plant ramp, units share it",
        8,
        4,
        "ramp",
        [(2, "ramp"), (2, "ramp")],
        previous=[0, 0],
        plant={"ramp_mw_per_s": 4},
    ),
    Case(
        "a unit's own ramp, the other takes up",
        6,
        6,
        "none",
        [(3, "ramp"), (3, "none")],
        previous=[1, 3],
        plant={"ramp_mw_per_s": 4},
    ),
    Case(
        "mode stopped",
        5,
        0,
        "mode_stopped",
        [(0, "mode_stopped"), (0, "mode_stopped")],
        view={"mode": "stopped"},
        previous=[4, 4],
    ),
    Case("a plant alarm", 5, 0, "alarm", [(0, "alarm"), (0, "alarm")], view={"alarms": ("cycle_error",)}),
    Case("NaN target", math.nan, 0, "none", [(0, "none"), (0, "none")], previous=[0, 0]),
]


def _run(case: Case) -> Allocation:
    plant = Limits(**{**PLANT, **case.plant})
    previous = case.previous if case.previous is not None else [s for s, _ in case.units]
    available = case.available or [True] * len(case.units)
    r = case.rated
    units = [
        UnitView(f"u{i + 1}", Snapshot(**{**UNIT_SNAP, **snap}), unit_limits(plant, r, 2 * r), r, 2 * r, prev, ok)
        for i, (snap, prev, ok) in enumerate(zip(case.snaps, previous, available))
    ]
    return allocate(case.target, PlantView(plant, **{"dt_s": case.dt, **case.view}), units)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(case: Case) -> None:
    a = _run(case)
    assert [(round(u.setpoint_mw, 9), u.binding) for u in a.units] == [(pytest.approx(s), b) for s, b in case.units]
    assert a.setpoint_mw == pytest.approx(case.setpoint, abs=1e-9)
    assert a.binding == case.binding
    assert a.setpoint_mw == sum(u.setpoint_mw for u in a.units)
    assert a.lower_mw <= min(a.setpoint_mw, 0.0) and a.upper_mw >= max(a.setpoint_mw, 0.0)
    if case.binding != "none":
        assert a.reasons, "a binding limit always comes with a reason"
    d = a.decision()
    assert (d.setpoint_mw, d.binding, d.reasons) == (a.setpoint_mw, a.binding, a.reasons)


def test_unit_unavailable_reason_names_the_unit() -> None:
    a = _run(CASES[[c.name for c in CASES].index("one unit stale: the other takes what it can")])
    assert "u2 out of service" in a.reasons[0]
    assert any("stale readings from bms2" in r for r in a.units[1].reasons)


def test_one_unit_plant_reads_as_today() -> None:
    """A unit's own cause names the binding of a one-unit plant with nothing in service, as limit() does."""
    plant = Limits(**PLANT)
    unit = UnitView("u1", Snapshot(**{**UNIT_SNAP, "stale": ("bms",)}), plant, 10.0, 20.0, 5.0)
    a = allocate(5, PlantView(plant, dt_s=1), [unit])
    assert (a.setpoint_mw, a.binding) == (0.0, "stale")
    assert a.reasons == limit(5, unit.snapshot, plant, 5.0, 1).reasons


def test_balancing_brings_socs_together() -> None:
    """Cycle after cycle at a constant discharge, the SoC spread of two equal units only shrinks, and charging
    back it keeps shrinking: the fuller unit leads both ways."""
    plant = Limits(**PLANT)
    socs = [35.0, 65.0]
    spreads = [socs[1] - socs[0]]
    for target in [6.0] * 40 + [-6.0] * 40:
        units = [
            UnitView(f"u{i}", Snapshot(**{**UNIT_SNAP, "soc_pct": s}), unit_limits(plant, 5.0, 10.0), 5.0, 10.0)
            for i, s in enumerate(socs)
        ]
        a = allocate(target, PlantView(plant, dt_s=60), units)
        assert a.setpoint_mw == pytest.approx(target)
        # one minute at the unit's power: MW * h / MWh
        socs = [s - u.setpoint_mw / 60 / 10.0 * 100 for s, u in zip(socs, a.units)]
        spreads.append(socs[1] - socs[0])
    assert all(b <= a + 1e-12 for a, b in zip(spreads, spreads[1:]))
    assert spreads[-1] < spreads[0] / 2


# ---------------------------------------------------------------- properties

# the plants of units: tests/strategies.py; the checks on an allocation: tests/fixtures/limit_checks.py


@given(plants())
def test_allocation_properties(scenario) -> None:
    target, plant, units = scenario
    a = allocate(target, plant, units)
    s = a.setpoint_mw
    assert math.isfinite(s) and s == sum(u.setpoint_mw for u in a.units) + 0.0
    assert a.binding in SITE_BINDINGS and all(u.binding in SITE_BINDINGS for u in a.units)
    assert a.lower_mw <= min(s, 0.0) and max(s, 0.0) <= a.upper_mw
    check_units(a, target, plant, units)
    check_site(a, target, plant, units)


@given(scenarios())
def test_one_unit_equals_limit(scenario) -> None:
    """A plant of one unit whose limits are the plant's decides exactly as limit() does: setpoint, binding and
    allowed range (a one-unit site file of today runs unchanged)."""
    target, snap, lim, previous, dt, mode, max_dt = scenario
    a = allocate(target, PlantView(lim, 0.0, mode, dt, max_dt), [UnitView("u1", snap, lim, 10.0, 20.0, previous)])
    d = limit(target, snap, lim, previous, dt, mode, max_dt_s=max_dt)
    assert (a.setpoint_mw, a.binding) == (d.setpoint_mw, d.binding)
    assert (a.lower_mw, a.upper_mw) == (d.lower_mw, d.upper_mw)
    assert a.units[0].setpoint_mw == d.setpoint_mw


@st.composite
def balanced_plants(draw):
    """Units alike per MW of rating (limits cut from the plant's, BMS allowed power and previous setpoint in
    proportion to the rating, the same temperatures): only their SoCs and sizes differ."""
    dec = Decoder(draw(PLANT_BYTES))
    lim = decode_limits(dec)
    # SoCs anywhere, equal now and then (a byte's worth of values), 2-4 units
    socs = [dec.byte() % 101 if dec.byte() % 4 == 0 else dec.span(0, 100) for _ in range(2 + dec.byte() % 3)]
    ratings = [dec.span(0.05, 300) for _ in socs]
    # every unit's rating within the plant's maximum powers, so the plant's limits cut each unit alike
    lim = lim.model_copy(update={"p_charge_max_mw": max(ratings), "p_discharge_max_mw": max(ratings)})
    t_max, t_min = dec.span(lim.t_derate_c - 30, lim.t_max_c), dec.span(lim.t_min_charge_c, lim.t_derate_c)
    bms, prev = dec.span(0, 2), dec.span(-1, 1)
    units = [
        UnitView(
            f"u{i}",
            Snapshot(
                ts=0.0,
                soc_pct=soc,
                temperature_max_c=t_max,
                temperature_min_c=t_min,
                bms_allowed_charge_mw=bms * r,
                bms_allowed_discharge_mw=bms * r,
            ),
            unit_limits(lim, r, sum(ratings)),
            r,
            dec.span(0.1, 4) * r,
            prev * r,
        )
        for i, (soc, r) in enumerate(zip(socs, ratings))
    ]
    target = draw(FRACTION) * sum(ratings)
    return target, PlantView(lim, 0.0, "auto", dec.span(0, 5), None, (), None, dec.span(0, 5)), units


@given(balanced_plants())
def test_balancing_pulls_socs_together(scenario) -> None:
    """Per MW of rating, a fuller unit discharges at least as much as an emptier one and charges at most as much."""
    target, plant, units = scenario
    a = allocate(target, plant, units)
    per_mw = [(u.snapshot.soc_pct, share.setpoint_mw / u.rated_mw) for u, share in zip(units, a.units)]
    for soc_i, p_i in per_mw:
        for soc_j, p_j in per_mw:
            if soc_i >= soc_j:  # i is the fuller
                tol = EPS * (1 + abs(p_i) + abs(p_j))
                if a.setpoint_mw > 0:
                    assert p_i >= p_j - tol
                elif a.setpoint_mw < 0:
                    assert -p_i <= -p_j + tol
