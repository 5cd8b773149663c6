"""The IEC 60870-5-104 face's address map: information object addresses (IOAs), their types and what they carry,
and the projection of the frozen PlantState onto them. Used by the server (controller.scada.iec104) and its
generated document (docs/scada-iec104.md). No protocol code here: values in, values out.

Measured values are short floats (M_ME_NC_1, IEEE 754, engineering units, no scaling) with a quality
descriptor; states are single points (M_SP_NA_1). A measured value is sent spontaneously when it moves by more
than its deadband (or its quality changes), a state on every change; a general interrogation returns all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.config import ScadaIec104

if TYPE_CHECKING:
    from controller.cycle.state import PlantState

MEASURED = "M_ME_NC_1"
SINGLE = "M_SP_NA_1"
SETPOINT = "C_SE_NC_1"
SWITCH = "C_SC_NA_1"


@dataclass(frozen=True, slots=True)
class Iec104Point:
    ioa: int
    name: str
    type: str  # one of MEASURED, SINGLE, SETPOINT, SWITCH
    unit: str
    description: str
    deadband: str = ""  # which configured deadband applies (deadband_mw | deadband_hz | deadband_pct)
    device: bool = False  # measured at the plant: NT (not topical) while the plant is not online


# measured values and states, in the order a general interrogation returns them
MONITOR: list[Iec104Point] = [
    Iec104Point(1001, "power_mw", MEASURED, "MW", "Active power at the PCS, + discharge", "deadband_mw", True),
    Iec104Point(1002, "setpoint_mw", MEASURED, "MW", "Setpoint written to the PCS (after every limit)", "deadband_mw"),
    Iec104Point(
        1003, "target_mw", MEASURED, "MW", "Target before limits: schedule + FCR + aFRR, + discharge", "deadband_mw"
    ),
    Iec104Point(1004, "soc_pct", MEASURED, "%", "State of charge", "deadband_pct", True),
    Iec104Point(1005, "frequency_hz", MEASURED, "Hz", "Grid frequency at the POI meter", "deadband_hz", True),
    Iec104Point(1006, "poi_power_mw", MEASURED, "MW", "Active power at the POI meter, + export", "deadband_mw", True),
    Iec104Point(1010, "afrr_setpoint_mw", MEASURED, "MW", "aFRR setpoint taken (after clamping), + up", "deadband_mw"),
    Iec104Point(1011, "afrr_active_mw", MEASURED, "MW", "aFRR part of the target now (ramped), + up", "deadband_mw"),
    Iec104Point(1012, "afrr_band_up_mw", MEASURED, "MW", "aFRR available upward (discharge) now", "deadband_mw"),
    Iec104Point(1013, "afrr_band_down_mw", MEASURED, "MW", "aFRR available downward (charge) now", "deadband_mw"),
    Iec104Point(1020, "fcr_mw", MEASURED, "MW", "FCR part of the target now, + discharge", "deadband_mw"),
    Iec104Point(
        1021,
        "fcr_band_up_mw",
        MEASURED,
        "MW",
        "FCR band held upward: services.fcr.capacity_mw while FCR is on, else 0",
        "deadband_mw",
    ),
    Iec104Point(
        1022,
        "fcr_band_down_mw",
        MEASURED,
        "MW",
        "FCR band held downward: services.fcr.capacity_mw while FCR is on, else 0",
        "deadband_mw",
    ),
    Iec104Point(2001, "fcr_on", SINGLE, "", "FCR is switched on"),
    Iec104Point(2002, "afrr_following", SINGLE, "", "An aFRR setpoint is live (received, not timed out)"),
    Iec104Point(2003, "afrr_timeout", SINGLE, "", "Alarm: no aFRR setpoint for longer than afrr_timeout_s"),
    Iec104Point(2004, "afrr_clamped", SINGLE, "", "The last aFRR setpoint was beyond the offered band (clamped)"),
    Iec104Point(2005, "online", SINGLE, "", "Every device has fresh readings"),
    Iec104Point(2006, "alarm", SINGLE, "", "Any alarm is active (the dashboard and API name it)"),
    Iec104Point(2007, "mode_auto", SINGLE, "", "Mode auto: the services stack on the schedule"),
    Iec104Point(2008, "mode_stopped", SINGLE, "", "Mode stopped: the plant is held at 0 MW"),
]

AFRR_SETPOINT_IOA = 3001
FCR_SWITCH_IOA = 3002
COMMANDS: list[Iec104Point] = [
    Iec104Point(AFRR_SETPOINT_IOA, "afrr_setpoint", SETPOINT, "MW", "aFRR setpoint, + up (discharge)"),
    Iec104Point(FCR_SWITCH_IOA, "fcr_switch", SWITCH, "", "FCR on (1) / off (0)"),
]

POINTS = {p.name: p for p in MONITOR + COMMANDS}

Value = float | bool | None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def values(state: "PlantState") -> dict[str, Value]:
    """Every monitored point's value for a PlantState; None = not known (sent with the invalid flag)."""
    poi = state.poi
    afrr = getattr(state, "afrr", None)
    fcr = getattr(state, "fcr", None)  # controller.services.runtime.FcrState
    fcr_on = bool(fcr is not None and fcr.enabled)
    return {
        "power_mw": _finite(state.power_mw),
        "setpoint_mw": _finite(state.setpoint_mw),
        "target_mw": _finite(state.target_mw),
        "soc_pct": _finite(state.soc_pct),
        "frequency_hz": _frequency(poi, fcr),
        "poi_power_mw": _finite(poi.power_mw) if poi is not None else None,
        "afrr_setpoint_mw": afrr.requested_mw if afrr is not None and afrr.received_ts is not None else None,
        "afrr_active_mw": afrr.active_mw if afrr is not None else 0.0,
        "afrr_band_up_mw": afrr.band_up_mw if afrr is not None else 0.0,
        "afrr_band_down_mw": afrr.band_down_mw if afrr is not None else 0.0,
        "fcr_mw": _finite(fcr.required_mw) if fcr_on else 0.0,
        "fcr_band_up_mw": fcr.capacity_mw if fcr_on else 0.0,  # the reserve keeps room for the whole band
        "fcr_band_down_mw": fcr.capacity_mw if fcr_on else 0.0,
        "fcr_on": fcr_on,
        "afrr_following": bool(afrr is not None and afrr.received_ts is not None and not afrr.timed_out),
        "afrr_timeout": bool(afrr is not None and afrr.timed_out),
        "afrr_clamped": bool(afrr is not None and afrr.clamped),
        "online": state.online,
        "alarm": bool(state.alarms),
        "mode_auto": state.mode == "auto",
        "mode_stopped": state.mode == "stopped",
    }


def _frequency(poi: Any, fcr: Any) -> float | None:
    """The POI meter's frequency: the cycle's reading, else the newest one FCR holds (its fast path reads the
    meter more often than the cycle)."""
    hz = _finite(poi.frequency_hz) if poi is not None else None
    if hz is None and fcr is not None:
        hz = _finite(fcr.frequency_hz)
    return hz


def deadbands(cfg: ScadaIec104) -> dict[str, float]:
    """name -> the change past which a measured value is sent spontaneously (states: any change)."""
    return {p.name: getattr(cfg, p.deadband) for p in MONITOR if p.deadband}


def worth_sending(old: Value, new: Value, deadband: float) -> bool:
    """Whether a point moved enough to be sent spontaneously: a state on any change, a measured value past
    its deadband, and any change between known and unknown."""
    if (old is None) != (new is None):
        return True
    if old is None or new is None:
        return False
    if isinstance(new, bool) or isinstance(old, bool):
        return old != new
    return abs(new - old) > deadband
