"""What the cycle keeps of the plant between cycles beyond its units' writers: the POI closed loop (its meter, its
trims, its fallback alarm) and the units' states for the faces."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from controller.config import SiteConfig
from controller.cycle.alarms import Alarms, poi_fallback_key
from controller.cycle.allocation import Allocation
from controller.cycle.devices import DeviceLink
from controller.cycle.poi import PoiConfig, PoiRange, PoiReading, TrimState, poi_range
from controller.cycle.snapshot import Snapshot
from controller.cycle.state import PoiState, UnitState

log = logging.getLogger("bess.cycle")

# The trim's bounds, as shares of the grid limit, so that they scale with the plant. Aux loads (HVAC, transformer
# no-load) and losses between the PCSs and the POI are a few percent of a BESS's rating: a trim of at most 10 %
# covers them with room (anti-windup: a meter that reads nonsense cannot drive the plant further than that), and a
# step of at most 2.5 % per update keeps one bad reading from moving the setpoint much, while a 0.5 MW offset at
# 10 MW still settles in a few updates (integral gain 0.5/s). The range sits 0.5 % inside the limit so that the
# loop's small ripple stays within it.
MAX_TRIM_SHARE = 0.10
MAX_STEP_SHARE = 0.025
SETTLE_SHARE = 0.005
GAIN_PER_S = 0.5


def poi_config(config: SiteConfig) -> PoiConfig:
    """The POI loop of a site with a meter: the grid limit applies to the measured export and import."""
    lim = config.limits
    grid = lim.grid_limit_mw
    return PoiConfig(
        export_limit_mw=grid,
        import_limit_mw=grid,
        gain_per_s=GAIN_PER_S,
        max_step_mw=MAX_STEP_SHARE * grid,
        max_trim_mw=MAX_TRIM_SHARE * grid,
        settle_margin_mw=SETTLE_SHARE * grid,
        fallback_margin_mw=lim.poi_fallback_margin_mw,
        stale_after_s=lim.stale_after_s,
        required=False,
        max_dt_s=2 * config.cycle.period_s,
    )


class PoiLoop:
    """The meter's reading into poi_range() every cycle, its trims carried over; a lost meter falls back to the
    open-loop limits less the margin and raises an alarm naming the meter, cleared when its readings are back."""

    def __init__(self, config: SiteConfig, meter: DeviceLink, alarms: Alarms):
        self.cfg = poi_config(config)
        self.meter = meter
        self.alarms = alarms
        self.stale_after_s = config.limits.stale_after_s
        self.trims = TrimState()
        self.last: PoiRange | None = None

    def reading(self, now: float) -> PoiReading:
        stale = self.meter.health(now, self.stale_after_s).stale
        r = self.meter.readings.get("power_mw")
        return PoiReading(None if stale else self.meter.value("power_mw"), r.ts if r is not None else None, stale)

    def step(self, now: float, dt_s: float, setpoint_mw: float, plant_mw: float | None) -> PoiRange:
        """This cycle's range for the plant setpoint. `setpoint_mw`: the plant setpoint last written (the one the
        reading answers); `plant_mw`: the units' measured power summed (None when one is unknown)."""
        r = poi_range(self.reading(now), self.trims, self.cfg, setpoint_mw, now, dt_s, plant_mw)
        self.trims = r.state
        self.last = r
        key = poi_fallback_key(self.meter.name)
        if r.fallback:
            self.alarms.raise_(key, "poi_fallback", f"{self.meter.name}: {r.reason}")
        else:
            self.alarms.clear(key)
        return r

    def state(self, now: float) -> PoiState:
        """The meter's figures for the faces (unknown while it is stale)."""
        stale = self.meter.health(now, self.stale_after_s).stale
        r = self.meter.readings.get("power_mw")
        return PoiState(
            power_mw=None if stale else self.meter.value("power_mw"),
            frequency_hz=None if stale else self.meter.value("frequency_hz"),
            ts=r.ts if r is not None else self.meter.last_good_ts,
        )


def unit_states(names: Sequence[str], snaps: Sequence[Snapshot], alloc: Allocation | None) -> tuple[UnitState, ...]:
    """Each unit at the end of the cycle: its own readings, the setpoint its PCS was told, available and its
    binding as the allocation said."""
    shares = alloc.units if alloc is not None else (None,) * len(names)
    return tuple(
        UnitState(
            unit=name,
            soc_pct=s.soc_pct,
            power_mw=s.power_mw,
            setpoint_mw=share.setpoint_mw if share is not None else None,
            temperature_c=s.temperature_max_c,
            available=share.available if share is not None else False,
            binding=share.binding if share is not None else None,
        )
        for name, s, share in zip(names, snaps, shares)
    )
