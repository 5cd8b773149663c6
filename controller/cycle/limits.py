"""The limit function: target power + the cycle's snapshot + the configured limits -> the setpoint to write.

Pure and fast (plain arithmetic, no I/O, no clock): every setpoint the plant receives comes out of `limit()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from controller.config import Limits
from controller.cycle.mode import MODES
from controller.cycle.snapshot import Snapshot

BINDINGS = (
    "none",
    "p_charge_max",
    "p_discharge_max",
    "bms_allowed_charge",
    "bms_allowed_discharge",
    "soc_min",
    "soc_max",
    "soc_taper",
    "temperature",
    "ramp",
    "grid_limit",
    "stale",
    "alarm",
    "comm_loss",
    "mode_stopped",
)

# Safe-state causes, in precedence order: the first one present names the binding; all are listed in reasons.
SAFE_STATES = ("mode_stopped", "comm_loss", "stale", "alarm")


@dataclass(frozen=True, slots=True)
class Decision:
    """One cycle's decision. `binding` names the limit that determined the setpoint (`none`: target passed)."""

    target_mw: float  # the target as used (a non-finite target is replaced by 0.0, with a reason)
    setpoint_mw: float
    binding: str  # one of BINDINGS
    reasons: tuple[str, ...]  # plain-words reason for every limit that was active, strictest first
    lower_mw: float  # allowed range after all limits: lower_mw <= 0 <= upper_mw (charge side negative)
    upper_mw: float


