"""The SCADA face's data: one table of status points (read-only) and allow-listed control points (writable,
range-checked), used by the Modbus server, the OPC UA server and the generated docs (controller.scada.docs).

Modbus addresses are 0-based on the wire. Status points are input registers (function 04); control points
are holding registers (function 03 to read, 06/16 to write). Unknown values read as the type's
"not available" marker (0x8000 for i16, 0x80000000 for i32, 0xFFFF for u16), as SunSpec does.

After today's status table come the POI meter's points (POI) and one block per unit: unit k (0-based, in the
site file's order) at UNIT_BASE + k * UNIT_STRIDE, its points at the offsets of UNIT_POINTS. Units are known at
start (the site file), so the map is fixed for a site; a one-unit site has one block (its implicit unit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.config import Limits
from controller.cycle.alarms import CYCLE_ERROR, INFEASIBLE, READBACK, reported_by
from controller.cycle.limits import BINDINGS
from controller.cycle.state import PlantState, UnitState

MODE_CODES = {"auto": 0, "manual": 1, "stopped": 2}
MODE_NAMES = {v: k for k, v in MODE_CODES.items()}
BINDING_CODES = {name: i for i, name in enumerate(BINDINGS)}

# alarm bits of the `alarm_bits` status register
ALARM_BITS = {
    0: "device communication lost or stale",
    1: "BMS alarm",
    2: "BMS fault",
    3: "PCS alarm or fault",
    4: "PCS read-back mismatch",
    5: "schedule cannot be delivered",
    6: "control cycle failed (0 MW commanded)",
}

NA = {"u16": 0xFFFF, "i16": 0x8000, "u32": 0xFFFFFFFF, "i32": 0x80000000}
RANGE = {"u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF), "u32": (0, 0xFFFFFFFF), "i32": (-0x80000000, 0x7FFFFFFF)}
WORDS = {"u16": 1, "i16": 1, "u32": 2, "i32": 2}


@dataclass(frozen=True)
class ScadaPoint:
    name: str
    address: int
    type: str  # u16 | i16 | u32 | i32, big-endian words
    scale: float  # engineering value = raw * scale
    unit: str
    description: str
    writable: bool = False
    min: float | None = None
    max: float | None = None

    @property
    def words(self) -> int:
        return WORDS[self.type]

    def to_raw(self, value: float | None) -> int:
        """Engineering value -> unsigned register value(s) as one int (NA marker for unknown)."""
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return NA[self.type]
        raw = round(value / self.scale)
        lo, hi = RANGE[self.type]
        raw = min(hi, max(lo, raw))
        return raw & (0xFFFF if self.words == 1 else 0xFFFFFFFF)

    def to_registers(self, value: float | None) -> list[int]:
        raw = self.to_raw(value)
        return [raw] if self.words == 1 else [raw >> 16, raw & 0xFFFF]

    def from_registers(self, regs: list[int]) -> float:
        raw = regs[0] if self.words == 1 else (regs[0] << 16) | regs[1]
        if self.type.startswith("i") and raw >= 1 << (16 * self.words - 1):
            raw -= 1 << (16 * self.words)
        return raw * self.scale


STATUS: list[ScadaPoint] = [
    ScadaPoint("soc_pct", 0, "u16", 0.01, "%", "State of charge"),
    ScadaPoint("power_mw", 1, "i32", 0.001, "MW", "Active power at the PCS, + discharge"),
    ScadaPoint("setpoint_mw", 3, "i32", 0.001, "MW", "Setpoint written to the PCS, + discharge"),
    ScadaPoint("target_mw", 5, "i32", 0.001, "MW", "Target before limits (schedule or manual), + discharge"),
    ScadaPoint("temperature_c", 7, "i16", 0.1, "°C", "Highest cell temperature"),
    ScadaPoint("mode", 8, "u16", 1, "", "Operating mode: 0 auto, 1 manual, 2 stopped"),
    ScadaPoint("binding", 9, "u16", 1, "", "Binding limit code (table below)"),
    ScadaPoint("alarm_bits", 10, "u16", 1, "", "Alarm bits (table below); 0 = no alarm"),
    ScadaPoint("online", 11, "u16", 1, "", "1 when every device has fresh readings"),
    ScadaPoint("heartbeat", 12, "u16", 1, "", "Cycle counter, wraps at 65535: changes every control cycle"),
    ScadaPoint("timestamp_s", 13, "u32", 1, "s", "Unix time of the last control cycle (UTC)"),
    ScadaPoint("bms_allowed_charge_mw", 15, "i32", 0.001, "MW", "Charge power the BMS allows"),
    ScadaPoint("bms_allowed_discharge_mw", 17, "i32", 0.001, "MW", "Discharge power the BMS allows"),
    ScadaPoint("manual_setpoint_mw", 19, "i32", 0.001, "MW", "Active manual setpoint (NA unless mode is manual)"),
    ScadaPoint("manual_expires_s", 21, "u32", 1, "s", "Unix time the manual setpoint expires (NA unless manual)"),
]

# where the unit blocks are, for a master that discovers the map (Modbus only: OPC UA browses its folders)
LAYOUT: list[ScadaPoint] = [
    ScadaPoint("unit_count", 23, "u16", 1, "", "Units of the plant: blocks at unit_base + k * unit_stride"),
    ScadaPoint("unit_base", 24, "u16", 1, "", "Address of unit 0's block (input registers)"),
    ScadaPoint("unit_stride", 25, "u16", 1, "", "Registers from one unit's block to the next"),
]

# the POI meter, after the status table (NA on a site without a meter, or while the meter is lost)
POI: list[ScadaPoint] = [
    ScadaPoint("power_mw", 30, "i32", 0.001, "MW", "Measured active power at the POI, + export"),
    ScadaPoint("frequency_hz", 32, "u16", 0.001, "Hz", "Grid frequency measured at the POI"),
]

# one block per unit: unit k's point of offset o is at UNIT_BASE + k * UNIT_STRIDE + o
UNIT_BASE = 200
UNIT_STRIDE = 10
MAX_UNITS = 64  # 64 blocks end at 840, far below any address limit
UNIT_POINTS: list[ScadaPoint] = [
    ScadaPoint("soc_pct", 0, "u16", 0.01, "%", "The unit's state of charge"),
    ScadaPoint("power_mw", 1, "i32", 0.001, "MW", "Active power at the unit's PCS, + discharge"),
    ScadaPoint("setpoint_mw", 3, "i32", 0.001, "MW", "Setpoint written to the unit's PCS, + discharge"),
    ScadaPoint("temperature_c", 5, "i16", 0.1, "°C", "The unit's highest cell temperature"),
    ScadaPoint("available", 6, "u16", 1, "", "1 when the unit takes setpoints (0: in its safe state, 0 MW)"),
    ScadaPoint("binding", 7, "u16", 1, "", "The unit's own binding limit code (table below)"),
]

CONTROL: list[ScadaPoint] = [
    ScadaPoint(
        "mode",
        100,
        "u16",
        1,
        "",
        "Write 0 auto, 1 manual (uses the setpoint below), 2 stopped",
        writable=True,
        min=0,
        max=2,
    ),
    ScadaPoint(
        "manual_setpoint_mw",
        101,
        "i32",
        0.001,
        "MW",
        "Manual setpoint, + discharge; renews the expiry; still passes every limit",
        writable=True,
    ),
    ScadaPoint(
        "manual_expires_s",
        103,
        "u16",
        1,
        "s",
        "Manual setpoint lifetime from the last write",
        writable=True,
        min=1,
        max=65535,
    ),
]


def status_values(state: PlantState) -> dict[str, float | None]:
    """The status table's values: a projection of the latest PlantState (never of devices)."""
    has_image = state.ts is not None
    manual = state.manual
    return {
        "soc_pct": state.soc_pct,
        "power_mw": state.power_mw,
        "setpoint_mw": state.setpoint_mw,
        "target_mw": state.target_mw,
        "temperature_c": state.temperature_c,
        "mode": MODE_CODES[state.mode],
        "binding": binding_code(state.binding),
        "alarm_bits": alarm_bits(state),
        "online": 1 if state.online else 0,
        "heartbeat": state.cycles % 65536,
        "timestamp_s": int(state.ts) if has_image else None,
        "bms_allowed_charge_mw": state.bms_allowed_charge_mw,
        "bms_allowed_discharge_mw": state.bms_allowed_discharge_mw,
        "manual_setpoint_mw": state.manual_setpoint_mw if manual else None,
        "manual_expires_s": int(state.manual_expires_ts) if manual and state.manual_expires_ts else None,
    }


