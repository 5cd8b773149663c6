"""Allocation: the site target -> the plant setpoint under the site and POI limits -> one setpoint per unit.

Pure and fast like `limit()`, which it reuses: once on the plant's totals, once or twice per unit on the unit's own
snapshot and limits, so every unit setpoint has passed that unit's limits and names its binding the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from controller.config import Limits
from controller.cycle.limits import BINDINGS, SAFE_STATES, Decision, limit
from controller.cycle.poi import PoiRange
from controller.cycle.snapshot import Snapshot

__all__ = [
    "SITE_BINDINGS",
    "UNIT_UNAVAILABLE",
    "POI_LIMIT",
    "UnitView",
    "PlantView",
    "UnitShare",
    "Allocation",
    "allocate",
    "unit_limits",
]

UNIT_UNAVAILABLE = "unit_unavailable"
POI_LIMIT = "poi_limit"
SITE_BINDINGS = (*BINDINGS, UNIT_UNAVAILABLE, POI_LIMIT)

# Plant bindings that come from the units' values summed or picked over the units in service: with a unit lost,
# its share was missing from them, so the site binding says so (unit_unavailable) rather than naming the sum.
_FROM_UNITS = frozenset(
    {"bms_allowed_charge", "bms_allowed_discharge", "soc_min", "soc_max", "soc_taper", "temperature"}
)
BALANCE_GAIN = 2.0  # share factor per 100 % SoC above the plant's mean (10 % fuller -> x1.2 discharging)
FACTOR_MIN, FACTOR_MAX = 0.1, 1.9  # the correction stays a correction: every unit keeps some of its proportion


@dataclass(frozen=True, slots=True)
class UnitView:
    """One unit as the cycle saw it: its own process image and limits, its size, last cycle's setpoint."""

    name: str
    snapshot: Snapshot  # the unit's BMS and PCS values; its stale/comm_loss/alarms/faults are the unit's own
    limits: Limits  # the unit's own (see unit_limits()); rating, BMS, SoC, temperature, ramp
    rated_mw: float
    capacity_mwh: float
    previous_mw: float = 0.0
    available: bool = True  # False: out of service whatever its snapshot says (lost, or taken out)


@dataclass(frozen=True, slots=True)
class PlantView:
    """The plant level: its limits at the POI, mode, time since the last cycle, plant-wide alarms, POI range."""

    limits: Limits
    ts: float = 0.0
    mode: str = "auto"
    dt_s: float = 0.0
    max_dt_s: float | None = None  # passed to limit(): a stalled loop earns no ramp
    alarms: tuple[str, ...] = ()  # plant-level causes for the safe state (e.g. the cycle's own failure)
    poi: PoiRange | None = None  # from poi_range(); None: no meter, the grid limit applies open loop
    balance_gain: float = BALANCE_GAIN


@dataclass(frozen=True, slots=True)
class UnitShare:
    """One unit's part of the decision: its setpoint and the limit that bound it (as limit() names them, or
    unit_unavailable for a unit out of service)."""

    unit: str
    setpoint_mw: float
    binding: str
    available: bool
    reasons: tuple[str, ...]
    lower_mw: float
    upper_mw: float


@dataclass(frozen=True, slots=True)
class Allocation:
    """One cycle's plant decision. setpoint_mw is the sum of the units' setpoints; binding is one of
    SITE_BINDINGS; plant_mw is what the site and POI limits allowed before the units had their say."""

    target_mw: float
    setpoint_mw: float
    binding: str
    reasons: tuple[str, ...]
    lower_mw: float
    upper_mw: float
    plant_mw: float
    units: tuple[UnitShare, ...]

    def decision(self) -> Decision:
        """The site-level decision in the form the store and the faces already take."""
        return Decision(self.target_mw, self.setpoint_mw, self.binding, self.reasons, self.lower_mw, self.upper_mw)