def _known(value: float | None) -> float | None:
    """A snapshot value we may act on: None, NaN and inf all mean unknown."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _safe_state(snap: Snapshot, mode: str) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    if mode not in MODES:
        causes.append(("mode_stopped", f"unknown mode {mode!r}: treated as stopped, safe state 0 MW"))
    elif mode == "stopped":
        causes.append(("mode_stopped", "mode stopped: safe state 0 MW"))
    if snap.comm_loss:
        causes.append(("comm_loss", f"communication lost with {', '.join(snap.comm_loss)}: safe state 0 MW"))
    if snap.stale:
        causes.append(("stale", f"stale readings from {', '.join(snap.stale)}: safe state 0 MW"))
    if snap.alarms or snap.faults:
        active = ", ".join((*snap.faults, *snap.alarms))
        causes.append(("alarm", f"alarm/fault active ({active}): safe state 0 MW"))
    return causes


# (most power allowed that way, MW >= 0; binding; reason). The reason is formatted only when the limit is active:
# formatting every one would cost more than the rest of the function.
Bound = tuple[float, str, Callable[[], str]]


def _discharge_bounds(snap: Snapshot, lim: Limits, soc: float | None, t_max: float | None) -> list[Bound]:
    """Every limit on the discharge side, in tie-break order."""
    p_max = lim.p_discharge_max_mw
    out = [
        (p_max, "p_discharge_max", lambda: f"configured p_discharge_max {p_max:g} MW"),
        (lim.grid_limit_mw, "grid_limit", lambda: f"grid connection limit {lim.grid_limit_mw:g} MW"),
    ]
    bms = _known(snap.bms_allowed_discharge_mw)
    if bms is None:
        out.append((0.0, "bms_allowed_discharge", lambda: "BMS allowed discharge power unknown: no discharge"))
    else:
        out.append((max(bms, 0.0), "bms_allowed_discharge", lambda: f"BMS allows {bms:g} MW discharge"))
    if soc is None:
        out.append((0.0, "soc_min", lambda: "SoC unknown: no discharge"))
    elif soc <= lim.soc_min_pct:
        out.append((0.0, "soc_min", lambda: f"SoC {soc:g} % <= soc_min {lim.soc_min_pct:g} %: no discharge"))
    elif soc < lim.soc_min_pct + lim.soc_taper_band_pct:
        frac = (soc - lim.soc_min_pct) / lim.soc_taper_band_pct
        out.append(
            (
                p_max * frac,
                "soc_taper",
                lambda: (
                    f"SoC {soc:g} % within {lim.soc_taper_band_pct:g} % of soc_min {lim.soc_min_pct:g} %: "
                    f"discharge tapered to {p_max * frac:.4g} MW"
                ),
            )
        )
    out.extend(_temperature_bounds(lim, t_max, p_max, "discharge"))
    return out


def _charge_bounds(snap: Snapshot, lim: Limits, soc: float | None, t_max: float | None) -> list[Bound]:
    """Every limit on the charge side, in tie-break order."""
    p_max = lim.p_charge_max_mw
    out = [
        (p_max, "p_charge_max", lambda: f"configured p_charge_max {p_max:g} MW"),
        (lim.grid_limit_mw, "grid_limit", lambda: f"grid connection limit {lim.grid_limit_mw:g} MW"),
    ]
    bms = _known(snap.bms_allowed_charge_mw)
    if bms is None:
        out.append((0.0, "bms_allowed_charge", lambda: "BMS allowed charge power unknown: no charge"))
    else:
        out.append((max(bms, 0.0), "bms_allowed_charge", lambda: f"BMS allows {bms:g} MW charge"))
    if soc is None:
        out.append((0.0, "soc_max", lambda: "SoC unknown: no charge"))
    elif soc >= lim.soc_max_pct:
        out.append((0.0, "soc_max", lambda: f"SoC {soc:g} % >= soc_max {lim.soc_max_pct:g} %: no charge"))
    elif soc > lim.soc_max_pct - lim.soc_taper_band_pct:
        frac = (lim.soc_max_pct - soc) / lim.soc_taper_band_pct
        out.append(
            (
                p_max * frac,
                "soc_taper",
                lambda: (
                    f"SoC {soc:g} % within {lim.soc_taper_band_pct:g} % of soc_max {lim.soc_max_pct:g} %: "
                    f"charge tapered to {p_max * frac:.4g} MW"
                ),
            )
        )
    out.extend(_temperature_bounds(lim, t_max, p_max, "charge"))
    t_min = _known(snap.temperature_min_c)
    if t_min is None:
        out.append((0.0, "temperature", lambda: "minimum cell temperature unknown: no charge"))
    elif t_min < lim.t_min_charge_c:
        out.append(
            (
                0.0,
                "temperature",
                lambda: f"temperature {t_min:g} °C < t_min_charge {lim.t_min_charge_c:g} °C: no charge",
            )
        )
    return out


def _temperature_bounds(lim: Limits, t_max: float | None, p_max: float, direction: str) -> list[Bound]:
    if t_max is None:
        return [(0.0, "temperature", lambda: f"temperature unknown: no {direction}")]
    if t_max >= lim.t_max_c:
        return [(0.0, "temperature", lambda: f"temperature {t_max:g} °C >= t_max {lim.t_max_c:g} °C: no {direction}")]
    if t_max > lim.t_derate_c:
        frac = (lim.t_max_c - t_max) / (lim.t_max_c - lim.t_derate_c)
        return [
            (
                p_max * frac,
                "temperature",
                lambda: (
                    f"temperature {t_max:g} °C above t_derate {lim.t_derate_c:g} °C: {direction} derated to "
                    f"{p_max * frac:.4g} MW"
                ),
            )
        ]
    return []


def _ramp(clipped: float, previous: float, step: float) -> float:
    """Slow increases of |P| to `step` MW; decreases of |P| are immediate; a sign change goes through 0 at once."""
    if (previous > 0 > clipped) or (previous < 0 < clipped):
        previous = 0.0
    if abs(clipped) <= abs(previous):
        return clipped
    if clipped > 0:
        return min(clipped, previous + step)
    return max(clipped, previous - step)


def limit(
    target_mw: float,
    snap: Snapshot,
    limits: Limits,
    previous_mw: float,
    dt_s: float,
    mode: str = "auto",
    max_dt_s: float | None = None,
) -> Decision:
    """The setpoint for `target_mw` (positive = discharge) under every limit; the strictest wins.

    Safe state (0 MW, at once, never ramped) in precedence order: mode stopped (or unknown), lost
    communication, stale readings, any alarm or fault. Otherwise each limit may only narrow the allowed range
    [lower, upper] (unknown value = no power that way), the target is clipped into it, and an increase of |P|
    is ramped from `previous_mw` by at most ramp_mw_per_s * min(dt_s, max_dt_s): after a stalled loop the
    ramp resumes where it was instead of jumping by everything the stall "earned" (the cycle passes two
    periods as `max_dt_s`). Ties between equally strict limits go to the first of: configured max, grid
    limit, BMS allowed power, SoC, SoC taper, temperature.
    """
    notes: list[str] = []
    target = float(target_mw)
    if not math.isfinite(target):
        notes.append(f"target {target_mw!r} MW is not a finite number: treated as 0 MW")
        target = 0.0
    previous = previous_mw if math.isfinite(previous_mw) else 0.0
    elapsed = dt_s if math.isfinite(dt_s) and dt_s > 0 else 0.0
    dt = elapsed
    if max_dt_s is not None:
        # a cap that is not a finite number >= 0 is no licence to ramp: treat it as no time passed
        cap = max_dt_s if math.isfinite(max_dt_s) and max_dt_s > 0 else 0.0
        dt = min(elapsed, cap)

    safe = _safe_state(snap, mode)
    if safe:
        return Decision(target, 0.0, safe[0][0], tuple(r for _, r in safe) + tuple(notes), 0.0, 0.0)

    soc = _known(snap.soc_pct)
    t_max = _known(snap.temperature_max_c)
    if target > 0:
        bounds = _discharge_bounds(snap, limits, soc, t_max)
        upper = min(b for b, _, _ in bounds)
        lower = -min(b for b, _, _ in _charge_bounds(snap, limits, soc, t_max))
    else:
        bounds = _charge_bounds(snap, limits, soc, t_max)
        lower = -min(b for b, _, _ in bounds)
        upper = min(b for b, _, _ in _discharge_bounds(snap, limits, soc, t_max))

    magnitude = abs(target)
    # sorted() is stable, so equally strict limits keep the tie-break order of the bounds lists
    active = sorted((x for x in bounds if x[0] < magnitude), key=lambda x: x[0])
    clipped = min(max(target, lower), upper)
    binding = active[0][1] if active else "none"
    reasons = [reason() for _, _, reason in active]

    # + 0.0 turns -0.0 (clipping to a zero charge limit) into 0.0 for the PCS and the telemetry
    setpoint = _ramp(clipped, previous, limits.ramp_mw_per_s * dt) + 0.0
    lower += 0.0
    if setpoint != clipped:
        binding = "ramp"
        capped = f" ({elapsed:g} s elapsed, capped)" if dt < elapsed else ""
        reasons.insert(
            0,
            f"ramp {limits.ramp_mw_per_s:g} MW/s over {dt:g} s{capped}: {previous:g} -> "
            f"{setpoint:g} MW (allowed {clipped:g} MW)",
        )
    return Decision(target, setpoint, binding, tuple(reasons + notes), lower, upper)
