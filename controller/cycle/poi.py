"""The POI closed loop: the range of plant setpoints that keeps the *measured* export/import at the point of
interconnection within the grid limit, from the meter's reading and two bounded trims (one per direction) carried
from cycle to cycle.

Pure like `limit()`: values in, values out; the time and the trim's state are passed in and handed back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PoiConfig", "PoiReading", "TrimState", "PoiRange", "poi_range"]


@dataclass(frozen=True, slots=True)
class PoiConfig:
    """How the loop works. Limits are magnitudes (MW >= 0) at the POI; + is export, as + is discharge."""

    export_limit_mw: float
    import_limit_mw: float
    gain_per_s: float = 0.5  # share of the error the trim takes per second (integral gain)
    max_step_mw: float = 0.25  # most a trim moves in one update
    max_trim_mw: float = 1.0  # most a trim ever is, either way (anti-windup)
    settle_margin_mw: float = 0.05  # the range is this far inside the limit, so the loop settles within it
    fallback_margin_mw: float = 0.5  # meter lost: the limit less this applies to the plant setpoint (open loop)
    stale_after_s: float = 3.0  # a reading older than this is a lost meter
    required: bool = False  # meter lost -> the plant's safe state instead of the fallback
    max_dt_s: float = 2.0  # one update integrates at most this long (a stalled loop earns no jump)

    def __post_init__(self) -> None:
        for name in (
            "export_limit_mw",
            "import_limit_mw",
            "gain_per_s",
            "max_step_mw",
            "max_trim_mw",
            "settle_margin_mw",
            "fallback_margin_mw",
            "stale_after_s",
            "max_dt_s",
        ):
            value = getattr(self, name)
            # a NaN bound compares false to everything and would switch the loop's limits off
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"PoiConfig.{name} must be a finite number >= 0 (got {value!r})")


@dataclass(frozen=True, slots=True)
class PoiReading:
    """The meter's power this cycle (+ = export) and when it was measured; None: never read."""

    power_mw: float | None
    ts: float | None
    stale: bool = False


@dataclass(frozen=True, slots=True)
class TrimState:
    """Carried from one cycle to the next: the trims, the range given last cycle, the reading last integrated."""

    export_trim_mw: float = 0.0
    import_trim_mw: float = 0.0
    lower_mw: float | None = None
    upper_mw: float | None = None
    reading_ts: float | None = None


@dataclass(frozen=True, slots=True)
class PoiRange:
    """The plant setpoint's allowed range this cycle: lower_mw <= 0 <= upper_mw (the loop only narrows)."""

    lower_mw: float
    upper_mw: float
    export_trim_mw: float
    import_trim_mw: float
    measured_mw: float | None  # the reading used; None when the meter is lost
    fallback: bool  # meter lost: open-loop limits with the margin; the caller raises an alarm
    safe: bool  # meter lost and required: the plant goes to its safe state
    reason: str
    state: TrimState  # hand back next cycle


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _clamp(value: float, bound: float) -> float:
    return min(max(value, -bound), bound)


def _lost(reading: PoiReading, cfg: PoiConfig, now: float) -> str | None:
    """Why the reading cannot be used, or None."""
    if reading.stale:
        return "POI meter stale"
    if _finite(reading.power_mw) is None:
        return f"POI meter power unknown ({reading.power_mw!r})"
    ts = _finite(reading.ts)
    if ts is None or not math.isfinite(now) or now - ts > cfg.stale_after_s:
        return f"POI meter reading too old (measured at {reading.ts!r}, now {now!r})"
    return None


def _level(measured: float, setpoint: float | None, plant_mw: float | None) -> float:
    """The POI power the loop acts on: what the meter will read once the plant is at its setpoint (measured +
    setpoint - the plant's own measured power), so that a plant still ramping toward the range is not taken
    for an offset (that winds the trim up and overshoots the limit once the plant arrives). Without the plant's
    power, the measurement itself."""
    if setpoint is None or plant_mw is None:
        return measured
    return measured + (setpoint - plant_mw)


def _side(level: float, setpoint: float | None, state: TrimState, cfg: PoiConfig, may_loosen: bool) -> int:
    """Which trim moves: +1 export, -1 import, 0 neither (both hold).

    A level beyond the range's goal (the limit less the margin) tightens that way at once. A level inside it
    loosens only when the plant sat on the range last cycle, i.e. it asked for more than the range gave
    (otherwise the trim would wind up while the plant is elsewhere), and only when the level is a prediction
    from the plant's own power: on the meter alone the trims only ever tighten.
    """
    if level > cfg.export_limit_mw - cfg.settle_margin_mw:
        return 1
    if level < -cfg.import_limit_mw + cfg.settle_margin_mw:
        return -1
    if setpoint is None or not may_loosen:
        return 0
    upper, lower = state.upper_mw, state.lower_mw
    if upper is not None and upper > 0 and setpoint >= upper - 1e-9 * (1 + upper):
        return 1
    if lower is not None and lower < 0 and setpoint <= lower + 1e-9 * (1 - lower):
        return -1
    return 0


