"""The optimiser (controller/trading/optimiser.py): its plans keep every limit and pass the real pre-trade check,
it finds the same optimum as an exact dynamic programme on small horizons, dearer wear never buys more cycling, a
flat price buys nothing, commitments are delivered or the problem is reported infeasible, a reserve is kept, and
bad input is a status, never an exception."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from controller.config import Limits
from controller.trading.optimiser import PERIOD_H, PlanProblem, optimise
from controller.trading.schedule import check_feasibility
from tests.fixtures.optimiser import EXAMPLES, T0, TOL_MW, battery, plant
from tests.strategies import prices

TOL_PCT = 1e-6


@st.composite
def problems(draw, n_max: int = 12, commitments: bool = True) -> PlanProblem:
    """A plant of random size, window, efficiencies and reserve, random prices with a spread, and positions
    inside the power limits (commitments in the first few, untradable, periods only when asked)."""
    n = draw(st.integers(1, n_max))
    p_ch = draw(st.floats(0.5, 20))
    p_dis = draw(st.floats(0.5, 20))
    lo = draw(st.floats(0, 60))
    hi = draw(st.floats(lo + 10, 100))
    cap = draw(st.floats(1, 80))
    buy = draw(st.lists(prices, min_size=n, max_size=n))
    spread = draw(st.lists(st.floats(0, 20), min_size=n, max_size=n))
    fixed = draw(st.integers(0, min(n, 3))) if commitments else 0
    pos = [draw(st.floats(-p_ch, p_dis)) if commitments and draw(st.booleans()) else 0.0 for _ in range(n)]
    reserve_mw = draw(st.sampled_from([0.0, 0.0, min(p_ch, p_dis) / 4]))
    return PlanProblem(
        now_ts=T0 + draw(st.sampled_from([0, 0, 300, 899])),
        buy_price_eur_mwh=tuple(buy),
        sell_price_eur_mwh=tuple(b - s for b, s in zip(buy, spread)),
        position_mw=tuple(pos),
        soc_pct_now=draw(st.floats(lo, hi)),
        capacity_mwh=cap,
        soc_min_pct=lo,
        soc_max_pct=hi,
        p_charge_max_mw=p_ch,
        p_discharge_max_mw=p_dis,
        charge_efficiency=draw(st.floats(0.8, 1)),
        discharge_efficiency=draw(st.floats(0.8, 1)),
        self_discharge_pct_per_day=draw(st.sampled_from([0.0, 0.5, 5.0])),
        aux_load_mw=draw(st.sampled_from([0.0, 0.0, min(0.01 * cap, p_ch / 2)])),  # charging can outrun it
        degradation_eur_mwh=draw(st.floats(0, 30)),
        tradable=tuple(i >= fixed for i in range(n)),
        end_value_eur_mwh=draw(st.floats(0, 100)),
        reserve_mw=reserve_mw,
        reserve_mwh=draw(st.sampled_from([0.0, 0.0, (hi - lo) / 100 * cap / 8])),
        soc_taper_band_pct=draw(st.sampled_from([0.0, 0.0, 5.0])),
    )


def _limits(pb: PlanProblem) -> Limits:
    return Limits(
        p_charge_max_mw=pb.p_charge_max_mw,
        p_discharge_max_mw=pb.p_discharge_max_mw,
        soc_min_pct=pb.soc_min_pct,
        soc_max_pct=pb.soc_max_pct,
        soc_taper_band_pct=0,
        grid_limit_mw=max(pb.p_charge_max_mw, pb.p_discharge_max_mw),
    )


# found by hypothesis: from empty, a committed buy below the aux load; the plan's SoC path stops at empty as the
# pre-trade check's does (it went on below 0 while charging, and the next periods' SoC differed by 0.005 %)
EMPTY_BELOW_AUX = PlanProblem(
    now_ts=T0,
    buy_price_eur_mwh=(0.0,) * 6,
    sell_price_eur_mwh=(0.0,) * 6,
    position_mw=(-0.5, 0.0, 0.0, 0.0, 0.0, 0.0),
    soc_pct_now=0.0,
    capacity_mwh=51.0,
    soc_min_pct=0.0,
    soc_max_pct=10.0,
    p_charge_max_mw=2.0,
    p_discharge_max_mw=1.0,
    charge_efficiency=1.0,
    discharge_efficiency=1.0,
    aux_load_mw=0.51,
    tradable=(False, True, True, True, True, True),
)


@EXAMPLES
@given(problems())
@example(EMPTY_BELOW_AUX)
def test_a_plan_keeps_every_limit_and_passes_the_pre_trade_check(pb: PlanProblem) -> None:
    plan = optimise(pb)
    if not plan.ok:  # commitments the battery cannot deliver: said so, and no plan to act on
        assert plan.status == "infeasible" and plan.periods == () and plan.reason, plan
        return
    assert len(plan.periods) == pb.n_periods and math.isfinite(plan.objective_eur) and plan.solve_ms >= 0
    window = pb.capacity_mwh * (pb.soc_max_pct - pb.soc_min_pct) / 100
    rsv_pct = pb.reserve_mwh / pb.capacity_mwh * 100
    assert 2 * pb.reserve_mwh <= window + 1e-9
    for i, p in enumerate(plan.periods):
        assert p.period_start == T0 + 900 * i
        assert min(p.charge_mw, p.discharge_mw) <= TOL_MW, "charges and discharges at once"
        assert p.charge_mw <= pb.p_charge_max_mw - pb.reserve_mw + TOL_MW
        assert p.discharge_mw <= pb.p_discharge_max_mw - pb.reserve_mw + TOL_MW
        # inside the window the reserve leaves, or on the way back into it (a SoC that starts or drifts outside)
        if p.soc_pct_end < pb.soc_min_pct + rsv_pct - TOL_PCT:
            assert p.discharge_mw == 0, "discharges below the window"
        if p.soc_pct_end > pb.soc_max_pct - rsv_pct + TOL_PCT:
            assert p.charge_mw == 0, "charges above the window"
        if pb.soc_min_pct + rsv_pct <= pb.soc_pct_now <= pb.soc_max_pct - rsv_pct and not pb.self_discharge_pct_per_day:
            if not pb.aux_load_mw:
                assert pb.soc_min_pct + rsv_pct - TOL_PCT <= p.soc_pct_end <= pb.soc_max_pct - rsv_pct + TOL_PCT
        assert p.plan_mw - p.trade_mw == pytest.approx(pb.position_mw[i], abs=TOL_MW)
        if pb.soc_taper_band_pct and p.discharge_mw:  # what limit()'s taper allows at the period's lowest SoC
            taper = pb.p_discharge_max_mw * (p.soc_pct_end - pb.soc_min_pct) / pb.soc_taper_band_pct
            assert p.discharge_mw <= taper + TOL_MW
        if pb.soc_taper_band_pct and p.charge_mw:
            assert p.charge_mw <= pb.p_charge_max_mw * (pb.soc_max_pct - p.soc_pct_end) / pb.soc_taper_band_pct + TOL_MW
        if not pb.tradable[i]:
            assert p.trade_mw == pytest.approx(0, abs=TOL_MW), "traded a period that can no longer be traded"
    # the plan's own SoC path is the pre-trade check's: the plan as a schedule is feasible
    feas = check_feasibility(
        [(p.period_start, p.plan_mw) for p in plan.periods], pb.soc_pct_now, pb.now_ts, battery(pb), _limits(pb)
    )
    assert feas.ok, feas.reason
    for (_, soc), p in zip(feas.soc_path[1:], plan.periods):
        assert soc == pytest.approx(p.soc_pct_end, abs=1e-4)


@st.composite
def grid_problems(draw) -> PlanProblem:
    """Zero spread, zero wear, no self-discharge, whole periods: a problem whose every vertex lies on an energy
    grid of step `delta`, so a dynamic programme over that grid is exact (see _dp)."""
    n = draw(st.integers(1, 6))
    k = draw(st.integers(4, 20))  # capacity in grid steps
    delta = draw(st.sampled_from([0.25, 0.5, 1.0]))
    i_lo = draw(st.integers(0, k - 2))
    i_hi = draw(st.integers(i_lo + 1, k))
    eta_c, eta_d = draw(st.sampled_from([1.0, 0.95, 0.9])), draw(st.sampled_from([1.0, 0.95, 0.8]))
    k_ch, k_dis = draw(st.integers(1, k)), draw(st.integers(1, k))
    buy = draw(st.lists(st.integers(-50, 200).map(float), min_size=n, max_size=n))
    pos = draw(st.lists(st.sampled_from([0.0, 0.0, 1.0, -1.0]), min_size=n, max_size=n))
    return PlanProblem(
        now_ts=T0,
        buy_price_eur_mwh=tuple(buy),
        sell_price_eur_mwh=tuple(buy),
        position_mw=tuple(pos),
        soc_pct_now=draw(st.integers(i_lo, i_hi)) / k * 100,
        capacity_mwh=k * delta,
        soc_min_pct=i_lo / k * 100,
        soc_max_pct=i_hi / k * 100,
        p_charge_max_mw=k_ch * delta / eta_c / PERIOD_H,  # k_ch grid steps of stored energy per period
        p_discharge_max_mw=k_dis * delta * eta_d / PERIOD_H,
        charge_efficiency=eta_c,
        discharge_efficiency=eta_d,
        end_value_eur_mwh=float(draw(st.integers(0, 100))),
    )


def _dp(pb: PlanProblem) -> float:
    """The best value over every plan whose stored energy moves in whole grid steps, by dynamic programming
    backwards over (period, energy level). Every vertex of the LP (where its optimum lies) is such a plan,
    because the start, the window and the per-period power limits are whole steps; so this is the LP's optimum."""
    delta = _delta(pb)
    lo, hi = (
        round(pb.soc_min_pct / 100 * pb.capacity_mwh / delta),
        round(pb.soc_max_pct / 100 * pb.capacity_mwh / delta),
    )
    k_ch = round(pb.p_charge_max_mw * pb.charge_efficiency * PERIOD_H / delta)
    k_dis = round(pb.p_discharge_max_mw / pb.discharge_efficiency * PERIOD_H / delta)
    value = {i: pb.end_value_eur_mwh * i * delta for i in range(lo, hi + 1)}
    for t in reversed(range(pb.n_periods)):
        price = pb.buy_price_eur_mwh[t]
        nxt = {}
        for i in range(lo, hi + 1):
            best = -math.inf
            for j in range(max(lo, i - k_dis), min(hi, i + k_ch) + 1):
                stored = (j - i) * delta
                grid_mwh = stored / pb.charge_efficiency if stored > 0 else stored * pb.discharge_efficiency
                best = max(best, value[j] - price * grid_mwh)
            nxt[i] = best
        value = nxt
    i0 = round(pb.soc_pct_now / 100 * pb.capacity_mwh / delta)
    committed = sum(p * m * PERIOD_H for p, m in zip(pb.buy_price_eur_mwh, pb.position_mw))
    return value[i0] - committed  # the plan's value less what the positions already earned


