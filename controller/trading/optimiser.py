"""The storage optimiser: a pure function from prices, positions already traded, SoC, limits and battery
parameters to a plan per 15-minute period, solved as a linear programme on HiGHS (highspy).

    optimise(problem: PlanProblem) -> Plan

`PlanProblem` (frozen) holds, per period from the one containing `now_ts`: the buy and sell prices (EUR/MWh; a
buy price above the sell price is the spread), the position already traded (MW, + = sold = discharge, DESIGN.md
"Units and signs"), and whether the period can still be traded; and once: SoC now, the battery (capacity,
charge/discharge efficiencies, self-discharge, aux load), the SoC window, the plant's charge/discharge power
(the caller passes what is available: min of the limits and, with units, the sum of available units' power),
the degradation cost per MWh of throughput, an optional end-of-horizon SoC floor or value per MWh left, and a
reserve (±reserve_mw of power headroom and reserve_mwh of energy room both ways, for frequency response).
`problem_for_site(cfg, ...)` builds one from the site file.

`Plan` (frozen): `status` (HiGHS's model status as a word: "optimal", "infeasible", ...; "invalid" for a
problem that cannot be posed), `reason`, `objective_eur` (the value of what remains to trade: sales minus
purchases minus degradation plus the end value; commitments already traded are sunk), `solve_ms`, and per
period `plan_mw` (the physical net power), `trade_mw` (plan − position: what remains to trade; + sell, − buy)
and `soc_pct_end`. A plan that is not optimal has no periods, so a caller never acts on one that breaks limits;
`optimise` never raises.

The model per period t of h_t hours (the current period counts from `now_ts` to its end), the same SoC model as
the pre-trade check (controller/trading/schedule.py):
    e_t = e_{t-1} (1 − sd·h_t) + η_c c_t h_t − d_t h_t / η_d − aux·h_t
    d_t − c_t − s_t + b_t = position_t          (s, b: what remains to sell/buy; both 0 where not tradable)
    0 ≤ c_t ≤ P_charge − reserve,  0 ≤ d_t ≤ P_discharge − reserve
    soc_min + reserve_mwh ≤ e_t ≤ soc_max − reserve_mwh
    max  Σ h_t (sell_t s_t − buy_t b_t − degradation (c_t + d_t)) + end_value · e_T
A SoC that starts (or drifts) outside the window (with FCR on: its reserve band) is brought back as fast as the
plant can: full charge (discharge) in every period that can still be traded, within the power limits and the
taper, until the window is reached, never away from it (TSOs' SoC management rules for FCR providers); those
periods carry `restore_direction` (-1 charging back, +1 discharging back). No discharge while the window is out of
reach from below, no charge while from above: what the pre-trade check allows.
Charging and discharging in the same period is what the LP does when it pays to waste energy (negative
prices); the plant cannot, so such a solution is solved again with one binary per period (a small MIP). The
solution's SoC path is then simulated exactly as the pre-trade check simulates it, and a charge or discharge the
solver's tolerance (~1e-7) took past the window's edge is trimmed to it: the plan passes the pre-trade check.
The end value matters: without one (0), the plan sells whatever is stored by the horizon's end; problem_for_site
sets default_end_value (the mean price of the horizon's last day after discharge losses) unless told otherwise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np

from controller.config import SiteConfig
from controller.trading.market import PERIOD_S, period_start

PERIOD_H = PERIOD_S / 3600.0
_SIMULTANEOUS_MW = 1e-6  # charge and discharge both above this in one period: solve again with binaries
# added to the wear cost in the solve only: of plans that earn the same, the one that cycles least (so a zero
# wear cost does not make the solver pick charge-and-discharge-at-once at random)
_TIE_EUR_MWH = 1e-6


@dataclass(frozen=True)
class PlanProblem:
    """What the optimiser plans against. Per-period tuples all have one entry per period, the first being the
    period containing `now_ts`; `tradable` None means every period can still be traded."""

    now_ts: float
    buy_price_eur_mwh: tuple[float, ...]
    sell_price_eur_mwh: tuple[float, ...]
    position_mw: tuple[float, ...]
    soc_pct_now: float
    capacity_mwh: float
    soc_min_pct: float
    soc_max_pct: float
    p_charge_max_mw: float
    p_discharge_max_mw: float
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    self_discharge_pct_per_day: float = 0.0
    aux_load_mw: float = 0.0
    degradation_eur_mwh: float = 0.0
    tradable: tuple[bool, ...] | None = None
    end_soc_pct: float | None = None  # the last period ends at or above this SoC
    end_value_eur_mwh: float = 0.0  # what a MWh stored at the horizon's end is worth
    reserve_mw: float = 0.0
    reserve_mwh: float = 0.0
    # the limit function's SoC taper (limits.soc_taper_band_pct): within this band of soc_min (soc_max) the
    # discharge (charge) power is cut linearly to 0; the plan keeps to it so that what it trades can be delivered
    soc_taper_band_pct: float = 0.0

    @property
    def n_periods(self) -> int:
        return len(self.buy_price_eur_mwh)


@dataclass(frozen=True)
class PlanPeriod:
    period_start: float  # Unix seconds
    plan_mw: float  # physical net power: + discharge, − charge
    trade_mw: float  # plan − position: + still to sell, − still to buy
    position_mw: float
    soc_pct_end: float
    charge_mw: float
    discharge_mw: float
    hours: float  # how much of the period the plan covers: the current period from now_ts, the others 0.25
    # the period starts outside the window on the way back into it: -1 it charges back up, +1 it discharges back
    # down (at all the power it may, where it can be traded), 0 it starts inside
    restore_direction: int = 0


@dataclass(frozen=True)
class Plan:
    status: str
    reason: str
    objective_eur: float
    solve_ms: float
    periods: tuple[PlanPeriod, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.status == "optimal"

    @property
    def throughput_mwh(self) -> float:
        """Energy through the plant's grid side over the plan (charge plus discharge)."""
        return sum((p.charge_mw + p.discharge_mw) * p.hours for p in self.periods)


