"""One frozen `PlantState` per cycle: what the plant and the controller were at the end of it. Every face reads
this (status, telemetry, SCADA registers, metrics are small projections of it), never the Controller.

`build` makes one from the cycle's snapshot, decision, mode, alarms and figures; `status` and `telemetry` are
the two projections the controller's own contracts define (DESIGN.md's /api/bess-status and the MQTT telemetry
payload). SCADA's projection lives with its point table (controller.scada.points), the metrics' with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from controller.clock import iso

if TYPE_CHECKING:
    from controller.cycle.alarms import Alarm
    from controller.cycle.limits import Decision
    from controller.cycle.snapshot import DeviceHealth, Snapshot
    from controller.services.afrr import AfrrState
    from controller.services.runtime import FcrState

# the MQTT telemetry payload's fields (DESIGN.md), all taken from the status projection; units and poi are
# issue 13's per-unit and POI figures
TELEMETRY_FIELDS = (
    "ts",
    "soc_pct",
    "power_mw",
    "setpoint_mw",
    "target_mw",
    "temperature_c",
    "status",
    "mode",
    "binding",
    "units",
    "poi",
    "fcr",
    "afrr",
)


@dataclass(frozen=True, slots=True)
class LinkFigures:
    """A device connection's counters at the end of the cycle (for the metrics)."""

    name: str
    request_latency_s: float
    errors_total: int


@dataclass(frozen=True, slots=True)
class UnitState:
    """One unit (a PCS and its battery's BMS) at the end of a cycle. None means unknown."""

    unit: str
    soc_pct: float | None = None
    power_mw: float | None = None
    setpoint_mw: float | None = None  # what this unit's PCS was told last
    temperature_c: float | None = None  # the unit's highest cell temperature
    available: bool = False  # its devices answered in time and it is not in safe state
    binding: str | None = None  # what bound this unit's share (None: nothing)


@dataclass(frozen=True, slots=True)
class PoiState:
    """The point of interconnection as the POI meter measured it (export positive, like the plant's power)."""

    power_mw: float | None = None
    frequency_hz: float | None = None
    ts: float | None = None  # when the meter was last read (Unix s)


@dataclass(frozen=True, slots=True)
class PlantState:
    """The plant at the end of a cycle. None means unknown; `ts` is None until a cycle has read the devices."""

    ts: float | None = None  # the process image's time (Unix s, the controller's clock)
    soc_pct: float | None = None
    power_mw: float | None = None
    temperature_c: float | None = None  # the highest cell temperature
    bms_allowed_charge_mw: float | None = None
    bms_allowed_discharge_mw: float | None = None
    online: bool = False  # every device has fresh readings
    setpoint_mw: float | None = None  # what the PCS was told last (None before the first decision)
    target_mw: float | None = None
    binding: str | None = None
    reasons: tuple[str, ...] = ()
    mode: str = "auto"
    manual_setpoint_mw: float = 0.0
    manual_expires_ts: float | None = None
    alarms: tuple["Alarm", ...] = ()  # the active alarms, in raise order
    device_alarms: tuple[str, ...] = ()  # the snapshot's alarm and fault words ("device:name")
    device_faults: tuple[str, ...] = ()
    devices: tuple["DeviceHealth", ...] = ()
    bms: str = "bms"  # the device names of the BMS and the PCS
    pcs: str = "pcs"
    links: tuple[LinkFigures, ...] = ()
    cycles: int = 0
    overruns: int = 0
    last_duration_s: float = 0.0
    cycle_p99_s: float | None = None  # recomputed every 10th cycle only (None: unchanged)
    units: tuple[UnitState, ...] = ()  # one entry for a one-unit site (its implicit unit's id)
    poi: PoiState | None = None  # None without a POI meter
    afrr: "AfrrState | None" = None  # the aFRR setpoint as followed (issue 15); None without the IEC 104 face
    fcr: "FcrState | None" = None  # grid service FCR (issue 15); None on a site that offers none

    @property
    def has_cycle(self) -> bool:
        """A cycle has read the devices and decided (the metrics wait for both)."""
        return self.ts is not None and self.setpoint_mw is not None

    @property
    def manual(self) -> bool:
        return self.mode == "manual"


