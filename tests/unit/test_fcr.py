"""FCR (controller/services/fcr.py, stack.py, reserve.py): a table of frequencies -> contribution, and hypothesis
properties: sign, deadband, saturation, monotone droop through 50 Hz, and the stacked target (schedule + FCR)
under every limit: whatever it is, what limit() and allocate() make of it stays within every limit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import Battery, Fcr, Limits
from controller.cycle.allocation import allocate
from controller.cycle.limits import limit
from controller.services.fcr import NOMINAL_HZ, contribution_mw, response
from controller.services.reserve import band, plan_reserve, reserve_status, reserved_limits
from controller.services.stack import stack
from tests.fixtures.limit_checks import check_decision, check_site, check_units
from tests.strategies import effective_dt, plants, scenarios

FCR = Fcr(enabled=True, capacity_mw=8.0)  # defaults: deadband 10 mHz, full activation 200 mHz


@pytest.mark.parametrize(
    "hz, mw",
    [
        (50.0, 0.0),
        (50.01, 0.0),  # on the deadband's edge: still inside
        (49.99, 0.0),
        (50.02, -0.8),  # outside: the droop through 50 Hz (20/200 of 8 MW), charging
        (49.98, 0.8),
        (50.1, -4.0),
        (49.9, 4.0),
        (50.2, -8.0),  # full activation
        (49.8, 8.0),
        (50.5, -8.0),  # saturated
        (47.0, 8.0),
    ],
)
def test_table(hz: float, mw: float) -> None:
    assert response(hz, FCR).required_mw == pytest.approx(mw, abs=1e-9)


@pytest.mark.parametrize("hz", [None, math.nan, math.inf, -math.inf])
def test_unknown_frequency_asks_for_nothing(hz) -> None:
    r = response(hz, FCR)
    assert r.required_mw == 0.0 and r.deviation_mhz is None


_CAPACITY = st.floats(0, 500)
_DEADBAND = st.floats(0, 100)
_FREQ = st.one_of(st.floats(45, 55), st.floats(49.7, 50.3), st.sampled_from([50.0, 50.01, 49.99, 50.2, 49.8]))


@given(_FREQ, _CAPACITY, _DEADBAND, st.floats(101, 1000))
def test_fcr_properties(hz: float, capacity: float, deadband: float, full: float) -> None:
    p = contribution_mw(hz, capacity, deadband, full)
    dev_mhz = (hz - NOMINAL_HZ) * 1000.0
    assert math.isfinite(p) and abs(p) <= capacity
    if abs(dev_mhz) <= deadband:
        assert p == 0.0
    else:
        assert p * dev_mhz <= 0.0, "over-frequency charges, under-frequency discharges"
        if abs(dev_mhz) >= full:
            assert abs(p) == pytest.approx(capacity)
        else:
            assert p == pytest.approx(-capacity * dev_mhz / full, rel=1e-9, abs=1e-12)
    # monotone: a higher frequency never asks for more discharge
    higher = contribution_mw(hz + 0.001, capacity, deadband, full)
    assert higher <= p + 1e-9 * (1 + capacity)


@given(scenarios(), _FREQ)
def test_stacked_target_passes_limit(scenario, hz: float) -> None:
    """schedule (or manual) target + FCR: limit() keeps every limit for it (the same checks as for any target)."""
    base, snap, lim, previous, dt, mode, max_dt = scenario
    capacity = min(lim.p_charge_max_mw, lim.p_discharge_max_mw, lim.grid_limit_mw)
    s = stack(base, response(hz, Fcr(enabled=True, capacity_mw=capacity)).required_mw)
    assert math.isfinite(s.fcr_mw) and abs(s.fcr_mw) <= capacity
    d = limit(s.target_mw, snap, lim, previous, dt, mode, max_dt_s=max_dt)
    check_decision(d, s.target_mw, snap, lim, previous, effective_dt(dt, max_dt), mode)


@given(plants(), _FREQ, st.floats(-1e6, 1e6))
def test_stacked_target_passes_allocate(scenario, hz: float, afrr: float) -> None:
    """The same for a plant of units (with an aFRR part too): every unit within its own limits, the site within
    the POI range and the site limits."""
    base, plant, units = scenario
    lim = plant.limits
    capacity = min(lim.p_charge_max_mw, lim.p_discharge_max_mw, lim.grid_limit_mw)
    s = stack(base, response(hz, Fcr(enabled=True, capacity_mw=capacity)).required_mw, afrr)
    a = allocate(s.target_mw, plant, units)
    check_units(a, s.target_mw, plant, units)
    check_site(a, s.target_mw, plant, units)


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True), st.floats(allow_nan=True))
def test_stack_sums_and_drops_unknown_parts(base: float, fcr: float, afrr: float) -> None:
    s = stack(base, fcr, afrr)
    parts = [x if math.isfinite(x) else 0.0 for x in (fcr, afrr)]
    assert (s.fcr_mw, s.afrr_mw) == tuple(parts)
    if math.isfinite(base) and math.isfinite(s.target_mw):
        # summed in stack()'s own order: float addition is not associative (1 + 1.8e308 - 1.8e308 is 0, not 1)
        assert s.target_mw == pytest.approx(base + parts[0] + parts[1], rel=1e-12, abs=1e-300)


# ---------------------------------------------------------------- reserve

LIMITS = Limits(
    p_charge_max_mw=10, p_discharge_max_mw=10, soc_min_pct=10, soc_max_pct=90, grid_limit_mw=10, ramp_mw_per_s=5
)
BATTERY = Battery(capacity_mwh=20, charge_efficiency=0.95, discharge_efficiency=0.95)


def test_reserve_band_and_limits() -> None:
    fcr = Fcr(enabled=True, capacity_mw=4, reserve_minutes=30)  # 2 MWh at the grid each way
    b = band(fcr, BATTERY, LIMITS)
    assert b.down_pct == pytest.approx(100 * 2 / 0.95 / 20) and b.up_pct == pytest.approx(100 * 2 * 0.95 / 20)
    assert b.soc_low_pct == pytest.approx(10 + b.down_pct) and b.soc_high_pct == pytest.approx(90 - b.up_pct)
    r = reserved_limits(LIMITS, b)
    assert (r.p_charge_max_mw, r.p_discharge_max_mw, r.grid_limit_mw) == (6, 6, 6)
    assert (r.soc_min_pct, r.soc_max_pct) == (b.soc_low_pct, b.soc_high_pct)
    off = band(fcr, BATTERY, LIMITS, enabled=False)
    assert reserved_limits(LIMITS, off) is LIMITS
    assert plan_reserve(fcr, BATTERY, True).reserve_mw == 4
    assert plan_reserve(fcr, BATTERY, True).reserve_mwh == pytest.approx(2 / 0.95)
    assert plan_reserve(fcr, BATTERY, False).reserve_mwh == 0.0


@given(st.one_of(st.none(), st.floats(-10, 110), st.just(math.nan)), st.floats(0, 9.5), st.floats(0, 60))
def test_reserve_status_properties(soc, capacity: float, minutes: float) -> None:
    fcr = Fcr(enabled=True, capacity_mw=capacity, reserve_minutes=minutes)
    b = band(fcr, BATTERY, LIMITS)
    st_ = reserve_status(soc, b, BATTERY.capacity_mwh)
    known = soc is not None and math.isfinite(soc)
    if not known or capacity == 0 or b.soc_low_pct <= soc <= b.soc_high_pct:
        assert st_.held and st_.direction == 0 and st_.restore_mwh == 0.0
    else:
        assert not st_.held and st_.restore_mwh > 0
        assert st_.direction == (-1 if soc < b.soc_low_pct else 1)
        # moving restore_mwh the given way lands exactly on the band's edge
        after = soc - st_.direction * st_.restore_mwh / BATTERY.capacity_mwh * 100
        assert after == pytest.approx(b.soc_low_pct if st_.direction < 0 else b.soc_high_pct)
