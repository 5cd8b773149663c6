"""Hypothesis strategies for the limit function and the allocation over units (tests/unit/test_limits.py,
test_allocation.py, test_fcr.py, test_afrr.py, test_feasibility.py), and the reference they are checked against: the
bounds written straight from DESIGN.md; and the optimiser tests' prices (test_optimiser.py,
test_optimiser_restore.py).

Hypothesis spends ~40 µs per draw on this machine, 5-10x what limit() itself costs, so the limits and the
snapshot (~20 values) are decoded from ONE drawn byte string: 10,000 examples then take seconds, not minutes.
Hypothesis still drives and shrinks the bytes (all-zero bytes decode to the plainest scenario). Target,
previous setpoint and dt stay ordinary float draws, so they get hypothesis's nasty values.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from controller.config import Limits
from controller.cycle.allocation import PlantView, UnitView, unit_limits
from controller.cycle.poi import PoiRange, TrimState
from controller.cycle.snapshot import Snapshot

# the plainest plant the limit and allocation tables start from (a case overrides what it is about)
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

SCENARIO_BYTES = st.binary(min_size=40, max_size=40)
TARGET_SPECIAL = st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e300, -5e-324])
TARGET_ANY = st.floats(allow_nan=False)
FRACTION = st.floats(-2, 2)
PREVIOUS = st.floats(-600, 600)
# elapsed time: a normal cycle, a stalled loop (seconds to days), and values no clock should give
DT = st.one_of(st.floats(0, 2), st.floats(2, 1e6), st.sampled_from([math.inf, -math.inf, math.nan, -1.0]))
# the ramp's cap on it (the cycle passes two periods), absent, or nonsense (no licence to ramp)
MAX_DT = st.one_of(st.none(), st.floats(0, 4), st.sampled_from([0.0, math.inf, math.nan, -1.0]))


class Decoder:
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


def decode_limits(dec: Decoder) -> Limits:
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


def reading(dec: Decoder, healthy: tuple[float, float], wide: tuple[float, float], edges: list[float]) -> float | None:
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


def battery_readings(dec: Decoder, lim: Limits) -> tuple[float | None, float | None, float | None]:
    """(SoC, highest and lowest cell temperature), each healthy, anywhere, on one of `lim`'s edges, or not known."""
    soc = reading(
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
    t_max = reading(
        dec,
        (lim.t_derate_c - 60, lim.t_max_c),
        (-40, 130),
        [lim.t_derate_c, lim.t_max_c, (lim.t_derate_c + lim.t_max_c) / 2],
    )
    t_min = reading(
        dec, (lim.t_min_charge_c, lim.t_min_charge_c + 30), (-40, 60), [lim.t_min_charge_c, lim.t_min_charge_c - 0.5]
    )
    return soc, t_max, t_min


def bms_allowed(dec: Decoder, healthy_max_mw: float, edge_mw: float) -> float | None:
    """A power the BMS allows (MW): healthy up to `healthy_max_mw`, on 0, `edge_mw` or -1, or anything."""
    return reading(dec, (0, healthy_max_mw), (-5, 600), [0.0, edge_mw, -1.0])


@st.composite
def valid_limits(draw) -> Limits:
    return decode_limits(Decoder(draw(SCENARIO_BYTES)))


@st.composite
def scenarios(draw):
    """(target, snapshot, limits, previous, dt, mode, max_dt): one plant for limit()."""
    dec = Decoder(draw(SCENARIO_BYTES))
    lim = decode_limits(dec)
    soc, t_max, t_min = battery_readings(dec, lim)
    bms_charge = bms_allowed(dec, 4 * lim.p_charge_max_mw, lim.p_charge_max_mw)
    bms_discharge = bms_allowed(dec, 4 * lim.p_discharge_max_mw, lim.p_discharge_max_mw)
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
        target = draw(TARGET_SPECIAL)
    elif how == 1:
        target = draw(TARGET_ANY)
    else:
        target = draw(FRACTION) * scale
    previous = 0.0 if how == 2 else draw(FRACTION) * scale if how < 6 else draw(PREVIOUS)
    return target, snap, lim, previous, draw(DT), mode, draw(MAX_DT)


def effective_dt(dt: float, max_dt: float | None) -> float:
    """The time the ramp may use, from the docstring of limit(): elapsed time if it is a finite number > 0
    (else none), capped by max_dt if given (a cap that is not a finite number > 0 allows no time)."""
    elapsed = dt if math.isfinite(dt) and dt > 0 else 0.0
    if max_dt is None:
        return elapsed
    return min(elapsed, max_dt if math.isfinite(max_dt) and max_dt > 0 else 0.0)


def design_bounds(snap: Snapshot, lim: Limits) -> tuple[float, float]:
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


# ---------------------------------------------------------------- a plant of units (allocation)

# As for the scenarios above: the plant and its units are decoded from ONE drawn byte string (hypothesis costs ~40 µs
# a draw), so 10,000 examples take seconds; the target, dt and the ramp's cap stay ordinary draws.
PLANT_BYTES = st.binary(min_size=200, max_size=200)


_SAFE_CAUSES = {
    15: {"stale": ("bms",)},
    14: {"comm_loss": ("pcs",)},
    13: {"alarms": ("bms:alarm",)},
    12: {"faults": ("pcs:fault",)},
}


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
    dec = Decoder(draw(PLANT_BYTES))
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


# ---------------------------------------------------------------- prices (the optimiser)

prices = st.floats(-100, 300, allow_nan=False)