def _delta(pb: PlanProblem) -> float:
    # the grid step: capacity is k steps of 0.25, 0.5 or 1 MWh; the coarsest step that divides every bound
    for delta in (1.0, 0.5, 0.25):
        on = all(
            abs(x / delta - round(x / delta)) < 1e-9
            for x in (
                pb.capacity_mwh,
                pb.soc_min_pct / 100 * pb.capacity_mwh,
                pb.soc_max_pct / 100 * pb.capacity_mwh,
                pb.soc_pct_now / 100 * pb.capacity_mwh,
                pb.p_charge_max_mw * pb.charge_efficiency * PERIOD_H,
                pb.p_discharge_max_mw / pb.discharge_efficiency * PERIOD_H,
            )
        )
        if on:
            return delta
    raise AssertionError("not a grid problem")


@EXAMPLES
@given(grid_problems())
def test_with_no_spread_and_no_wear_it_finds_the_dynamic_programmes_optimum(pb: PlanProblem) -> None:
    plan = optimise(pb)
    assert plan.ok, plan
    best = _dp(pb)
    # the solver's tolerance (~1e-7 MW, trimmed to the SoC window's edge) at the dearest price
    slack_eur = 1e-6 * pb.capacity_mwh * (max(map(abs, pb.buy_price_eur_mwh)) + pb.end_value_eur_mwh + 1)
    assert plan.objective_eur == pytest.approx(best, rel=1e-6, abs=slack_eur)