def _elapsed(reading_ts: float, state: TrimState, dt_s: float, cfg: PoiConfig) -> float:
    """Time the update integrates: since the reading last integrated (a meter slower than the cycle is
    integrated once per reading, not once per cycle), else the cycle's dt; never more than max_dt_s."""
    last = _finite(state.reading_ts)
    dt = reading_ts - last if last is not None else dt_s
    return min(dt, cfg.max_dt_s) if math.isfinite(dt) and dt > 0 else 0.0


def _range(cfg: PoiConfig, export_trim: float, import_trim: float) -> tuple[float, float]:
    # the loop narrows the range, it never forces power: a site load behind the POI is not the battery's to serve
    return (
        min(-cfg.import_limit_mw + cfg.settle_margin_mw + import_trim, 0.0),
        max(cfg.export_limit_mw - cfg.settle_margin_mw + export_trim, 0.0),
    )


def _fallback(why: str, state: TrimState, cfg: PoiConfig, trims: tuple[float, float]) -> PoiRange:
    """Meter lost: open loop on the plant setpoint, the limits less the margin; the trims held for its return."""
    m = cfg.fallback_margin_mw
    lower, upper = min(-(cfg.import_limit_mw - m), 0.0), max(cfg.export_limit_mw - m, 0.0)
    then = "safe state (meter required)" if cfg.required else f"open loop, limits less {m:g} MW"
    return PoiRange(
        lower,
        upper,
        *trims,
        None,
        True,
        cfg.required,
        f"{why}: {then}",
        TrimState(*trims, lower, upper, state.reading_ts),
    )


def poi_range(
    reading: PoiReading,
    state: TrimState,
    cfg: PoiConfig,
    setpoint_mw: float | None,
    now: float,
    dt_s: float,
    plant_mw: float | None = None,
) -> PoiRange:
    """The plant setpoint's range for this cycle.

    `setpoint_mw` is the plant setpoint of the last cycle (the one this reading answers); `plant_mw` the plant's
    own measured AC power then (the units' PCS readings summed; None when one is unknown). Each trim estimates
    what lies between the plant and the POI that way (aux loads, losses, generation behind the meter; losses
    differ by direction, and one direction's correction must not loosen the other): range =
    [-import + margin + import_trim, export - margin + export_trim]. Each new reading moves the trim of the side
    in play (see _side) by gain * dt * (goal - level), at most max_step_mw per update and max_trim_mw in all.
    A stale, unknown or old reading is a lost meter: open loop [-(import - fallback margin), export - fallback
    margin], `fallback` set; if the meter is required, `safe` set too.
    """
    export_trim = _clamp(_finite(state.export_trim_mw) or 0.0, cfg.max_trim_mw)
    import_trim = _clamp(_finite(state.import_trim_mw) or 0.0, cfg.max_trim_mw)
    why = _lost(reading, cfg, now)
    if why is not None:
        return _fallback(why, state, cfg, (export_trim, import_trim))

    measured = float(reading.power_mw)  # type: ignore[arg-type]  # _lost() checked it is finite
    ts = float(reading.ts)  # type: ignore[arg-type]
    last = _finite(state.reading_ts)
    new = last is None or ts > last
    setpoint, plant = _finite(setpoint_mw), _finite(plant_mw)
    level = _level(measured, setpoint, plant)
    side = _side(level, setpoint, state, cfg, plant is not None) if new else 0
    reason = f"POI measured {measured:g} MW, trims held"
    if side:
        goal = cfg.export_limit_mw - cfg.settle_margin_mw if side > 0 else -cfg.import_limit_mw + cfg.settle_margin_mw
        step = _clamp(cfg.gain_per_s * _elapsed(ts, state, dt_s, cfg) * (goal - level), cfg.max_step_mw)
        if side > 0:
            export_trim = _clamp(export_trim + step, cfg.max_trim_mw)
        else:
            import_trim = _clamp(import_trim + step, cfg.max_trim_mw)
        reason = (
            f"POI measured {measured:g} MW (at the plant's setpoint {level:g} MW) against the "
            f"{'export' if side > 0 else 'import'} goal {goal:g} MW: trim {step:+.3g} MW"
        )
    lower, upper = _range(cfg, export_trim, import_trim)
    return PoiRange(
        lower,
        upper,
        export_trim,
        import_trim,
        measured,
        False,
        False,
        reason,
        TrimState(export_trim, import_trim, lower, upper, ts if new else last),
    )
