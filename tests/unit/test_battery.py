"""Properties of the one battery model behind every simulator face: energy is conserved in its accounting,
SoC stays in 0-100 %, the BMS-allowed powers are >= 0 and taper at the SoC ends and with temperature, and the
temperature stays between ambient and the steady state of the largest power seen."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from simulators.battery import ALARM_SOC_HIGH, ALARM_SOC_LOW, BatteryModel, BatteryParams

params_st = st.builds(
    BatteryParams,
    capacity_mwh=st.floats(1.0, 200.0),
    rated_power_mw=st.floats(0.5, 100.0),
    charge_efficiency=st.floats(0.7, 1.0),
    discharge_efficiency=st.floats(0.7, 1.0),
    self_discharge_pct_per_day=st.floats(0.0, 5.0),
    ambient_c=st.floats(-20.0, 40.0),
    thermal_time_constant_s=st.floats(60.0, 7200.0),
    heating_c_per_mw=st.floats(0.0, 5.0),
)
# (power as a fraction of rated, dt in seconds): long steps too, so that the battery runs empty and full
steps_st = st.lists(st.tuples(st.floats(-1.5, 1.5), st.floats(0.0, 3600.0)), min_size=1, max_size=40)


@given(params_st, st.floats(0.0, 100.0), steps_st)
def test_energy_is_conserved_and_soc_stays_in_range(p, soc0, steps):
    m = BatteryModel(p, soc_pct=soc0)
    e0 = m.energy_mwh
    for frac, dt in steps:
        want = frac * p.rated_power_mw
        got = m.step(want, dt)
        if dt / 3600.0 > 0:  # a zero step delivers nothing new and reports the last power
            # never more than asked, never the other way
            assert abs(got) <= abs(want) * (1 + 1e-9) + 1e-12
            assert got == 0 or math.copysign(1, got) == math.copysign(1, want)
        assert 0.0 <= m.soc_pct <= 100.0
        balance = e0 + m.charged_mwh - m.discharged_mwh - m.loss_mwh - m.self_discharge_mwh
        assert math.isclose(balance, m.energy_mwh, rel_tol=1e-9, abs_tol=1e-9 * p.capacity_mwh)
    assert m.loss_mwh >= 0 and m.self_discharge_mwh >= 0


@given(params_st, st.floats(0.0, 100.0), steps_st)
def test_temperature_stays_between_ambient_and_the_steady_state(p, soc0, steps):
    m = BatteryModel(p, soc_pct=soc0)
    hottest_ss = p.ambient_c
    for frac, dt in steps:
        got = m.step(frac * p.rated_power_mw, dt)
        hottest_ss = max(hottest_ss, p.ambient_c + p.heating_c_per_mw * abs(got))
        tol = 1e-9 * (1 + abs(hottest_ss))
        assert p.ambient_c - tol <= m.temperature_c <= hottest_ss + tol


@given(params_st, st.floats(0.0, 100.0), st.floats(-30.0, 80.0))
def test_allowed_powers_are_bounded_and_zero_at_the_limits(p, soc, temp):
    m = BatteryModel(p, soc_pct=soc, temperature_c=temp)
    for allowed in (m.allowed_charge_mw, m.allowed_discharge_mw):
        assert 0.0 <= allowed <= p.rated_power_mw * (1 + 1e-12)
    if soc <= 0.0:
        assert m.allowed_discharge_mw == 0.0
    if soc >= 100.0:
        assert m.allowed_charge_mw == 0.0
    if temp >= p.t_max_c:
        assert m.allowed_charge_mw == 0.0 and m.allowed_discharge_mw == 0.0
    if temp < p.t_min_charge_c:
        assert m.allowed_charge_mw == 0.0
    inside = p.soc_taper_pct <= soc <= 100.0 - p.soc_taper_pct and p.t_min_charge_c <= temp <= p.t_derate_c
    if inside:  # isclose: SoC goes through energy and back (5.0 % can come out as 4.999999999999999 %)
        assert math.isclose(m.allowed_charge_mw, p.rated_power_mw, rel_tol=1e-9)
        assert math.isclose(m.allowed_discharge_mw, p.rated_power_mw, rel_tol=1e-9)


@given(params_st, st.floats(0.0, 100.0), st.floats(0.0, 100.0), st.floats(-30.0, 80.0))
def test_allowed_powers_taper_monotonically(p, soc_a, soc_b, temp):
    lo, hi = sorted((soc_a, soc_b))
    a = BatteryModel(p, soc_pct=lo, temperature_c=temp)
    b = BatteryModel(p, soc_pct=hi, temperature_c=temp)
    tol = 1e-9 * p.rated_power_mw
    # fuller: may discharge at least as much, may charge at most as much
    assert b.allowed_discharge_mw >= a.allowed_discharge_mw - tol
    assert b.allowed_charge_mw <= a.allowed_charge_mw + tol


@given(params_st, st.floats(20.0, 80.0), st.floats(-30.0, 80.0), st.floats(-30.0, 80.0))
def test_hotter_never_allows_more(p, soc, t_a, t_b):
    lo, hi = sorted((t_a, t_b))
    cool = BatteryModel(p, soc_pct=soc, temperature_c=max(lo, p.t_min_charge_c))
    hot = BatteryModel(p, soc_pct=soc, temperature_c=max(hi, p.t_min_charge_c))
    assert hot.allowed_discharge_mw <= cool.allowed_discharge_mw + 1e-9
    assert hot.allowed_charge_mw <= cool.allowed_charge_mw + 1e-9


@given(params_st, st.floats(0.0, 100.0), st.integers(1, 0xFFFF), st.floats(-1.0, 1.0), st.floats(0.1, 600.0))
def test_a_fault_opens_the_contactors(p, soc, bits, frac, dt):
    m = BatteryModel(p, soc_pct=soc)
    m.injected_fault_bits = bits
    assert m.fault_bits == bits
    assert m.allowed_charge_mw == m.allowed_discharge_mw == 0.0
    assert m.step(frac * p.rated_power_mw, dt) == 0.0
    assert m.readings()["fault_bits"] == bits


def test_soc_alarms_at_the_hard_ends():
    p = BatteryParams()
    assert BatteryModel(p, soc_pct=100.0).alarm_bits & ALARM_SOC_HIGH
    assert BatteryModel(p, soc_pct=0.0).alarm_bits & ALARM_SOC_LOW
    assert BatteryModel(p, soc_pct=50.0).alarm_bits == 0


@given(params_st, st.floats(0.0, 100.0), st.floats(-1.0, 1.0), st.floats(1.0, 600.0))
def test_bms_readings_are_consistent(p, soc, frac, dt):
    m = BatteryModel(p, soc_pct=soc)
    m.step(frac * p.rated_power_mw, dt)
    r = m.readings()
    assert r["soc_pct"] == m.soc_pct and r["energy_mwh"] == m.energy_mwh
    assert r["temperature_min_c"] <= r["temperature_max_c"] == m.temperature_c
    assert r["cell_voltage_min_v"] < r["cell_voltage_max_v"]
    assert math.isclose(r["current_a"] * r["voltage_v"], r["dc_power_mw"] * 1e6, rel_tol=1e-9, abs_tol=1e-6)
    # the cells give more than the grid gets when discharging, and take less when charging
    assert abs(r["dc_power_mw"]) >= abs(m.power_mw) if m.power_mw > 0 else abs(r["dc_power_mw"]) <= abs(m.power_mw)
