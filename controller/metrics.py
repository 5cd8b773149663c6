"""Prometheus metrics of the controller: a projection of each cycle's PlantState (never from devices), attached
to the cycle's AFTER_WRITE phase, and of every accepted trade (Event.TRADE_ACCEPTED), by the daemon.

Names follow Prometheus conventions: base units in names (`_mw`, `_pct`, `_celsius`, `_seconds`), `_total`
for counters. The web app mounts `registry` at /metrics and adds HTTP request durations to it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.cycle.limits import BINDINGS
from controller.cycle.mode import MODES
from controller.cycle.state import PlantState


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.uplink: Any = None
        self._plant_gauges(r)
        self._cycle_metrics(r)
        self._device_metrics(r)
        self._trading_metrics(r)
        self._uplink_gauges(r)
        self._unit_and_poi_gauges(r)
        self._afrr_gauges(r)
        self._cycles_seen = 0
        self._overruns_seen = 0
        self._errors_seen: dict[str, int] = {}

    def _plant_gauges(self, r: CollectorRegistry) -> None:
        """The plant as one battery: what `_plant` sets from each cycle's PlantState."""
        self.soc = Gauge("bess_soc_pct", "State of charge (%)", registry=r)
        self.power = Gauge("bess_power_mw", "Active power at the PCS (MW, + discharge)", registry=r)
        self.setpoint = Gauge("bess_setpoint_mw", "Setpoint written to the PCS (MW, + discharge)", registry=r)
        self.target = Gauge("bess_target_mw", "Target before limits (MW, + discharge)", registry=r)
        self.temperature = Gauge("bess_temperature_celsius", "Highest cell temperature (°C)", registry=r)
        self.allowed_charge = Gauge("bess_bms_allowed_charge_mw", "Charge power the BMS allows (MW)", registry=r)
        self.allowed_discharge = Gauge(
            "bess_bms_allowed_discharge_mw", "Discharge power the BMS allows (MW)", registry=r
        )
        self.mode = Gauge("bess_mode", "Operating mode (1 for the active one)", ["mode"], registry=r)
        self.binding = Gauge(
            "bess_binding_limit", "Limit that bound the setpoint (1 for the active one)", ["limit"], registry=r
        )
        self.online = Gauge("bess_online", "1 when every device has fresh readings", registry=r)
        self.alarms = Gauge("bess_alarms_active", "Active alarms", registry=r)
        for m in MODES:
            self.mode.labels(m).set(0)
        for b in BINDINGS:
            self.binding.labels(b).set(0)

    def _cycle_metrics(self, r: CollectorRegistry) -> None:
        """The cycle's rhythm, and the event loop's task count beside it."""
        self.cycle_duration = Histogram(
            "bess_cycle_duration_seconds",
            "Control cycle duration (poll + decide + write + record)",
            buckets=(0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.cycle_p99 = Gauge("bess_cycle_duration_p99_seconds", "p99 of the last 4096 cycle durations", registry=r)
        self.cycles = Counter("bess_cycles_total", "Control cycles run", registry=r)
        self.overruns = Counter("bess_cycle_overruns_total", "Cycles that overran their period", registry=r)
        # a leak of tasks (a face that spawns one per client or per reconnect and never ends it) shows here first;
        # bench/soak.py samples it beside RSS, fds and threads
        self.asyncio_tasks = Gauge("bess_asyncio_tasks", "Tasks alive on the controller's event loop", registry=r)

    def _device_metrics(self, r: CollectorRegistry) -> None:
        """Per device link (label `device`): freshness, latency and errors."""
        self.telemetry_age = Gauge(
            "bess_telemetry_age_seconds", "Age of the oldest device's last good reading", registry=r
        )
        self.device_latency = Gauge(
            "bess_device_request_duration_seconds", "Last full read of a device", ["device"], registry=r
        )
        self.device_errors = Counter("bess_device_errors_total", "Failed device reads/writes", ["device"], registry=r)
        self.device_up = Gauge(
            "bess_device_up", "1 when the device answers and its readings are fresh", ["device"], registry=r
        )

    def _trading_metrics(self, r: CollectorRegistry) -> None:
        self.orders = Counter("bess_orders_total", "Orders sent to the exchange", ["side", "result"], registry=r)
        self.trades = Counter("bess_trades_total", "Executed trades accepted", ["side"], registry=r)
        self.traded_volume = Counter("bess_traded_energy_mwh_total", "Traded energy (MWh)", ["side"], registry=r)
        self.pnl = Gauge("bess_pnl_eur", "Profit and loss (EUR)", ["kind"], registry=r)
        # the auto-trader (issue 14): its plan, and its orders by result (placed, refused, cancelled) and reason
        self.plan_objective = Gauge("bess_plan_objective_eur", "The last plan's objective (EUR)", registry=r)
        self.plan_solve = Gauge("bess_plan_solve_seconds", "The last plan's solve time", registry=r)
        self.plan_restore = Gauge(
            "bess_plan_reserve_restore_periods",
            "Periods of the last plan that bring the SoC back into the FCR reserve band (the SoC window)",
            registry=r,
        )
        self.auto_orders = Counter(
            "bess_auto_orders_total", "The auto-trader's orders by result and reason", ["result", "reason"], registry=r
        )
        self.pnl_day = Gauge(
            "bess_pnl_realised_day_eur",
            "Cash of the trades delivered per UTC day (today, yesterday)",
            ["day"],
            registry=r,
        )

    def _uplink_gauges(self, r: CollectorRegistry) -> None:
        self.outbox_depth = Gauge("bess_mqtt_outbox_depth", "Telemetry messages waiting in the outbox", registry=r)
        self.outbox_dropped = Gauge(
            "bess_mqtt_outbox_dropped", "Telemetry messages dropped by the outbox bound (since install)", registry=r
        )
        self.mqtt_connected = Gauge("bess_mqtt_connected", "1 when connected to the broker", registry=r)

    def _afrr_gauges(self, r: CollectorRegistry) -> None:
        """aFRR setpoints over IEC 104 (issue 15): NaN on a site without the IEC 104 face, like the POI gauges."""
        self.afrr_setpoint = Gauge("bess_afrr_setpoint_mw", "The last aFRR setpoint taken (MW, + up)", registry=r)
        self.afrr_active = Gauge("bess_afrr_active_mw", "The aFRR part of the target now (MW, + up)", registry=r)
        self.afrr_timed_out = Gauge(
            "bess_afrr_setpoint_timeout", "1 while aFRR setpoints have stopped coming (part back to 0)", registry=r
        )
        for g in (self.afrr_setpoint, self.afrr_active, self.afrr_timed_out):
            g.set(float("nan"))

    def _unit_and_poi_gauges(self, r: CollectorRegistry) -> None:
        """Per unit (label `unit`, the site file's unit names) and at the POI."""
        self.unit_soc = Gauge("bess_unit_soc_pct", "A unit's state of charge (%)", ["unit"], registry=r)
        self.unit_power = Gauge(
            "bess_unit_power_mw", "Active power at a unit's PCS (MW, + discharge)", ["unit"], registry=r
        )
        self.unit_setpoint = Gauge(
            "bess_unit_setpoint_mw", "Setpoint written to a unit's PCS (MW, + discharge)", ["unit"], registry=r
        )
        self.unit_temperature = Gauge(
            "bess_unit_temperature_celsius", "A unit's highest cell temperature (°C)", ["unit"], registry=r
        )
        self.unit_available = Gauge(
            "bess_unit_available", "1 when the unit takes setpoints (0: safe state, 0 MW)", ["unit"], registry=r
        )
        self.poi_power = Gauge("bess_poi_power_mw", "Measured active power at the POI (MW, + export)", registry=r)
        self.poi_frequency = Gauge("bess_poi_frequency_hz", "Grid frequency measured at the POI (Hz)", registry=r)
        self.poi_up = Gauge(
            "bess_poi_meter_up",
            "1 when the POI meter gives a power reading, 0 when it is lost, NaN on a site without a meter",
            registry=r,
        )
        # NaN until a cycle carries the meter: an unlabelled gauge would read 0, and "meter up == 0" would alert on
        # every site without a meter (NaN == 0 is false)
        for g in (self.poi_power, self.poi_frequency, self.poi_up):
            g.set(float("nan"))
        self._has_meter = False
        # grid service FCR (issue 15): NaN on a site that offers none, like the POI gauges
        self.fcr_enabled = Gauge("bess_fcr_enabled", "1 when FCR is on, 0 when off", registry=r)
        self.fcr_frequency = Gauge("bess_fcr_frequency_hz", "The POI frequency FCR follows (Hz)", registry=r)
        self.fcr_contribution = Gauge(
            "bess_fcr_contribution_mw", "Power FCR asks for now (MW, + discharge)", registry=r
        )
        self.fcr_compliance = Gauge(
            "bess_fcr_compliance_ratio", "Share of recorded seconds with delivered FCR within tolerance", registry=r
        )
        self.fcr_reserve_held = Gauge("bess_fcr_reserve_held", "1 while the SoC holds the FCR reserve", registry=r)
        self.fcr_fast_writes = Counter(
            "bess_fcr_fast_path_writes_total", "Setpoints the FCR fast path wrote between cycles", registry=r
        )
        self.fcr_fast_errors = Counter(
            "bess_fcr_fast_path_errors_total",
            "FCR fast-path rounds that failed (the POI meter did not answer, or the round raised)",
            registry=r,
        )
        for g in (self.fcr_enabled, self.fcr_frequency, self.fcr_contribution, self.fcr_compliance):
            g.set(float("nan"))
        self.fcr_reserve_held.set(float("nan"))
        self._fast_writes_seen = 0
        self._fast_errors_seen = 0

    def on_trade(self, trade) -> None:
        self.trades.labels(trade.side).inc()
        hours = (trade.end_ts - trade.start_ts) / 3600.0
        self.traded_volume.labels(trade.side).inc(trade.quantity_mw * hours)

    def on_plan(self, plan) -> None:
        """The auto-trader's plan (controller.trading.optimiser.Plan): objective, solve time, periods restoring."""
        self.plan_objective.set(plan.objective_eur if plan.ok else float("nan"))
        self.plan_solve.set(plan.solve_ms / 1000.0)
        self.plan_restore.set(sum(1 for p in plan.periods if p.restore_direction))

    def on_pnl(self, by_day: list[dict], today: str, yesterday: str) -> None:
        """Realised PnL per day (controller.trading.auto.realised_pnl_by_day) of `today` and `yesterday`
        (YYYY-MM-DD, UTC); 0 for a day without delivered trades."""
        got = {row["day"]: row["pnl_eur"] for row in by_day}
        self.pnl_day.labels("today").set(got.get(today, 0.0))
        self.pnl_day.labels("yesterday").set(got.get(yesterday, 0.0))

    def _count_tasks(self) -> None:
        """asyncio.all_tasks() reads the running loop's task set, so it must run on the loop: on_cycle does."""
        try:
            self.asyncio_tasks.set(len(asyncio.all_tasks()))
        except RuntimeError:  # no running loop (a test calling on_cycle by hand): leave the gauge as it was
            pass

    def on_cycle(self, state: PlantState) -> None:
        """An AFTER_WRITE callback: the gauges and counters of the cycle that just ended."""
        if not state.has_cycle:
            return
        self._plant(state)
        self._units(state)
        self._fcr(state)
        self._afrr(state)
        self.alarms.set(len(state.alarms))
        ages = [state.ts - h.last_good_ts for h in state.devices if h.last_good_ts is not None]
        self.telemetry_age.set(max(ages) if ages and len(ages) == len(state.devices) else float("inf"))
        self.cycle_duration.observe(state.last_duration_s)
        self._count_tasks()
        if state.cycle_p99_s is not None:
            self.cycle_p99.set(state.cycle_p99_s)
        self.cycles.inc(state.cycles - self._cycles_seen)
        self._cycles_seen = state.cycles
        self.overruns.inc(state.overruns - self._overruns_seen)
        self._overruns_seen = state.overruns
        for link in state.links:
            self.device_latency.labels(link.name).set(link.request_latency_s)
            seen = self._errors_seen.get(link.name, 0)
            self.device_errors.labels(link.name).inc(link.errors_total - seen)
            self._errors_seen[link.name] = link.errors_total
        for h in state.devices:
            self.device_up.labels(h.name).set(0 if h.stale else 1)
        if self.uplink is not None:
            st = self.uplink.stats
            self.outbox_depth.set(st.get("outbox_depth", 0))
            self.outbox_dropped.set(st.get("outbox_dropped", 0))
            self.mqtt_connected.set(1 if self.uplink.connected else 0)

    def _units(self, state: PlantState) -> None:
        nan = float("nan")
        for u in state.units:
            for g, v in (
                (self.unit_soc, u.soc_pct),
                (self.unit_power, u.power_mw),
                (self.unit_setpoint, u.setpoint_mw),
                (self.unit_temperature, u.temperature_c),
            ):
                g.labels(u.unit).set(nan if v is None else v)
            self.unit_available.labels(u.unit).set(1 if u.available else 0)
        poi = state.poi
        if poi is None and not self._has_meter:
            return  # no meter: the POI gauges stay NaN
        self._has_meter = True
        power = poi.power_mw if poi is not None else None
        freq = poi.frequency_hz if poi is not None else None
        self.poi_power.set(nan if power is None else power)
        self.poi_frequency.set(nan if freq is None else freq)
        self.poi_up.set(0 if power is None else 1)

    def _fcr(self, state: PlantState) -> None:
        f = state.fcr
        if f is None:
            return
        nan = float("nan")
        self.fcr_enabled.set(1 if f.enabled else 0)
        self.fcr_frequency.set(nan if f.frequency_hz is None else f.frequency_hz)
        self.fcr_contribution.set(f.required_mw)
        self.fcr_compliance.set(nan if f.compliance_pct is None else f.compliance_pct / 100)
        self.fcr_reserve_held.set(1 if f.reserve_held else 0)
        self.fcr_fast_writes.inc(max(f.fast_writes - self._fast_writes_seen, 0))
        self._fast_writes_seen = f.fast_writes
        self.fcr_fast_errors.inc(max(f.fast_errors - self._fast_errors_seen, 0))
        self._fast_errors_seen = f.fast_errors

    def _afrr(self, state: PlantState) -> None:
        a = state.afrr
        if a is None:
            return
        self.afrr_setpoint.set(a.requested_mw if a.received_ts is not None else float("nan"))
        self.afrr_active.set(a.active_mw)
        self.afrr_timed_out.set(1 if a.timed_out else 0)

    def _plant(self, state: PlantState) -> None:
        for g, v in (
            (self.soc, state.soc_pct),
            (self.power, state.power_mw),
            (self.temperature, state.temperature_c),
            (self.allowed_charge, state.bms_allowed_charge_mw),
            (self.allowed_discharge, state.bms_allowed_discharge_mw),
        ):
            g.set(float("nan") if v is None else v)
        self.setpoint.set(state.setpoint_mw)
        self.target.set(state.target_mw)
        for m in MODES:
            self.mode.labels(m).set(1 if state.mode == m else 0)
        for b in BINDINGS:
            self.binding.labels(b).set(1 if state.binding == b else 0)
        self.online.set(1 if state.online else 0)
