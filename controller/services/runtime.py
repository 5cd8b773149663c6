"""FCR at run time: switched on or off (the site file's start value, the operator API at run time), the newest
POI frequency from whichever read it last (the cycle's meter poll or the fast path), the power FCR asks for
now, and the reserve's state. Owned by the controller (event loop only); the faces see its `FcrState`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from controller.config import SiteConfig
from controller.services.fast import FastPath
from controller.services.fcr import FcrResponse, response
from controller.services.reserve import ReserveBand, ReserveStatus, band, reserve_status

log = logging.getLogger("bess.services")

__all__ = ["FcrState", "FcrService"]


@dataclass(frozen=True, slots=True)
class FcrState:
    """FCR as the faces show it (status `fcr`, telemetry, metrics, SCADA)."""

    enabled: bool
    capacity_mw: float
    frequency_hz: float | None  # the newest POI frequency (None: unknown or too old)
    frequency_ts: float | None
    required_mw: float  # what FCR asks for now (+ discharge)
    reserve_held: bool
    soc_low_pct: float  # the reserve band
    soc_high_pct: float
    restore_mwh: float  # energy that brings the SoC back into the band (0 while it is held)
    restore_direction: int  # +1 discharge restores it, -1 charge does, 0 nothing to do
    compliance_pct: float | None  # share of recorded seconds within tolerance (None: none recorded yet)
    fast_ticks: int  # the fast path's rounds (a good meter read each; FastPath.rounds)
    fast_writes: int  # of them, rounds that wrote a new setpoint (FastPath.writes)
    fast_errors: int = 0  # rounds whose meter read failed or that raised (FastPath.failures)


class FcrService:
    """The FCR switch, the newest frequency and the reserve of one plant (event-loop only)."""

    def __init__(self, config: SiteConfig):
        self.config = config
        self.cfg = config.services.fcr
        self.available = self.cfg.capacity_mw > 0 and config.meter() is not None
        self.enabled = self.cfg.enabled and self.available
        self.frequency_hz: float | None = None
        self.frequency_ts: float | None = None
        self.reserve: ReserveStatus = reserve_status(None, self.band(), config.battery.capacity_mwh)

    def set_enabled(self, on: bool) -> None:
        """Switch FCR. Refused (ValueError naming the key) when the site file offers no band or no meter."""
        if not self.available:
            why = "services.fcr.capacity_mw is 0" if self.cfg.capacity_mw <= 0 else "the site has no POI meter"
            raise ValueError(f"enabled: this site offers no FCR to switch: {why}")
        if on != self.enabled:
            log.info("FCR switched", extra={"enabled": on})
        self.enabled = on

    def observe(self, frequency_hz: float | None, ts: float | None) -> None:
        """A frequency reading (from the meter, at `ts`); an older one than we have is ignored, an invalid one
        (None, non-finite) is kept as unknown only if it is the newest."""
        if ts is None or not math.isfinite(ts):
            return
        if self.frequency_ts is not None and ts < self.frequency_ts:
            return
        ok = frequency_hz is not None and math.isfinite(frequency_hz)
        self.frequency_hz, self.frequency_ts = (float(frequency_hz) if ok else None), ts

    def frequency(self, now: float) -> float | None:
        """The newest frequency, None when unknown or older than frequency_stale_s."""
        if self.frequency_ts is None or now - self.frequency_ts > self.cfg.frequency_stale_s:
            return None
        return self.frequency_hz

    def required(self, now: float) -> FcrResponse:
        """What FCR asks of the plant now: nothing while switched off or with the frequency unknown."""
        if not self.enabled:
            return FcrResponse(0.0, None, False, False)
        return response(self.frequency(now), self.cfg)

    def band(self) -> ReserveBand:
        return band(self.cfg, self.config.battery, self.config.limits, self.enabled)

    def check_reserve(self, soc_pct: float | None) -> ReserveStatus:
        self.reserve = reserve_status(soc_pct, self.band(), self.config.battery.capacity_mwh)
        return self.reserve

    def state(self, now: float, compliance_pct: float | None, fast: FastPath | None = None) -> FcrState:
        """FCR as the faces see it now; the fast path's counters are `fast`'s own (0 without one)."""
        r = self.reserve
        b = self.band()
        return FcrState(
            self.enabled,
            self.cfg.capacity_mw,
            self.frequency(now),
            self.frequency_ts,
            self.required(now).required_mw,
            r.held,
            b.soc_low_pct,
            b.soc_high_pct,
            r.restore_mwh,
            r.direction,
            compliance_pct,
            fast.rounds if fast is not None else 0,
            fast.writes if fast is not None else 0,
            fast.failures if fast is not None else 0,
        )