def unit_limits(plant: Limits, rated_mw: float, total_rated_mw: float) -> Limits:
    """A unit's own limits from the plant's: its rating caps its power and its AC connection; it gets its
    rating's part of the plant ramp (so the units together ramp as the plant does); SoC and temperature
    limits are the plant's."""
    share = rated_mw / total_rated_mw if total_rated_mw > 0 else 1.0
    return plant.model_copy(
        update={
            "p_charge_max_mw": min(plant.p_charge_max_mw, rated_mw),
            "p_discharge_max_mw": min(plant.p_discharge_max_mw, rated_mw),
            "grid_limit_mw": rated_mw,
            "ramp_mw_per_s": plant.ramp_mw_per_s * share,
        }
    )


def _known(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _in_service(u: UnitView) -> bool:
    s = u.snapshot
    return u.available and not (s.comm_loss or s.stale or s.alarms or s.faults)


def _out_of_service(u: UnitView, plant: PlantView) -> UnitShare:
    """0 MW at once. A unit taken out says unit_unavailable; one in its own safe state, what limit() says."""
    if not u.available:
        return UnitShare(u.name, 0.0, UNIT_UNAVAILABLE, False, (f"unit {u.name} out of service: 0 MW",), 0.0, 0.0)
    d = limit(0.0, u.snapshot, u.limits, u.previous_mw, plant.dt_s, plant.mode, plant.max_dt_s)
    return UnitShare(u.name, d.setpoint_mw, d.binding, False, d.reasons, d.lower_mw, d.upper_mw)


def _sum_known(values: list[float | None]) -> float | None:
    known = [max(v, 0.0) for v in map(_known, values) if v is not None]
    return sum(known) if known else None


def _plant_totals(plant: PlantView, live: Sequence[UnitView], direction: float, poi_safe: bool) -> Snapshot:
    """The plant as one battery for limit(): BMS allowed powers summed over the units in service (unknown
    counts 0); SoC and temperatures from the unit most able to go the target's way, so the plant's call is never
    stricter than the units' own calls together (those do the real work; one unit reads exactly as itself)."""
    socs = [v for v in (_known(u.snapshot.soc_pct) for u in live) if v is not None]
    t_max = [v for v in (_known(u.snapshot.temperature_max_c) for u in live) if v is not None]
    t_min = [v for v in (_known(u.snapshot.temperature_min_c) for u in live) if v is not None]
    power = [v for v in (_known(u.snapshot.power_mw) for u in live) if v is not None]
    soc = (max(socs) if direction >= 0 else min(socs)) if socs else None
    return Snapshot(
        ts=plant.ts,
        soc_pct=soc,
        power_mw=sum(power) if power else None,
        temperature_max_c=min(t_max) if t_max else None,
        temperature_min_c=max(t_min) if t_min else None,
        bms_allowed_charge_mw=_sum_known([u.snapshot.bms_allowed_charge_mw for u in live]),
        bms_allowed_discharge_mw=_sum_known([u.snapshot.bms_allowed_discharge_mw for u in live]),
        alarms=plant.alarms,
        comm_loss=("poi_meter",) if poi_safe else (),
    )


def _poi_bounds(poi: PoiRange | None) -> tuple[float, float]:
    if poi is None:
        return -math.inf, math.inf
    # an unknown bound means no power that way, as everywhere else
    lower = poi.lower_mw if math.isfinite(poi.lower_mw) else 0.0
    upper = poi.upper_mw if math.isfinite(poi.upper_mw) else 0.0
    return min(lower, 0.0), max(upper, 0.0)


def _plant_limits(limits: Limits, poi: PoiRange | None, poi_lower: float, poi_upper: float) -> Limits:
    """With a meter the grid limit applies to the measured POI power, through the POI range (which the trim may
    set beyond the grid limit on the plant's side: aux loads, losses): the plant's call must not apply it to the
    plant setpoint as well, so there it is lifted to where it cannot bind before the range or the configured
    maximum powers."""
    if poi is None:
        return limits
    return limits.model_copy(
        update={"grid_limit_mw": max(limits.p_charge_max_mw, limits.p_discharge_max_mw, poi_upper, -poi_lower)}
    )


def _balance_factors(units: Sequence[UnitView], direction: float, gain: float) -> list[float]:
    """Per unit, how much more (> 1) or less than its headroom's proportion it takes: a unit fuller than the
    plant's energy-weighted mean discharges more and charges less, an emptier one the other way round."""
    socs = [_known(u.snapshot.soc_pct) for u in units]
    weights = [u.capacity_mwh if math.isfinite(u.capacity_mwh) and u.capacity_mwh > 0 else 0.0 for u in units]
    known = [(s, w) for s, w in zip(socs, weights) if s is not None]
    total = sum(w for _, w in known)
    if not known or not math.isfinite(gain) or gain <= 0:  # a negative gain would push SoCs apart: none at all
        return [1.0] * len(units)
    mean = sum(s * w for s, w in known) / total if total > 0 else sum(s for s, _ in known) / len(known)
    return [
        1.0 if s is None else min(max(1.0 + direction * gain * (s - mean) / 100.0, FACTOR_MIN), FACTOR_MAX)
        for s in socs
    ]


def _water_fill(amount: float, caps: list[float], weights: list[float]) -> tuple[list[float], list[float]]:
    """Split `amount` (>= 0) in proportion to `weights`, each part at most its cap; what a capped part cannot
    take goes to the others in the same proportion. One pass in order of cap per weight: a unit whose share of
    what remains exceeds its cap takes its cap, and every later unit has more room per weight. Returns
    (shares, asks): what each takes and what it was asked for (ask > share: it is at its limit)."""
    n = len(caps)
    shares, asks = [0.0] * n, [0.0] * n
    order = sorted(
        (i for i in range(n) if caps[i] > 0), key=lambda i: caps[i] / weights[i] if weights[i] > 0 else math.inf
    )
    remaining = amount
    wsum = sum(weights[i] for i in order)
    for k, i in enumerate(order):
        # the last unit takes the rest outright, so rounding never leaves a sliver unassigned
        ask = remaining if k == len(order) - 1 or wsum <= 0 else min(remaining * weights[i] / wsum, remaining)
        shares[i], asks[i] = min(ask, caps[i]), ask
        remaining = max(remaining - shares[i], 0.0)
        wsum -= weights[i]
    return shares, asks


def _split(plant_mw: float, plant: PlantView, live: Sequence[UnitView]) -> list[tuple[Decision, bool]]:
    """Each unit's decision for its share of plant_mw, and whether it is at its limit the plant's way.

    limit() gives each unit's reach that way this cycle (every limit of the unit and its ramp). A share within
    the reach is a setpoint limit() passes unchanged (the limits only narrow a range that holds 0, and a smaller
    |P| is never ramped), so it is taken as it is; a unit asked for its reach or more gets the reach, and the
    reach's decision names what stops it. One limit() call per unit, so 64 units cost ~64 calls. The properties
    check every unit's setpoint against its own limit().
    """
    dt, mode, max_dt = plant.dt_s, plant.mode, plant.max_dt_s
    if plant_mw == 0.0 or not live:
        return [(limit(0.0, u.snapshot, u.limits, u.previous_mw, dt, mode, max_dt), False) for u in live]
    sign = 1.0 if plant_mw > 0 else -1.0
    # aimed at the unit's configured maximum that way: every other bound is at most that, so the aim reaches them
    reach = [
        limit(
            sign * (u.limits.p_discharge_max_mw if sign > 0 else u.limits.p_charge_max_mw),
            u.snapshot,
            u.limits,
            u.previous_mw,
            dt,
            mode,
            max_dt,
        )
        for u in live
    ]
    caps = [max(sign * d.setpoint_mw, 0.0) for d in reach]
    headroom = [max(d.upper_mw if sign > 0 else -d.lower_mw, 0.0) for d in reach]
    factors = _balance_factors(live, sign, plant.balance_gain)
    shares, asks = _water_fill(abs(plant_mw), caps, [h * f for h, f in zip(headroom, factors)])
    out = []
    for u, d, cap, share, ask in zip(live, reach, caps, shares, asks):
        if share < cap:
            p = sign * share + 0.0
            out.append((Decision(p, p, "none", (), d.lower_mw, d.upper_mw), False))
        elif d.binding != "none":
            out.append((d, True))  # at its reach: the reach's decision names what stops it
        else:
            # at its configured maximum, which the reach was aimed at and so does not name: asked a hair more,
            # limit() names it (the setpoint is the same)
            ask = max(ask, math.nextafter(cap, math.inf))
            out.append((limit(sign * ask, u.snapshot, u.limits, u.previous_mw, dt, mode, max_dt), True))
    return out


def _no_excess(setpoints: list[float], plant_mw: float) -> list[float]:
    """The unit setpoints with their sum never beyond plant_mw: the split's rounding can put the sum an ulp or
    two over it (and so over the POI range). The excess comes off the largest unit: a smaller |P| the same
    way passes every unit limit (decreases are never ramped)."""
    out = list(setpoints)
    for _ in range(8):  # one pass is the rule; each further one takes at least an ulp of the largest
        excess = abs(sum(out)) - abs(plant_mw)
        if excess <= 0.0 or not out:
            break
        i = max(range(len(out)), key=lambda k: abs(out[k]))
        less = max(abs(out[i]) - max(excess, math.ulp(out[i])), 0.0)
        out[i] = math.copysign(less, out[i]) + 0.0
    return out


def _all_out(
    target: float, plant: PlantView, units: Sequence[UnitView], binding: str | None, reasons: tuple[str, ...]
) -> Allocation:
    """The plant's safe state: every unit at 0 MW at once. `binding` None: every unit is out of service, and
    the plant says unit_unavailable (one unit: that unit's own cause, as a one-unit plant always has)."""
    shares = []
    for u in units:
        if _in_service(u):  # in service, but the plant holds it at 0 MW for the plant's cause
            shares.append(UnitShare(u.name, 0.0, binding or UNIT_UNAVAILABLE, True, reasons, 0.0, 0.0))
        else:
            shares.append(_out_of_service(u, plant))
    if binding is None:
        binding = shares[0].binding if len(shares) == 1 else UNIT_UNAVAILABLE
        reasons = tuple(r for s in shares for r in s.reasons) or ("no unit in service: 0 MW",)
        reasons = (f"no unit of {len(units)} in service: safe state 0 MW", *reasons) if len(units) > 1 else reasons
    return Allocation(target, 0.0, binding, reasons, 0.0, 0.0, 0.0, tuple(shares))


def _shortest(plant_mw: float, live: Sequence[UnitView], split: Sequence[tuple[Decision, bool]]) -> Decision | None:
    """Of the units at their limit, the one furthest short of its rating's part of the plant setpoint (ties:
    the first): a unit at soc_min explains a shortfall better than its neighbour running at its rating."""
    rated = sum(max(u.rated_mw, 0.0) for u in live) or 1.0
    best, most = None, -math.inf
    for u, (d, saturated) in zip(live, split):
        short = abs(plant_mw) * max(u.rated_mw, 0.0) / rated - abs(d.setpoint_mw)
        if saturated and d.binding != "none" and short > most:
            best, most = d, short
    return best


def _site_binding(
    plant_d: Decision,
    plant_mw: float,
    total: float,
    poi_bound: bool,
    lost: Sequence[UnitShare],
    live: Sequence[UnitView],
    split: Sequence[tuple[Decision, bool]],
) -> tuple[str, tuple[str, ...]]:
    """The limit that determined the site setpoint, the last narrowing first: the units falling short of the
    plant setpoint (unit_unavailable when a unit is out, else the limit of the unit furthest short), the POI
    range, the site limits."""
    gone = ", ".join(s.unit for s in lost)
    if abs(total) < abs(plant_mw) - 1e-9 * (1.0 + abs(plant_mw)):
        short = f"units in service give {total:.6g} MW of the plant's {plant_mw:.6g} MW"
        if lost:
            return UNIT_UNAVAILABLE, (f"{short}: unit(s) {gone} out of service",)
        bound = _shortest(plant_mw, live, split)
        if bound is not None:
            return bound.binding, (f"{short}: {bound.reasons[0] if bound.reasons else bound.binding}",)
    if poi_bound:
        return POI_LIMIT, ()
    if plant_d.binding in _FROM_UNITS and lost:
        return UNIT_UNAVAILABLE, (f"unit(s) {gone} out of service: the plant's {plant_d.binding} is the rest's",)
    return plant_d.binding, ()


def _finite_target(target_mw: float) -> tuple[float, tuple[str, ...]]:
    target = float(target_mw)
    if math.isfinite(target):
        return target, ()
    return 0.0, (f"target {target_mw!r} MW is not a finite number: treated as 0 MW",)


def allocate(target_mw: float, plant: PlantView, units: Sequence[UnitView]) -> Allocation:
    """Setpoints for the plant's units for `target_mw` (+ = discharge) under every limit.

    1. The site limits: limit() on the plant's totals (see _plant_totals), then the POI range. Plant-level
       causes give the plant's safe state (0 MW on every unit, at once): mode stopped, the POI meter required
       and lost (comm_loss), plant alarms, every unit out of service.
    2. The split over the units in service, in proportion to each unit's headroom that way, corrected to pull
       SoCs together (factor 1 +- balance_gain * SoC above the mean / 100, within [0.1, 1.9]); each share is
       capped by what the unit can give this cycle and what one cannot take the others take (water-filling).
    3. Each share passes the unit's own limit(); a unit out of service (not available, stale, lost, alarmed)
       gets exactly 0 MW and the rest go on. The site setpoint is the sum of the unit setpoints.
    """
    target, notes = _finite_target(target_mw)
    in_service = [_in_service(u) for u in units]
    live = [u for u, ok in zip(units, in_service) if ok]
    poi_safe = plant.poi is not None and plant.poi.safe
    poi_lower, poi_upper = _poi_bounds(plant.poi)
    direction = 1.0 if target > 0 else -1.0 if target < 0 else 0.0
    previous = sum(_known(u.previous_mw) or 0.0 for u in units)  # the plant's last setpoint, for its ramp
    plant_d = limit(
        target,
        _plant_totals(plant, live, direction, poi_safe),
        _plant_limits(plant.limits, plant.poi, poi_lower, poi_upper),
        previous,
        plant.dt_s,
        plant.mode,
        plant.max_dt_s,
    )
    if plant_d.binding in SAFE_STATES:
        return _all_out(target, plant, units, plant_d.binding, plant_d.reasons + notes)
    if not live:
        return _all_out(target, plant, units, None, notes)

    plant_mw = min(max(plant_d.setpoint_mw, poi_lower), poi_upper) + 0.0
    poi_bound = plant_mw != plant_d.setpoint_mw
    split = _split(plant_mw, plant, live)
    setpoints = iter(_no_excess([d.setpoint_mw for d, _ in split], plant_mw))
    decisions = iter(split)
    shares: list[UnitShare] = []
    for u, ok in zip(units, in_service):
        if ok:
            d, _ = next(decisions)
            shares.append(UnitShare(u.name, next(setpoints), d.binding, True, d.reasons, d.lower_mw, d.upper_mw))
        else:
            shares.append(_out_of_service(u, plant))
    total = sum(s.setpoint_mw for s in shares) + 0.0
    lost = [s for s in shares if not s.available]
    binding, why = _site_binding(plant_d, plant_mw, total, poi_bound, lost, live, split)
    poi_note = (
        (
            f"POI range [{poi_lower:g}, {poi_upper:g}] MW: {plant_d.setpoint_mw:g} -> {plant_mw:g} MW"
            + (f" ({plant.poi.reason})" if plant.poi is not None else ""),
        )
        if poi_bound
        else ()
    )
    lower = max(plant_d.lower_mw, poi_lower, sum(s.lower_mw for s in shares if s.available))
    upper = min(plant_d.upper_mw, poi_upper, sum(s.upper_mw for s in shares if s.available))
    return Allocation(
        target,
        total,
        binding,
        why + poi_note + plant_d.reasons + notes,
        lower + 0.0,
        upper + 0.0,
        plant_mw,
        tuple(shares),
    )