def binding_code(binding: str | None) -> int:
    return BINDING_CODES.get(binding, 0) if binding is not None else 0


def unit_points(k: int) -> list[ScadaPoint]:
    """Unit k's block (0-based, in the site file's order) at its absolute addresses."""
    base = UNIT_BASE + k * UNIT_STRIDE
    return [ScadaPoint(p.name, base + p.address, p.type, p.scale, p.unit, p.description) for p in UNIT_POINTS]


def unit_values(unit: "UnitState | None") -> dict[str, float | None]:
    """One unit's block values; a unit the state does not carry (before the first cycle) reads NA."""
    if unit is None:
        return {p.name: None for p in UNIT_POINTS}
    return {
        "soc_pct": unit.soc_pct,
        "power_mw": unit.power_mw,
        "setpoint_mw": unit.setpoint_mw,
        "temperature_c": unit.temperature_c,
        "available": 1 if unit.available else 0,
        "binding": binding_code(unit.binding),
    }


def units_by_name(state: PlantState) -> dict[str, "UnitState"]:
    return {u.unit: u for u in getattr(state, "units", ())}


def poi_values(state: PlantState) -> dict[str, float | None]:
    """The POI block's values (NA without a meter)."""
    poi = getattr(state, "poi", None)
    if poi is None:
        return {"power_mw": None, "frequency_hz": None}
    return {"power_mw": poi.power_mw, "frequency_hz": poi.frequency_hz}