def problem_for_site(
    cfg: SiteConfig,
    *,
    now_ts: float,
    soc_pct_now: float,
    buy_price_eur_mwh: tuple[float, ...],
    sell_price_eur_mwh: tuple[float, ...] | None = None,
    position_mw: tuple[float, ...] | None = None,
    available_charge_mw: float | None = None,
    available_discharge_mw: float | None = None,
    **extra,
) -> PlanProblem:
    """A PlanProblem from the site file: battery, SoC window, power limits (the configured limits and the grid
    limit, capped by `available_*_mw` when units are out), degradation cost, SoC taper, and an end value
    (default_end_value) unless `extra` gives one or an end SoC. `extra` sets (or overrides) the remaining fields."""
    lim, bat = cfg.limits, cfg.battery
    p_ch = min(lim.p_charge_max_mw, lim.grid_limit_mw)
    p_dis = min(lim.p_discharge_max_mw, lim.grid_limit_mw)
    if available_charge_mw is not None:
        p_ch = min(p_ch, available_charge_mw)
    if available_discharge_mw is not None:
        p_dis = min(p_dis, available_discharge_mw)
    n = len(buy_price_eur_mwh)
    fields = dict(
        now_ts=now_ts,
        buy_price_eur_mwh=tuple(buy_price_eur_mwh),
        sell_price_eur_mwh=tuple(sell_price_eur_mwh if sell_price_eur_mwh is not None else buy_price_eur_mwh),
        position_mw=tuple(position_mw if position_mw is not None else (0.0,) * n),
        soc_pct_now=soc_pct_now,
        capacity_mwh=bat.capacity_mwh,
        soc_min_pct=lim.soc_min_pct,
        soc_max_pct=lim.soc_max_pct,
        p_charge_max_mw=p_ch,
        p_discharge_max_mw=p_dis,
        charge_efficiency=bat.charge_efficiency,
        discharge_efficiency=bat.discharge_efficiency,
        self_discharge_pct_per_day=bat.self_discharge_pct_per_day,
        aux_load_mw=bat.aux_load_mw,
        degradation_eur_mwh=cfg.trading.degradation_eur_mwh,
        soc_taper_band_pct=lim.soc_taper_band_pct,
    )
    if "end_value_eur_mwh" not in extra and "end_soc_pct" not in extra:
        fields["end_value_eur_mwh"] = default_end_value(buy_price_eur_mwh, bat.discharge_efficiency)
    fields.update(extra)
    return PlanProblem(**fields)


def default_end_value(prices: tuple[float, ...] | list[float], discharge_efficiency: float) -> float:
    """What a MWh still stored at the horizon's end is worth, when the caller does not say: the mean price of
    the horizon's last day (what it could be sold at later) after discharge losses, never below 0. Without an
    end value the plan would sell everything stored by the horizon's end, however low the price."""
    tail = [p for p in prices[-96:] if math.isfinite(p)]
    return max(0.0, sum(tail) / len(tail) * discharge_efficiency) if tail else 0.0