def build(
    snapshot: "Snapshot | None",
    decision: "Decision | None",
    mode: Any,
    alarms: Iterable["Alarm"],
    stats: Any,
    links: Iterable[LinkFigures],
    bms: str,
    pcs: str,
    cycle_p99_s: float | None = None,
    unit: str = "u1",
    units: tuple[UnitState, ...] | None = None,
    poi: PoiState | None = None,
    afrr: "AfrrState | None" = None,
    fcr: "FcrState | None" = None,
) -> PlantState:
    """The state from the cycle's parts (`mode` a ModeState, `stats` the CycleStats). A plant of several units
    passes each unit's state (`units`); of a one-unit site, the plant's figures are its one unit's (`unit` its
    id). `poi`: the meter's figures (None without a meter); `afrr`, `fcr`: the grid services' (None on a site
    without them)."""
    s, d = snapshot, decision
    online = bool(s) and not s.stale and not s.comm_loss
    if units is None:
        units = (
            UnitState(
                unit=unit,
                soc_pct=s.soc_pct if s else None,
                power_mw=s.power_mw if s else None,
                setpoint_mw=d.setpoint_mw if d else None,
                temperature_c=s.temperature_max_c if s else None,
                available=online and not s.faults,
                binding=d.binding if d else None,
            ),
        )
    return PlantState(
        ts=s.ts if s else None,
        soc_pct=s.soc_pct if s else None,
        power_mw=s.power_mw if s else None,
        temperature_c=s.temperature_max_c if s else None,
        bms_allowed_charge_mw=s.bms_allowed_charge_mw if s else None,
        bms_allowed_discharge_mw=s.bms_allowed_discharge_mw if s else None,
        online=online,
        setpoint_mw=d.setpoint_mw if d else None,
        target_mw=d.target_mw if d else None,
        binding=d.binding if d else None,
        reasons=tuple(d.reasons) if d else (),
        mode=mode.mode,
        manual_setpoint_mw=mode.manual_setpoint_mw,
        manual_expires_ts=mode.manual_expires_ts,
        alarms=tuple(alarms),
        device_alarms=s.alarms if s else (),
        device_faults=s.faults if s else (),
        devices=s.devices if s else (),
        bms=bms,
        pcs=pcs,
        links=tuple(links),
        cycles=stats.cycles,
        overruns=stats.overruns,
        last_duration_s=stats.last_duration_s,
        cycle_p99_s=cycle_p99_s,
        units=units,
        poi=poi,
        afrr=afrr,
        fcr=fcr,
    )


def status(state: PlantState, now: float) -> dict[str, Any]:
    """DESIGN.md's /api/bess-status shape. `now` stands in for `ts` before the first cycle."""
    return {
        "soc_pct": state.soc_pct,
        "power_mw": state.power_mw,
        "setpoint_mw": state.setpoint_mw,
        "target_mw": state.target_mw,
        "temperature_c": state.temperature_c,
        "status": "online" if state.online else "offline",
        "mode": state.mode,
        "binding": state.binding if state.binding is not None else "none",
        "reasons": list(state.reasons),
        "alarms": [a.message for a in state.alarms],
        "manual_setpoint_mw": state.manual_setpoint_mw if state.manual else None,
        "manual_expires": iso(state.manual_expires_ts) if state.manual_expires_ts else None,
        "ts": iso(state.ts if state.ts is not None else now),
        "units": [unit_status(u) for u in state.units],
        "poi": poi_status(state.poi),
        "fcr": fcr_status(state.fcr),
        "afrr": afrr_status(state.afrr),
    }


def unit_status(u: UnitState) -> dict[str, Any]:
    """One entry of status' and telemetry's `units` (DESIGN.md)."""
    return {
        "unit": u.unit,
        "soc_pct": u.soc_pct,
        "power_mw": u.power_mw,
        "setpoint_mw": u.setpoint_mw,
        "temperature_c": u.temperature_c,
        "available": u.available,
        "binding": u.binding,
    }


def poi_status(p: PoiState | None) -> dict[str, Any] | None:
    """Status' and telemetry's `poi` (DESIGN.md): null without a meter."""
    if p is None:
        return None
    return {"power_mw": p.power_mw, "frequency_hz": p.frequency_hz, "ts": iso(p.ts) if p.ts is not None else None}


def fcr_status(f: "FcrState | None") -> dict[str, Any] | None:
    """Status' and telemetry's `fcr` (issue 15): null on a site that offers no FCR."""
    if f is None:
        return None
    return {
        "enabled": f.enabled,
        "capacity_mw": f.capacity_mw,
        "frequency_hz": f.frequency_hz,
        "contribution_mw": f.required_mw,
        "reserve_held": f.reserve_held,
        "reserve_soc_low_pct": f.soc_low_pct,
        "reserve_soc_high_pct": f.soc_high_pct,
        "reserve_restore_mwh": f.restore_mwh,
        "reserve_restore_direction": f.restore_direction,
        "compliance_pct": f.compliance_pct,
    }


def afrr_status(a: "AfrrState | None") -> dict[str, Any] | None:
    """Status' and telemetry's `afrr` (issue 15): the grid operator's aFRR setpoint as followed; null on a site
    without the IEC 104 face."""
    if a is None:
        return None
    received = a.received_ts is not None
    return {
        "setpoint_mw": a.requested_mw if received else None,
        "active_mw": a.active_mw,
        "band_up_mw": a.band_up_mw,
        "band_down_mw": a.band_down_mw,
        "following": received and not a.timed_out,
        "timed_out": a.timed_out,
        "clamped": a.clamped,
        "received": iso(a.received_ts) if received else None,
    }


def telemetry(state: PlantState, now: float) -> dict[str, Any]:
    """The MQTT telemetry payload (DESIGN.md), `seq` added by the outbox."""
    st = status(state, now)
    return {k: st[k] for k in TELEMETRY_FIELDS}
