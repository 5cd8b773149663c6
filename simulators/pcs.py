"""The PCS (inverter) behind the SunSpec face: follows the written WSet with a ramp, refuses writes out of
range, falls back to its reversion power (0 W) when WSetRvrtTms passes without a new setpoint or heartbeat,
stops on a BMS fault, and publishes models 1, 701, 704, 713 and 802 from the battery model.

SunSpec signs match ours: 701.W is "positive for DER generation and negative for absorption", and 704.WSet
"may be negative for charging" (model_701.json / model_704.json), so WSet > 0 discharges (export) and
WSet < 0 charges.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from controller.clock import Clock
from simulators.battery import (
    ALARM_OVER_TEMPERATURE,
    ALARM_SOC_HIGH,
    ALARM_SOC_LOW,
    ALARM_UNDER_TEMPERATURE,
    BatteryModel,
)
from simulators.faults import Faults
from simulators.modbus_server import ModbusSimServer, Value

log = logging.getLogger("bess.sim.pcs")

ILLEGAL_VALUE = 3

# enum values from the model definitions
ENABLED, DISABLED = 1, 0
WSETMOD_PCT, WSETMOD_WATTS = 0, 1
ST_OFF, ST_ON = 0, 1
INVST_RUNNING, INVST_THROTTLED, INVST_FAULT, INVST_STANDBY = 3, 4, 6, 7
CONNST_CONNECTED, CONNST_DISCONNECTED = 1, 0
STA_OK, STA_WARNING, STA_ERROR = 0, 1, 2
CHAST_EMPTY, CHAST_DISCHARGING, CHAST_CHARGING, CHAST_FULL, CHAST_HOLDING = 2, 3, 4, 5, 6
STATE_CONNECTED, STATE_FAULT = 3, 99
# 701.Alrm bits
ALRM_OVER_TEMP, ALRM_UNDER_TEMP, ALRM_MANUFACTURER = 1 << 7, 1 << 13, 1 << 16
# 802.Evt1 bits
EVT1_OVER_TEMP_ALARM, EVT1_UNDER_TEMP_ALARM = 1 << 1, 1 << 3
EVT1_UNDER_SOC_MIN_ALARM, EVT1_OVER_SOC_MAX_ALARM = 1 << 13, 1 << 15

# Scale factors this device uses (chosen so that a 10-30 MW plant fits the int16/uint16 points).
SCALE_FACTORS = {
    "701.A_SF": 0,
    "701.V_SF": 0,
    "701.Hz_SF": -3,
    "701.W_SF": 3,
    "701.PF_SF": -3,
    "701.VA_SF": 3,
    "701.Var_SF": 3,
    "701.TotWh_SF": 3,
    "701.TotVarh_SF": 3,
    "701.Tmp_SF": -1,
    "704.PF_SF": -3,
    "704.WMaxLimPct_SF": -1,
    "704.WSet_SF": 0,
    "704.WSetPct_SF": -1,
    "704.VarSet_SF": 0,
    "704.VarSetPct_SF": -1,
    "713.WH_SF": 3,
    "713.Pct_SF": -1,
    "802.AHRtg_SF": 0,
    "802.WHRtg_SF": 3,
    "802.WChaDisChaMax_SF": 3,
    "802.DisChaRte_SF": -2,
    "802.SoC_SF": -1,
    "802.DoD_SF": -1,
    "802.SoH_SF": -1,
    "802.V_SF": -1,
    "802.CellV_SF": -3,
    "802.A_SF": 0,
    "802.AMax_SF": 0,
    "802.W_SF": 3,
}


@dataclass
class PcsParams:
    rated_power_mw: float = 10.0
    ramp_mw_per_s: float = 10.0
    reversion_timeout_s: float = 10.0  # WSetRvrtTms at power-up; a client may write another
    line_voltage_v: float = 690.0
    frequency_hz: float = 50.0
    serial: str = "SIM-PCS-0001"


class Pcs:
    """State lives in the SunSpec registers (what clients write) plus the ramped command and the timer."""

    def __init__(
        self,
        model: BatteryModel,
        server: ModbusSimServer,
        params: PcsParams,
        clock: Clock,
        faults: Faults | None = None,
    ):
        self.model = model
        self.server = server
        self.p = params
        self.clock = clock
        self.faults = faults if faults is not None else server.faults
        self.command_mw = 0.0  # after the ramp, what the power stage is told
        self._deadline: float | None = None  # clock.monotonic() when the setpoint reverts
        self.reversions = 0
        self._hb_t0 = clock.monotonic()
        self._unpublished = False  # a physics step ran since the registers were last laid
        server.refresh = self.refresh
        server.on_write = self.on_write
        self._init_registers()

    def _init_registers(self) -> None:
        s = self.server
        s.update(SCALE_FACTORS)
        rated_w = self.p.rated_power_mw * 1e6
        s.update(
            {
                "1.Mn": "Phoenyra",
                "1.Md": "BESS-SIM-PCS",
                "1.Opt": "simulator",
                "1.Vr": "1.0",
                "1.SN": self.p.serial,
                "1.DA": s.unit_id,
                "701.ACType": 2,
                "701.ConnSt": CONNST_CONNECTED,
                "701.Alrm": 0,
                "701.DERMode": 0,
                "701.ThrotPct": 0,
                "701.ThrotSrc": 0,
                "704.WMaxLimPctEna": DISABLED,
                "704.WMaxLimPct": 100.0,
                "704.WMaxLimPctRvrt": 100.0,
                "704.WMaxLimPctEnaRvrt": DISABLED,
                "704.WMaxLimPctRvrtTms": 0,
                "704.WMaxLimPctRvrtRem": 0,
                "704.WSetEna": DISABLED,
                "704.WSetMod": WSETMOD_WATTS,
                "704.WSet": 0,
                "704.WSetRvrt": 0,
                "704.WSetPct": 0.0,
                "704.WSetPctRvrt": 0.0,
                "704.WSetEnaRvrt": ENABLED,
                "704.WSetRvrtTms": round(self.p.reversion_timeout_s),
                "704.WSetRvrtRem": round(self.p.reversion_timeout_s),
                "704.VarSetEna": DISABLED,
                "704.VarSetMod": 0,
                "704.VarSetPri": 0,
                "704.VarSet": 0,
                "704.WRmp": min(65535, round(100.0 * self.p.ramp_mw_per_s / self.p.rated_power_mw)),
                "704.WRmpRef": 0,
                "713.WHRtg": self.model.p.capacity_mwh * 1e6,
                "802.AHRtg": self.model.p.capacity_mwh * 1e6 / self._nominal_dc_v(),
                "802.WHRtg": self.model.p.capacity_mwh * 1e6,
                "802.WChaRteMax": rated_w,
                "802.WDisChaRteMax": rated_w,
                "802.DisChaRte": self.model.p.self_discharge_pct_per_day,
                "802.SoCMax": 100.0,
                "802.SoCMin": 0.0,
                "802.SocRsvMax": 100.0,
                "802.SoCRsvMin": 0.0,
                "802.LocRemCtl": 0,
                "802.CtrlHb": 0,
                "802.AlmRst": 0,
                "802.Typ": 4,
                "802.Evt2": 0,
                "802.EvtVnd1": 0,
                "802.EvtVnd2": 0,
                "802.ReqInvState": 0,
                "802.SetOp": 1,
                "802.SetInvState": 3,
                "802.NCyc": 0,
            }
        )
        self.publish()

    def _nominal_dc_v(self) -> float:
        mp = self.model.p
        return mp.cells_in_series * (mp.cell_v_empty + mp.cell_v_full) / 2

    # --- writes ---------------------------------------------------------------------------------------------

    def on_write(self, changes: dict[str, Value]) -> int | None:
        """Validate a client's write (exception 03 if out of range), then react: a new setpoint, heartbeat or
        reversion time restarts the reversion timer."""
        rated_w = self.p.rated_power_mw * 1e6
        for ref, v in changes.items():
            point = self.server.layout.point(ref)
            if v is None:
                return ILLEGAL_VALUE  # a client may not write "not implemented"
            if point.symbols and v not in {val for _, val in point.symbols}:
                return ILLEGAL_VALUE
            if ref in ("704.WSet", "704.WSetRvrt") and abs(v) > rated_w:
                return ILLEGAL_VALUE
            if ref in ("704.WSetPct", "704.WSetPctRvrt") and abs(v) > 100:
                return ILLEGAL_VALUE
            if ref in ("704.WMaxLimPct", "704.WMaxLimPctRvrt") and not 0 <= v <= 100:
                return ILLEGAL_VALUE
            if ref.endswith("RvrtTms") and not 0 <= v <= 86400:
                return ILLEGAL_VALUE
        if {"704.WSet", "704.WSetPct", "802.CtrlHb", "704.WSetRvrtTms", "704.WSetEna"} & changes.keys():
            tms = changes.get("704.WSetRvrtTms", self.server.get("704.WSetRvrtTms")) or 0
            self._deadline = self.clock.monotonic() + tms if tms > 0 else None
        if "704.WSet" in changes:
            log.debug("setpoint written", extra={"wset_w": changes["704.WSet"]})
        return None

    # --- behaviour ------------------------------------------------------------------------------------------

    def target_mw(self) -> float:
        """What the PCS aims for now: the enabled setpoint within its ratings, the W limit and the BMS limits;
        0 when disabled or faulted."""
        s, m = self.server, self.model
        if m.fault_bits or self.faults.fault_bits or s.get("704.WSetEna") != ENABLED:
            return 0.0
        rated = self.p.rated_power_mw
        if s.get("704.WSetMod") == WSETMOD_PCT:
            target = (s.get("704.WSetPct") or 0.0) * rated / 100.0
        else:
            target = (s.get("704.WSet") or 0.0) * 1e-6
        cap = rated
        if s.get("704.WMaxLimPctEna") == ENABLED:
            cap = min(cap, (s.get("704.WMaxLimPct") or 0.0) * rated / 100.0)
        # a PCS obeys its BMS's current limits whatever it is told
        return max(-min(cap, m.allowed_charge_mw), min(target, cap, m.allowed_discharge_mw))

    def step(self, dt_s: float) -> float:
        """Advance dt_s clock seconds: reversion timer, ramp, battery; returns the delivered power (MW)."""
        s = self.server
        now = self.clock.monotonic()
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            self.reversions += 1
            fallback = s.get("704.WSetRvrt") if s.get("704.WSetEnaRvrt") == ENABLED else 0
            s.set("704.WSet", fallback or 0)
            s.set("704.WSetPct", 0.0)
            log.warning(
                "PCS reversion: no setpoint or heartbeat within WSetRvrtTms",
                extra={"timeout_s": s.get("704.WSetRvrtTms"), "fallback_w": fallback or 0},
            )
        target = self.target_mw()
        wrmp = s.get("704.WRmp")
        ramp = self.p.ramp_mw_per_s if wrmp is None else max(wrmp, 1) * self.p.rated_power_mw / 100.0
        step = ramp * dt_s
        if self.model.fault_bits or self.faults.fault_bits:
            self.command_mw = 0.0  # a trip is not ramped
        elif abs(target - self.command_mw) <= step:
            self.command_mw = target
        else:
            self.command_mw += math.copysign(step, target - self.command_mw)
        self.model.step(self.command_mw, dt_s)
        self._unpublished = True  # laid when a client next asks (refresh): 20 steps a second, a read or two
        return self.model.power_mw

    def refresh(self) -> None:
        """The registers brought up to the model's latest step (the server calls this before every access)."""
        if self._unpublished:
            self._unpublished = False
            self.publish()

    def publish(self) -> None:
        """Lay the measurements and states into the registers, model by model."""
        m = self.model
        faulted = bool(m.fault_bits or self.faults.fault_bits)
        alarms = m.alarm_bits | self.faults.alarm_bits
        self.server.update(
            {
                **self._inverter_points(faulted, alarms),
                "704.WSetRvrtRem": math.ceil(self._reversion_remaining_s()),
                "713.WHAvail": m.energy_mwh * 1e6 * m.p.soh_pct / 100.0,
                "713.SoC": m.soc_pct,
                "713.SoH": m.p.soh_pct,
                "713.Sta": STA_ERROR if faulted else STA_WARNING if alarms else STA_OK,
                **self._battery_points(faulted, alarms),
            }
        )

    def _reversion_remaining_s(self) -> float:
        """What 704.WSetRvrtRem shows: before the first write the full time, after a reversion none."""
        if self._deadline is not None:
            return max(0.0, self._deadline - self.clock.monotonic())
        return 0.0 if self.reversions else (self.server.get("704.WSetRvrtTms") or 0)

    def _inverter_points(self, faulted: bool, alarms: int) -> dict[str, float]:
        """Model 701 (DER AC measurement): state, alarms, power, currents, voltages, energy counters."""
        m, p = self.model, self.p
        w = m.power_mw * 1e6
        running = abs(w) > 0.5
        throttled = abs(self.target_mw() - self.requested_mw()) > 1e-6 and not faulted
        alrm = (
            (ALRM_OVER_TEMP if alarms & ALARM_OVER_TEMPERATURE else 0)
            | (ALRM_UNDER_TEMP if alarms & ALARM_UNDER_TEMPERATURE else 0)
            | (ALRM_MANUFACTURER if self.faults.alarm_bits or faulted else 0)
        )
        amps = abs(w) / (math.sqrt(3) * p.line_voltage_v)
        return {
            "701.St": ST_ON if running else ST_OFF,
            "701.InvSt": INVST_FAULT
            if faulted
            else INVST_THROTTLED
            if throttled and running
            else INVST_RUNNING
            if running
            else INVST_STANDBY,
            "701.ConnSt": CONNST_DISCONNECTED if faulted else CONNST_CONNECTED,
            "701.Alrm": alrm,
            "701.W": w,
            "701.VA": abs(w),
            "701.Var": 0,
            "701.PF": math.copysign(1.0, w) if running else 1.0,
            "701.A": amps,
            "701.LLV": p.line_voltage_v,
            "701.LNV": p.line_voltage_v / math.sqrt(3),
            "701.Hz": p.frequency_hz,
            "701.TotWhInj": m.discharged_mwh * 1e6,
            "701.TotWhAbs": m.charged_mwh * 1e6,
            "701.TotVarhInj": 0,
            "701.TotVarhAbs": 0,
            "701.TmpAmb": m.p.ambient_c,
            "701.TmpCab": m.p.ambient_c + 5.0 + 0.5 * abs(m.power_mw),
            "701.WL1": w / 3,
            "701.WL2": w / 3,
            "701.WL3": w / 3,
            "701.AL1": amps,
            "701.AL2": amps,
            "701.AL3": amps,
            "701.VL1L2": p.line_voltage_v,
            "701.VL2L3": p.line_voltage_v,
            "701.VL3L1": p.line_voltage_v,
        }

    def _battery_points(self, faulted: bool, alarms: int) -> dict[str, float]:
        """Model 802 (battery base): charge state, events, heartbeat, voltages, currents, allowed currents."""
        m = self.model
        w = m.power_mw * 1e6
        readings = m.readings()
        soc = m.soc_pct
        cha_st = (
            CHAST_FULL
            if soc >= 99.5
            else CHAST_EMPTY
            if soc <= 0.5
            else CHAST_DISCHARGING
            if w > 0.5
            else CHAST_CHARGING
            if w < -0.5
            else CHAST_HOLDING
        )
        evt1 = (
            (EVT1_OVER_TEMP_ALARM if alarms & ALARM_OVER_TEMPERATURE else 0)
            | (EVT1_UNDER_TEMP_ALARM if alarms & ALARM_UNDER_TEMPERATURE else 0)
            | (EVT1_UNDER_SOC_MIN_ALARM if alarms & ALARM_SOC_LOW else 0)
            | (EVT1_OVER_SOC_MAX_ALARM if alarms & ALARM_SOC_HIGH else 0)
        )
        return {
            "802.SoC": soc,
            "802.DoD": 100.0 - soc,
            "802.SoH": m.p.soh_pct,
            "802.ChaSt": cha_st,
            "802.Hb": int(self.clock.monotonic() - self._hb_t0) % 65536,
            "802.State": STATE_FAULT if faulted else STATE_CONNECTED,
            "802.Evt1": evt1,
            "802.V": readings["voltage_v"],
            "802.VMax": readings["voltage_v"],
            "802.VMin": readings["voltage_v"],
            "802.CellVMax": readings["cell_voltage_max_v"],
            "802.CellVMin": readings["cell_voltage_min_v"],
            "802.CellVAvg": m.cell_voltage_v,
            "802.A": readings["current_a"],
            "802.W": readings["dc_power_mw"] * 1e6,
            "802.AChaMax": m.allowed_charge_mw * 1e6 / readings["voltage_v"],
            "802.ADisChaMax": m.allowed_discharge_mw * 1e6 / readings["voltage_v"],
        }

    def requested_mw(self) -> float:
        """The setpoint as written (before ratings and BMS limits), 0 when disabled."""
        s = self.server
        if s.get("704.WSetEna") != ENABLED:
            return 0.0
        if s.get("704.WSetMod") == WSETMOD_PCT:
            return (s.get("704.WSetPct") or 0.0) * self.p.rated_power_mw / 100.0
        return (s.get("704.WSet") or 0.0) * 1e-6

    @property
    def reversion_remaining_s(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - self.clock.monotonic())