def problem_error(pb: PlanProblem) -> str | None:
    """Why the problem cannot be posed (names the field), or None."""
    n = pb.n_periods
    if n == 0:
        return "buy_price_eur_mwh: no periods to plan"
    for name in ("sell_price_eur_mwh", "position_mw", "tradable"):
        v = getattr(pb, name)
        if v is not None and len(v) != n:
            return f"{name}: {len(v)} periods, buy_price_eur_mwh has {n}"
    for name in ("buy_price_eur_mwh", "sell_price_eur_mwh", "position_mw"):
        bad = [i for i, x in enumerate(getattr(pb, name)) if not math.isfinite(x)]
        if bad:
            return f"{name}[{bad[0]}]: must be a finite number (got {getattr(pb, name)[bad[0]]})"
    scalars = (
        "now_ts soc_pct_now capacity_mwh soc_min_pct soc_max_pct p_charge_max_mw p_discharge_max_mw "
        "charge_efficiency discharge_efficiency self_discharge_pct_per_day aux_load_mw degradation_eur_mwh "
        "end_value_eur_mwh reserve_mw reserve_mwh soc_taper_band_pct"
    ).split()
    for name in scalars:
        v = getattr(pb, name)
        if not math.isfinite(v):
            return f"{name}: must be a finite number (got {v})"
    if pb.end_soc_pct is not None and not math.isfinite(pb.end_soc_pct):
        return f"end_soc_pct: must be a finite number (got {pb.end_soc_pct})"
    checks = [
        (pb.capacity_mwh > 0, "capacity_mwh: must be > 0"),
        (0 < pb.charge_efficiency <= 1, "charge_efficiency: must be in (0, 1]"),
        (0 < pb.discharge_efficiency <= 1, "discharge_efficiency: must be in (0, 1]"),
        (0 <= pb.soc_min_pct < pb.soc_max_pct <= 100, "soc_min_pct/soc_max_pct: need 0 <= min < max <= 100"),
        (pb.p_charge_max_mw >= 0 and pb.p_discharge_max_mw >= 0, "p_*_max_mw: must be >= 0"),
        (min(pb.self_discharge_pct_per_day, pb.aux_load_mw, pb.degradation_eur_mwh) >= 0, "self-discharge, aux "
         "load and degradation cost must be >= 0"),
        (pb.reserve_mw >= 0 and pb.reserve_mwh >= 0, "reserve_mw/reserve_mwh: must be >= 0"),
        (0 <= pb.soc_taper_band_pct <= 50, "soc_taper_band_pct: must be in [0, 50]"),
    ]  # fmt: skip
    for ok, why in checks:
        if not ok:
            return why
    crossed = [i for i in range(n) if pb.buy_price_eur_mwh[i] < pb.sell_price_eur_mwh[i]]
    if crossed:
        i = crossed[0]
        return (
            f"buy_price_eur_mwh[{i}]: below the sell price ({pb.buy_price_eur_mwh[i]:g} < "
            f"{pb.sell_price_eur_mwh[i]:g}): crossed prices are an unbounded arbitrage"
        )
    return None


def _infeasible_reserve(pb: PlanProblem) -> str | None:
    """A reserve the plant cannot hold at all, whatever the plan."""
    if pb.reserve_mw > min(pb.p_charge_max_mw, pb.p_discharge_max_mw):
        return (
            f"reserve_mw {pb.reserve_mw:g} MW exceeds the plant's power "
            f"(charge {pb.p_charge_max_mw:g}, discharge {pb.p_discharge_max_mw:g} MW)"
        )
    window_mwh = (pb.soc_max_pct - pb.soc_min_pct) / 100 * pb.capacity_mwh
    if 2 * pb.reserve_mwh > window_mwh:
        return f"reserve_mwh {pb.reserve_mwh:g} MWh both ways exceeds the SoC window ({window_mwh:g} MWh)"
    return None


def _tradable(pb: PlanProblem) -> np.ndarray:
    """Per period whether it can still be traded (`tradable` None: every one)."""
    return np.ones(pb.n_periods, bool) if pb.tradable is None else np.asarray(pb.tradable, bool)


