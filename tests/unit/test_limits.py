"""The limit function: OpenEMS-style tables (input -> expected setpoint and binding) and hypothesis properties."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import Limits
from controller.cycle.limits import BINDINGS, SAFE_STATES, Decision, limit
from controller.cycle.snapshot import Snapshot

BASE_LIMITS = dict(
    p_charge_max_mw=8,
    p_discharge_max_mw=9,
    soc_min_pct=10,
    soc_max_pct=90,
    soc_taper_band_pct=5,
    t_derate_c=45,
    t_max_c=55,
    t_min_charge_c=0,
    ramp_mw_per_s=5,
    grid_limit_mw=12,
    stale_after_s=3,
)
BASE_SNAPSHOT = dict(
    ts=1_764_079_200.0,
    soc_pct=50.0,
    power_mw=0.0,
    temperature_max_c=25.0,
    temperature_min_c=20.0,
    bms_allowed_charge_mw=20.0,
    bms_allowed_discharge_mw=20.0,
)


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

# Hypothesis spends ~40 µs per draw on this machine, 5-10x what limit() itself costs, so the limits and the
# snapshot (~20 values) are decoded from ONE drawn byte string: 10,000 examples then take seconds, not
# minutes. Hypothesis still drives and shrinks the bytes (all-zero bytes decode to the plainest scenario).
# Target, previous setpoint and dt stay ordinary float draws, so they get hypothesis's nasty values.
_SCENARIO_BYTES = st.binary(min_size=40, max_size=40)
_TARGET_SPECIAL = st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e300, -5e-324])
_TARGET_ANY = st.floats(allow_nan=False)
_FRACTION = st.floats(-2, 2)
_PREVIOUS = st.floats(-600, 600)
# elapsed time: a normal cycle, a stalled loop (seconds to days), and values no clock should give
_DT = st.one_of(st.floats(0, 2), st.floats(2, 1e6), st.sampled_from([math.inf, -math.inf, math.nan, -1.0]))
# the ramp's cap on it (the cycle passes two periods), absent, or nonsense (no licence to ramp)
_MAX_DT = st.one_of(st.none(), st.floats(0, 4), st.sampled_from([0.0, math.inf, math.nan, -1.0]))


class _Decoder:
    """Reads values off the drawn bytes; past the end it reads zeros (the plainest choice)."""

    def __init__(self, data: bytes):
        self.data, self.i = data, 0

    def byte(self) -> int:
        self.i += 1
        return self.data[self.i - 1] if self.i <= len(self.data) else 0

    def unit(self) -> float:
        """A fraction in [0, 1] with 16-bit resolution; 0 and 1 exactly are reachable."""
        return (self.byte() << 8 | self.byte()) / 0xFFFF

    def span(self, low: float, high: float) -> float:
        return low + (high - low) * self.unit()


def decode_limits(dec: _Decoder) -> Limits:
    """Any Limits the config accepts: soc_min < soc_max, band <= half the window, t_min_charge < t_derate < t_max
    <= 100 °C."""
    soc_min = dec.span(0, 95)
    soc_max = soc_min + 1 + (99 - soc_min) * dec.unit()
    band = dec.unit() * (soc_max - soc_min) / 2
    t_derate = dec.span(-20, 80)
    return Limits(
        p_charge_max_mw=dec.span(0.01, 500),
        p_discharge_max_mw=dec.span(0.01, 500),
        soc_min_pct=soc_min,
        soc_max_pct=soc_max,
        soc_taper_band_pct=band,
        t_derate_c=t_derate,
        t_max_c=min(t_derate + dec.span(0.1, 40), 100.0),
        t_min_charge_c=min(dec.span(-30, 20), t_derate - 0.1),
        ramp_mw_per_s=dec.span(0.01, 20),
        grid_limit_mw=dec.span(0.01, 500),
    )


def _reading(
    dec: _Decoder, healthy: tuple[float, float], wide: tuple[float, float], edges: list[float]
) -> float | None:
    """A reading: in its healthy range (kinds 0-7), anywhere (8-10), exactly on a limit's edge (11-14),
    unknown (15), NaN (16), +inf (17) or -inf (18)."""
    kind, fraction = dec.byte() % 19, dec.unit()
    if kind == 15:
        return None
    if kind >= 16:
        return (math.nan, math.inf, -math.inf)[kind - 16]
    if kind >= 11:
        return edges[(kind - 11) % len(edges)]
    low, high = healthy if kind < 8 else wide
    return low + (high - low) * fraction


@st.composite
def valid_limits(draw) -> Limits:
    return decode_limits(_Decoder(draw(_SCENARIO_BYTES)))


@st.composite
def scenarios(draw):
    """(target, snapshot, limits, previous, dt, mode, max_dt)."""
    dec = _Decoder(draw(_SCENARIO_BYTES))
    lim = decode_limits(dec)
    soc = _reading(
        dec,
        (lim.soc_min_pct, lim.soc_max_pct),
        (-5, 105),
        [
            lim.soc_min_pct,
            lim.soc_max_pct,
            lim.soc_min_pct + lim.soc_taper_band_pct,
            lim.soc_max_pct - lim.soc_taper_band_pct,
        ],
    )
    t_max = _reading(
        dec,
        (lim.t_derate_c - 60, lim.t_max_c),
        (-40, 130),
        [lim.t_derate_c, lim.t_max_c, (lim.t_derate_c + lim.t_max_c) / 2],
    )
    t_min = _reading(
        dec, (lim.t_min_charge_c, lim.t_min_charge_c + 30), (-40, 60), [lim.t_min_charge_c, lim.t_min_charge_c - 0.5]
    )
    bms_charge = _reading(dec, (0, 4 * lim.p_charge_max_mw), (-5, 600), [0.0, lim.p_charge_max_mw, -1.0])
    bms_discharge = _reading(dec, (0, 4 * lim.p_discharge_max_mw), (-5, 600), [0.0, lim.p_discharge_max_mw, -1.0])
    safe = dec.byte() % 20  # a safe-state cause in one case in four
    snap = Snapshot(
        ts=0.0,
        soc_pct=soc,
        temperature_max_c=t_max,
        temperature_min_c=t_min,
        bms_allowed_charge_mw=bms_charge,
        bms_allowed_discharge_mw=bms_discharge,
        comm_loss=("pcs",) if safe == 19 else (),
        stale=("bms",) if safe == 18 else (),
        alarms=("bms:alarm",) if safe == 17 else (),
        faults=("pcs:fault",) if safe == 16 else (),
        devices=(),
    )
    mode = "stopped" if safe == 15 else ("manual" if safe >= 10 else "auto")
    # the target mostly on the scale of the limits (so each one gets to bind), sometimes anything at all
    how = dec.byte() % 10
    scale = max(lim.p_charge_max_mw, lim.p_discharge_max_mw)
    if how == 0:
        target = draw(_TARGET_SPECIAL)
    elif how == 1:
        target = draw(_TARGET_ANY)
    else:
        target = draw(_FRACTION) * scale
    previous = 0.0 if how == 2 else draw(_FRACTION) * scale if how < 6 else draw(_PREVIOUS)
    return target, snap, lim, previous, draw(_DT), mode, draw(_MAX_DT)


def effective_dt(dt: float, max_dt: float | None) -> float:
    """The time the ramp may use, from the docstring of limit(): elapsed time if it is a finite number > 0
    (else none), capped by max_dt if given (a cap that is not a finite number > 0 allows no time)."""
    elapsed = dt if math.isfinite(dt) and dt > 0 else 0.0
    if max_dt is None:
        return elapsed
    return min(elapsed, max_dt if math.isfinite(max_dt) and max_dt > 0 else 0.0)


def _bounds(snap: Snapshot, lim: Limits) -> tuple[float, float]:
    """The most either direction may see, written straight from DESIGN.md (charge, discharge; both >= 0)."""

    def known(v):
        return v if v is not None and math.isfinite(v) else None

    soc, t_max, t_min = known(snap.soc_pct), known(snap.temperature_max_c), known(snap.temperature_min_c)
    dis = [lim.p_discharge_max_mw, lim.grid_limit_mw, max(known(snap.bms_allowed_discharge_mw) or 0.0, 0.0)]
    chg = [lim.p_charge_max_mw, lim.grid_limit_mw, max(known(snap.bms_allowed_charge_mw) or 0.0, 0.0)]
    if soc is None or soc <= lim.soc_min_pct:
        dis.append(0.0)
    elif soc < lim.soc_min_pct + lim.soc_taper_band_pct:
        dis.append(lim.p_discharge_max_mw * (soc - lim.soc_min_pct) / lim.soc_taper_band_pct)
    if soc is None or soc >= lim.soc_max_pct:
        chg.append(0.0)
    elif soc > lim.soc_max_pct - lim.soc_taper_band_pct:
        chg.append(lim.p_charge_max_mw * (lim.soc_max_pct - soc) / lim.soc_taper_band_pct)
    if t_max is None or t_max >= lim.t_max_c:
        dis.append(0.0)
        chg.append(0.0)
    elif t_max > lim.t_derate_c:
        frac = (lim.t_max_c - t_max) / (lim.t_max_c - lim.t_derate_c)
        dis.append(lim.p_discharge_max_mw * frac)
        chg.append(lim.p_charge_max_mw * frac)
    if t_min is None or t_min < lim.t_min_charge_c:
        chg.append(0.0)
    return min(chg), min(dis)


EPS = 1e-9


@given(scenarios())
def test_limit_properties(scenario) -> None:
    """One scenario, every property: the bounds, the safe state, SoC edges, monotone approach, the binding,
    and that cycle after cycle with the same inputs the setpoint reaches the limited target."""
    target, snap, lim, previous, dt, mode, max_dt = scenario
    d = limit(target, snap, lim, previous, dt, mode, max_dt_s=max_dt)
    _check_decision(d, target, snap, lim, previous, effective_dt(dt, max_dt), mode)
    _check_convergence(d, target, snap, lim, previous, effective_dt(dt, max_dt), mode)


def _check_decision(d: Decision, target, snap: Snapshot, lim: Limits, previous, dt, mode) -> None:
    """`dt`: the time the ramp may use (after the cap), so a stall never moves |P| by more than ramp * cap."""
    s = d.setpoint_mw
    assert math.isfinite(s)
    assert d.binding in BINDINGS
    assert d.lower_mw <= 0.0 <= d.upper_mw
    assert d.lower_mw <= s <= d.upper_mw

    # 0 MW in every safe-state case, at once, and the binding names the first cause
    causes = [
        c
        for c, present in (
            ("mode_stopped", mode == "stopped"),
            ("comm_loss", bool(snap.comm_loss)),
            ("stale", bool(snap.stale)),
            ("alarm", bool(snap.alarms or snap.faults)),
        )
        if present
    ]
    if causes:
        assert s == 0.0 and d.binding == causes[0] and d.lower_mw == d.upper_mw == 0.0
        return
    assert d.binding not in SAFE_STATES

    # within every bound: configured powers, BMS allowed, grid, temperature derate, SoC taper
    chg_max, dis_max = _bounds(snap, lim)
    assert -chg_max * (1 + EPS) - EPS <= s <= dis_max * (1 + EPS) + EPS
    assert d.upper_mw == pytest.approx(dis_max, rel=EPS, abs=EPS)
    assert d.lower_mw == pytest.approx(-chg_max, rel=EPS, abs=EPS)
    soc = snap.soc_pct
    soc_unknown = soc is None or not math.isfinite(soc)
    if soc_unknown or soc >= lim.soc_max_pct:
        assert s >= 0.0, "charging at or above soc_max (or with SoC unknown)"
    if soc_unknown or soc <= lim.soc_min_pct:
        assert s <= 0.0, "discharging at or below soc_min (or with SoC unknown)"

    # it moves toward the (clipped) target: between previous and the clipped target, or through 0 toward it
    t = d.target_mw
    assert t == target or (not math.isfinite(target) and t == 0.0)
    clipped = min(max(t, d.lower_mw), d.upper_mw)
    p = previous
    assert min(p, clipped) <= s <= max(p, clipped) or min(0.0, clipped) <= s <= max(0.0, clipped)
    assert abs(s - clipped) <= abs(p - clipped)
    assert s * clipped >= 0.0, "never on the far side of 0 from where the limits allow going"
    if d.lower_mw <= t <= d.upper_mw:
        assert abs(s - t) <= abs(p - t)
    step = lim.ramp_mw_per_s * dt
    if abs(s) > abs(p) or s * p < 0:  # |P| grew or the sign changed: the ramp applies
        base = 0.0 if s * p < 0 else abs(p)
        assert abs(s) <= base + step + EPS * (1 + base + step)

    # binding consistent with the result
    if d.binding == "none":
        assert s == t
    else:
        assert s != t
        assert d.reasons
    if d.binding == "ramp":
        assert s != clipped and abs(s) < abs(clipped)
    elif d.binding != "none":
        assert s == clipped == (d.upper_mw if t > 0 else d.lower_mw)
        bms_dis, bms_chg = snap.bms_allowed_discharge_mw, snap.bms_allowed_charge_mw
        expected = {
            "p_discharge_max": lambda: s == lim.p_discharge_max_mw,
            "p_charge_max": lambda: s == -lim.p_charge_max_mw,
            "grid_limit": lambda: abs(s) == lim.grid_limit_mw,
            "soc_min": lambda: s == 0.0 and t > 0 and (soc_unknown or soc <= lim.soc_min_pct),
            "soc_max": lambda: s == 0.0 and t < 0 and (soc_unknown or soc >= lim.soc_max_pct),
            "soc_taper": lambda: (
                (lim.soc_min_pct < soc < lim.soc_min_pct + lim.soc_taper_band_pct)
                if t > 0
                else (lim.soc_max_pct - lim.soc_taper_band_pct < soc < lim.soc_max_pct)
            ),
            "bms_allowed_discharge": lambda: (
                s == (0.0 if bms_dis is None or not math.isfinite(bms_dis) else max(bms_dis, 0.0))
            ),
            "bms_allowed_charge": lambda: (
                -s == (0.0 if bms_chg is None or not math.isfinite(bms_chg) else max(bms_chg, 0.0))
            ),
            "temperature": lambda: abs(s) < (lim.p_discharge_max_mw if t > 0 else lim.p_charge_max_mw),
        }
        assert expected[d.binding](), f"binding {d.binding} does not explain setpoint {s} for target {t}"


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
