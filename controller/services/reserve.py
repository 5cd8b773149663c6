"""The reserve FCR holds back from trading: +-capacity_mw of power headroom, and SoC room to deliver full
activation for reserve_minutes in both directions. Pure.

- `reserved_limits`: the limits the pre-trade check (and a trade's delivery check) simulates the schedule
  against while FCR is on: the power limits less the band, the SoC window narrowed by the reserve.
- `plan_reserve`: the same reserve as the optimiser's PlanProblem takes it (reserve_mw, reserve_mwh).
- `reserve_status`: whether the live SoC still holds the reserve, and if not, which way and how much energy
  restores it (the auto-trader's hook: it schedules that recharge/discharge; without it the cycle raises an
  alarm for the operator), as the TSOs' SoC management rules for FCR providers allow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.config import Battery, Fcr, Limits, fcr_reserve_pct

__all__ = ["ReserveBand", "ReserveStatus", "PlanReserve", "band", "reserved_limits", "plan_reserve", "reserve_status"]


@dataclass(frozen=True, slots=True)
class ReserveBand:
    """The SoC band that holds the reserve: from soc_low_pct, full activation down lasts reserve_minutes
    before soc_min; from soc_high_pct, full activation up lasts that long before soc_max."""

    reserve_mw: float
    soc_low_pct: float
    soc_high_pct: float
    down_pct: float  # SoC that full discharge for reserve_minutes takes
    up_pct: float  # SoC that full charge for reserve_minutes takes


@dataclass(frozen=True, slots=True)
class ReserveStatus:
    """The live SoC against the band. direction: +1 the battery is too full (discharge restores it), -1 too
    empty (charge restores it), 0 the reserve is held (or FCR is off, or the SoC unknown: `known`)."""

    held: bool
    direction: int
    restore_mwh: float  # stored energy to move to be back at the band's edge (0 when held)
    soc_pct: float | None
    band: ReserveBand
    message: str

    @property
    def known(self) -> bool:
        return self.soc_pct is not None


@dataclass(frozen=True, slots=True)
class PlanReserve:
    """The optimiser's reserve fields (PlanProblem.reserve_mw / reserve_mwh): power headroom either way, and
    stored-energy room either way (the larger of the two directions, so both are held)."""

    reserve_mw: float
    reserve_mwh: float


def band(fcr: Fcr, battery: Battery, limits: Limits, enabled: bool = True) -> ReserveBand:
    """The reserve band of a site; FCR off: no reserve, the whole SoC window."""
    if not enabled or fcr.capacity_mw <= 0:
        return ReserveBand(0.0, limits.soc_min_pct, limits.soc_max_pct, 0.0, 0.0)
    down, up = fcr_reserve_pct(fcr, battery)
    return ReserveBand(fcr.capacity_mw, limits.soc_min_pct + down, limits.soc_max_pct - up, down, up)


def reserved_limits(limits: Limits, b: ReserveBand) -> Limits:
    """The limits a schedule must keep so that the reserve stays deliverable: each power limit less the band
    (never below 0: a band of the plant's whole rating leaves nothing to trade), the SoC window narrowed to
    the band. Unchanged without a reserve."""
    if b.reserve_mw <= 0:
        return limits
    r = b.reserve_mw
    return limits.model_copy(
        update={
            "p_charge_max_mw": max(limits.p_charge_max_mw - r, 0.0),
            "p_discharge_max_mw": max(limits.p_discharge_max_mw - r, 0.0),
            "grid_limit_mw": max(limits.grid_limit_mw - r, 0.0),
            "soc_min_pct": b.soc_low_pct,
            "soc_max_pct": b.soc_high_pct,
        }
    )


def plan_reserve(fcr: Fcr, battery: Battery, enabled: bool) -> PlanReserve:
    if not enabled or fcr.capacity_mw <= 0:
        return PlanReserve(0.0, 0.0)
    down, up = fcr_reserve_pct(fcr, battery)
    return PlanReserve(fcr.capacity_mw, max(down, up) / 100.0 * battery.capacity_mwh)


def reserve_status(soc_pct: float | None, b: ReserveBand, capacity_mwh: float) -> ReserveStatus:
    """Whether `soc_pct` holds the reserve of band `b`; outside it, the way back and the energy it takes."""
    soc = soc_pct if soc_pct is not None and math.isfinite(soc_pct) else None
    if b.reserve_mw <= 0 or soc is None:
        why = "no FCR reserve to hold" if b.reserve_mw <= 0 else "SoC unknown: the reserve cannot be checked"
        return ReserveStatus(True, 0, 0.0, soc, b, why)
    if soc < b.soc_low_pct:
        mwh = (b.soc_low_pct - soc) / 100.0 * capacity_mwh
        return ReserveStatus(
            False,
            -1,
            mwh,
            soc,
            b,
            f"SoC {soc:.1f} % below the FCR reserve band's floor {b.soc_low_pct:.1f} %: "
            f"full activation down would not last; charge {mwh:.3g} MWh to restore it",
        )
    if soc > b.soc_high_pct:
        mwh = (soc - b.soc_high_pct) / 100.0 * capacity_mwh
        return ReserveStatus(
            False,
            1,
            mwh,
            soc,
            b,
            f"SoC {soc:.1f} % above the FCR reserve band's ceiling {b.soc_high_pct:.1f} %: "
            f"full activation up would not last; discharge {mwh:.3g} MWh to restore it",
        )
    return ReserveStatus(
        True, 0, 0.0, soc, b, f"reserve held: SoC {soc:.1f} % within {b.soc_low_pct:.1f}-{b.soc_high_pct:.1f} %"
    )
