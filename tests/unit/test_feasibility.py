"""The feasibility check: SoC path of a schedule with efficiencies, self-discharge and aux load; first breach."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import parse_iso
from controller.config import Battery, Limits
from controller.trading.schedule import PERIOD_S, Feasibility, check_feasibility
from tests.strategies import valid_limits

T0 = parse_iso("2026-11-25T14:00:00Z")
LIMITS = Limits(p_charge_max_mw=10, p_discharge_max_mw=10, soc_min_pct=10, soc_max_pct=90, grid_limit_mw=12)
IDEAL = Battery(
    capacity_mwh=20, charge_efficiency=1, discharge_efficiency=1, self_discharge_pct_per_day=0, aux_load_mw=0
)
DEMO = Battery(
    capacity_mwh=20, charge_efficiency=0.95, discharge_efficiency=0.95, self_discharge_pct_per_day=0.5, aux_load_mw=0.02
)


def check(positions, soc=50.0, now=T0, battery=IDEAL, limits=LIMITS) -> Feasibility:
    return check_feasibility([(T0 + k * PERIOD_S, mw) for k, mw in positions], soc, now, battery, limits)


# ---------------------------------------------------------------- tables


def test_empty_schedule_is_feasible() -> None:
    f = check([], soc=50)
    assert (f.ok, f.period_start, f.limit) == (True, None, None)
    assert f.soc_path == [(T0, 50.0)]


def test_lossless_discharge_moves_soc_by_energy_over_capacity() -> None:
    f = check([(0, 10), (1, -4)])  # 2.5 MWh out = 12.5 %, then 1 MWh in = 5 %
    assert f.ok, f.reason
    assert [s for _, s in f.soc_path] == pytest.approx([50.0, 37.5, 42.5])
    assert [t for t, _ in f.soc_path] == [T0, T0 + 900, T0 + 1800]
    assert "feasible" in f.reason


def test_efficiencies() -> None:
    eff = Battery(
        capacity_mwh=20, charge_efficiency=0.9, discharge_efficiency=0.8, self_discharge_pct_per_day=0, aux_load_mw=0
    )
    f = check([(0, 8), (1, -8)], battery=eff)
    # out: 2 MWh at the grid takes 2 / 0.8 = 2.5 MWh from the cells; in: 2 MWh at the grid stores 1.8 MWh
    assert [s for _, s in f.soc_path] == pytest.approx([50.0, 37.5, 46.5])


def test_aux_load_and_self_discharge() -> None:
    aux = Battery(
        capacity_mwh=20, charge_efficiency=1, discharge_efficiency=1, self_discharge_pct_per_day=0, aux_load_mw=0.4
    )
    f = check([(3, 0.0)], battery=aux)  # idle hour: 0.4 MWh of aux = 2 %
    assert f.ok and f.soc_path[-1][1] == pytest.approx(48.0)
    sd = Battery(
        capacity_mwh=20, charge_efficiency=1, discharge_efficiency=1, self_discharge_pct_per_day=1, aux_load_mw=0
    )
    f = check([(95, 0.0)], battery=sd)  # one idle day at 1 %/day of stored energy, compounded per period
    assert f.ok and f.soc_path[-1][1] == pytest.approx(50 * (1 - 0.01 / 96) ** 96)
    assert len(f.soc_path) == 97


def test_current_period_counts_from_now() -> None:
    f = check([(0, 10)], now=T0 + 450)  # half the period left: half the energy
    assert f.soc_path == [(T0 + 450, 50.0), (T0 + 900, pytest.approx(43.75))]


def test_past_periods_are_ignored() -> None:
    f = check([(-2, 10), (-1, 10), (0, 4)], soc=11, now=T0 + 100)
    assert f.ok is False and f.limit == "soc_min" and f.period_start == T0


def test_soc_min_breach_names_period_and_values() -> None:
    f = check([(0, 4), (1, 4), (2, 8)], soc=20)
    assert (f.ok, f.period_start, f.limit) == (False, T0 + 1800, "soc_min")
    assert f.reason == "period 2026-11-25T14:30Z: SoC would fall to 0.0 % < soc_min 10 % (discharging 8 MW from 10.0 %)"
    assert [s for _, s in f.soc_path] == pytest.approx([20, 15, 10, 0])


def test_soc_max_breach() -> None:
    f = check([(0, -10), (1, -10), (2, -10), (3, -10)], soc=50, now=T0)
    assert (f.ok, f.period_start, f.limit) == (False, T0 + 3 * 900, "soc_max")
    assert f.reason.startswith("period 2026-11-25T14:45Z: SoC would rise to 100.0 % > soc_max 90 %")


def test_exactly_on_the_edge_is_feasible() -> None:
    assert check([(0, 8)], soc=20).ok  # 2 MWh = 10 %: ends exactly on soc_min
    assert check([(0, -8)], soc=80).ok


@pytest.mark.parametrize(
    "mw, limits, limit",
    [
        (10.5, LIMITS, "p_discharge_max"),
        (-10.5, LIMITS, "p_charge_max"),
        (11, LIMITS.model_copy(update={"grid_limit_mw": 9}), "grid_limit"),
        (-11, LIMITS.model_copy(update={"grid_limit_mw": 9}), "grid_limit"),
        (13, LIMITS, "p_discharge_max"),  # over both: the strictest is named
    ],
)
def test_power_limits(mw: float, limits: Limits, limit: str) -> None:
    f = check([(0, 1), (2, mw)], limits=limits)
    assert (f.ok, f.period_start, f.limit) == (False, T0 + 1800, limit)
    assert f.reason.startswith("period 2026-11-25T14:30Z: ")
    assert limit in f.reason


def test_first_breach_wins() -> None:
    f = check([(0, 10), (1, 10), (5, 20)], soc=30)  # SoC breach in period 1 comes before the power breach in 5
    assert (f.period_start, f.limit) == (T0 + 900, "soc_min")
    f = check([(0, 20), (1, 10), (2, 10)], soc=30)
    assert (f.period_start, f.limit) == (T0, "p_discharge_max")


def test_idle_drift_is_not_a_breach_but_carries_forward() -> None:
    drain = Battery(
        capacity_mwh=20, charge_efficiency=1, discharge_efficiency=1, self_discharge_pct_per_day=0, aux_load_mw=1
    )
    assert check([(7, -1)], soc=10.5, battery=drain).ok  # drifts under soc_min idle; a buy later is fine
    f = check([(7, 1)], soc=12, battery=drain)  # but a sell after the drift cannot be delivered
    assert (f.ok, f.period_start, f.limit) == (False, T0 + 7 * 900, "soc_min")


def test_outside_the_window_moving_back_is_feasible() -> None:
    assert check([(0, -4)], soc=5).ok
    assert check([(0, 4)], soc=95).ok
    assert check([(0, 4)], soc=5).limit == "soc_min"
    assert check([(0, -4)], soc=95).limit == "soc_max"


def test_unsorted_and_repeated_periods_are_summed() -> None:
    f = check_feasibility([(T0 + 900, 2.0), (T0, 3.0), (T0, 1.0)], 50, T0, IDEAL, LIMITS)
    assert [s for _, s in f.soc_path] == pytest.approx([50, 45, 42.5])


@pytest.mark.parametrize("soc, positions", [(math.nan, []), (50, [(T0, math.inf)]), (50, [(math.nan, 1.0)])])
def test_non_finite_inputs_are_refused(soc, positions) -> None:
    with pytest.raises(ValueError):
        check_feasibility(positions, soc, T0, IDEAL, LIMITS)


# ---------------------------------------------------------------- properties

# ~10 simulated periods per example; a fifth of the profile's examples (ci 2,000, dev 200) is plenty here.
FEAS_EXAMPLES = settings(max_examples=max(100, settings.default.max_examples // 5))

_MW = st.one_of(st.floats(-30, 30), st.just(0.0))
_POSITIONS = st.lists(st.tuples(st.integers(0, 40), _MW), max_size=12)
_SOC = st.floats(0, 100)
_NOW = st.floats(0, 899.999)


@st.composite
def batteries(draw, lossless: bool = False) -> Battery:
    if lossless:
        return Battery(
            capacity_mwh=draw(st.floats(1, 100)),
            charge_efficiency=1,
            discharge_efficiency=1,
            self_discharge_pct_per_day=0,
            aux_load_mw=0,
        )
    return Battery(
        capacity_mwh=draw(st.floats(1, 100)),
        charge_efficiency=draw(st.floats(0.7, 1)),
        discharge_efficiency=draw(st.floats(0.7, 1)),
        self_discharge_pct_per_day=draw(st.floats(0, 5)),
        aux_load_mw=draw(st.floats(0, 0.5)),
    )


def _positions(pairs) -> list[tuple[float, float]]:
    return [(T0 + k * PERIOD_S, mw) for k, mw in pairs]


def _net(positions) -> dict[float, float]:
    out: dict[float, float] = {}
    for p, mw in positions:
        out[p] = out.get(p, 0.0) + mw
    return out


@FEAS_EXAMPLES
@given(_SOC, _NOW, batteries(), valid_limits(), st.lists(st.integers(0, 40), max_size=8))
def test_nothing_to_deliver_is_feasible(soc, now, battery, limits, idle_periods) -> None:
    """Empty, or only periods whose trades cancel: feasible from any SoC, aux load or not."""
    f = check_feasibility([(T0 + k * PERIOD_S, 0.0) for k in idle_periods], soc, T0 + now, battery, limits)
    assert f.ok and f.limit is None and f.period_start is None


@FEAS_EXAMPLES
@given(_POSITIONS, _SOC, _NOW, batteries(), valid_limits())
def test_verdict_matches_the_path(pairs, soc, now, battery, limits) -> None:
    """ok: every period fits the power limits, no discharging period ends under soc_min and no charging one
    over soc_max. Not ok: the named period really breaks the named limit, and every earlier one is fine."""
    positions = _positions(pairs)
    f = check_feasibility(positions, soc, T0 + now, battery, limits)
    net = _net(positions)
    ends = dict(f.soc_path[1:])
    assert [t for t, _ in f.soc_path] == sorted(t for t, _ in f.soc_path)
    last = f.period_start if not f.ok else math.inf

    def fine(p: float) -> bool:
        mw = net.get(p, 0.0)
        cap = min(limits.p_discharge_max_mw if mw > 0 else limits.p_charge_max_mw, limits.grid_limit_mw)
        if abs(mw) > cap + 1e-9:
            return False
        soc_end = ends[p + PERIOD_S]
        return not (
            (mw > 0 and soc_end < limits.soc_min_pct - 1e-9) or (mw < 0 and soc_end > limits.soc_max_pct + 1e-9)
        )

    simulated = [p for p in sorted(net) if p < last]
    assert all(fine(p) for p in simulated)
    if f.ok:
        assert set(ends) >= {p + PERIOD_S for p in net}
        return
    mw = net[f.period_start]
    if f.limit in ("p_discharge_max", "p_charge_max", "grid_limit"):
        own = limits.p_discharge_max_mw if mw > 0 else limits.p_charge_max_mw
        named = {
            "p_discharge_max": limits.p_discharge_max_mw,
            "p_charge_max": limits.p_charge_max_mw,
            "grid_limit": limits.grid_limit_mw,
        }[f.limit]
        assert abs(mw) > named == min(own, limits.grid_limit_mw)  # the strictest limit exceeded is named
        assert f.limit != ("p_charge_max" if mw > 0 else "p_discharge_max")
    else:
        soc_end = f.soc_path[-1][1]
        assert f.soc_path[-1][0] == f.period_start + PERIOD_S
        if f.limit == "soc_min":
            assert mw > 0 and soc_end < limits.soc_min_pct
        else:
            assert f.limit == "soc_max" and mw < 0 and soc_end > limits.soc_max_pct
    assert f.reason.startswith("period 20") and f.limit in f.reason


@FEAS_EXAMPLES
@given(_POSITIONS, st.floats(0, 100), batteries(lossless=True), valid_limits())
def test_feasible_lossless_schedule_stays_in_the_window(pairs, soc, battery, limits) -> None:
    """With no losses, a feasible schedule from inside the window keeps SoC inside it at every period end,
    and the last SoC is the start minus the energy delivered."""
    soc = limits.soc_min_pct + (limits.soc_max_pct - limits.soc_min_pct) * soc / 100
    positions = _positions(pairs)
    f = check_feasibility(positions, soc, T0, battery, limits)
    if not f.ok:
        return
    assert all(limits.soc_min_pct - 1e-9 <= s <= limits.soc_max_pct + 1e-9 for _, s in f.soc_path)
    delivered_mwh = sum(_net(positions).values()) * PERIOD_S / 3600
    assert f.soc_path[-1][1] == pytest.approx(soc - delivered_mwh / battery.capacity_mwh * 100, abs=1e-6)


@FEAS_EXAMPLES
@given(_POSITIONS, _SOC, _NOW, batteries(), valid_limits(), st.integers(0, 40), st.floats(0.001, 30))
def test_adding_a_trade_the_wrong_way_never_fixes_a_breach(pairs, soc, now, battery, limits, k, q) -> None:
    """A sell cannot cure running out (soc_min, too much discharge); a buy cannot cure running full (soc_max,
    too much charge). Only a trade that moves SoC back toward the window can make a schedule feasible."""
    positions = _positions(pairs)
    f = check_feasibility(positions, soc, T0 + now, battery, limits)
    if f.ok:
        return
    mw = _net(positions)[f.period_start]
    if f.limit in ("soc_min", "p_discharge_max") or (f.limit == "grid_limit" and mw > 0):
        extra = q  # a sell
    else:
        extra = -q  # a buy
    g = check_feasibility(positions + [(T0 + k * PERIOD_S, extra)], soc, T0 + now, battery, limits)
    assert not g.ok


@FEAS_EXAMPLES
@given(_POSITIONS, _SOC, _NOW, batteries(), valid_limits(), st.integers(0, 40))
def test_a_feasible_schedule_is_feasible_up_to_any_period(pairs, soc, now, battery, limits, cut) -> None:
    positions = _positions(pairs)
    if not check_feasibility(positions, soc, T0 + now, battery, limits).ok:
        return
    prefix = [(p, mw) for p, mw in positions if p < T0 + cut * PERIOD_S]
    assert check_feasibility(prefix, soc, T0 + now, battery, limits).ok


# ---------------------------------------------------------------- open orders and an unknown SoC (issue 11)


def test_unknown_soc_is_not_feasible_and_says_why() -> None:
    f = check_feasibility([(T0, 1.0)], None, T0, IDEAL, LIMITS)
    assert (f.ok, f.limit, f.period_start) == (False, "soc_unknown", None)
    assert "SoC unknown" in f.reason
    assert not check_feasibility([], None, T0, IDEAL, LIMITS).ok  # nothing is checked without a SoC


def test_two_orders_feasible_alone_breach_together() -> None:
    """20 MWh from 50 %: order A sells 4 MW for an hour (-20 %), order B 5 MW for the hour after (-25 %). Each
    fits alone; with A open, B is refused (30 % - 25 % < 10 %), and an open buy does not count against the floor."""
    a = [(T0 + k * PERIOD_S, 4.0) for k in range(4)]
    b = [(T0 + (4 + k) * PERIOD_S, 5.0) for k in range(4)]
    assert check_feasibility([], 50, T0, IDEAL, LIMITS, open_orders=a).ok
    assert check_feasibility([], 50, T0, IDEAL, LIMITS, open_orders=b).ok
    buy = [(T0 + 4 * PERIOD_S, -10.0)]  # would refill 12.5 % if it filled; it may not
    f = check_feasibility([], 50, T0, IDEAL, LIMITS, open_orders=a + buy + b)
    assert (f.ok, f.limit, f.period_start) == (False, "soc_min", T0 + 7 * PERIOD_S), f.reason
    assert "worst case" in f.reason and "8 open sell" in f.reason
    # the ceiling the other way: open buys fill, open sells do not
    up = [(p, -mw) for p, mw in a + b]
    g = check_feasibility([], 50, T0, IDEAL, LIMITS, open_orders=up + [(T0 + 4 * PERIOD_S, 10.0)])
    assert (g.ok, g.limit) == (False, "soc_max"), g.reason
    # power: a trade and an open buy in one period, each within p_charge_max (10 MW) alone
    h = check_feasibility([(T0 + 900, -6.0)], 50, T0, IDEAL, LIMITS, open_orders=[(T0 + 900, -6.0), (T0 + 900, 3.0)])
    assert (h.ok, h.limit) == (False, "p_charge_max"), h.reason


_HALF_MW = st.integers(-40, 40).map(lambda n: n / 2)  # exact in binary: sums do not depend on order
_ORDERS = st.lists(st.tuples(st.integers(0, 12), _HALF_MW.filter(lambda mw: mw != 0)), max_size=5)


@st.composite
def plain_batteries(draw) -> Battery:
    return Battery(
        capacity_mwh=draw(st.integers(5, 60)),
        charge_efficiency=draw(st.sampled_from([1, 0.95, 0.9])),
        discharge_efficiency=draw(st.sampled_from([1, 0.95, 0.9])),
        self_discharge_pct_per_day=draw(st.sampled_from([0, 0.5])),
        aux_load_mw=draw(st.sampled_from([0, 0.02])),
    )


@FEAS_EXAMPLES
@given(
    st.lists(st.tuples(st.integers(0, 12), _HALF_MW), max_size=6),
    _ORDERS,
    st.integers(0, 100),
    _NOW,
    plain_batteries(),
    valid_limits(),
)
def test_open_orders_check_is_every_set_of_fills(pairs, orders, soc, now, battery, limits) -> None:
    """The worst-case rule is exact: the check with open orders is ok if and only if the schedule is feasible for
    every subset of the open orders filling (each limit's worst case is one of those subsets)."""
    positions = _positions(pairs)
    legs = _positions(orders)
    f = check_feasibility(positions, soc, T0 + now, battery, limits, open_orders=legs)
    every = all(
        check_feasibility(
            positions + [leg for i, leg in enumerate(legs) if mask >> i & 1], soc, T0 + now, battery, limits
        ).ok
        for mask in range(1 << len(legs))
    )
    assert f.ok == every, f.reason


@FEAS_EXAMPLES
@given(
    st.lists(st.tuples(st.integers(0, 12), _HALF_MW), max_size=6),
    _ORDERS,
    st.integers(0, 100),
    _NOW,
    plain_batteries(),
    valid_limits(),
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=5, max_size=5),
)
def test_open_orders_ok_means_any_partial_fills_are_feasible(
    pairs, orders, soc, now, battery, limits, fractions
) -> None:
    positions = _positions(pairs)
    legs = _positions(orders)
    if not check_feasibility(positions, soc, T0 + now, battery, limits, open_orders=legs).ok:
        return
    filled = [(p, mw * x) for (p, mw), x in zip(legs, fractions)]
    f = check_feasibility(positions + filled, soc, T0 + now, battery, limits)
    assert f.ok, f.reason


