"""The control cycle's rhythm: each cycle runs the phases READ (poll → snapshot) → DECIDE (target → limit) →
WRITE (dispatch) → AFTER_WRITE (record, then one frozen PlantState handed to the faces) → IDLE, and the
controller keeps the mode, the schedule and the alarms it needs between cycles. Faces (web, MQTT, SCADA,
metrics) attach to the phases through `faces` (controller.cycle.phases) and call its few entry points
(`accept_trade`, `set_mode`); they never touch devices or its internals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from controller.clock import Clock
from controller.config import SiteConfig
from controller.cycle.alarms import CYCLE_FAILED, SCHEDULE_INFEASIBLE, Alarms, service_key
from controller.cycle.allocation import Allocation, PlantView, UnitView, allocate, unit_limits
from controller.cycle.delivery import Delivery
from controller.cycle.devices import DeviceSet
from controller.cycle.dispatch import UnitDispatch, write_units
from controller.cycle.jobs import Jobs
from controller.cycle.limits import Decision, limit
from controller.cycle.mode import ModeState, expired, requested, restored
from controller.cycle.phases import Event, Faces, Phase
from controller.cycle.plant import PoiLoop, unit_states
from controller.cycle.snapshot import Snapshot
from controller.cycle.state import LinkFigures, PlantState, UnitState, build, status
from controller.services import afrr as afrr_rules
from controller.services.afrr import AfrrBand, AfrrState
from controller.services.fast import FastPath
from controller.services.records import ProvisionRecorder
from controller.services.reserve import reserved_limits
from controller.services.runtime import FcrService
from controller.services.stack import Stack, stack
from controller.store import Store, StoreError
from controller.systemd import Notifier
from controller.tasks import cancel_and_wait
from controller.trading.intake import (
    Ack,
    load_stored,
    store_trade,
    unanswered_redelivery,
)
from controller.trading.market import PERIOD_S, period_start
from controller.trading.schedule import Schedule, check_feasibility
from drivers.errors import DeviceError

log = logging.getLogger("bess.cycle")

STOP_GRACE_S = 3.0  # on stop, let the running cycle finish this long before cancelling it mid-request
SAFE_WRITE_TIMEOUT_S = 2.0  # a failed cycle's 0 MW write waits at most this long for the PCS
CYCLE_ERROR_ALARM = str(CYCLE_FAILED)  # its string form, as stored
AFRR_TIMEOUT = service_key("afrr_setpoint_timeout")  # no aFRR setpoint for longer than afrr_timeout_s
# The cycle's deadline, in shares of its period (real seconds): reads get READ_SHARE, the writes run until
# DEADLINE_SHARE (at least WRITE_MIN_SHARE); the rest is the CPU's. A device that has not answered by then counts
# a failed read or write at once (see DeviceLink.poll, dispatch.write_units), so a silent or slow device never
# stretches the cycle and never delays another device's dispatch.
READ_SHARE = 0.4  # after the first cycle: each device's own read starts this share of a period before a cycle
DEADLINE_SHARE = 0.8
WRITE_MIN_SHARE = 0.2
# A cycle starting this many periods after the last one follows a stall of the loop: the devices' own reads
# stalled too, so it reads them itself (DeviceSet.catch_up) rather than take readings from before the stall
STALL_PERIODS = 2.5
FAST_MIN_STEP_MW = 1e-3  # the fast path writes only a setpoint that moved at least this (1 kW)
FCR_RESERVE = service_key("fcr_reserve")  # the SoC no longer holds the FCR reserve
FCR_FREQUENCY = service_key("fcr_frequency")  # FCR is on but the POI frequency is unknown


@dataclass
class CycleStats:
    cycles: int = 0
    overruns: int = 0
    good_cycles: int = 0
    last_duration_s: float = 0.0
    durations_s: deque = dataclasses.field(default_factory=lambda: deque(maxlen=4096))
    boundary_wakeups: int = 0
    missed_boundaries: int = 0
    failed_cycles: int = 0  # cycles that raised (each one commanded 0 MW and raised the cycle-error alarm)


class Controller:
    """One plant's controller. Start with `await start()`, stop with `await stop()`."""

    def __init__(
        self,
        config: SiteConfig,
        store: Store,
        clock: Clock | None = None,
        devices: DeviceSet | None = None,
        notifier: Notifier | None = None,
        schedule: Schedule | None = None,
    ):
        self.config = config
        self.store = store
        self.clock = clock or Clock()
        self.devices = devices or DeviceSet(config, self.clock)
        self._unit = config.unit_plan()[0].unit  # a one-unit site's id in status' units
        self.notifier = notifier or Notifier()
        self.schedule = schedule if schedule is not None else Schedule()
        self.mode = ModeState()
        self.stats = CycleStats()
        self.decision: Decision | None = None
        self.snapshot: Snapshot | None = None
        self.alarms = Alarms(store, self.clock)
        # one writer per unit, each through the unit's own limits; the plant's limits apply to their sum
        total_rated_mw = sum(u.rated_mw for u in self.devices.units)
        self.units = [
            UnitDispatch(u, unit_limits(config.limits, u.rated_mw, total_rated_mw), self.alarms)
            for u in self.devices.units
        ]
        self.dispatcher = self.units[0].dispatcher  # a one-unit plant's (of several: the first unit's)
        self.poi = PoiLoop(config, self.devices.meter, self.alarms) if self.devices.meter is not None else None
        self.allocation: Allocation | None = None
        self.unit_snapshots: list[Snapshot] = []
        # the one way faces see the controller: a frozen PlantState per phase, and the accepted-trade event
        self.faces = Faces()
        self._last_cycle_mono: float | None = None
        self._last_cycle_t0: float | None = None  # perf_counter() at the last cycle's start (a stall shows)
        self._started_ts: float = 0.0
        self._deadline = 0.0  # the running cycle's deadline (time.perf_counter())
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        # the scheduler's jobs (period-boundary wake-up, trade pick-up, housekeeping); wake late-bound: tests swap
        # `_wake` for a recording one
        self.jobs = Jobs(
            self.clock,
            store,
            self.schedule,
            self.stats,
            lambda: self._wake.set(),
            config.cycle.decision_retention_days,
            provision_retention_days=config.services.records_retention_days,
        )
        # READY goes to systemd once a cycle has completed and `allow_ready()` was called (the daemon calls it
        # when every face is up; a bare controller has no faces to wait for)
        self._ready_allowed = True
        self._last_cycle_failed = False
        self.delivery = Delivery(self.schedule, store)  # shortfall against the schedule, per period
        # aFRR (issue 15): the grid operator's setpoint over IEC 104, ramped into the target by the cycle
        self._afrr_band = AfrrBand.of(config.scada.iec104)
        self.afrr = AfrrState()
        # grid services (issue 15): FCR's switch, frequency and reserve; its fast path; the provision records
        self.fcr = FcrService(config)
        self._meter = self.devices.meter
        fcr_cfg = config.services.fcr
        self.records = ProvisionRecorder(store, fcr_cfg.tolerance_pct / 100 * fcr_cfg.capacity_mw)
        self.fast_path = (
            FastPath(
                self._read_frequency,
                self.fast_write,
                lambda: self.fcr.enabled,
                config.services.fcr.fast_path_s,
                ramp_left_s=self.fast_ramp_left_s,
            )
            if self._meter is not None and self.fcr.available
            else None
        )
        self._write_lock = asyncio.Lock()  # one writer: the cycle's decide-and-write and the fast path's
        self._last_write_mono: float | None = None
        self._stack = Stack(0.0, 0.0)
        self._restore()
        self._refresh_state()

    # ---------------------------------------------------------------- state on start
    def _restore(self) -> None:
        now = self.clock.now()
        load_stored(self.schedule, self.store.trades_for_schedule(now - PERIOD_S))
        self.mode = restored(self.store.get_state("mode")) or self.mode
        log.info("controller state restored", extra={"trades": len(self.schedule), "mode": self.mode.mode})

    # ---------------------------------------------------------------- entry points for the faces
    def accept_trade(self, data: dict[str, Any], source: str = "mqtt") -> Ack:
        """Validate, store (committed before the ack), schedule. Idempotent by trade_id."""
        stored = store_trade(self.store, data, source)
        if isinstance(stored, Ack):
            return stored
        trade = stored.trade
        if not stored.new:
            if source == "mqtt" and unanswered_redelivery(self.store, trade.trade_id, stored.body):
                log.info(
                    "trade redelivered before its ack was confirmed: acked again, not dispatched again",
                    extra={"trade_id": trade.trade_id, "source": source},
                )
                return Ack(
                    trade.trade_id, True, "stored (redelivered before its ack reached the broker); not dispatched again"
                )
            log.info("duplicate trade ignored", extra={"trade_id": trade.trade_id, "source": source})
            return Ack(trade.trade_id, False, "duplicate trade_id: already stored, not dispatched again")
        self.schedule.add(trade)
        self.faces.fire(Event.TRADE_ACCEPTED, trade)
        reason = "stored"
        feas = self.feasibility()
        if feas.limit == "soc_unknown":  # not a finding about the schedule: say so, raise nothing
            reason = f"stored; delivery not checked: {feas.reason}"
        elif not feas.ok:
            # An executed trade is binding: keep it, deliver what the limits allow, flag the shortfall ahead.
            reason = f"stored; delivery at risk: {feas.reason}"
            self.alarms.raise_(SCHEDULE_INFEASIBLE, "infeasible", feas.reason)
            self._refresh_state()
        log.info(
            "trade accepted",
            extra={"trade_id": trade.trade_id, "side": trade.side, "quantity_mw": trade.quantity_mw, "source": source},
        )
        self._wake.set()  # a trade for the current period reaches the PCS now, not a cycle later
        return Ack(trade.trade_id, True, reason)

    def confirm_trade_ack(self, trade_id: str) -> None:
        """The broker took our ack of this MQTT trade (the uplink's pump thread calls this on its PUBACK; the
        store is thread-safe)."""
        try:
            self.store.confirm_trade_ack(trade_id)
        except (StoreError, sqlite3.Error) as e:
            log.error("trade ack confirmation not stored", extra={"trade_id": trade_id, "error": str(e)})

    def set_afrr_setpoint(self, setpoint_mw: float, source: str = "scada-iec104") -> AfrrState:
        """The grid operator's aFRR setpoint (event loop; the IEC 104 face hands it over from c104's thread):
        clamped to the offered band, ramped in by the cycle, stacked on the schedule, and still passed through
        limit() like every target. One after a timeout clears its alarm. ValueError for a non-finite value."""
        self.afrr = afrr_rules.accept(self.afrr, setpoint_mw, self.clock.now(), self._afrr_band)
        if AFRR_TIMEOUT in self.alarms:
            self.alarms.clear(AFRR_TIMEOUT)
            log.info("aFRR setpoints resumed", extra={"setpoint_mw": self.afrr.requested_mw, "source": source})
        return self.afrr

    def _afrr_step(self, now: float, dt: float) -> float:
        """The cycle's aFRR part (MW): the setpoint's age checked, the ramp moved on; the alarm raised when
        setpoints stop coming (the part then ramps back to 0)."""
        was = self.afrr.timed_out
        self.afrr = afrr_rules.step(
            self.afrr, now, min(dt, 2 * self.config.cycle.period_s * self.clock.speed), self._afrr_band
        )
        if self.afrr.timed_out and not was:
            self.alarms.raise_(
                AFRR_TIMEOUT,
                "setpoint_timeout",
                f"no aFRR setpoint for more than {self._afrr_band.timeout_s:g} s: aFRR part back to 0 MW",
            )
        return self.afrr.active_mw if self.mode.mode != "stopped" else 0.0

    def _afrr_band_now(self, decision: Decision, base_mw: float) -> None:
        """The aFRR the plant can give now, from the room this cycle's limits leave around the base target."""
        reserve = self.fcr.cfg.capacity_mw if self.fcr.enabled else 0.0  # FCR's band comes first, each way
        up, down = afrr_rules.available(self._afrr_band, decision.lower_mw, decision.upper_mw, base_mw, reserve)
        if (up, down) != (self.afrr.band_up_mw, self.afrr.band_down_mw):
            self.afrr = dataclasses.replace(self.afrr, band_up_mw=up, band_down_mw=down)

    def feasibility(
        self, open_orders: list[tuple[float, float]] | tuple = (), new_order: tuple[float, float] | None = None
    ):
        """The schedule of executed trades checked from the live SoC, with `open_orders` ((period start, signed
        MW) of orders that may still fill) at their worst case. Only a fresh SoC counts: the last cycle's reading,
        no older than `stale_after_s` (no stored or guessed value: the check then says `soc_unknown`). While FCR
        is on, the schedule must leave its reserve: +-capacity of power and the SoC band (services/reserve.py)."""
        now = self.clock.now()
        snap = self.snapshot
        fresh = snap is not None and snap.soc_pct is not None and now - snap.ts <= self.config.limits.stale_after_s
        positions = self.schedule.periods(period_start(now), now + 7 * 86400)
        return check_feasibility(
            positions,
            snap.soc_pct if fresh else None,
            now,
            self.config.battery,
            reserved_limits(self.config.limits, self.fcr.band()),
            open_orders=open_orders,
            new_order=new_order,
        )

    def set_mode(
        self, mode: str, setpoint_mw: float | None = None, expires_s: float | None = None, source: str = "api"
    ) -> ModeState:
        """Switch mode. A manual setpoint still passes the limit function and expires unless renewed."""
        before = (self.mode.mode, self.mode.manual_setpoint_mw)
        self.mode = requested(
            mode, setpoint_mw, expires_s, source, self.clock.now(), self.config.cycle.manual_timeout_s
        )
        self.store.set_state("mode", dataclasses.asdict(self.mode))
        log.info("mode set", extra={"mode": mode, "setpoint_mw": setpoint_mw, "source": source})
        self._refresh_state()
        if (self.mode.mode, self.mode.manual_setpoint_mw) != before:
            self._wake.set()  # a change applies now; renewing the same setpoint waits for the next cycle
        return self.mode

    def set_fcr(self, enabled: bool, source: str = "api") -> bool:
        """Switch FCR on or off (ValueError when the site offers none). Not stored: after a restart the site
        file's services.fcr.enabled applies again. Returns the new state."""
        before = self.fcr.enabled
        self.fcr.set_enabled(enabled)
        if enabled != before:
            self.store.audit(source, "fcr", {"enabled": enabled}, self.clock.now())
            if not enabled:  # its alarms go with it
                for key in (FCR_RESERVE, FCR_FREQUENCY):
                    self.alarms.clear(key)
            self._refresh_state()
            self._wake.set()
        return self.fcr.enabled

    # ---------------------------------------------------------------- alarms
    @property
    def active_alarms(self) -> dict[str, dict[str, Any]]:
        """{string key: alarm} of the active alarms (read-only view; `self.alarms` owns them)."""
        return self.alarms.as_dicts()

    # ---------------------------------------------------------------- the cycle
    def target_mw(self, now: float) -> float:
        m = self.mode
        if m.mode == "stopped":
            return 0.0
        if m.mode == "manual":
            if expired(m, now):
                log.warning("manual setpoint expired: back to auto", extra={"setpoint_mw": m.manual_setpoint_mw})
                self.store.audit("controller", "manual_expired", {"setpoint_mw": m.manual_setpoint_mw}, now)
                self.set_mode("auto", source="expiry")
            else:
                return m.manual_setpoint_mw
        return self.schedule.position_mw(now)

    def stacked(self, now: float, afrr_mw: float | None = None) -> Stack:
        """The target: the base (manual or schedule, as target_mw) plus the grid services' parts: FCR for the
        newest frequency, aFRR as the cycle ramped it (`afrr_mw`; the fast path passes none and keeps the part
        the last cycle gave)."""
        base = self.target_mw(now)
        if self.mode.mode == "stopped":
            return stack(base)
        afrr = self.afrr.active_mw if afrr_mw is None else afrr_mw
        return stack(base, self.fcr.required(now).required_mw, afrr)

    async def _read_frequency(self) -> None:
        """The fast path's read: the POI meter read now through its link, sharing the meter's own poll (a read in
        flight is awaited, not doubled; the poll skips a meter read just now), then its frequency taken as the
        cycle takes it. A DeviceError when the meter did not answer."""
        assert self._meter is not None
        if not await self._meter.read_now(self.clock.now()):
            raise self._meter.last_error or DeviceError(self._meter.name, "read: no answer")
        self._observe_meter()

    async def fast_write(self) -> bool:
        """The fast path's write: the stacked target for the newest frequency, allocated over the units on the
        last cycle's frozen snapshots (the POI range as that cycle set it), written under the cycle's write lock.
        Nothing is written when those snapshots are too old, the last cycle failed, a read-back mismatch holds a
        unit, or the plant setpoint would not move."""
        async with self._write_lock:
            snaps, now = self.unit_snapshots, self.clock.now()
            if not snaps or self._last_cycle_failed or any(now < u.readback_hold_until for u in self.units):
                return False
            if now - snaps[0].ts > self.config.limits.stale_after_s:
                return False
            self._stack = self.stacked(now)
            allocation = self._decide(self._stack.target_mw, snaps, now, self.clock.monotonic())
            previous = sum(u.previous_mw for u in self.units)
            if abs(allocation.setpoint_mw - previous) < FAST_MIN_STEP_MW:
                return False
            await self._dispatch(allocation, now, heartbeat=False)
            self.allocation = allocation
            self.decision = allocation.decision()
        self._refresh_state()  # status and SCADA show the new setpoint now, not at the next cycle
        return True

    def fast_ramp_left_s(self) -> float | None:
        """After a fast-path write the ramp held back (a frequency step met a write moments before, so the ramp
        had almost no time to give): how long the ramp needs for the rest, so the fast path comes back then rather
        than a whole fast period later. None when the last decision was not bound by the ramp."""
        d = self.decision
        if d is None or d.binding != "ramp":
            return None
        allowed = min(max(d.target_mw, d.lower_mw), d.upper_mw)
        return abs(allowed - d.setpoint_mw) / self.config.limits.ramp_mw_per_s

    def _observe_meter(self) -> None:
        """The cycle's own meter poll feeds the FCR frequency too (the fast path reads it more often)."""
        if self._meter is None or self._meter.failures:
            return
        reading = self._meter.readings.get("frequency_hz")
        if reading is not None:
            self.fcr.observe(reading.value if isinstance(reading.value, (int, float)) else None, reading.ts)

    def _services_after_write(self, snap: Snapshot, now: float) -> None:
        """FCR's alarms (reserve no longer held, frequency unknown) and the provision record of this second."""
        reserve = self.fcr.check_reserve(snap.soc_pct)
        if self.fcr.enabled and not reserve.held:
            self.alarms.raise_(FCR_RESERVE, "reserve", reserve.message)
        elif FCR_RESERVE in self.alarms:
            self.alarms.clear(FCR_RESERVE)
        if self.fcr.enabled and self.fcr.frequency(now) is None:
            self.alarms.raise_(FCR_FREQUENCY, "no_frequency", "FCR on but the POI frequency is unknown: no FCR power")
        elif FCR_FREQUENCY in self.alarms:
            self.alarms.clear(FCR_FREQUENCY)
        if self.fcr.enabled or self._stack.afrr_mw:  # a second with a grid service in play is recorded
            self.records.observe(now, self.fcr.frequency(now), self._stack, snap.power_mw)

    async def run_cycle(self) -> Decision:
        """One cycle. Never raises for device trouble: that becomes alarms and the safe state (of the unit whose
        device it is; the plant's only for plant-level causes)."""
        t0 = time.perf_counter()
        now = self.clock.now()
        mono = self.clock.monotonic()
        dt = 0.0 if self._last_cycle_mono is None else mono - self._last_cycle_mono
        self._last_cycle_mono = mono
        period = self.config.cycle.period_s
        self._deadline = t0 + DEADLINE_SHARE * period
        if not self.devices.polling:  # before the devices' own rhythm starts (the first cycle; tests' cycles)
            await self.devices.poll(now, timeout_s=READ_SHARE * period)
        elif self._last_cycle_t0 is not None and t0 - self._last_cycle_t0 > STALL_PERIODS * period:
            await self.devices.catch_up(now, timeout_s=READ_SHARE * period)  # the loop stalled: reads did too
        self._last_cycle_t0 = t0
        unit_snaps = [self._unit_snapshot(u, now) for u in self.units]
        snap = self.devices.plant_snapshot(unit_snaps, now)
        if self._last_cycle_failed:
            snap = dataclasses.replace(snap, alarms=snap.alarms + (CYCLE_ERROR_ALARM,))
        self._observe_meter()
        async with self._write_lock:  # the fast path waits: one writer
            self.faces.fire(Phase.DECIDE)
            self._stack = self.stacked(now, afrr_mw=self._afrr_step(now, dt))
            allocation = self._decide(self._stack.target_mw, unit_snaps, now, mono, poi_dt_s=dt)
            decision = allocation.decision()
            self._afrr_band_now(decision, self._stack.base_mw)
            self.faces.fire(Phase.WRITE)
            readback = await self._dispatch(allocation, now)
            self.allocation = allocation
            self.unit_snapshots = unit_snaps
            self.snapshot = snap
        self.decision = decision
        self.alarms.sync(snap)
        self.delivery.account(snap, now, dt)
        self._services_after_write(snap, now)
        self.store.record_decision(
            now,
            decision.target_mw,
            decision.setpoint_mw,
            decision.binding,
            self.mode.mode,
            snap.soc_pct,
            snap.power_mw,
            snap.temperature_max_c,
            readback,
            "; ".join(decision.reasons),
        )
        if snap.soc_pct is not None and self.stats.cycles % 60 == 0:
            self.store.set_state("last_soc_pct", snap.soc_pct)
        good = not snap.stale and not snap.comm_loss
        self.stats.cycles += 1
        if good:
            self.stats.good_cycles += 1
        self._last_cycle_failed = False
        self.alarms.clear(CYCLE_FAILED)  # this cycle completed: the last one's failure is over
        self._notify_health()
        # the cycle's own work ends here; the faces (metrics, websocket, telemetry) then see its duration
        duration = time.perf_counter() - t0
        self.stats.last_duration_s = duration
        self.stats.durations_s.append(duration)
        self._refresh_state(self._cycle_p99())
        self.faces.fire(Phase.AFTER_WRITE)
        return decision

    def _unit_snapshot(self, u: UnitDispatch, now: float) -> Snapshot:
        """The unit's process image, held in its safe state by the start-up gate (no non-zero setpoint until both
        its devices have answered since this start) and after a read-back mismatch of its PCS."""
        snap = self.devices.unit_snapshot(u.links, now)
        missing = self.devices.unanswered_since((u.links.bms.name, u.links.pcs.name), self._started_ts)
        if missing:
            snap = dataclasses.replace(snap, stale=tuple(sorted(set(snap.stale) | set(missing))))
        if now < u.readback_hold_until:
            snap = dataclasses.replace(snap, alarms=snap.alarms + (f"{u.links.pcs.name}:readback_mismatch",))
        return snap

    def _decide(
        self, target: float, unit_snaps: list[Snapshot], now: float, mono: float, poi_dt_s: float | None = None
    ) -> Allocation:
        """The plant's limit() on the units' totals, the POI range (with a meter), then the split over the units
        in service, each share through its unit's own limits (controller.cycle.allocation). The ramp counts from
        the last write (the cycle's or the fast path's). The cycle passes `poi_dt_s` and steps the POI loop with
        this cycle's meter reading; the fast path does not, and keeps the range the last cycle set."""
        dt = 0.0 if self._last_write_mono is None else mono - self._last_write_mono
        poi = self.poi.last if self.poi is not None else None
        if self.poi is not None and poi_dt_s is not None:
            known = [s.power_mw for s in unit_snaps]
            plant_mw = None if any(p is None for p in known) else sum(known)  # type: ignore[arg-type]
            poi = self.poi.step(now, poi_dt_s, sum(u.previous_mw for u in self.units), plant_mw)
        plant = PlantView(
            limits=self.config.limits,
            ts=now,
            mode=self.mode.mode,
            dt_s=dt,
            max_dt_s=2 * self.config.cycle.period_s * self.clock.speed,  # a stall earns no ramp
            # the last cycle raised: this one holds the safe state too, so that a failure after the write
            # (recording, publishing) cannot swing the PCS between the setpoint and 0 MW cycle after cycle
            alarms=(CYCLE_ERROR_ALARM,) if self._last_cycle_failed else (),
            poi=poi,
        )
        views = [
            UnitView(u.unit, s, u.limits, u.links.rated_mw, u.links.capacity_mwh, u.previous_mw)
            for u, s in zip(self.units, unit_snaps)
        ]
        return allocate(target, plant, views)

    def _refresh_state(self, cycle_p99_s: float | None = None) -> PlantState:
        """The frozen state of now: at the end of each cycle, and when the mode or an alarm changes between."""
        links = (
            LinkFigures(name, link.request_latency_s, link.errors_total) for name, link in self.devices.links.items()
        )
        now = self.clock.now()
        fcr = self.fcr.state(now, self.records.compliance_pct, self.fast_path) if self.fcr.available else None
        state = build(
            self.snapshot,
            self.decision,
            self.mode,
            self.alarms,
            self.stats,
            links,
            self.devices.bms.name,
            self.devices.pcs.name,
            cycle_p99_s,
            self._unit,
            units=self._unit_states(),
            poi=self.poi.state(now) if self.poi is not None else None,
            afrr=self.afrr if self.config.scada.iec104.enabled else None,
            fcr=fcr,
        )
        self.faces.update(state)
        return state

    def _unit_states(self) -> tuple[UnitState, ...] | None:
        """Each unit's state, for a plant of several (a one-unit plant's is the plant's own, as it always was)."""
        if len(self.units) == 1 or not self.unit_snapshots:
            return None
        return unit_states([u.unit for u in self.units], self.unit_snapshots, self.allocation)

    def _cycle_p99(self) -> float | None:
        """p99 of the last 4096 durations, every 10th cycle (sorting them takes ~0.3 ms) and only when a face
        reads it; None otherwise (the reader keeps the last figure)."""
        if self.stats.cycles % 10 != 1 or not self.faces.attached(Phase.AFTER_WRITE):
            return None
        ds = sorted(self.stats.durations_s)
        return ds[min(len(ds) - 1, int(len(ds) * 0.99))] if ds else None

    def status(self) -> dict[str, Any]:
        """DESIGN.md's /api/bess-status shape, from the latest state (for tools and tests; faces project the
        PlantState that `faces` hands them)."""
        return status(self.faces.latest(), self.clock.now())

    def _notify_health(self) -> None:
        """systemd hears the daemon's health, not the plant's: every completed cycle pings the watchdog, whatever
        the devices answered (a device outage is the safe state's job, and a restart would only take the
        dashboard and SCADA away while the operator needs them). A stuck or failing cycle stops the pings."""
        if self._ready_allowed:
            self.notifier.ready()  # sent once
        self.notifier.watchdog()

    def hold_ready(self) -> None:
        """Do not send READY until `allow_ready()` (the daemon: until every face has started)."""
        self._ready_allowed = False

    def allow_ready(self) -> None:
        """Every face is up: READY now if a cycle has completed already, else at the end of the first one."""
        self._ready_allowed = True
        if self.stats.cycles:
            self.notifier.ready()

    async def _safe_state_after_error(self, error: Exception) -> None:
        """A cycle raised: command 0 MW now (best effort, through the limit function like every setpoint)
        rather than leave the last setpoint live until the PCS's reversion timer runs out, and raise an alarm
        naming the exception. The next cycle holds 0 MW too; once it completes, the alarm is cleared."""
        self.stats.failed_cycles += 1
        self._last_cycle_failed = True
        try:
            async with self._write_lock:  # a fast-path write already under way lands first, not after this one
                self.decision = await self._all_to_zero(SAFE_WRITE_TIMEOUT_S)  # what the PCSs were told last
        except asyncio.CancelledError:
            raise
        except Exception as e:  # DeviceError, a timeout, or the same bug again: the reversion timer remains
            log.error("safe-state write after a failed cycle failed", extra={"error": f"{type(e).__name__}: {e}"})
        try:
            self.alarms.raise_(
                CYCLE_FAILED, "cycle_error", f"control cycle failed ({type(error).__name__}: {error}); 0 MW commanded"
            )
        except Exception:
            log.exception("cycle-error alarm could not be raised")
        try:
            self._refresh_state()  # the faces show the 0 MW and the alarm now, not after the next good cycle
        except Exception:
            log.exception("state after a failed cycle could not be built")

    def _write_budget_s(self) -> float:
        """What is left of the cycle's deadline for its writes (at least WRITE_MIN_SHARE of the period)."""
        return max(self._deadline - time.perf_counter(), WRITE_MIN_SHARE * self.config.cycle.period_s)

    async def _all_to_zero(self, timeout_s: float) -> Decision:
        """0 MW to every unit at once (each through the limit function), each waiting at most `timeout_s`; the
        first failure is raised once all have ended. Bounded as the cycle's writes are (Dispatcher.within): a write
        still pending then fails as a DeviceTimeout but runs on, never cancelled mid-request (its late answer would
        be left in a shared connection for the next request). Returns the plant's safe decision."""
        now = self.clock.now()
        results = await asyncio.gather(
            *(u.dispatcher.within("setpoint", u.dispatcher.apply(u.safe(now)), timeout_s) for u in self.units),
            return_exceptions=True,
        )
        for u in self.units:
            u.previous_mw = 0.0
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return limit(0.0, Snapshot(ts=now), self.config.limits, 0.0, 0.0, "stopped")

    async def _dispatch(self, allocation: Allocation, now: float, heartbeat: bool = True) -> float | None:
        """Every unit's PCS written at once, each with read-back and its own heartbeat (not on the fast path's
        writes), bounded by the cycle's deadline; a failed write is that unit's alone. Returns the plant's
        read-back (None unless every unit read back)."""
        decisions = [
            Decision(s.setpoint_mw, s.setpoint_mw, s.binding, s.reasons, s.lower_mw, s.upper_mw)
            for s in allocation.units
        ]  # each share has passed limit() on the plant's totals and on its unit's own limits (allocate)
        readbacks = await write_units(self.units, decisions, now, self._write_budget_s, heartbeat)
        if any(r is not None for r in readbacks):
            self._last_write_mono = self.clock.monotonic()  # the ramp counts from here
        if any(r is None for r in readbacks):
            return None
        return sum(readbacks)  # type: ignore[arg-type]

    async def _loop(self) -> None:
        period = self.config.cycle.period_s
        next_t = time.monotonic()
        while not self._stopping:
            self.faces.fire(Phase.READ)  # e.g. the web face holds new requests until the cycle is done
            # cleared as the cycle starts, not after it: a wake-up that comes during the cycle (a trade, a mode
            # change, a period boundary after the cycle read its target) starts the next cycle at once
            self._wake.clear()
            try:
                await self.run_cycle()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A bug in the cycle must not leave a live setpoint: command 0 MW now (the PCS reversion timer
                # is only the backstop), and the next cycle starts from the safe side.
                log.exception("control cycle failed: commanding 0 MW")
                await self._safe_state_after_error(e)
            finally:
                self.faces.fire(Phase.IDLE)
            if not self.devices.polling:
                # from the first cycle on, each device is read on its own rhythm, READ_SHARE of the period before
                # each cycle starts (a device behind a gateway: early enough that a read running to its timeout
                # ends before the cycle's writes on the shared connection, DeviceLink.read_lead_s); moved with the
                # cycle's rhythm when that restarts (_rephase_reads)
                self.devices.start_polling(period, next_t + period - time.monotonic(), READ_SHARE * period)
            next_t += period
            now = time.monotonic()
            if now > next_t:
                self.stats.overruns += 1
                log.warning("cycle overran", extra={"duration_s": self.stats.last_duration_s, "period_s": period})
                next_t = now  # never stack cycles
                self._rephase_reads(next_t)
            if self._stopping:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, next_t - time.monotonic()))
                next_t = time.monotonic()  # woken early (period boundary, trade, mode): restart the rhythm
                self._rephase_reads(next_t)
            except asyncio.TimeoutError:
                pass

    def _rephase_reads(self, cycle_mono: float) -> None:
        """The cycle's rhythm restarted with a cycle at `cycle_mono` (time.monotonic()): each device's next read
        moves to its lead before the regular cycle after it (READ_SHARE of a period; behind a gateway, enough for
        its timeout), where start_polling put them (reads in flight run on). Left in the old phase they would land anywhere in the cycle, on top of its writes on a
        shared gateway, and bring values up to a period old."""
        self.devices.rephase(cycle_mono + self.config.cycle.period_s)

    def _check_watchdog_margin(self) -> None:
        """Under systemd's watchdog every completed cycle pings; a device that stops answering stretches a cycle to
        its timeout (a connect and a read), so timeouts near WatchdogSec would get a healthy daemon restarted."""
        watchdog_s = self.notifier.watchdog_interval_s
        if not watchdog_s or not self.config.devices:
            return
        worst_cycle_s = self.config.cycle.period_s + 2 * max(d.timeout_s for d in self.config.devices.values())
        if worst_cycle_s >= watchdog_s / 2:
            log.warning(
                "device timeouts are long for the systemd watchdog: a silent device stretches a cycle "
                "past half of WatchdogSec; shorten devices.*.timeout_s or raise WatchdogSec",
                extra={"worst_cycle_s": round(worst_cycle_s, 2), "watchdog_s": watchdog_s},
            )

    async def start(self) -> None:
        """The devices connected and read once (each within its own timeouts, see DeviceSet.first_contact), then
        the scheduler's jobs, the cycle and the fast path started. Reading first means the first cycle finds every
        device that is there answered, rather than counting its connect (a SunSpec discovery, an OPC UA session)
        against the cycle's read deadline as a failed read and a comm alarm; READY (a completed cycle) comes after."""
        self._started_ts = self.clock.now()
        self._check_watchdog_margin()
        await self.devices.first_contact(self._started_ts)
        self.jobs.start()
        self._task = asyncio.create_task(self._loop(), name="control-cycle")
        if self.fast_path is not None:
            self.fast_path.start()

    async def stop(self) -> None:
        self.notifier.stopping()
        if self.fast_path is not None:
            await self.fast_path.stop()  # before the cycle ends: nothing writes after the stop's 0 MW
        await self.devices.stop_polling()  # no new reads; those in flight end before the stop's 0 MW (one turn)
        if self._task:
            # A cycle cancelled mid-request leaves its answer in the connection, where the stop's 0 MW write
            # would find it instead of its own: let the running cycle end first, cancel only a stuck one.
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=STOP_GRACE_S)
            except asyncio.TimeoutError:
                log.warning("control cycle did not end in time: cancelled", extra={"grace_s": STOP_GRACE_S})
                await cancel_and_wait(self._task)
            except asyncio.CancelledError:
                self._task.cancel()
                raise
            self._task = None
        self.jobs.stop()
        # leave the plant at 0 MW on an orderly stop; if this fails the PCS reversion still brings it there
        try:
            await self._all_to_zero(2.0)
        except (DeviceError, asyncio.TimeoutError) as e:
            log.warning("could not write 0 MW on stop", extra={"error": str(e)})
        for u in self.units:
            await u.dispatcher.stop_writing()
        await self.devices.close()
        self.records.close()
        self.store.flush()
