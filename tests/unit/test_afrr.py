"""aFRR (controller/services/afrr.py) and the IEC 104 face's projection (controller/scada/iec104_points.py): a table
of setpoints -> what is taken, and hypothesis properties: a taken setpoint is always inside the offered band, the
part never moves faster than the ramp nor overshoots its goal, reaches a held setpoint within the full activation
time, goes back to 0 after a timeout, the available band is never negative nor beyond the offer, and the stacked
target (schedule + aFRR) still passes every limit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import AFRR_FULL_ACTIVATION_S, ScadaIec104
from controller.cycle.limits import limit
from controller.scada.iec104_points import MONITOR, values, worth_sending
from controller.services.afrr import AfrrBand, AfrrState, accept, available, step
from controller.services.stack import stack
from tests.fixtures.limit_checks import check_decision
from tests.strategies import effective_dt, scenarios

BAND = AfrrBand(up_mw=5.0, down_mw=3.0, ramp_mw_per_s=5.0 / 300.0, timeout_s=30.0)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
dts = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


@pytest.mark.parametrize(
    "setpoint, taken, clamped",
    [(0.0, 0.0, False), (2.5, 2.5, False), (5.0, 5.0, False), (7.0, 5.0, True), (-3.0, -3.0, False), (-9, -3.0, True)],
)
def test_setpoints_are_clamped_to_the_offered_band(setpoint, taken, clamped):
    s = accept(AfrrState(), setpoint, 100.0, BAND)
    assert (s.requested_mw, s.clamped, s.received_ts, s.setpoints) == (taken, clamped, 100.0, 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_setpoint_that_is_not_a_number_is_refused(bad):
    with pytest.raises(ValueError, match="not a finite number"):
        accept(AfrrState(), bad, 0.0, BAND)


def test_the_default_ramp_reaches_the_band_in_five_minutes():
    face = ScadaIec104(afrr_up_mw=6.0, afrr_down_mw=2.0)
    assert face.afrr_ramp_mw_per_s * AFRR_FULL_ACTIVATION_S == pytest.approx(6.0)
    assert ScadaIec104(afrr_ramp_mw_per_min=30.0).afrr_ramp_mw_per_s == pytest.approx(0.5)


@given(finite, st.lists(dts, min_size=1, max_size=50))
def test_the_part_follows_the_ramp_toward_the_taken_setpoint(setpoint, steps):
    s = accept(AfrrState(), setpoint, 0.0, BAND)
    assert -BAND.down_mw <= s.requested_mw <= BAND.up_mw
    now = 0.0
    for dt in steps:
        before = s.active_mw
        now += dt
        s = step(s, now, dt, BAND)
        if s.timed_out:
            assert abs(s.active_mw) <= abs(before) + 1e-12  # back toward 0 only
        else:
            # never faster than the ramp, never past the goal
            assert abs(s.active_mw - before) <= BAND.ramp_mw_per_s * dt + 1e-9
            lo, hi = sorted((before, s.requested_mw))
            assert lo - 1e-9 <= s.active_mw <= hi + 1e-9
        assert -BAND.down_mw - 1e-9 <= s.active_mw <= BAND.up_mw + 1e-9


@given(st.floats(min_value=-3.0, max_value=5.0, allow_nan=False))
def test_a_held_setpoint_is_reached_within_full_activation(setpoint):
    s = accept(AfrrState(), setpoint, 0.0, BAND)
    now = 0.0
    for _ in range(300):  # 1 s cycles for 5 minutes, setpoints renewed every 4 s
        now += 1.0
        if int(now) % 4 == 0:
            s = accept(s, setpoint, now, BAND)
        s = step(s, now, 1.0, BAND)
    assert s.active_mw == pytest.approx(setpoint, abs=1e-9)


@given(finite, st.floats(min_value=30.001, max_value=1e4))
def test_a_lost_setpoint_stream_takes_the_part_back_to_zero(setpoint, silence_s):
    s = accept(AfrrState(active_mw=BAND.clamp(setpoint)), setpoint, 0.0, BAND)
    s = step(s, silence_s, 1.0, BAND)
    assert s.timed_out and s.goal_mw == 0.0
    for i in range(400):
        s = step(s, silence_s + i, 1.0, BAND)
    assert s.active_mw == 0.0 and s.timed_out
    s = accept(s, 1.0, silence_s + 400, BAND)
    assert not s.timed_out and s.goal_mw == 1.0


@pytest.mark.parametrize(
    "lower, upper, base, reserve, up, down",
    [
        (-10, 10, 0, 0, 5, 3),  # the offer, the limits leave room for it
        (-10, 10, 0, 8, 2, 2),  # FCR's 8 MW held each way: 2 MW left of the room
        (-10, 10, 8, 0, 2, 3),  # a schedule of 8 MW leaves 2 MW upward
        (-10, 10, -9, 0, 5, 1),  # charging 9 MW leaves 1 MW downward
        (0, 0, 0, 0, 0, 0),  # safe state: nothing either way
    ],
)
def test_the_available_band_table(lower, upper, base, reserve, up, down):
    assert available(BAND, lower, upper, base, reserve) == (pytest.approx(up), pytest.approx(down))


@given(finite, finite, finite, st.floats(min_value=0, max_value=100))
def test_the_available_band_is_within_the_offer_and_never_negative(lower, upper, base, reserve):
    up, down = available(BAND, min(lower, 0.0), max(upper, 0.0), base, reserve)
    assert 0.0 <= up <= BAND.up_mw and 0.0 <= down <= BAND.down_mw


@given(scenarios(), finite)
def test_the_stacked_target_passes_every_limit(scn, setpoint):
    base, snap, lim, prev, dt, mode, max_dt = scn
    s = accept(AfrrState(), setpoint, 0.0, BAND)
    s = step(s, 1.0, 1e6, BAND)  # the whole ramp at once: the largest part there can be
    target = stack(base, afrr_mw=s.active_mw).target_mw
    d = limit(target, snap, lim, prev, dt, mode, max_dt_s=max_dt)
    check_decision(d, target, snap, lim, prev, effective_dt(dt, max_dt), mode)


@pytest.mark.parametrize(
    "old, new, deadband, send",
    [
        (1.0, 1.005, 0.01, False),
        (1.0, 1.02, 0.01, True),
        (None, 1.0, 0.01, True),
        (1.0, None, 0.01, True),
        (None, None, 0.01, False),
        (True, False, 0.0, True),
        (False, False, 0.0, False),
    ],
)
def test_spontaneous_past_the_deadband(old, new, deadband, send):
    assert worth_sending(old, new, deadband) is send


def test_the_projection_names_every_point_of_the_map():
    from controller.cycle.state import PlantState

    vals = values(PlantState())
    assert set(vals) == {p.name for p in MONITOR}
    assert vals["afrr_setpoint_mw"] is None and vals["fcr_on"] is False and vals["online"] is False