@FEAS_EXAMPLES
@given(
    st.lists(st.tuples(st.integers(0, 12), _HALF_MW), max_size=6),
    _ORDERS,
    st.tuples(st.integers(0, 12), _HALF_MW.filter(lambda mw: mw != 0)),
    st.integers(0, 100),
    _NOW,
    plain_batteries(),
    valid_limits(),
)
def test_a_new_order_is_refused_only_for_a_breach_it_can_be_part_of(
    pairs, orders, new, soc, now, battery, limits
) -> None:
    """Accepted: no set of the open orders' fills that was feasible becomes infeasible with the new order filled
    too. Refused: some set of fills that includes the new order breaches a limit."""
    positions = _positions(pairs)
    legs = _positions(orders)
    (leg,) = _positions([new])

    def ok(fills: list[tuple[float, float]]) -> bool:
        return check_feasibility(positions + fills, soc, T0 + now, battery, limits).ok

    subsets = [[x for i, x in enumerate(legs) if mask >> i & 1] for mask in range(1 << len(legs))]
    f = check_feasibility(positions, soc, T0 + now, battery, limits, open_orders=legs, new_order=leg)
    if f.ok:
        assert all(ok(s + [leg]) for s in subsets if ok(s)), f.reason
    else:
        assert any(not ok(s + [leg]) for s in subsets), f.reason