@EXAMPLES
@given(problems(commitments=False), st.floats(0, 50), st.floats(0.5, 50))
def test_dearer_wear_never_buys_more_throughput(pb: PlanProblem, cheap: float, more: float) -> None:
    """(At equal costs, plans of different throughput can tie: the raise is at least 0.5 EUR/MWh.)"""
    pb = replace(pb, sell_price_eur_mwh=tuple(max(p, 0.0) for p in pb.sell_price_eur_mwh))
    pb = replace(pb, buy_price_eur_mwh=tuple(max(p, 0.0) for p in pb.buy_price_eur_mwh))  # no MIP: exact LP optima
    dear = cheap + more
    a = optimise(replace(pb, degradation_eur_mwh=cheap))
    b = optimise(replace(pb, degradation_eur_mwh=dear))
    assert a.ok and b.ok
    # optimality of each at its own cost gives (dear - cheap) (T_a - T_b) >= 0; HiGHS stops within its tolerance
    # of the optimum, which on near-ties (charging a period earlier at the same price, less a trace of
    # self-discharge) can move ~1e-5 MWh either way
    assert b.throughput_mwh <= a.throughput_mwh + 1e-4 * max(1.0, a.throughput_mwh)


@EXAMPLES
@given(
    problems(commitments=False),
    st.floats(0, 300),
    st.floats(0.1, 30),
)
def test_a_flat_price_gives_no_trading(pb: PlanProblem, price: float, deg: float) -> None:
    """Every round trip loses its efficiency and wear; stored energy is worth the price to the end."""
    n = pb.n_periods
    pb = replace(
        pb,
        buy_price_eur_mwh=(price,) * n,
        sell_price_eur_mwh=(price,) * n,
        degradation_eur_mwh=deg,
        end_value_eur_mwh=price,
        self_discharge_pct_per_day=0.0,
        aux_load_mw=0.0,
        reserve_mwh=0.0,
    )
    plan = optimise(pb)
    assert plan.ok
    assert all(p.plan_mw == 0 and p.trade_mw == 0 for p in plan.periods), [p.plan_mw for p in plan.periods]
    assert plan.objective_eur == pytest.approx(price * pb.soc_pct_now / 100 * pb.capacity_mwh, abs=1e-6)


