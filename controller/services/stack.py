"""The one sum of what the plant is asked for: the base target (the schedule's position, or the operator's
manual setpoint) plus each grid service's part (FCR here; aFRR next). Pure. The sum is a *target*: the cycle
and the fast path pass it through limit()/allocate() like any other, so a stacked target can never take the
plant past a limit; where the limits cut it, the services' parts are what is lost first only in the records
(required vs delivered), never by skipping a limit.

A service whose part is unknown (NaN, inf) contributes 0: an unknown part must not move the plant, and the
base alone is still delivered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Stack", "stack"]


@dataclass(frozen=True, slots=True)
class Stack:
    """The target and what it is made of (MW, + discharge). target_mw = base_mw + fcr_mw + afrr_mw."""

    target_mw: float
    base_mw: float
    fcr_mw: float = 0.0
    afrr_mw: float = 0.0

    @property
    def services_mw(self) -> float:
        """The grid services' part of the target."""
        return self.fcr_mw + self.afrr_mw


def _part(mw: float) -> float:
    return float(mw) if math.isfinite(mw) else 0.0


def stack(base_mw: float, fcr_mw: float = 0.0, afrr_mw: float = 0.0) -> Stack:
    """The stacked target. A non-finite base is passed on as it is (limit() replaces it by 0 MW and says why);
    a non-finite service part counts 0."""
    fcr, afrr = _part(fcr_mw), _part(afrr_mw)
    return Stack(float(base_mw) + fcr + afrr + 0.0, float(base_mw), fcr, afrr)
