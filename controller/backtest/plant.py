"""The plant in the backtest: the simulators' battery model behind the real limit function, delivering each
period's position in steps; what it could not deliver is the imbalance of that period."""

from __future__ import annotations

from controller.config import SiteConfig
from controller.cycle.limits import limit
from controller.cycle.snapshot import Snapshot
from simulators.battery import BatteryModel, BatteryParams


class Plant:
    def __init__(self, cfg: SiteConfig, soc_pct: float):
        lim, bat = cfg.limits, cfg.battery
        self.limits = lim
        self.battery = BatteryModel(
            BatteryParams(
                capacity_mwh=bat.capacity_mwh,
                rated_power_mw=max(lim.p_charge_max_mw, lim.p_discharge_max_mw),
                charge_efficiency=bat.charge_efficiency,
                discharge_efficiency=bat.discharge_efficiency,
                self_discharge_pct_per_day=bat.self_discharge_pct_per_day,
            ),
            soc_pct=soc_pct,
        )
        self.energy_start_mwh = self.battery.energy_mwh
        self.previous_mw = 0.0
        self.deviation_mwh: dict[float, float] = {}  # period start -> position - delivered (MWh; + = short)

    @property
    def soc_pct(self) -> float:
        return self.battery.soc_pct

    @property
    def throughput_mwh(self) -> float:
        """Energy through the grid side: charged plus discharged."""
        return self.battery.charged_mwh + self.battery.discharged_mwh

    def deliver(self, position_mw: float, period: float, now: float, dt_s: float) -> None:
        """Run `dt_s` seconds toward `position_mw` through limit() (SoC, taper, BMS power; safe state never
        arises: readings are always fresh here)."""
        r = self.battery.readings()
        snap = Snapshot(
            ts=now,
            soc_pct=r["soc_pct"],
            power_mw=self.battery.power_mw,
            temperature_max_c=r["temperature_max_c"],
            temperature_min_c=r["temperature_min_c"],
            bms_allowed_charge_mw=r["allowed_charge_mw"],
            bms_allowed_discharge_mw=r["allowed_discharge_mw"],
        )
        setpoint = limit(position_mw, snap, self.limits, self.previous_mw, dt_s).setpoint_mw
        actual = self.battery.step(setpoint, dt_s)
        self.previous_mw = actual
        dev = (position_mw - actual) * dt_s / 3600.0
        if abs(dev) > 1e-12:
            self.deviation_mwh[period] = self.deviation_mwh.get(period, 0.0) + dev
