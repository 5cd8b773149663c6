"""Automatic frequency restoration reserve (aFRR): the grid operator's setpoint, as the plant follows it.

The controlling station sends a setpoint (MW, + discharge = upward) every few seconds over IEC 60870-5-104
(controller/scada/iec104.py). A setpoint beyond the offered band is clamped to it (and reported as clamped);
the aFRR part of the target ramps toward the setpoint at the configured rate (full activation of the band
within 5 minutes, the product's rule); a setpoint older than the timeout means the link is lost: the part
ramps back to 0 and the controller raises an alarm until setpoints resume. Pure: values in, values out, time
passed in. The part is stacked on the schedule (controller.services.stack) and still passes limit().
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from controller.config import ScadaIec104

__all__ = ["AfrrBand", "AfrrState", "accept", "available", "step"]


@dataclass(frozen=True, slots=True)
class AfrrBand:
    """What the plant offers: the band each way (MW >= 0), its ramp and the setpoint timeout."""

    up_mw: float = 0.0  # upward = discharge
    down_mw: float = 0.0  # downward = charge
    ramp_mw_per_s: float = 0.0
    timeout_s: float = 30.0

    @classmethod
    def of(cls, face: ScadaIec104) -> "AfrrBand":
        return cls(face.afrr_up_mw, face.afrr_down_mw, face.afrr_ramp_mw_per_s, face.afrr_timeout_s)

    def clamp(self, setpoint_mw: float) -> float:
        return min(max(setpoint_mw, -self.down_mw), self.up_mw) + 0.0  # + 0.0: no -0.0 on the wire


@dataclass(frozen=True, slots=True)
class AfrrState:
    """The aFRR part of the target. `requested_mw` is the last setpoint taken (after clamping), `active_mw` the
    ramped part the target carries now."""

    requested_mw: float = 0.0
    received_ts: float | None = None  # when the last setpoint came (controller clock); None: none yet
    active_mw: float = 0.0
    clamped: bool = False  # the last setpoint was beyond the offered band and was clamped to it
    timed_out: bool = False  # no setpoint for longer than the timeout: the part goes back to 0
    setpoints: int = 0  # setpoints taken since start
    band_up_mw: float = 0.0  # aFRR available now (available(), set by the cycle)
    band_down_mw: float = 0.0

    @property
    def goal_mw(self) -> float:
        """Where the part is heading: the setpoint, or 0 before the first one and after a timeout."""
        return 0.0 if self.received_ts is None or self.timed_out else self.requested_mw


def accept(state: AfrrState, setpoint_mw: float, now: float, band: AfrrBand) -> AfrrState:
    """A setpoint from the controlling station, clamped to the offered band. Raises ValueError for a value that
    is not a finite number (the face answers it with a negative confirmation)."""
    value = float(setpoint_mw)
    if not math.isfinite(value):
        raise ValueError(f"aFRR setpoint {setpoint_mw!r} MW is not a finite number")
    taken = band.clamp(value)
    return replace(
        state,
        requested_mw=taken,
        received_ts=now,
        clamped=taken != value,
        timed_out=False,
        setpoints=state.setpoints + 1,
    )


def step(state: AfrrState, now: float, dt_s: float, band: AfrrBand) -> AfrrState:
    """One cycle: the timeout checked at `now`, then the part moved toward its goal by at most the ramp over
    `dt_s` (the caller caps dt after a stall, as for limit()). Both directions ramp: aFRR is delivered along a
    ramp, and a lost link takes the part back to 0 the same way rather than with a step."""
    timed_out = state.received_ts is not None and now - state.received_ts > band.timeout_s
    s = replace(state, timed_out=timed_out) if timed_out != state.timed_out else state
    goal = s.goal_mw
    dt = dt_s if math.isfinite(dt_s) and dt_s > 0 else 0.0
    move = band.ramp_mw_per_s * dt
    active = s.active_mw
    if abs(goal - active) <= move:
        active = goal
    else:
        active += move if goal > active else -move
    return s if active == s.active_mw else replace(s, active_mw=active + 0.0)


def available(
    band: AfrrBand, lower_mw: float, upper_mw: float, base_mw: float, reserve_mw: float = 0.0
) -> tuple[float, float]:
    """(up, down) MW of aFRR the plant can give now: the offered band, cut to the room the limits leave
    ([lower_mw, upper_mw], from the cycle's decision) around the base target, less the `reserve_mw` held for
    FCR each way. Never negative."""

    def room(x: float) -> float:
        return x if math.isfinite(x) and x > 0 else 0.0

    up = min(band.up_mw, room(upper_mw - base_mw - reserve_mw))
    down = min(band.down_mw, room(base_mw - lower_mw - reserve_mw))
    return up + 0.0, down + 0.0
