"""The control path's own robustness on the real plant simulators: scheduled jobs (period-boundary wake-up,
trade pick-up, housekeeping) run on the event loop, never in a worker thread; a period boundary wakes the
cycle at once; a cycle that raises commands 0 MW through the limit function and raises an alarm naming the
exception, cleared after the next completed cycle.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from controller.clock import Clock
from controller.cycle.loop import CYCLE_ERROR_ALARM, Controller
from controller.cycle.phases import Phase
from controller.scada.points import status_values
from controller.store import Store
from controller.trading.schedule import PERIOD_S, Schedule, parse_trade, period_start
from simulators.plant import Plant
from tests.fixtures.controller import device_ports, site_config, trade, wait_for
from tests.fixtures.plant import make_plant, plant, wset_mw  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(60)


async def delivering_3_mw(c: Controller, clock: Clock, plant: Plant) -> None:
    """Start the controller, and once a cycle went well, a trade of 3 MW for this period, at the PCS."""
    await c.start()
    await wait_for(lambda: c.stats.good_cycles >= 1, 10, "the first good cycle")
    now = clock.now()
    assert c.accept_trade(trade("T1", "sell", 3.0, period_start(now), now), source="test").accepted
    await wait_for(lambda: wset_mw(plant) == pytest.approx(3.0), 5, "3 MW at the PCS")


class ThreadRecordingSchedule(Schedule):
    """The real schedule, noting which threads touch it (a probe, not a stand-in: every answer is its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def add(self, trade):
        self.threads.add(threading.get_ident())
        return super().add(trade)

    def position_mw(self, ts: float) -> float:
        self.threads.add(threading.get_ident())
        return super().position_mw(ts)


class ThreadRecordingEvent(asyncio.Event):
    """The controller's wake-up Event, noting which threads set it."""

    def __init__(self) -> None:
        super().__init__()
        self.setters: set[int] = set()

    def set(self) -> None:
        self.setters.add(threading.get_ident())
        super().set()


class BreakableStore(Store):
    """A store whose decision log fails on demand: a cycle that raises after its setpoint went out."""

    broken = False

    def record_decision(self, *args, **kwargs) -> None:
        if self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        super().record_decision(*args, **kwargs)


class BreakableSchedule(Schedule):
    """A target source that raises on demand: a bug somewhere in the cycle, as the cycle sees it."""

    broken = False

    def position_mw(self, ts: float) -> float:
        if self.broken:
            raise RuntimeError("schedule source unreadable")
        return super().position_mw(ts)


@asynccontextmanager
async def controller_with(
    plant: Plant,
    tmp_path: Path,
    schedule: Schedule,
    clock: Clock | None = None,
    store_class: type[Store] = Store,
    **overrides: Any,
) -> AsyncIterator[Controller]:
    """A real Controller on `plant` with `schedule` (and a store of `store_class`) injected; always stopped."""
    cfg = site_config(tmp_path, device_ports(plant), **overrides)
    store = store_class(tmp_path / "state.db")
    c = Controller(cfg, store, clock, schedule=schedule)
    try:
        yield c
    finally:
        await c.stop()
        store.close()


async def test_scheduled_jobs_run_on_the_loop_and_a_boundary_wakes_the_cycle(plant, tmp_path):
    """Old code: `_boundary_job` and `_pick_up_trades` were plain `def` jobs, so APScheduler ran them in worker
    threads, which set the asyncio Event and added to the schedule concurrently with the loop."""
    boundary = period_start(time.time()) + PERIOD_S
    clock = Clock(start=boundary - 4.0)  # the next period starts 4 s into the test
    schedule = ThreadRecordingSchedule()
    period_s = 6.0  # longer than the way to the boundary: only the boundary's wake-up can start the next cycle
    # the config check wants stale_after_s above the cycle period and the PCS reversion at least two periods
    async with controller_with(
        plant,
        tmp_path,
        schedule,
        clock,
        cycle={"period_s": period_s},
        limits={"ramp_mw_per_s": 1000, "stale_after_s": 2 * period_s + 1},
        devices={"pcs": {"reversion_timeout_s": 3 * period_s}},
    ) as c:
        c._wake = wake = ThreadRecordingEvent()
        idle = asyncio.Event()  # set while no cycle runs, as the web face's gate is
        idle.set()
        c.faces.attach(Phase.READ, lambda _: idle.clear())
        c.faces.attach(Phase.IDLE, lambda _: idle.set())
        await c.start()
        loop_thread = threading.get_ident()
        await wait_for(lambda: c.stats.good_cycles >= 1, 10, "the first good cycle")

        # a trade for the next period, stored by another process (`bess-edge trade add`): the pick-up job adds it
        with Store(tmp_path / "state.db") as other:
            other.add_trade(
                parse_trade(trade("NEXT", "sell", 2.0, boundary, clock.now())).model_dump(mode="json"), "cli"
            )
        await wait_for(lambda: schedule.position_mw(boundary) == 2.0, 10, "the pick-up job adding the stored trade")
        await wait_for(lambda: not wake.is_set() and idle.is_set(), 5, "the woken cycle done")
        assert clock.now() < boundary - 0.5, "the test's set-up ran into the period boundary"
        cycles, last_start = c.stats.cycles, c._last_cycle_mono
        assert c.decision.target_mw == 0.0

        await wait_for(lambda: c.stats.boundary_wakeups >= 1, 10, "the period-boundary job")
        await wait_for(lambda: c.decision.target_mw == 2.0, 10, "the new period's target")
        # the boundary woke the very next cycle, before the period's own timer would have started it
        assert c.stats.cycles == cycles + 1
        assert c._last_cycle_mono - last_start < period_s
        await wait_for(lambda: wset_mw(plant) == pytest.approx(2.0), 5, "2 MW at the PCS")

        jobs = c.jobs.scheduler.get_jobs()
        assert {j.id for j in jobs} >= {"housekeeping", "trade_pickup", "period_boundary"}
        assert all(asyncio.iscoroutinefunction(j.func) for j in jobs), "a job would run in a worker thread"
        await c.jobs.housekeeping()  # as the scheduler runs it: on the loop, the store work in a thread
    assert wake.setters == {loop_thread}, "the wake-up Event was set from another thread"
    assert schedule.threads == {loop_thread}, "the schedule was touched from another thread"


async def test_a_cycle_that_raises_commands_0_mw_and_raises_an_alarm(plant, tmp_path):
    """Old code: the failed cycle wrote nothing, so the PCS kept its last setpoint until its own reversion
    timer ran out (here 60 s), and no alarm said why."""
    schedule = BreakableSchedule()
    clock = Clock(start=period_start(time.time()) + 300)
    async with controller_with(
        plant,
        tmp_path,
        schedule,
        clock,
        cycle={"period_s": 0.2},
        limits={"ramp_mw_per_s": 1000},
        devices={"pcs": {"reversion_timeout_s": 60}},
    ) as c:
        await delivering_3_mw(c, clock, plant)

        schedule.broken = True
        await wait_for(lambda: c.stats.failed_cycles >= 2, 5, "two failed cycles")
        assert wset_mw(plant) == 0.0, "a failed cycle left the setpoint live"
        await wait_for(lambda: abs(plant.model.power_mw) < 1e-6, 5, "the plant at 0 MW")
        alarm = c.active_alarms.get(CYCLE_ERROR_ALARM)
        assert alarm is not None, c.active_alarms
        assert "RuntimeError" in alarm["message"] and "schedule source unreadable" in alarm["message"]
        assert any("control cycle failed" in a for a in c.status()["alarms"])
        assert c.status()["setpoint_mw"] == 0.0
        assert any(a["key"] == CYCLE_ERROR_ALARM for a in c.store.active_alarms())
        assert status_values(c.faces.latest())["alarm_bits"] & 1 << 6, "the SCADA face does not show the failed cycle"

        # the bug goes away: the next completed cycle clears the alarm, and the schedule is followed again
        schedule.broken = False
        await wait_for(lambda: CYCLE_ERROR_ALARM not in c.active_alarms, 5, "the alarm cleared")
        await wait_for(lambda: wset_mw(plant) == pytest.approx(3.0), 5, "3 MW at the PCS again")
        assert not any(a["key"] == CYCLE_ERROR_ALARM for a in c.store.active_alarms())


async def test_a_cycle_failing_after_its_write_holds_0_mw_instead_of_swinging(plant, tmp_path):
    """A cycle that raises after the setpoint went out: the next cycle holds 0 MW as well, so a lasting fault
    cannot swing the PCS between the setpoint and 0 MW every cycle."""
    clock = Clock(start=period_start(time.time()) + 300)
    async with controller_with(
        plant,
        tmp_path,
        Schedule(),
        clock,
        store_class=BreakableStore,
        cycle={"period_s": 0.2},
        limits={"ramp_mw_per_s": 1000},
    ) as c:
        await delivering_3_mw(c, clock, plant)

        writes: list[float] = []
        inner = plant.pcs_server.on_write

        def spy(changes):
            if "704.WSet" in changes:
                writes.append(changes["704.WSet"] * 1e-6)
            return inner(changes)

        plant.pcs_server.on_write = spy
        c.store.broken = True
        failed = c.stats.failed_cycles
        await wait_for(lambda: c.stats.failed_cycles >= failed + 5, 10, "five failed cycles")
        first_zero = writes.index(0.0)
        assert all(w == 0.0 for w in writes[first_zero:]), f"the PCS swung after the first failure: {writes}"
        assert (
            CYCLE_ERROR_ALARM in c.active_alarms and "disk I/O error" in c.active_alarms[CYCLE_ERROR_ALARM]["message"]
        )

        c.store.broken = False
        await wait_for(lambda: CYCLE_ERROR_ALARM not in c.active_alarms, 5, "the alarm cleared")
        await wait_for(lambda: wset_mw(plant) == pytest.approx(3.0), 5, "3 MW at the PCS again")
