"""The limit function: OpenEMS-style tables (input -> expected setpoint and binding) and hypothesis properties."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given

from controller.config import Limits
from controller.cycle.limits import BINDINGS, Decision, limit
from controller.cycle.snapshot import Snapshot
from tests.fixtures.limit_checks import check_decision
from tests.strategies import BASE_LIMITS, BASE_SNAPSHOT, effective_dt, scenarios


@dataclass
class Case:
    name: str
    target: float
    setpoint: float
    binding: str
    snap: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    previous: float | None = None  # None: previous = expected setpoint, so the ramp stays out of the way
    dt: float = 1.0
    mode: str = "auto"


CASES = [
    Case("target passes", 5, 5, "none"),
    Case("charge target passes", -5, -5, "none"),
    Case("zero target", 0, 0, "none", previous=7),
    Case("discharge above configured max", 15, 9, "p_discharge_max"),
    Case("charge above configured max", -15, -8, "p_charge_max"),
    Case("grid limit discharge", 8, 7, "grid_limit", limits={"grid_limit_mw": 7}),
    Case("grid limit charge", -7.5, -7, "grid_limit", limits={"grid_limit_mw": 7}),
    Case("configured max wins a tie with the grid", 10, 9, "p_discharge_max", limits={"grid_limit_mw": 9}),
    Case("BMS allowed discharge", 6, 4, "bms_allowed_discharge", snap={"bms_allowed_discharge_mw": 4}),
    Case("BMS allowed discharge unknown", 6, 0, "bms_allowed_discharge", snap={"bms_allowed_discharge_mw": None}),
    Case("BMS allowed discharge NaN", 6, 0, "bms_allowed_discharge", snap={"bms_allowed_discharge_mw": math.nan}),
    Case("BMS allowed discharge negative", 6, 0, "bms_allowed_discharge", snap={"bms_allowed_discharge_mw": -2}),
    Case("BMS allowed charge", -6, -3, "bms_allowed_charge", snap={"bms_allowed_charge_mw": 3}),
    Case("BMS allowed charge unknown", -6, 0, "bms_allowed_charge", snap={"bms_allowed_charge_mw": None}),
    Case("BMS charge unknown does not stop discharge", 6, 6, "none", snap={"bms_allowed_charge_mw": None}),
    Case("discharge at soc_min", 5, 0, "soc_min", snap={"soc_pct": 10}),
    Case("discharge below soc_min", 5, 0, "soc_min", snap={"soc_pct": 3}),
    Case("charge at soc_min", -5, -5, "none", snap={"soc_pct": 10}),
    Case("charge at soc_max", -5, 0, "soc_max", snap={"soc_pct": 90}),
    Case("charge above soc_max", -5, 0, "soc_max", snap={"soc_pct": 97}),
    Case("discharge at soc_max", 5, 5, "none", snap={"soc_pct": 90}),
    Case("SoC unknown: no discharge", 5, 0, "soc_min", snap={"soc_pct": None}),
    Case("SoC unknown: no charge", -5, 0, "soc_max", snap={"soc_pct": None}),
    Case("discharge taper half way", 9, 4.5, "soc_taper", snap={"soc_pct": 12.5}),
    Case("charge taper half way", -8, -4, "soc_taper", snap={"soc_pct": 87.5}),
    Case("taper does not bind a small target", 2, 2, "none", snap={"soc_pct": 12.5}),
    Case("no taper with a zero band", 9, 9, "none", snap={"soc_pct": 10.5}, limits={"soc_taper_band_pct": 0}),
    Case("temperature derate half way", 9, 4.5, "temperature", snap={"temperature_max_c": 50}),
    Case("temperature derate on charge", -8, -4, "temperature", snap={"temperature_max_c": 50}),
    Case("temperature at t_max", 5, 0, "temperature", snap={"temperature_max_c": 55}),
    Case("temperature above t_max", -5, 0, "temperature", snap={"temperature_max_c": 70}),
    Case("temperature unknown", 5, 0, "temperature", snap={"temperature_max_c": None}),
    Case("too cold to charge", -5, 0, "temperature", snap={"temperature_min_c": -5}),
    Case("too cold to charge, discharge allowed", 5, 5, "none", snap={"temperature_min_c": -5}),
    Case("minimum temperature unknown: no charge", -5, 0, "temperature", snap={"temperature_min_c": None}),
    Case(
        "strictest wins: temperature over BMS over config",
        12,
        4.5,
        "temperature",
        snap={"temperature_max_c": 50, "bms_allowed_discharge_mw": 6},
    ),
    Case("ramp slows an increase", 9, 5, "ramp", previous=0, dt=1),
    Case("ramp slows an increase of charge", -8, -3.5, "ramp", previous=-1, dt=0.5),
    Case("ramp after a clip", 15, 5, "ramp", previous=0, dt=1),
    Case("a decrease is never slowed", 2, 2, "none", previous=9, dt=0.1),
    Case("a safety limit is never slowed", 9, 4.5, "temperature", snap={"temperature_max_c": 50}, previous=9, dt=0.1),
    Case("sign change goes through 0 then ramps", -8, -5, "ramp", previous=5, dt=1),
    Case("sign change within one ramp step", -3, -3, "none", previous=5, dt=1),
    Case("no time passed: no increase", 3, 2, "ramp", previous=2, dt=0),
    Case("mode stopped", 5, 0, "mode_stopped", mode="stopped", previous=9, dt=0.1),
    Case("unknown mode is stopped", 5, 0, "mode_stopped", mode="run", previous=9),
    Case("comm loss", 5, 0, "comm_loss", snap={"comm_loss": ("pcs",)}, previous=9, dt=0.1),
    Case("stale", -5, 0, "stale", snap={"stale": ("bms",)}, previous=-8, dt=0.1),
    Case("alarm", 5, 0, "alarm", snap={"alarms": ("bms:overvoltage",)}, previous=9),
    Case("fault", 5, 0, "alarm", snap={"faults": ("pcs:fault",)}, previous=9),
    Case("stopped before comm loss", 5, 0, "mode_stopped", mode="stopped", snap={"comm_loss": ("pcs",)}),
    Case("comm loss before stale", 5, 0, "comm_loss", snap={"comm_loss": ("pcs",), "stale": ("bms",)}),
    Case("stale before alarm", 5, 0, "stale", snap={"stale": ("bms",), "alarms": ("x",)}),
    Case("NaN target", math.nan, 0, "none", previous=0),
    Case("infinite target", math.inf, 0, "none", previous=3, dt=0.1),
    Case("manual mode is limited like auto", 15, 9, "p_discharge_max", mode="manual"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(case: Case) -> None:
    snap = Snapshot(**{**BASE_SNAPSHOT, **case.snap})
    lim = Limits(**{**BASE_LIMITS, **case.limits})
    previous = case.setpoint if case.previous is None else case.previous
    d = limit(case.target, snap, lim, previous, case.dt, case.mode)
    assert d.setpoint_mw == pytest.approx(case.setpoint, abs=1e-12)
    assert d.binding == case.binding
    assert d.binding in BINDINGS
    assert d.lower_mw <= 0 <= d.upper_mw
    if case.binding != "none":
        assert d.reasons, "a binding limit always comes with a reason"


def test_reasons_strictest_first() -> None:
    snap = Snapshot(**{**BASE_SNAPSHOT, "temperature_max_c": 50, "bms_allowed_discharge_mw": 6})
    d = limit(12, snap, Limits(**BASE_LIMITS), 0, 0.5)
    assert d.binding == "ramp"
    assert [r.split(" ")[0] for r in d.reasons] == ["ramp", "temperature", "BMS", "configured"]
    assert "temperature 50 °C above t_derate 45 °C" in d.reasons[1]


def test_safe_state_lists_every_cause() -> None:
    snap = Snapshot(**{**BASE_SNAPSHOT, "comm_loss": ("pcs",), "stale": ("bms",), "faults": ("pcs:fault",)})
    d = limit(5, snap, Limits(**BASE_LIMITS), 9, 1, "stopped")
    assert (d.setpoint_mw, d.binding, d.lower_mw, d.upper_mw) == (0.0, "mode_stopped", 0.0, 0.0)
    assert len(d.reasons) == 4 and "pcs:fault" in d.reasons[3]


def test_nan_target_is_explained() -> None:
    d = limit(math.nan, Snapshot(**BASE_SNAPSHOT), Limits(**BASE_LIMITS), 0, 1)
    assert d.target_mw == 0.0 and d.setpoint_mw == 0.0
    assert any("not a finite number" in r for r in d.reasons)


def test_a_stalled_loop_ramps_by_the_cap_not_by_the_stall() -> None:
    """Issue 11: the ramp used the real elapsed time, so after a 5 s loop stall the setpoint jumped 0 -> 10 MW
    in one write. With the cycle's cap (two periods of 0.2 s) it moves 5 MW/s * 0.4 s = 2 MW, and says why."""
    lim = Limits(**{**BASE_LIMITS, "p_discharge_max_mw": 10, "grid_limit_mw": 10})
    snap = Snapshot(**BASE_SNAPSHOT)
    assert limit(10, snap, lim, 0.0, 5.0).setpoint_mw == 10.0  # no cap: what the stall earned, at once
    d = limit(10, snap, lim, 0.0, 5.0, max_dt_s=0.4)
    assert d.setpoint_mw == pytest.approx(2.0) and d.binding == "ramp"
    assert "5 s elapsed, capped" in d.reasons[0]
    # charge the same way; a decrease of |P| is still immediate however long the stall
    assert limit(-8, snap, lim, 0.0, 5.0, max_dt_s=0.4).setpoint_mw == pytest.approx(-2.0)
    assert limit(0, snap, lim, 9.0, 5.0, max_dt_s=0.4).setpoint_mw == 0.0
    # a normal cycle is not touched by the cap
    assert limit(10, snap, lim, 0.0, 0.2, max_dt_s=0.4).setpoint_mw == pytest.approx(1.0)


