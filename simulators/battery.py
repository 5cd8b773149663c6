"""One battery model behind every simulator face: energy with efficiencies and self-discharge, a first-order
thermal model, BMS-allowed power that tapers near the SoC ends and with temperature, alarm bits at hard limits.

Power at the terminals in MW, positive = discharge. Pure arithmetic; time (dt) is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# alarm bits (BMS register `alarm_bits`)
ALARM_SOC_HIGH = 1 << 0
ALARM_SOC_LOW = 1 << 1
ALARM_OVER_TEMPERATURE = 1 << 2
ALARM_UNDER_TEMPERATURE = 1 << 3
ALARM_INJECTED = 1 << 15
ALARM_NAMES = {
    ALARM_SOC_HIGH: "soc_high",
    ALARM_SOC_LOW: "soc_low",
    ALARM_OVER_TEMPERATURE: "over_temperature",
    ALARM_UNDER_TEMPERATURE: "under_temperature",
    ALARM_INJECTED: "injected",
}


def alarm_names(bits: int) -> list[str]:
    return [name for bit, name in ALARM_NAMES.items() if bits & bit]


@dataclass
class BatteryParams:
    capacity_mwh: float = 20.0
    rated_power_mw: float = 10.0
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    self_discharge_pct_per_day: float = 0.5
    ambient_c: float = 25.0
    thermal_time_constant_s: float = 1800.0
    heating_c_per_mw: float = 2.0
    soc_taper_pct: float = 5.0  # BMS tapers allowed power inside this band at either end
    t_derate_c: float = 48.0  # BMS derate starts a little above the controller's default
    t_max_c: float = 58.0
    t_min_charge_c: float = 0.0
    t_alarm_c: float = 60.0
    # what the BMS reports besides energy and temperature (DC side, cells)
    soh_pct: float = 98.0
    cells_in_series: int = 300
    cell_v_empty: float = 3.0  # open-circuit cell voltage at 0 % and 100 % SoC (linear between)
    cell_v_full: float = 4.15
    cell_v_spread: float = 0.01  # highest/lowest cell this far from the mean
    cell_t_spread_c: float = 2.0  # coolest cell this far below the hottest


class BatteryModel:
    """State: stored energy and cell temperature. `step` advances it by dt seconds at a terminal power."""

    def __init__(self, params: BatteryParams, soc_pct: float = 50.0, temperature_c: float | None = None):
        self.p = params
        self.energy_mwh = params.capacity_mwh * soc_pct / 100.0
        self.temperature_c = params.ambient_c if temperature_c is None else temperature_c
        self.power_mw = 0.0
        self.injected_alarm_bits = 0
        self.injected_fault_bits = 0  # any bit set = BMS fault: contactors open, no power either way
        # energy accounting, so conservation can be checked: e0 + charged - discharged - losses - self = e
        self.charged_mwh = 0.0  # taken from the grid
        self.discharged_mwh = 0.0  # delivered to the grid
        self.loss_mwh = 0.0  # conversion losses
        self.self_discharge_mwh = 0.0

    @property
    def soc_pct(self) -> float:
        # clamped: 100 * E / C can round to 100.00000000000001 when E == C
        return min(100.0, max(0.0, 100.0 * self.energy_mwh / self.p.capacity_mwh))

    def set_state(self, soc_pct: float | None = None, temperature_c: float | None = None) -> None:
        """Force the state (demo telemetry control, tests). Resets nothing else."""
        if soc_pct is not None:
            self.energy_mwh = self.p.capacity_mwh * min(100.0, max(0.0, soc_pct)) / 100.0
        if temperature_c is not None:
            self.temperature_c = temperature_c

    def _taper(self, x: float, start: float, end: float) -> float:
        """1 at or before `start`, 0 at or beyond `end`, linear between (start/end may be in either order)."""
        if start == end:
            return 0.0 if (x >= end if end >= start else x <= end) else 1.0
        if abs(x - end) <= 1e-9 * max(1.0, abs(end)):  # SoC through energy and back: 100 % may read 99.99999999999999
            return 0.0
        f = (end - x) / (end - start)
        return min(1.0, max(0.0, f))

    @property
    def fault_bits(self) -> int:
        return self.injected_fault_bits

    @property
    def allowed_discharge_mw(self) -> float:
        p = self.p
        if self.fault_bits:
            return 0.0
        soc_f = self._taper(self.soc_pct, p.soc_taper_pct, 0.0)
        t_f = self._taper(self.temperature_c, p.t_derate_c, p.t_max_c)
        return p.rated_power_mw * soc_f * t_f

    @property
    def allowed_charge_mw(self) -> float:
        p = self.p
        if self.fault_bits:
            return 0.0
        soc_f = self._taper(self.soc_pct, 100.0 - p.soc_taper_pct, 100.0)
        t_f = self._taper(self.temperature_c, p.t_derate_c, p.t_max_c)
        cold = 0.0 if self.temperature_c < p.t_min_charge_c else 1.0
        return p.rated_power_mw * soc_f * t_f * cold

    @property
    def alarm_bits(self) -> int:
        bits = self.injected_alarm_bits
        if self.soc_pct >= 99.5:
            bits |= ALARM_SOC_HIGH
        if self.soc_pct <= 0.5:
            bits |= ALARM_SOC_LOW
        if self.temperature_c >= self.p.t_alarm_c:
            bits |= ALARM_OVER_TEMPERATURE
        if self.temperature_c < self.p.t_min_charge_c - 10:
            bits |= ALARM_UNDER_TEMPERATURE
        return bits

    def step(self, power_mw: float, dt_s: float) -> float:
        """Run at `power_mw` for dt_s seconds; returns the power actually delivered (an empty or full
        battery delivers less). Energy is conserved exactly in the accounting fields."""
        hours = dt_s / 3600.0
        if not hours > 0:  # dt <= 0, or so small that it underflows: nothing happens
            return self.power_mw
        p = self.p
        if self.fault_bits:  # contactors open
            power_mw = 0.0
        # self-discharge first: a fraction of the stored energy per day
        sd = self.energy_mwh * (p.self_discharge_pct_per_day / 100.0) * (dt_s / 86400.0)
        self.energy_mwh -= sd
        self.self_discharge_mwh += sd
        if power_mw > 0:  # discharge: the cells give P/eta
            want_cells = power_mw / p.discharge_efficiency * hours
            cells = min(want_cells, self.energy_mwh)
            grid = cells * p.discharge_efficiency
            self.energy_mwh -= cells
            self.discharged_mwh += grid
            self.loss_mwh += cells - grid
            actual = min(power_mw, grid / hours)  # min: grid / hours can round above P for tiny dt
        elif power_mw < 0:  # charge: the cells get |P|*eta
            room = p.capacity_mwh - self.energy_mwh
            want_grid = -power_mw * hours
            grid = min(want_grid, room / p.charge_efficiency)
            cells = grid * p.charge_efficiency
            self.energy_mwh += cells
            self.charged_mwh += grid
            self.loss_mwh += grid - cells
            actual = -min(-power_mw, grid / hours)
        else:
            actual = 0.0
        self.energy_mwh = min(p.capacity_mwh, max(0.0, self.energy_mwh))
        # first-order thermal model: heads for ambient + k*|P| with time constant tau (exact solution)
        t_ss = p.ambient_c + p.heating_c_per_mw * abs(actual)
        self.temperature_c = t_ss + (self.temperature_c - t_ss) * math.exp(-dt_s / p.thermal_time_constant_s)
        self.power_mw = actual
        return actual

    @property
    def cell_voltage_v(self) -> float:
        p = self.p
        return p.cell_v_empty + (p.cell_v_full - p.cell_v_empty) * self.soc_pct / 100.0

    @property
    def dc_power_mw(self) -> float:
        """Power at the cells, + discharge: the terminal power plus (discharging) or minus (charging) losses."""
        if self.power_mw > 0:
            return self.power_mw / self.p.discharge_efficiency
        return self.power_mw * self.p.charge_efficiency

    def readings(self) -> dict[str, float | int]:
        """What a BMS reports, by the profiles' canonical point names and units (every BMS face serves these)."""
        p = self.p
        cell_v = self.cell_voltage_v
        voltage_v = cell_v * p.cells_in_series
        dc_mw = self.dc_power_mw
        return {
            "soc_pct": self.soc_pct,
            "soh_pct": p.soh_pct,
            "voltage_v": voltage_v,
            "current_a": dc_mw * 1e6 / voltage_v,
            "temperature_max_c": self.temperature_c,
            "temperature_min_c": self.temperature_c - p.cell_t_spread_c,
            "allowed_charge_mw": self.allowed_charge_mw,
            "allowed_discharge_mw": self.allowed_discharge_mw,
            "dc_power_mw": dc_mw,
            "alarm_bits": self.alarm_bits,
            "fault_bits": self.fault_bits,
            "energy_mwh": self.energy_mwh,
            "cell_voltage_max_v": cell_v + p.cell_v_spread,
            "cell_voltage_min_v": cell_v - p.cell_v_spread,
        }
