"""The optimiser restores a SoC window it starts outside (issue 15 item 2: with FCR on, the window is the reserve
band, and the TSOs' SoC management rules ask the provider to bring the SoC back): from below it charges all the
power it may in every period it can still trade until the window is reached, from above it discharges likewise,
never the other way, and never past a limit. Checked against a forward simulation of the fastest way back written
here, and against the real pre-trade check with the reserve's narrowed limits."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from controller.config import Limits
from controller.trading.optimiser import PERIOD_H, PlanProblem, optimise
from controller.trading.schedule import check_feasibility
from tests.fixtures.optimiser import EXAMPLES, T0, TOL_MW, battery, plant
from tests.strategies import prices

TOL_MWH = 1e-6  # the solver's tolerance on stored energy, with room for a few periods of it


@st.composite
def outside(draw, n_max: int = 12) -> PlanProblem:
    """A plant of random size, efficiencies, losses and reserve whose SoC starts below or above its window
    (narrowed by the reserve); the first few periods can no longer be traded and may hold positions either way."""
    n = draw(st.integers(1, n_max))
    p_ch, p_dis = draw(st.floats(0.5, 20)), draw(st.floats(0.5, 20))
    lo = draw(st.floats(0, 60))
    hi = draw(st.floats(lo + 10, 100))
    cap = draw(st.floats(1, 80))
    reserve_mwh = draw(st.sampled_from([0.0, (hi - lo) / 100 * cap / 8, (hi - lo) / 100 * cap / 3]))
    rsv_pct = reserve_mwh / cap * 100
    below = draw(st.booleans())
    soc = draw(st.floats(0, lo + rsv_pct) if below else st.floats(hi - rsv_pct, 100))
    assume(soc < lo + rsv_pct if below else soc > hi - rsv_pct)
    fixed = draw(st.integers(0, min(n, 3)))
    pos = [draw(st.floats(-p_ch, p_dis)) if i < fixed and draw(st.booleans()) else 0.0 for i in range(n)]
    buy = draw(st.lists(prices, min_size=n, max_size=n))
    return PlanProblem(
        now_ts=T0 + draw(st.sampled_from([0, 300, 899])),
        buy_price_eur_mwh=tuple(buy),
        sell_price_eur_mwh=tuple(buy),
        position_mw=tuple(pos),
        soc_pct_now=soc,
        capacity_mwh=cap,
        soc_min_pct=lo,
        soc_max_pct=hi,
        p_charge_max_mw=p_ch,
        p_discharge_max_mw=p_dis,
        charge_efficiency=draw(st.floats(0.8, 1)),
        discharge_efficiency=draw(st.floats(0.8, 1)),
        self_discharge_pct_per_day=draw(st.sampled_from([0.0, 0.5, 5.0])),
        aux_load_mw=draw(st.sampled_from([0.0, 0.0, min(0.01 * cap, p_ch / 4)])),
        degradation_eur_mwh=draw(st.floats(0, 30)),
        tradable=tuple(i >= fixed for i in range(n)),
        end_value_eur_mwh=draw(st.floats(0, 100)),
        reserve_mw=draw(st.sampled_from([0.0, min(p_ch, p_dis) / 4, min(p_ch, p_dis) * 0.8])),
        reserve_mwh=reserve_mwh,
    )


def _fastest(pb: PlanProblem, up: bool) -> list[float]:
    """Stored energy (MWh) at each period's end on the fastest way back: all the power the reserve leaves, in
    every period that can be traded, the position in the others; aux load and self-discharge throughout."""
    hours = [(T0 + 900 - pb.now_ts) / 3600] + [PERIOD_H] * (pb.n_periods - 1)  # now_ts is in T0's period
    e, path = pb.soc_pct_now / 100 * pb.capacity_mwh, []
    for t, h in enumerate(hours):
        mw = pb.position_mw[t]
        if pb.tradable[t]:
            mw = -(pb.p_charge_max_mw - pb.reserve_mw) if up else pb.p_discharge_max_mw - pb.reserve_mw
        flow = mw / pb.discharge_efficiency if mw > 0 else mw * pb.charge_efficiency
        e -= flow * h + pb.aux_load_mw * h + e * pb.self_discharge_pct_per_day / 100 / 24 * h
        path.append(e)
        if mw == 0:  # as the plan's own path has it: an idle empty battery's aux load drains it no further
            e = max(e, 0.0)
    return path


def _reserved_limits(pb: PlanProblem) -> Limits:
    rsv_pct = pb.reserve_mwh / pb.capacity_mwh * 100
    return Limits(
        # the power the reserve leaves, give or take the solver's tolerance (asserted on its own above)
        p_charge_max_mw=pb.p_charge_max_mw - pb.reserve_mw + TOL_MW,
        p_discharge_max_mw=pb.p_discharge_max_mw - pb.reserve_mw + TOL_MW,
        soc_min_pct=pb.soc_min_pct + rsv_pct,
        soc_max_pct=pb.soc_max_pct - rsv_pct,
        soc_taper_band_pct=0,
        grid_limit_mw=max(pb.p_charge_max_mw, pb.p_discharge_max_mw),
    )


@EXAMPLES
@given(outside())
def test_a_soc_outside_the_window_comes_back_as_fast_as_the_power_allows_and_never_moves_away(pb) -> None:
    cap = pb.capacity_mwh
    lo = pb.soc_min_pct / 100 * cap + pb.reserve_mwh
    hi = pb.soc_max_pct / 100 * cap - pb.reserve_mwh
    up = pb.soc_pct_now / 100 * cap < lo  # the way back: charging up into the window, or discharging down
    fastest = _fastest(pb, up)
    plan = optimise(pb)
    if not plan.ok:  # only when positions already traded for closed periods cannot be delivered (they move the
        # SoC away from the window, or past its other side)
        assert plan.status == "infeasible" and plan.periods == () and plan.reason, plan
        assert any(m and not pb.tradable[i] for i, m in enumerate(pb.position_mw)), plan.reason
        return
    c_max, d_max = pb.p_charge_max_mw - pb.reserve_mw, pb.p_discharge_max_mw - pb.reserve_mw
    e_start = pb.soc_pct_now / 100 * cap
    for i, p in enumerate(plan.periods):
        e_end = p.soc_pct_end / 100 * cap
        # never past a limit: the power the reserve leaves, one way at a time, trades only where still open
        assert p.charge_mw <= c_max + TOL_MW and p.discharge_mw <= d_max + TOL_MW
        assert min(p.charge_mw, p.discharge_mw) <= TOL_MW
        if not pb.tradable[i]:
            assert p.trade_mw == pytest.approx(0, abs=TOL_MW) and p.plan_mw == pytest.approx(
                pb.position_mw[i], abs=TOL_MW
            )
        outside_at_start = e_start < lo - TOL_MWH if up else e_start > hi + TOL_MWH
        if outside_at_start:
            assert p.restore_direction == (-1 if up else 1), (i, p)
            if pb.tradable[i]:  # never away from the window: no discharge from below, no charge from above
                assert (p.discharge_mw if up else p.charge_mw) == 0, (i, p)
        # as fast as the power allows: on the fastest way back until the window is reached, inside it after
        if up:
            assert e_end >= min(lo, fastest[i]) - TOL_MWH * (i + 1), (i, e_end, fastest[i], lo)
        else:
            assert e_end <= max(hi, fastest[i]) + TOL_MWH * (i + 1), (i, e_end, fastest[i], hi)
        if (fastest[i] >= lo if up else fastest[i] <= hi) and not (pb.aux_load_mw or pb.self_discharge_pct_per_day):
            assert lo - TOL_MWH * (i + 1) <= e_end <= hi + TOL_MWH * (i + 1), (i, e_end, lo, hi)
        e_start = e_end
    # the plan is a schedule the pre-trade check (with the reserve's limits) accepts: charging back up from below
    # the floor and discharging back down from above the ceiling are what it allows
    feas = check_feasibility(
        [(p.period_start, p.plan_mw) for p in plan.periods],
        pb.soc_pct_now,
        pb.now_ts,
        battery(pb),
        _reserved_limits(pb),
    )
    assert feas.ok, feas.reason


def test_the_fcr_band_is_restored_from_15_pct_where_the_first_periods_are_closed() -> None:
    """8 MW of FCR on a 10 MW, 20 MWh plant (reserve 2.1 MWh each way: band 20.5-79.5 %), SoC 15 %, the current
    and next period past gate closure. Before the restore this had no plan at all ("infeasible": the window
    was bound from the first period the plant could have charged in, had it been tradable)."""
    n = 12
    pb = plant(
        n,
        now_ts=T0 + 300,
        soc_pct_now=15.0,
        tradable=(False, False) + (True,) * (n - 2),
        reserve_mw=8.0,
        reserve_mwh=2.1,
        end_value_eur_mwh=40.0,
    )
    plan = optimise(pb)
    assert plan.ok, plan.reason
    got = [(round(p.plan_mw, 6), p.restore_direction) for p in plan.periods[:6]]
    # idle while closed, then the 2 MW the band leaves until 20.5 % is reached (4.1 MWh from 3 MWh: 1.1 MWh at
    # 1.9 MWh per hour of charging), then inside the band
    assert got[:4] == [(0.0, -1), (0.0, -1), (-2.0, -1), (-2.0, -1)], got
    assert got[4][1] == -1 and -2.0 < got[4][0] < 0 and got[5][1] == 0, got
    assert plan.periods[4].soc_pct_end == pytest.approx(20.5, abs=1e-6)
    assert all(p.soc_pct_end >= 20.5 - 1e-6 for p in plan.periods[4:])
    assert math.isfinite(plan.objective_eur)


def test_from_above_the_band_it_discharges_back_and_marks_the_periods() -> None:
    n = 8
    pb = plant(n, soc_pct_now=88.0, tradable=(False,) + (True,) * (n - 1), reserve_mw=8.0, reserve_mwh=2.1)
    plan = optimise(pb)
    assert plan.ok, plan.reason
    assert plan.periods[0].plan_mw == 0 and plan.periods[0].restore_direction == 1
    back = [p for p in plan.periods[1:] if p.restore_direction == 1]
    assert back and all(p.plan_mw > 0 and p.charge_mw == 0 for p in back)
    assert all(p.plan_mw == pytest.approx(2.0) for p in back[:-1])  # all the 2 MW the band leaves
    reached = plan.periods[len(back)].soc_pct_end
    assert reached <= 79.5 + 1e-6