def test_commitments_are_delivered_and_priced_as_sunk() -> None:
    pos = (5.0, 5.0, -10.0, 0.0)
    plan = optimise(plant(4, position_mw=pos, tradable=(False, False, True, True), degradation_eur_mwh=5))
    assert plan.ok
    assert [p.plan_mw for p in plan.periods[:2]] == [5.0, 5.0]
    assert [p.trade_mw for p in plan.periods[:2]] == [0.0, 0.0]
    # period 2's buy costs 10 MW * 0.25 h * 50; the plan undoes it where it may trade, for nothing extra
    assert all(p.plan_mw - p.trade_mw == pytest.approx(q) for p, q in zip(plan.periods, pos))


@pytest.mark.parametrize(
    "kw",
    [
        # 12 MW sold for a period that can no longer be traded, on a 10 MW plant
        dict(position_mw=(12.0, 0, 0, 0), tradable=(False, True, True, True)),
        # 10 MW sold for 4 h from 50 % of 20 MWh: the battery runs dry (10 % floor) after ~1.5 h
        dict(position_mw=(10.0,) * 16, tradable=(False,) * 16),
        # a reserve larger than the plant
        dict(reserve_mw=11.0),
        # 5 MWh of room both ways in a 16 MWh window, plus 8 MW of committed charge past 85 %
        dict(soc_pct_now=80.0, position_mw=(-10.0, -10.0, 0, 0), tradable=(False, False, True, True), reserve_mwh=1),
    ],
)
def test_commitments_the_battery_cannot_meet_are_infeasible_not_an_exception(kw) -> None:
    n = len(kw.get("position_mw", (0,) * 4))
    plan = optimise(plant(n, **kw))
    assert plan.status == "infeasible" and plan.periods == () and math.isnan(plan.objective_eur)
    assert "reserve" in plan.reason or "positions already traded" in plan.reason, plan.reason