def _hours(pb: PlanProblem) -> np.ndarray:
    """Length of each period in hours; the current one from now_ts to its end."""
    h = np.full(pb.n_periods, PERIOD_H)
    first = period_start(pb.now_ts)
    h[0] = max(first + PERIOD_S - pb.now_ts, 0.0) / 3600.0
    return h


@dataclass(frozen=True)
class _Window:
    """Per period: the energy bounds (MWh), whether the plant may charge / discharge at all, and which way the
    period restores the window (-1 it charges back up, +1 it discharges back down, 0 it starts inside)."""

    e_lo: np.ndarray
    e_hi: np.ndarray
    may_charge: np.ndarray
    may_discharge: np.ndarray
    restore: np.ndarray


_RESTORE_TOL = 1e-9  # of capacity: the restore path's bound is this much below the fastest path (solver slack)


def _window(pb: PlanProblem, h: np.ndarray, keep: np.ndarray, c_max: float, d_max: float) -> _Window:
    """The SoC window narrowed by the reserve. A SoC that starts (or drifts) outside it is brought back as fast
    as the plant can (the FCR reserve band, as the TSOs' SoC management rules ask of a provider): while the
    fastest path back (_restore_paths) still ends a period outside, that period's bound is that path, so the plan
    charges (discharges) all it may in every period it can still trade and never moves away; the period that
    reaches the window is bound by the window. No discharge while the window is out of reach from below, no
    charge while from above (what the pre-trade check refuses)."""
    cap = pb.capacity_mwh
    lo = (pb.soc_min_pct / 100) * cap + pb.reserve_mwh
    hi = (pb.soc_max_pct / 100) * cap - pb.reserve_mwh
    up, down = _restore_paths(pb, h, keep, c_max, d_max)
    tol = _RESTORE_TOL * cap
    below, above = up < lo, down > hi
    e_lo = np.where(below, up - tol, lo)
    e_hi = np.where(above, down + tol, hi)
    # a period restores the window when it starts outside on the way back (the first one: when the SoC now is)
    started_below = np.concatenate(([pb.soc_pct_now / 100 * cap < lo], below[:-1]))
    started_above = np.concatenate(([pb.soc_pct_now / 100 * cap > hi], above[:-1]))
    restore = np.where(started_below, -1, np.where(started_above, 1, 0)).astype(np.int8)
    # never the other way while on the way back, not even in the period that reaches the window (where the
    # window's own bound would let a little charge from above through); a closed period's position is what it is
    tradable = _tradable(pb)
    may_charge = ~above & ~(started_above & tradable)
    may_discharge = ~below & ~(started_below & tradable)
    return _Window(e_lo, e_hi, may_charge, may_discharge, restore)