@pytest.mark.parametrize("max_dt", [math.nan, math.inf, -1.0, 0.0])
def test_a_nonsense_cap_allows_no_increase(max_dt: float) -> None:
    d = limit(5, Snapshot(**BASE_SNAPSHOT), Limits(**BASE_LIMITS), 1.0, 5.0, max_dt_s=max_dt)
    assert d.setpoint_mw == 1.0 and d.binding == "ramp"


def test_decision_is_frozen() -> None:
    d = limit(1, Snapshot(**BASE_SNAPSHOT), Limits(**BASE_LIMITS), 1, 1)
    assert isinstance(d, Decision)
    with pytest.raises(AttributeError):
        d.setpoint_mw = 5  # type: ignore[misc]


# ---------------------------------------------------------------- properties

# the scenarios and the bounds they are checked against: tests/strategies.py; the checks: tests/fixtures/limit_checks.py


@given(scenarios())
def test_limit_properties(scenario) -> None:
    """One scenario, every property: the bounds, the safe state, SoC edges, monotone approach, the binding,
    and that cycle after cycle with the same inputs the setpoint reaches the limited target."""
    target, snap, lim, previous, dt, mode, max_dt = scenario
    d = limit(target, snap, lim, previous, dt, mode, max_dt_s=max_dt)
    check_decision(d, target, snap, lim, previous, effective_dt(dt, max_dt), mode)
    _check_convergence(d, target, snap, lim, previous, effective_dt(dt, max_dt), mode)


def _check_convergence(first: Decision, target, snap: Snapshot, lim: Limits, previous, dt, mode) -> None:
    """Holding the inputs, each cycle gets no farther from the limited target, and it is reached within the
    ramp's number of steps (dt raised where needed so that this takes at most ~20 cycles)."""
    clipped = min(max(first.target_mw, first.lower_mw), first.upper_mw)
    dt = max(dt, 0.01, (abs(clipped) + abs(previous)) / (20 * lim.ramp_mw_per_s))
    steps = math.ceil(abs(clipped) / (lim.ramp_mw_per_s * dt)) + 1
    p, distance = previous, abs(previous - clipped)
    for _ in range(steps):
        d = limit(target, snap, lim, p, dt, mode)
        assert (d.lower_mw, d.upper_mw) == (first.lower_mw, first.upper_mw)
        assert abs(d.setpoint_mw - clipped) <= distance
        p, distance = d.setpoint_mw, abs(d.setpoint_mw - clipped)
    assert p == clipped