def input_registers(state: PlantState, units: list[str]) -> dict[int, int]:
    """Every input register the Modbus face serves, address -> raw word: the status table, the POI block and
    the blocks of `units` (the site's unit names, in file order, which fix the map)."""
    out: dict[int, int] = {}

    def put(points: list[ScadaPoint], values: dict[str, float | None]) -> None:
        for p in points:
            for i, word in enumerate(p.to_registers(values[p.name])):
                out[p.address + i] = word

    put(STATUS, status_values(state))
    put(LAYOUT, {"unit_count": len(units), "unit_base": UNIT_BASE, "unit_stride": UNIT_STRIDE})
    put(POI, poi_values(state))
    by_name = units_by_name(state)
    for k, name in enumerate(units):
        put(unit_points(k), unit_values(by_name.get(name)))
    return out


def input_words(unit_count: int) -> int:
    """How many input registers (from 0) the map of a site of `unit_count` units spans."""
    return UNIT_BASE + unit_count * UNIT_STRIDE


def alarm_bits(state: PlantState) -> int:
    """The `alarm_bits` register: bit 0 offline, 1 BMS alarm, 2 BMS fault, 3 PCS alarm or fault, 4 read-back
    mismatch, 5 schedule infeasible, 6 a control cycle failed (docs/scada-modbus.md)."""
    bits = 0
    if state.ts is not None:
        if not state.online:
            bits |= 1 << 0
        if reported_by(state.device_alarms, state.bms, ignore_suffix="readback_mismatch"):
            bits |= 1 << 1
        if reported_by(state.device_faults, state.bms):
            bits |= 1 << 2
        if reported_by(state.device_alarms + state.device_faults, state.pcs, ignore_suffix="readback_mismatch"):
            bits |= 1 << 3
    kinds = {a.key.kind for a in state.alarms}
    if READBACK in kinds:
        bits |= 1 << 4
    if INFEASIBLE in kinds:
        bits |= 1 << 5
    if CYCLE_ERROR in kinds:
        bits |= 1 << 6
    return bits


def control_limits(lim: Limits) -> dict[str, tuple[float, float]]:
    """Write ranges of the control points; the setpoint range comes from the configured power limits."""
    out = {p.name: (p.min, p.max) for p in CONTROL if p.min is not None}
    out["manual_setpoint_mw"] = (-lim.p_charge_max_mw, lim.p_discharge_max_mw)
    return out