def test_a_reserve_is_kept_both_ways() -> None:
    n = 16
    spiky = tuple(300.0 if i % 4 == 0 else -50.0 for i in range(n))
    plan = optimise(plant(n, buy_price_eur_mwh=spiky, sell_price_eur_mwh=spiky, reserve_mw=3, reserve_mwh=4))
    assert plan.ok
    assert max(abs(p.plan_mw) for p in plan.periods) == pytest.approx(7)  # it would use all 10 MW otherwise
    socs = [p.soc_pct_end for p in plan.periods]
    assert min(socs) >= 30 - 1e-6 and max(socs) <= 70 + 1e-6  # 10 % + 4 MWh of 20, 90 % - 4 MWh
    free = optimise(plant(n, buy_price_eur_mwh=spiky, sell_price_eur_mwh=spiky))
    assert max(abs(p.plan_mw) for p in free.periods) == pytest.approx(10)
    assert free.objective_eur > plan.objective_eur


def test_negative_prices_never_charge_and_discharge_at_once() -> None:
    """Wasting energy pays at a negative price; the plant cannot do both at once, so the MIP fallback decides."""
    n = 8
    neg = (-200.0,) * n
    plan = optimise(plant(n, buy_price_eur_mwh=neg, sell_price_eur_mwh=neg, soc_pct_now=85, degradation_eur_mwh=1))
    assert plan.ok
    assert all(min(p.charge_mw, p.discharge_mw) == 0 for p in plan.periods)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(buy_price_eur_mwh=(50.0, math.nan)), "buy_price_eur_mwh[1]"),
        (dict(sell_price_eur_mwh=(50.0, 60.0)), "buy_price_eur_mwh[1]: below the sell price"),
        (dict(position_mw=(0.0,)), "position_mw: 1 periods"),
        (dict(soc_pct_now=math.inf), "soc_pct_now"),
        (dict(degradation_eur_mwh=-1.0), "degradation"),
        (dict(buy_price_eur_mwh=(), sell_price_eur_mwh=(), position_mw=()), "no periods"),
    ],
)
def test_bad_input_is_a_status_naming_the_field(kw, field) -> None:
    plan = optimise(plant(2, **kw))
    assert plan.status == "invalid" and plan.periods == () and field in plan.reason, plan.reason


def test_192_periods_solve() -> None:
    n = 192
    curve = tuple(60 + 40 * math.sin(2 * math.pi * i / 96) for i in range(n))
    plan = optimise(plant(n, buy_price_eur_mwh=curve, sell_price_eur_mwh=tuple(p - 2 for p in curve)))
    assert plan.ok and len(plan.periods) == n and plan.throughput_mwh > 0