def test_a_buy_that_brings_the_soc_back_is_accepted_while_open_sells_no_longer_fit() -> None:
    """The demo's case: the SoC drifted low (FCR, a fault) under the site's open sells; a buy for an earlier period
    can only help and is accepted (its own worst case checked); any further sell is still refused."""
    sells = [(T0 + 4 * PERIOD_S, 8.0)]
    assert not check_feasibility([], 12.0, T0, IDEAL, LIMITS, open_orders=sells).ok
    buy = check_feasibility([], 12.0, T0, IDEAL, LIMITS, open_orders=sells, new_order=(T0 + PERIOD_S, -2.0))
    assert buy.ok and buy.reason.startswith("accepted: this buy order can only bring the schedule back"), buy.reason
    sell = check_feasibility([], 12.0, T0, IDEAL, LIMITS, open_orders=sells, new_order=(T0 + PERIOD_S, 1.0))
    assert not sell.ok and sell.limit == "soc_min"
    # the same when it is an executed trade, not an open order, that no longer fits: it is in every worst case
    traded = [(T0 + 4 * PERIOD_S, 8.0)]
    assert check_feasibility(traded, 12.0, T0, IDEAL, LIMITS, new_order=(T0 + PERIOD_S, -2.0)).ok
    assert not check_feasibility(traded, 12.0, T0, IDEAL, LIMITS, new_order=(T0 + PERIOD_S, 1.0)).ok
    # a buy that breaches its own worst case (the SoC ceiling) is refused as before
    big = check_feasibility([], 85.0, T0, IDEAL, LIMITS, open_orders=[(T0 + 4 * PERIOD_S, 10.0)], new_order=(T0, -40.0))
    assert not big.ok
