"""The POI closed loop: tables of one update (reading + state -> range, trim, fallback), a closed-loop property
against a plant with an unknown aux load behind the meter, and the loop through allocate() on two units."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import Limits
from controller.cycle.allocation import PlantView, UnitView, allocate, unit_limits
from controller.cycle.poi import PoiConfig, PoiRange, PoiReading, TrimState, poi_range
from controller.cycle.snapshot import Snapshot
from tests.strategies import Decoder

CFG = dict(
    export_limit_mw=10,
    import_limit_mw=8,
    gain_per_s=0.5,
    max_step_mw=0.25,
    max_trim_mw=1.0,
    settle_margin_mw=0.05,
    fallback_margin_mw=0.5,
    stale_after_s=3.0,
)
NOW = 1000.0


@dataclass
class Case:
    name: str
    measured: float | None  # the meter's power, + = export
    trims: tuple[float, float]  # (export, import) after the update
    lower: float
    upper: float
    state: dict = field(default_factory=dict)  # TrimState before, over (trims 0, the range they give)
    setpoint: float | None = 0.0  # the plant setpoint last cycle
    plant: float | None = None  # the plant's own measured power then
    reading: dict = field(default_factory=dict)
    cfg: dict = field(default_factory=dict)
    fallback: bool = False
    safe: bool = False


# export 10 MW, import 8 MW, margin 0.05 MW: with both trims at 0 the range is [-7.95, 9.95]
CASES = [
    Case("inside the limits, plant elsewhere: trims held", 4.0, (0, 0), -7.95, 9.95),
    Case("above the export goal: tightened", 10.2, (-0.125, 0), -7.95, 9.825),
    Case("step capped", 12.0, (-0.25, 0), -7.95, 9.7),
    Case(
        "one side's correction leaves the other alone", 10.2, (-0.125, 0.3), -7.65, 9.825, state={"import_trim_mw": 0.3}
    ),
    Case(
        "plant on the range, aux load keeps export low: loosened",
        9.65,
        (0.15, 0),
        -7.95,
        10.1,
        setpoint=9.95,
        plant=9.95,
    ),
    Case(
        "plant still ramping to the range: the trim sees the offset, not the lag",
        7.7,
        (0.15, 0),
        -7.95,
        10.1,
        setpoint=9.95,
        plant=8.0,
    ),
    Case(
        "plant ramping down: no tightening for what is on its way out",
        10.3,
        (0, 0),
        -7.95,
        9.95,
        setpoint=6.0,
        plant=9.0,
    ),
    Case("plant below the range: no loosening (anti-windup)", 9.5, (0, 0), -7.95, 9.95, setpoint=9.8, plant=9.8),
    Case("the meter alone never loosens", 9.65, (0, 0), -7.95, 9.95, setpoint=9.95),
    Case(
        "trim capped in total",
        9.0,
        (1.0, 0),
        -7.95,
        10.95,
        state={"export_trim_mw": 0.9, "upper_mw": 10.85},
        setpoint=10.85,
        plant=10.85,
    ),
    Case("below the import goal: tightened", -8.3, (0, 0.175), -7.775, 9.95),
    Case(
        "plant on the import range, site generation: loosened",
        -7.5,
        (0, -0.225),
        -8.175,
        9.95,
        setpoint=-7.95,
        plant=-7.95,
    ),
    Case(
        "the same reading again: integrated once",
        10.2,
        (0.3, 0),
        -7.95,
        10.25,
        state={"export_trim_mw": 0.3, "reading_ts": NOW},
    ),
    Case(
        "a slow meter: integrates the time since its last reading",
        10.15,
        (-0.15, 0),
        -7.95,
        9.8,
        state={"reading_ts": NOW - 1.5},
        cfg={"max_step_mw": 1},
    ),
    Case(
        "a stall integrates at most max_dt_s",
        10.15,
        (-0.2, 0),
        -7.95,
        9.75,
        state={"reading_ts": NOW - 60.0},
        cfg={"max_step_mw": 1},
    ),
    Case(
        "a trim past the limit still leaves 0 MW allowed",
        12.0,
        (-10.25, 0),
        -7.95,
        0.0,
        state={"export_trim_mw": -10.0},
        cfg={"max_trim_mw": 20, "export_limit_mw": 0.1},
    ),
    Case("a non-finite trim in the state counts as 0", 4.0, (0, 0), -7.95, 9.95, state={"export_trim_mw": math.nan}),
    Case("meter stale: open loop with the margin", 4.0, (0, 0), -7.5, 9.5, reading={"stale": True}, fallback=True),
    Case("meter power unknown", None, (0, 0), -7.5, 9.5, fallback=True),
    Case("meter power NaN", math.nan, (0, 0), -7.5, 9.5, fallback=True),
    Case("meter power infinite", math.inf, (0, 0), -7.5, 9.5, fallback=True),
    Case("meter reading too old", 4.0, (0, 0), -7.5, 9.5, reading={"ts": NOW - 3.5}, fallback=True),
    Case("meter reading without a time", 4.0, (0, 0), -7.5, 9.5, reading={"ts": None}, fallback=True),
    Case(
        "meter lost: the trims are held for its return",
        4.0,
        (0.4, -0.2),
        -7.5,
        9.5,
        state={"export_trim_mw": 0.4, "import_trim_mw": -0.2},
        reading={"stale": True},
        fallback=True,
    ),
    Case(
        "meter required and lost: safe state", None, (0, 0), -7.5, 9.5, cfg={"required": True}, fallback=True, safe=True
    ),
    Case(
        "a margin wider than the limit leaves 0 MW",
        None,
        (0, 0),
        0.0,
        0.0,
        cfg={"fallback_margin_mw": 20},
        fallback=True,
    ),
]


def _update(case: Case) -> PoiRange:
    cfg = PoiConfig(**{**CFG, **case.cfg})
    state = TrimState(**{"lower_mw": -7.95, "upper_mw": 9.95, **case.state})
    reading = PoiReading(**{"power_mw": case.measured, "ts": NOW, **case.reading})
    return poi_range(reading, state, cfg, case.setpoint, NOW, 1.0, case.plant)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(case: Case) -> None:
    r = _update(case)
    assert (r.export_trim_mw, r.import_trim_mw) == (pytest.approx(case.trims[0]), pytest.approx(case.trims[1]))
    assert (r.lower_mw, r.upper_mw) == (pytest.approx(case.lower), pytest.approx(case.upper))
    assert (r.fallback, r.safe) == (case.fallback, case.safe)
    assert r.lower_mw <= 0.0 <= r.upper_mw
    assert (r.state.export_trim_mw, r.state.import_trim_mw) == (r.export_trim_mw, r.import_trim_mw)
    assert (r.state.lower_mw, r.state.upper_mw) == (r.lower_mw, r.upper_mw)
    assert r.reason
    if case.fallback:
        assert r.measured_mw is None and "POI meter" in r.reason


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_config_refuses_a_bound_that_switches_the_loop_off(bad: float) -> None:
    with pytest.raises(ValueError, match="max_trim_mw"):
        PoiConfig(**{**CFG, "max_trim_mw": bad})


# ---------------------------------------------------------------- the closed loop


@dataclass(frozen=True)
class Loop:
    cfg: PoiConfig
    aux_mw: float  # what lies between the plant and the meter (load + losses > 0; generation < 0)
    lag: float  # the plant moves this share of the way to its setpoint each cycle
    dt_s: float
    targets: tuple[float, float]
    p_max_mw: float
    plant_known: bool  # the units' own power readings reach the loop (else the meter alone: tighten only)


def _target(dec: Decoder, p_max: float) -> float:
    """Full export, full import, nothing, or anywhere in between."""
    kind = dec.byte() % 5
    return (2 * p_max, -2 * p_max, 0.0)[kind] if kind < 3 else dec.span(-2, 2) * p_max


@st.composite
def loops(draw) -> Loop:
    """A loop and its plant, decoded from one drawn byte string (as in test_limits.py: a draw costs ~40 µs)."""
    dec = Decoder(draw(st.binary(min_size=32, max_size=32)))
    export, imp = dec.span(1, 200), dec.span(1, 200)
    max_trim = dec.span(0.02, 0.3) * min(export, imp)
    margin = dec.span(0.02, 0.2) * max_trim
    dt = dec.span(0.2, 2)
    cfg = PoiConfig(
        export,
        imp,
        gain_per_s=dec.span(0.1, 0.8) / dt,
        max_step_mw=dec.span(0.05, 1) * max_trim,
        max_trim_mw=max_trim,
        settle_margin_mw=margin,
        fallback_margin_mw=margin,
        stale_after_s=10.0,
        max_dt_s=dt,
    )
    # an aux load/loss or site generation the trim can make up for (with its margin); none at all now and then
    aux = 0.0 if dec.byte() % 8 == 0 else dec.span(-1, 1) * 0.95 * (max_trim - margin)
    p_max = max(export, imp) * dec.span(1.05, 2)
    return Loop(cfg, aux, dec.span(0.3, 1), dt, (_target(dec, p_max), _target(dec, p_max)), p_max, dec.byte() % 2 == 0)


# cycles to settle in, then cycles it must stay within the limit. The slowest drawn loop (a tenth of the error
# per cycle, an offset 50 times the margin, the laziest plant) took 43 cycles in 6,000 draws.
SETTLE, HOLD = 60, 15


@given(loops())
def test_measured_poi_power_settles_within_the_limit(loop: Loop) -> None:
    """Against a plant with a first-order lag and an unknown constant aux load behind the meter: for a target
    held, the measured POI power is within [-import, export] after SETTLE cycles and stays there; the trims
    never move more than max_step_mw in a cycle nor beyond max_trim_mw; the range always allows 0 MW."""
    cfg = loop.cfg
    state, actual, setpoint, now = TrimState(), 0.0, None, 0.0
    for target in loop.targets:
        for k in range(SETTLE + HOLD):
            now += loop.dt_s
            measured = actual - loop.aux_mw
            tol = 1e-9 * (1 + cfg.export_limit_mw + cfg.import_limit_mw)
            if k >= SETTLE:
                assert -cfg.import_limit_mw - tol <= measured <= cfg.export_limit_mw + tol, (
                    f"cycle {k} after a step to {target:g} MW: measured {measured:g} MW"
                )
            # where the offset helps (a load behind the meter on export, generation on import), the trim that
            # makes use of it never overshoots: that limit holds in every cycle, settling included
            if loop.aux_mw >= 0:
                assert measured <= cfg.export_limit_mw + tol, f"cycle {k}: overshoot to {measured:g} MW"
            if loop.aux_mw <= 0:
                assert measured >= -cfg.import_limit_mw - tol, f"cycle {k}: overshoot to {measured:g} MW"
            r = poi_range(
                PoiReading(measured, now), state, cfg, setpoint, now, loop.dt_s, actual if loop.plant_known else None
            )
            assert not r.fallback and r.lower_mw <= 0.0 <= r.upper_mw
            for trim, before in ((r.export_trim_mw, state.export_trim_mw), (r.import_trim_mw, state.import_trim_mw)):
                assert abs(trim) <= cfg.max_trim_mw
                assert abs(trim - before) <= cfg.max_step_mw * (1 + 1e-12)
            setpoint = min(max(target, r.lower_mw, -loop.p_max_mw), r.upper_mw, loop.p_max_mw)
            actual += loop.lag * (setpoint - actual)
            state = r.state


@pytest.mark.parametrize(
    "power, stale",
    [(None, False), (math.nan, False), (math.inf, False), (-math.inf, False), (4.0, True), (math.nan, True)],
)
@pytest.mark.parametrize("trim", [-5.0, -1.0, -0.3, 0.0, 0.7, 5.0, math.nan])
@pytest.mark.parametrize("required", [False, True])
def test_meter_loss_falls_back(power, stale, trim, required) -> None:
    """Whatever the trim was: an unknown reading (or a stale meter) gives the open-loop range with the margin,
    fallback set, safe exactly when the meter is required; the trim is handed back (within its bounds)."""
    cfg = PoiConfig(**{**CFG, "required": required})
    r = poi_range(PoiReading(power, NOW, stale), TrimState(trim, -trim), cfg, 3.0, NOW, 1.0, 3.0)
    assert r.fallback and r.safe == required and r.measured_mw is None
    assert (r.lower_mw, r.upper_mw) == (-7.5, 9.5)
    held = 0.0 if math.isnan(trim) else min(max(trim, -1.0), 1.0)
    assert (r.state.export_trim_mw, r.state.import_trim_mw) == (held, -held + 0.0)


def test_trim_through_allocate_brings_the_poi_back_within_the_limit() -> None:
    """Two 6 MW units, an export limit of 10 MW and 0.3 MW of aux load the plant does not know: the trim lets
    the units make up for it (the POI settles just inside 10 MW, binding poi_limit); site generation of 0.4 MW
    instead is held back; then the meter is lost and the open-loop fallback holds the plant at 9.5 MW."""
    plant = Limits(
        p_charge_max_mw=12, p_discharge_max_mw=12, soc_min_pct=10, soc_max_pct=90, grid_limit_mw=10, ramp_mw_per_s=2
    )
    cfg = PoiConfig(10, 10, gain_per_s=0.5, max_step_mw=0.2, max_trim_mw=1.0, settle_margin_mw=0.02)
    state, setpoints, now = TrimState(), [0.0, 0.0], 0.0
    for aux in (0.3, -0.4):
        for _ in range(80):
            now += 1.0
            measured = sum(setpoints) - aux  # the units follow their setpoints within the cycle
            r = poi_range(PoiReading(measured, now), state, cfg, sum(setpoints), now, 1.0, sum(setpoints))
            a = allocate(15.0, PlantView(plant, now, dt_s=1.0, poi=r), _units(plant, setpoints))
            setpoints, state = [u.setpoint_mw for u in a.units], r.state
        assert 10 - 0.03 <= sum(setpoints) - aux <= 10.0
        assert a.binding == "poi_limit" and r.export_trim_mw == pytest.approx(aux, abs=0.005)
    r = poi_range(PoiReading(None, now), state, cfg, sum(setpoints), now + 1, 1.0)
    a = allocate(15.0, PlantView(plant, now + 1, dt_s=1.0, poi=r), _units(plant, setpoints))
    assert r.fallback and a.setpoint_mw == pytest.approx(9.5) and a.binding == "poi_limit"
    assert any("POI meter" in reason for reason in a.reasons)


def _units(plant: Limits, previous: list[float]) -> list[UnitView]:
    snap = Snapshot(
        ts=0.0,
        soc_pct=50.0,
        temperature_max_c=25.0,
        temperature_min_c=20.0,
        bms_allowed_charge_mw=6.0,
        bms_allowed_discharge_mw=6.0,
    )
    return [UnitView(f"u{i + 1}", snap, unit_limits(plant, 6.0, 12.0), 6.0, 12.0, p) for i, p in enumerate(previous)]
