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
from tests.strategies import (
    BASE_LIMITS,
    BASE_SNAPSHOT,
    DT,
    FRACTION,
    MAX_DT,
    TARGET_ANY,
    TARGET_SPECIAL,
    Decoder,
    battery_readings,
    bms_allowed,
    decode_limits,
    design_bounds,
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

# As in tests/strategies.py: the plant and its units are decoded from ONE drawn byte string (hypothesis costs ~40 µs
# a draw), so 10,000 examples take seconds; the target, dt and the ramp's cap stay ordinary draws.
_PLANT_BYTES = st.binary(min_size=200, max_size=200)
_SAFE_CAUSES = {
    15: {"stale": ("bms",)},
    14: {"comm_loss": ("pcs",)},
    13: {"alarms": ("bms:alarm",)},
    12: {"faults": ("pcs:fault",)},
}
EPS = 1e-9


def _unit_snapshot(dec: Decoder, lim: Limits, rated: float) -> Snapshot:
    """A unit's readings, healthy or at an edge or unknown or non-finite (the scenarios' reading kinds); one
    unit in four has a cause for its own safe state."""
    soc, t_max, t_min = battery_readings(dec, lim)
    bms_c = bms_allowed(dec, 2 * rated, rated)
    bms_d = bms_allowed(dec, 2 * rated, rated)
    cause = _SAFE_CAUSES.get(dec.byte() % 48, {})
    return Snapshot(
        ts=0.0,
        soc_pct=soc,
        power_mw=0.0,
        temperature_max_c=t_max,
        temperature_min_c=t_min,
        bms_allowed_charge_mw=bms_c,
        bms_allowed_discharge_mw=bms_d,
        **cause,
    )


def _poi(dec: Decoder, scale: float) -> PoiRange | None:
    """No meter (half the time), a range, a range with a non-finite bound, or a required meter lost."""
    kind = dec.byte() % 8
    if kind < 4:
        return None
    lower, upper = -dec.span(0, 1.2) * scale, dec.span(0, 1.2) * scale
    if kind == 6:
        lower, upper = (math.nan, upper) if dec.byte() % 2 else (lower, math.inf)
    return PoiRange(lower, upper, 0.0, 0.0, 0.0, kind == 7, kind == 7, "drawn", TrimState())


@st.composite
def plants(draw):
    """(target, PlantView, units): 1-5 units, each with the plant's limits cut to its rating (or limits of its
    own), any readings, any previous setpoint; a unit out of service now and then; any mode, dt and POI range."""
    dec = Decoder(draw(_PLANT_BYTES))
    lim = decode_limits(dec)
    n = 1 + dec.byte() % 5
    ratings = [dec.span(0.05, 300) for _ in range(n)]
    units = []
    for i, rated in enumerate(ratings):
        own = dec.byte() % 4 == 0
        ulim = decode_limits(dec) if own else unit_limits(lim, rated, sum(ratings))
        snap = _unit_snapshot(dec, ulim, rated)
        kind = dec.byte() % 8
        previous = (0.0, math.nan, rated, -rated)[kind] if kind < 4 else dec.span(-1.5, 1.5) * rated
        units.append(UnitView(f"u{i}", snap, ulim, rated, dec.span(0.1, 800), previous, dec.byte() % 16 != 0))
    mode = ("auto", "auto", "auto", "manual", "stopped", "run")[dec.byte() % 6] if dec.byte() % 8 == 0 else "auto"
    scale = sum(ratings)
    how = dec.byte() % 10
    target = draw(TARGET_SPECIAL) if how == 0 else draw(TARGET_ANY) if how == 1 else draw(FRACTION) * scale
    plant = PlantView(
        lim,
        0.0,
        mode,
        draw(DT),
        draw(MAX_DT),
        ("cycle_error",) if dec.byte() % 32 == 0 else (),
        _poi(dec, scale),
        dec.span(0, 5),
    )
    return target, plant, units


def _in_service(u: UnitView) -> bool:
    s = u.snapshot
    return u.available and not (s.stale or s.comm_loss or s.alarms or s.faults)


def _unit_cap(u: UnitView, plant: PlantView, sign: float) -> float:
    """The most a unit can give `sign`'s way this cycle, by limit() itself (target far beyond every bound)."""
    return abs(
        limit(sign * 1e15, u.snapshot, u.limits, u.previous_mw, plant.dt_s, plant.mode, plant.max_dt_s).setpoint_mw
    )


@given(plants())
def test_allocation_properties(scenario) -> None:
    target, plant, units = scenario
    a = allocate(target, plant, units)
    s = a.setpoint_mw
    assert math.isfinite(s) and s == sum(u.setpoint_mw for u in a.units) + 0.0
    assert a.binding in SITE_BINDINGS and all(u.binding in SITE_BINDINGS for u in a.units)
    assert a.lower_mw <= min(s, 0.0) and max(s, 0.0) <= a.upper_mw
    _check_units(a, target, plant, units)
    _check_site(a, target, plant, units)


def _check_units(a: Allocation, target: float, plant: PlantView, units: list[UnitView]) -> None:
    """Every unit within its own limits (a fixed point of its limit(), within the bounds written from DESIGN.md),
    exactly 0 when out of service, never against the target's direction (no power circulating)."""
    t = target if math.isfinite(target) else 0.0
    assert len(a.units) == len(units)
    for u, share in zip(units, a.units):
        p = share.setpoint_mw
        assert math.isfinite(p) and share.unit == u.name
        if not _in_service(u) or plant.mode != "auto" and plant.mode != "manual":
            assert p == 0.0
            assert not share.available or plant.mode not in ("auto", "manual")
            continue
        assert share.available
        again = limit(p, u.snapshot, u.limits, u.previous_mw, plant.dt_s, plant.mode, plant.max_dt_s)
        assert again.setpoint_mw == p, f"unit {u.name}: {p} MW is not within its own limits"
        chg_max, dis_max = design_bounds(u.snapshot, u.limits)
        assert -chg_max * (1 + EPS) - EPS <= p <= dis_max * (1 + EPS) + EPS
        assert p * t >= 0.0


def _check_site(a: Allocation, target: float, plant: PlantView, units: list[UnitView]) -> None:
    """The POI range and the site limits hold; the units take the plant setpoint whenever they can; the
    binding says what happened."""
    s, t = a.setpoint_mw, (target if math.isfinite(target) else 0.0)
    lim = plant.limits
    assert s * t >= 0.0 and abs(s) <= abs(t)
    assert -lim.p_charge_max_mw <= s <= lim.p_discharge_max_mw
    if plant.poi is None:
        assert abs(s) <= lim.grid_limit_mw
    else:
        lower = plant.poi.lower_mw if math.isfinite(plant.poi.lower_mw) else 0.0
        upper = plant.poi.upper_mw if math.isfinite(plant.poi.upper_mw) else 0.0
        assert min(lower, 0.0) <= s <= max(upper, 0.0), "the site setpoint exceeds the POI range"
    live = [u for u in units if _in_service(u)]
    plant_safe = plant.mode not in ("auto", "manual") or plant.alarms or (plant.poi is not None and plant.poi.safe)
    if plant_safe or not live:
        assert s == 0.0 and a.lower_mw == a.upper_mw == 0.0
        assert a.binding in ("mode_stopped", "comm_loss", "alarm", "unit_unavailable", "stale")
        return
    assert abs(s) <= abs(a.plant_mw) and s * a.plant_mw >= 0.0
    sign = 1.0 if a.plant_mw > 0 else -1.0
    caps = sum(_unit_cap(u, plant, sign) for u in live)
    tol = EPS * (1.0 + caps + abs(a.plant_mw))
    if caps >= abs(a.plant_mw) + tol:
        assert abs(s - a.plant_mw) <= tol, "the units could take the plant setpoint but did not"
    else:  # they cannot: every unit gives all it can
        assert abs(abs(s) - min(caps, abs(a.plant_mw))) <= tol
    if a.binding == "none":
        assert s == pytest.approx(t, rel=EPS, abs=EPS)
    elif a.binding == "unit_unavailable":
        assert len(live) < len(units)
    elif a.binding == "poi_limit":
        assert a.plant_mw in (a.lower_mw, a.upper_mw) or plant.poi is not None
    if a.binding != "none":
        assert a.reasons


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
    dec = Decoder(draw(_PLANT_BYTES))
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
