"""The controller's scheduled jobs (APScheduler, AsyncIOScheduler): the wake-up at every period boundary of the
controller's clock, the pick-up of trades stored by other processes, and the store's housekeeping. Every job
is `async def`, so it runs on the event loop; blocking store work goes to a worker thread explicitly."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from controller.trading.intake import load_stored
from controller.trading.market import PERIOD_S, period_start

if TYPE_CHECKING:
    from controller.clock import Clock
    from controller.store import Store
    from controller.trading.schedule import Schedule

log = logging.getLogger("bess.cycle")

BOUNDARY_LAG_S = 0.002  # the period-boundary wake-up fires this long (real s) after the boundary


class Jobs:
    """Started and stopped with the controller; `stats` is its CycleStats (boundary wake-ups, missed jobs)."""

    def __init__(
        self,
        clock: "Clock",
        store: "Store",
        schedule: "Schedule",
        stats,
        wake: Callable[[], None],
        retention_days: float,
        provision_retention_days: float,
    ):
        self.clock = clock
        self.store = store
        self.schedule = schedule
        self.stats = stats
        self.wake = wake
        self.retention_days = retention_days  # the decision log's (cycle.decision_retention_days)
        self.provision_retention_days = provision_retention_days  # services.records_retention_days
        self.scheduler = None

    def stop(self) -> None:
        if self.scheduler:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None

    async def boundary_job(self) -> None:
        """An async job, so AsyncIOScheduler runs it on the event loop: the wake-up is an asyncio.Event, which
        only the loop's thread may set (set from a worker thread, the wake-up could wait a whole cycle)."""
        self.stats.boundary_wakeups += 1
        self.wake()
        self.schedule_boundary()

    def schedule_boundary(self) -> None:
        """The next period boundary of the controller's clock, as an APScheduler date job in real time.

        A cron trigger would follow the wall clock, not the injected one: with a sped-up or shifted clock the
        schedule's boundaries and the wake-ups would disagree, and a new period's target would wait a cycle."""
        if self.scheduler is None:
            return
        from datetime import datetime, timedelta, timezone

        now = self.clock.now()
        boundary = period_start(now) + PERIOD_S
        # a hair after the boundary, so that the cycle it wakes reads clock.now() >= boundary
        delay_s = self.clock.real_seconds(boundary - now) + BOUNDARY_LAG_S
        run_at = datetime.now(timezone.utc) + timedelta(seconds=delay_s)
        self.scheduler.add_job(
            self.boundary_job,
            "date",
            run_date=run_at,
            id="period_boundary",
            replace_existing=True,
            max_instances=1,
            misfire_grace_time=5,
            coalesce=True,
        )

    def start(self) -> None:
        """APScheduler fires at every period boundary so the new period's target applies at once, picks up
        trades stored by other processes, and prunes the store. Every job is `async def`: AsyncIOScheduler
        runs those on the event loop (a plain `def` job would run in a worker thread), so the schedule and the
        asyncio objects are only ever touched from the loop; blocking store work goes to a thread explicitly."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        sched = AsyncIOScheduler(timezone="UTC")
        sched.add_job(self.housekeeping, "interval", minutes=10, id="housekeeping", max_instances=1)
        sched.add_job(self.pick_up_trades, "interval", seconds=2, id="trade_pickup", max_instances=1)

        loop = asyncio.get_running_loop()

        def missed(event) -> None:
            # listeners run where the scheduler processes its jobs (the loop, for AsyncIOScheduler); hand over
            # anyway, so the chain is re-armed on the loop whichever thread reports the miss
            loop.call_soon_threadsafe(self.job_missed, event.job_id)

        sched.add_listener(missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        sched.start()
        self.scheduler = sched
        self.schedule_boundary()

    def job_missed(self, job_id: str) -> None:
        self.stats.missed_boundaries += 1
        log.warning("scheduled job missed or overlapped", extra={"job": job_id})
        if job_id == "period_boundary":
            self.schedule_boundary()  # a date job that misfired would otherwise end the chain

    async def pick_up_trades(self) -> None:
        """Trades stored by another process (`bess-edge trade add`) join the schedule within 2 s. The store is
        read in a worker thread (it is thread-safe); the schedule is only touched here, on the loop, so this
        never races `accept_trade`'s check-then-insert."""
        rows = await asyncio.to_thread(self.store.trades_for_schedule, self.clock.now() - PERIOD_S)
        added = load_stored(self.schedule, rows)
        if added:
            log.info("trades picked up from the store", extra={"count": added})
            self.wake()

    async def housekeeping(self) -> None:
        """Flush and prune in a worker thread: the store is thread-safe and prunes in chunks, and the loop
        keeps cycling meanwhile."""
        deleted = await asyncio.to_thread(  # prune flushes first
            self.store.prune,
            self.clock.now(),
            self.retention_days,
            provision_retention_days=self.provision_retention_days,
        )
        if any(deleted.values()):
            log.info("retention pruned rows", extra={"deleted": deleted})