def _restore_paths(
    pb: PlanProblem, h: np.ndarray, keep: np.ndarray, c_max: float, d_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """The most and the least energy (MWh) stored at each period's end that any plan can reach from now: full
    charge (up) or full discharge (down) in every period that can still be traded, the position already traded
    in the others, the limit function's taper where it cuts the power (the LP's taper rows), aux load and
    self-discharge throughout. As the LP's energy balance has it: an empty battery whose aux load the plant
    cannot yet charge against goes below 0 here (the plan's SoC path, simulated as the pre-trade check does,
    stays at 0), so such a plan is still feasible."""
    n, cap = pb.n_periods, pb.capacity_mwh
    tradable = _tradable(pb)
    eta_c, eta_d = pb.charge_efficiency, pb.discharge_efficiency
    up_path, down_path = np.empty(n), np.empty(n)
    up = down = pb.soc_pct_now / 100 * cap
    for t in range(n):
        ht = h[t]
        idle_up = up * keep[t] - pb.aux_load_mw * ht
        idle_down = down * keep[t] - pb.aux_load_mw * ht
        if not tradable[t]:  # its power is the position: + discharge, - charge
            mw = pb.position_mw[t]
            gain = -mw / eta_d * ht if mw > 0 else -mw * eta_c * ht
            up, down = idle_up + gain, idle_down + gain
        else:  # full power each way, cut by the taper at the period's end SoC
            c, d = c_max, d_max
            if pb.soc_taper_band_pct > 0:
                c = min(c, max(_taper_charge_cap_mw(pb, idle_up, ht), 0.0))
                d = min(d, max(_taper_discharge_cap_mw(pb, idle_down, ht), 0.0))
            up, down = idle_up + c * eta_c * ht, idle_down - d / eta_d * ht
        up_path[t], down_path[t] = up, down
    return up_path, down_path


class _Model:
    """Column blocks (one column per period each) and row blocks (one row per period each), assembled into
    HiGHS's column-wise arrays. Column t of block k is k*n + t; row t of row block r is r*n + t."""

    def __init__(self, n: int):
        self.n = n
        self.cost, self.lower, self.upper, self.integer = [], [], [], []
        self.row_lo, self.row_hi, self.entries = [], [], []

    def cols(self, cost, lower, upper, integer: bool = False) -> int:
        n = self.n
        self.cost.append(np.broadcast_to(np.asarray(cost, float), (n,)).copy())
        self.lower.append(np.broadcast_to(np.asarray(lower, float), (n,)).copy())
        self.upper.append(np.broadcast_to(np.asarray(upper, float), (n,)).copy())
        self.integer.append(integer)
        return len(self.cost) - 1

    def rows(self, lo, hi) -> int:
        self.row_lo.append(np.broadcast_to(np.asarray(lo, float), (self.n,)))
        self.row_hi.append(np.broadcast_to(np.asarray(hi, float), (self.n,)))
        return len(self.row_lo) - 1

    def put(self, block: int, row_block: int, value, shift: int = 0) -> None:
        """Column t of `block` gets `value` (per period, or one for all) in row t + shift of `row_block`."""
        t = np.arange(max(0, -shift), self.n - max(0, shift))
        v = np.broadcast_to(np.asarray(value, float), (self.n,))[t + shift]
        self.entries.append((block * self.n + t, row_block * self.n + t + shift, v))

    def lp(self) -> highspy.HighsLp:
        cols = np.concatenate([c for c, _, _ in self.entries])
        rws = np.concatenate([r for _, r, _ in self.entries])
        vals = np.concatenate([v for _, _, v in self.entries])
        order = np.lexsort((rws, cols))
        num_col = len(self.cost) * self.n
        starts = np.zeros(num_col + 1, np.int32)
        np.cumsum(np.bincount(cols, minlength=num_col), out=starts[1:])
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = num_col, len(self.row_lo) * self.n
        lp.col_cost_ = np.concatenate(self.cost)
        lp.col_lower_, lp.col_upper_ = np.concatenate(self.lower), np.concatenate(self.upper)
        lp.row_lower_, lp.row_upper_ = np.concatenate(self.row_lo), np.concatenate(self.row_hi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = starts
        lp.a_matrix_.index_ = rws[order].astype(np.int32)
        lp.a_matrix_.value_ = vals[order]
        if any(self.integer):
            kinds = (highspy.HighsVarType.kInteger, highspy.HighsVarType.kContinuous)
            lp.integrality_ = [kinds[0] if i else kinds[1] for i in self.integer for _ in range(self.n)]
        return lp


def _frame(pb: PlanProblem) -> tuple[np.ndarray, float, float, float]:
    """Per period its hours and the share of stored energy self-discharge keeps; the power left to plan with
    (charge, discharge) once the reserve is held back."""
    h = _hours(pb)
    keep = 1.0 - pb.self_discharge_pct_per_day / 100 / 24 * h
    return h, keep, pb.p_charge_max_mw - pb.reserve_mw, pb.p_discharge_max_mw - pb.reserve_mw


def _build(pb: PlanProblem, w: _Window, binaries: bool) -> highspy.HighsLp:
    """The LP within the window `w` (_window of pb's _frame). Columns per period: c, d, e, s, b; with `binaries` u
    (1 = may charge). Rows per period: energy balance, trade balance; with `binaries` c <= C u, d <= D (1 - u)."""
    n = pb.n_periods
    h, keep, c_max, d_max = _frame(pb)
    tradable = _tradable(pb)
    big = c_max + d_max + float(np.max(np.abs(pb.position_mw)))  # a trade never needs to exceed this
    deg = (pb.degradation_eur_mwh + _TIE_EUR_MWH) * h
    m = _Model(n)
    c = m.cols(deg, 0, np.where(w.may_charge, c_max, 0.0))
    d = m.cols(deg, 0, np.where(w.may_discharge, d_max, 0.0))
    e_cost = np.zeros(n)
    e_cost[-1] = -pb.end_value_eur_mwh
    e_lo, e_hi = w.e_lo, w.e_hi
    if pb.end_soc_pct is not None:
        e_lo[-1] = max(e_lo[-1], min(pb.end_soc_pct / 100 * pb.capacity_mwh, e_hi[-1]))
    e = m.cols(e_cost, e_lo, e_hi)
    trade_hi = np.where(tradable, big, 0.0)
    s = m.cols(-np.asarray(pb.sell_price_eur_mwh) * h, 0, trade_hi)  # minimise: a sale earns
    b = m.cols(np.asarray(pb.buy_price_eur_mwh) * h, 0, trade_hi)
    bal = -pb.aux_load_mw * h
    bal[0] += keep[0] * pb.soc_pct_now / 100 * pb.capacity_mwh
    energy = m.rows(bal, bal)  # e_t - keep_t e_{t-1} - eta_c h c_t + h / eta_d d_t = -aux h
    m.put(c, energy, -pb.charge_efficiency * h)
    m.put(d, energy, h / pb.discharge_efficiency)
    m.put(e, energy, 1.0)
    m.put(e, energy, -keep, shift=1)
    trade = m.rows(pb.position_mw, pb.position_mw)  # d - c - s + b = position
    m.put(c, trade, -1.0)
    m.put(d, trade, 1.0)
    m.put(s, trade, -1.0)
    m.put(b, trade, 1.0)
    if pb.soc_taper_band_pct > 0:
        _taper_rows(pb, m, w, c, d, e)
    if binaries:
        u = m.cols(0, 0, 1, integer=True)
        m.put(c, m.rows(-highspy.kHighsInf, 0), 1.0)  # c - C u <= 0
        m.put(u, len(m.row_lo) - 1, -c_max)
        m.put(d, m.rows(-highspy.kHighsInf, d_max), 1.0)  # d + D u <= D
        m.put(u, len(m.row_lo) - 1, d_max)
    return m.lp()


def _taper_rows(pb: PlanProblem, m: _Model, w: _Window, c: int, d: int, e: int) -> None:
    """The limit function's taper as a bound on each period's power by its end SoC (the lowest SoC of a
    discharging period, the highest of a charging one, so constant power is deliverable all through it):
        d_t <= P_discharge (e_t - soc_min) / band,   c_t <= P_charge (soc_max - e_t) / band
    only where the period ends inside the window anyway (else 0 MW would break the row)."""
    cap, band = pb.capacity_mwh, pb.soc_taper_band_pct / 100 * pb.capacity_mwh
    lo, hi = pb.soc_min_pct / 100 * cap, pb.soc_max_pct / 100 * cap
    k_d, k_c = pb.p_discharge_max_mw / band, pb.p_charge_max_mw / band
    inf = highspy.kHighsInf
    rows = m.rows(-inf, np.where(w.may_discharge & (w.e_lo >= lo), -k_d * lo, inf))
    m.put(d, rows, 1.0)
    m.put(e, rows, -k_d)
    rows = m.rows(-inf, np.where(w.may_charge & (w.e_hi <= hi), k_c * hi, inf))
    m.put(c, rows, 1.0)
    m.put(e, rows, k_c)


def _status_word(h: highspy.Highs) -> str:
    """HiGHS's model status as one lower-case word: "optimal", "infeasible", "unbounded", "time_limit", ..."""
    return h.modelStatusToString(h.getModelStatus()).strip().lower().replace(" ", "_").replace("-", "_")


def _solve(lp: highspy.HighsLp) -> tuple[str, np.ndarray | None, float]:
    """Solve; (status word, column values or None, objective as HiGHS minimised it)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)  # a model this small gains nothing from HiGHS's thread pool
    h.setOptionValue("time_limit", 10.0)  # a bound, far above the milliseconds this takes
    h.setOptionValue("mip_rel_gap", 1e-6)  # the MIP fallback solves to the LP's accuracy, not HiGHS's 1e-4
    h.passModel(lp)
    h.run()
    status = _status_word(h)
    if status != "optimal":
        return status, None, math.nan
    return status, np.asarray(h.getSolution().col_value), h.getInfo().objective_function_value


def optimise(problem: PlanProblem) -> Plan:
    """The plan that maximises what remains to be earned (see the module docstring). Never raises: a problem
    that cannot be posed is status "invalid", one without a plan "infeasible" (or HiGHS's word), each with a
    reason and no periods."""
    t0 = time.perf_counter()

    def fail(status: str, reason: str) -> Plan:
        return Plan(status, reason, math.nan, (time.perf_counter() - t0) * 1000)

    why = problem_error(problem)
    if why:
        return fail("invalid", why)
    why = _infeasible_reserve(problem)
    if why:
        return fail("infeasible", why)
    try:
        w = _window(problem, *_frame(problem))  # once: the LP, a MIP fallback and the periods' restore use it
        status, x, obj = _solve(_build(problem, w, binaries=False))
        n = problem.n_periods
        if x is not None and np.any(np.minimum(x[:n], x[n : 2 * n]) > _SIMULTANEOUS_MW):
            status, x, obj = _solve(_build(problem, w, binaries=True))
    except Exception as e:  # noqa: BLE001 - the contract is "never raises"; the reason says what happened
        return fail("error", f"HiGHS failed: {type(e).__name__}: {e}")
    if x is None:
        return fail(status, _why_not(problem, status))
    x = _repair(problem, x)
    breach = _breach(problem, x)
    if breach:
        return fail("infeasible", breach)
    return Plan(
        "optimal", "optimal", _value(problem, x), (time.perf_counter() - t0) * 1000, _periods(problem, x, w.restore)
    )


def _repair(pb: PlanProblem, x: np.ndarray) -> np.ndarray:
    """The solution with power dust (< 1 W) dropped and the SoC path simulated forward exactly as the pre-trade
    check does (controller/trading/schedule.py), each period's charge or discharge trimmed where the solver's
    tolerance (~1e-7) would take the SoC past the window's edge. The trims are of that size; the plan's SoC path
    is then the pre-trade check's own."""
    n, cap, h = pb.n_periods, pb.capacity_mwh, _hours(pb)
    x = x.copy()
    c, d = x[:n], x[n : 2 * n]  # views: trims land in x
    c[c < _SIMULTANEOUS_MW] = 0.0
    d[d < _SIMULTANEOUS_MW] = 0.0
    lo = pb.soc_min_pct / 100 * cap + pb.reserve_mwh
    hi = pb.soc_max_pct / 100 * cap - pb.reserve_mwh
    sd_per_h = pb.self_discharge_pct_per_day / 100.0 / 24.0
    energy = pb.soc_pct_now / 100 * cap
    for t in range(n):
        idle = energy - (pb.aux_load_mw * h[t] + energy * sd_per_h * h[t])
        if d[t] > 0 and idle - d[t] / pb.discharge_efficiency * h[t] < lo < energy:
            d[t] = max((idle - lo) * pb.discharge_efficiency / h[t], 0.0) * (1 - 1e-12)
        if c[t] > 0 and idle + c[t] * pb.charge_efficiency * h[t] > hi > energy:
            c[t] = max((hi - idle) / pb.charge_efficiency / h[t], 0.0) * (1 - 1e-12)
        if pb.soc_taper_band_pct > 0:
            _trim_to_taper(pb, c, d, t, idle, h[t])
        mw = d[t] - c[t]
        flow = mw / pb.discharge_efficiency if mw > 0 else mw * pb.charge_efficiency
        energy -= flow * h[t] + pb.aux_load_mw * h[t] + energy * sd_per_h * h[t]
        x[2 * n + t] = energy
        # as the pre-trade check: a battery emptied by its aux load stops at empty, idle or charging below that load
        energy = max(energy, 0.0)
    return x


def _trim_to_taper(pb: PlanProblem, c: np.ndarray, d: np.ndarray, t: int, idle_mwh: float, h: float) -> None:
    """Period t's power trimmed to the taper row at its own end SoC (_taper_rows), where the solver's tolerance
    left it a little past (a micro-watt, seen at 1.2e-6 MW): d <= k_d (e_end - lo) with e_end = idle - d h / eta
    gives d <= k_d (idle - lo) / (1 + k_d h / eta); the charge side likewise. Trims only, never a push."""
    d_max = _taper_discharge_cap_mw(pb, idle_mwh, h)
    if 0 <= d_max < d[t]:
        d[t] = d_max * (1 - 1e-12)
    c_max = _taper_charge_cap_mw(pb, idle_mwh, h)
    if 0 <= c_max < c[t]:
        c[t] = c_max * (1 - 1e-12)


def _taper_charge_cap_mw(pb: PlanProblem, idle_mwh: float, h: float) -> float:
    """The most a period of `h` hours may charge under the taper row at its own end SoC (_taper_rows), from
    `idle_mwh` (its end energy without power; soc_taper_band_pct > 0): c <= k (soc_max - e_end) with
    e_end = idle + c eta h gives c <= k (soc_max - idle) / (1 + k h eta). Negative past the window's edge."""
    band = pb.soc_taper_band_pct / 100 * pb.capacity_mwh
    k = pb.p_charge_max_mw / band
    return k * (pb.soc_max_pct / 100 * pb.capacity_mwh - idle_mwh) / (1 + k * h * pb.charge_efficiency)


def _taper_discharge_cap_mw(pb: PlanProblem, idle_mwh: float, h: float) -> float:
    """The discharge side of _taper_charge_cap_mw: d <= k (e_end - soc_min) with e_end = idle - d h / eta gives
    d <= k (idle - soc_min) / (1 + k h / eta)."""
    band = pb.soc_taper_band_pct / 100 * pb.capacity_mwh
    k = pb.p_discharge_max_mw / band
    return k * (idle_mwh - pb.soc_min_pct / 100 * pb.capacity_mwh) / (1 + k * h / pb.discharge_efficiency)


def _value(pb: PlanProblem, x: np.ndarray) -> float:
    """What the plan earns from here: sales − purchases − wear + the end value (commitments are sunk)."""
    n, h = pb.n_periods, _hours(pb)
    c, d, e = x[:n], x[n : 2 * n], x[2 * n : 3 * n]
    trade = d - c - np.asarray(pb.position_mw)
    sell, buy = np.asarray(pb.sell_price_eur_mwh), np.asarray(pb.buy_price_eur_mwh)
    cash = sell * np.maximum(trade, 0) + buy * np.minimum(trade, 0)
    return float(np.sum(h * (cash - pb.degradation_eur_mwh * (c + d))) + pb.end_value_eur_mwh * e[-1])


def _breach(pb: PlanProblem, x: np.ndarray) -> str | None:
    """A period that discharges below the window or charges above it (what the pre-trade check refuses): only
    when commitments force it from a SoC outside the window."""
    n, cap = pb.n_periods, pb.capacity_mwh
    c, d, e = x[:n], x[n : 2 * n], x[2 * n : 3 * n]
    lo = pb.soc_min_pct / 100 * cap + pb.reserve_mwh
    hi = pb.soc_max_pct / 100 * cap - pb.reserve_mwh
    tol = 1e-11 * cap  # the pre-trade check's own (1e-9 %)
    for t in range(n):
        if (d[t] > 0 and e[t] < lo - tol) or (c[t] > 0 and e[t] > hi + tol):
            return (
                f"infeasible: the positions already traded take the SoC to {e[t] / cap * 100:.1f} % in period {t}, "
                f"outside {pb.soc_min_pct:g}-{pb.soc_max_pct:g} %"
                + (f" less the {pb.reserve_mwh:g} MWh reserve" if pb.reserve_mwh else "")
            )
    return None


def _why_not(pb: PlanProblem, status: str) -> str:
    if status == "infeasible":
        fixed = sum(1 for x in pb.position_mw if x) if pb.position_mw else 0
        return (
            f"infeasible: no plan keeps SoC {pb.soc_min_pct:g}-{pb.soc_max_pct:g} % and power within "
            f"-{pb.p_charge_max_mw:g}..{pb.p_discharge_max_mw:g} MW while delivering the {fixed} period(s) of "
            "positions already traded"
            + (f" and ending at >= {pb.end_soc_pct:g} %" if pb.end_soc_pct is not None else "")
            + (
                f" with a reserve of {pb.reserve_mw:g} MW / {pb.reserve_mwh:g} MWh"
                if pb.reserve_mw or pb.reserve_mwh
                else ""
            )
        )
    return f"HiGHS: {status}"


def _periods(pb: PlanProblem, x: np.ndarray, restore: np.ndarray) -> tuple[PlanPeriod, ...]:
    """The (repaired) solution as plan periods; `restore`: each period's restore_direction (_Window.restore)."""
    n = pb.n_periods
    c, d, e = x[:n], x[n : 2 * n], x[2 * n : 3 * n]
    h = _hours(pb)
    start = period_start(pb.now_ts)
    out = []
    for t in range(n):
        plan_mw = float(d[t] - c[t]) + 0.0
        out.append(
            PlanPeriod(
                period_start=start + t * PERIOD_S,
                plan_mw=plan_mw,
                trade_mw=plan_mw - pb.position_mw[t] + 0.0,
                position_mw=pb.position_mw[t],
                soc_pct_end=float(e[t] / pb.capacity_mwh * 100),
                charge_mw=float(c[t]),
                discharge_mw=float(d[t]),
                hours=float(h[t]),
                restore_direction=int(restore[t]),
            )
        )
    return tuple(out)
