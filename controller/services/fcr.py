"""Frequency containment reserve (FCR): the power the plant owes the grid for a measured frequency.

    contribution_mw = -capacity_mw x clamp((f - 50 Hz) / full_activation, -1, 1), and 0 while |f - 50 Hz| is
    within the deadband.

Over-frequency charges (negative, our sign), under-frequency discharges. The deadband is an insensitivity
around 50 Hz, not a shift of the characteristic: outside it the droop is the TSO's line through 50 Hz (ENTSO-E
FCR: full activation at +-200 mHz, measured from nominal, with at most +-10 mHz of insensitivity), so at 50.1 Hz
the plant gives exactly half its band whatever the deadband is; just outside the deadband it gives
deadband/full_activation of it (5 % with the defaults) at once. Pure: values in, values out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.config import Fcr

__all__ = ["NOMINAL_HZ", "FcrResponse", "contribution_mw", "response"]

NOMINAL_HZ = 50.0


@dataclass(frozen=True, slots=True)
class FcrResponse:
    """What FCR asks of the plant for one frequency reading."""

    required_mw: float  # + discharge; 0 inside the deadband or with the frequency unknown
    deviation_mhz: float | None  # f - 50 Hz in mHz; None: frequency unknown
    in_deadband: bool
    saturated: bool  # |deviation| >= full activation: all of the band is due


def contribution_mw(frequency_hz: float, capacity_mw: float, deadband_mhz: float, full_activation_mhz: float) -> float:
    """The FCR power for a known frequency (+ discharge); see the module docstring."""
    deviation_mhz = (frequency_hz - NOMINAL_HZ) * 1000.0
    if abs(deviation_mhz) <= deadband_mhz:
        return 0.0
    share = min(max(deviation_mhz / full_activation_mhz, -1.0), 1.0)
    return -capacity_mw * share + 0.0  # + 0.0: no -0.0 on the wire


def response(frequency_hz: float | None, fcr: Fcr) -> FcrResponse:
    """The FCR power for a reading of the POI meter. An unknown frequency (None, NaN, inf) asks for nothing:
    the caller says so (an alarm); guessing a frequency would move the plant on nothing."""
    if frequency_hz is None or not math.isfinite(frequency_hz):
        return FcrResponse(0.0, None, False, False)
    deviation = (frequency_hz - NOMINAL_HZ) * 1000.0
    required = contribution_mw(frequency_hz, fcr.capacity_mw, fcr.deadband_mhz, fcr.full_activation_mhz)
    return FcrResponse(
        required, deviation, abs(deviation) <= fcr.deadband_mhz, abs(deviation) >= fcr.full_activation_mhz
    )
