"""The only code that writes setpoints: it takes a `Decision` from the limit function, nothing else.

It also arms the PCS's own reversion timeout (SunSpec WSetRvrtTms, reversion to 0 W), so the plant falls
back to 0 MW by itself if the controller stops, and writes the heartbeats. Writes are bounded by the cycle's
deadline (`within`): a write still pending then fails at once as a timeout, and the cycle goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TypeVar

from controller.config import Limits
from controller.cycle.alarms import Alarms, readback_key
from controller.cycle.devices import DeviceLink, UnitLinks
from controller.cycle.limits import Decision, limit
from controller.cycle.snapshot import Snapshot
from drivers.errors import DeviceError, DeviceTimeout, ReadbackMismatch

T = TypeVar("T")

log = logging.getLogger("bess.dispatch")

READBACK_HOLD_S = 10.0  # after a read-back mismatch, the unit stays in its safe state this long before trying again


class Dispatcher:
    """Writes decisions to the PCS with read-back; keeps the reversion timer armed."""

    def __init__(self, pcs: DeviceLink, bms: DeviceLink | None, reversion_timeout_s: float):
        self.pcs = pcs
        self.bms = bms
        self.reversion_timeout_s = reversion_timeout_s
        self.armed = False
        self.last_written_mw: float | None = None
        self.last_readback_mw: float | None = None
        self._heartbeat = 0
        # writes that outlived their cycle's deadline, by slot ("setpoint", "heartbeat"): each runs on to the
        # driver's own timeout (a cancelled Modbus request would leave its late answer in the connection)
        self._inflight: dict[str, asyncio.Task] = {}

    def start(self, slot: str, work: Coroutine[object, object, T]) -> asyncio.Task[T]:
        """`work` (a write, or writes) started as a task in `slot`. While the slot's last request has not ended,
        DeviceTimeout naming the PCS at once (and `work` is closed unstarted), so requests never pile up behind a
        silent device."""
        if slot in self._inflight:
            work.close()
            raise DeviceTimeout(self.pcs.name, f"{slot} write: the last request is still unanswered")
        task = asyncio.ensure_future(work)
        self._inflight[slot] = task
        task.add_done_callback(lambda t: self._landed(slot, t))
        return task

    def outcome(self, slot: str, task: asyncio.Task[T], timeout_s: float | None) -> T:
        """What a started write came to once its wait of `timeout_s` is over. Still pending: DeviceTimeout naming
        the PCS, while the request runs on (a cancelled Modbus request would leave its late answer in the
        connection); the slot stays taken until it ends."""
        if not task.done():
            raise DeviceTimeout(self.pcs.name, f"{slot} write: no answer by the cycle's deadline ({timeout_s:.3g} s)")
        return task.result()

    async def within(self, slot: str, work: Coroutine[object, object, T], timeout_s: float | None) -> T:
        """`work` started in `slot` and awaited at most `timeout_s` (see start and outcome)."""
        task = self.start(slot, work)
        await asyncio.wait({task}, timeout=timeout_s)
        return self.outcome(slot, task, timeout_s)

    def _landed(self, slot: str, task: asyncio.Task) -> None:
        # runs before any waiter (within, write_units) resumes: callbacks run in the order they were added
        self._inflight.pop(slot, None)
        if not task.cancelled() and task.exception() is not None:
            log.debug("write ended with an error", extra={"device": self.pcs.name, "slot": slot})

    async def stop_writing(self) -> None:
        """End writes still waiting on a silent device (on close)."""
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        self._inflight.clear()

    def _has(self, link: DeviceLink, point: str) -> bool:
        return point in link.profile.points and link.profile.points[point].writable

    async def arm(self) -> None:
        """Arm the PCS reversion: after `reversion_timeout_s` without a new setpoint it goes to 0 W.
        Every setpoint write restarts the device's timer, and the cycle writes one every period."""
        if self._has(self.pcs, "wset_rvrt_tms"):
            await self.pcs.driver.write("wset_rvrt_tms", self.reversion_timeout_s)
        if self._has(self.pcs, "wset_rvrt"):
            await self.pcs.driver.write("wset_rvrt", 0.0)
        if self._has(self.pcs, "wset_ena"):
            await self.pcs.driver.write("wset_ena", 1)
        self.armed = True
        log.info("PCS reversion armed", extra={"device": self.pcs.name, "timeout_s": self.reversion_timeout_s})

    async def apply(self, decision: Decision) -> float | None:
        """Write the decision's setpoint, read it back (a mismatch raises ReadbackMismatch)."""
        if not isinstance(decision, Decision):
            raise TypeError("dispatch takes a Decision from the limit function, nothing else")
        if not self.armed:
            await self.arm()
        self.last_written_mw = decision.setpoint_mw
        readback = await self.pcs.driver.write("setpoint_mw", decision.setpoint_mw, verify=True)
        self.last_readback_mw = readback
        return readback

    def count_heartbeat(self, skip: set[str] = frozenset()) -> list[DeviceLink]:
        """Count the heartbeat up on every device that has one (a watchdog for the BMS/PCS side); devices
        that are failing right now (`skip`) are left alone until they answer reads again. A device read on its
        own rhythm writes it there, after its next good read; returns the devices whose count is written now."""
        self._heartbeat = (self._heartbeat + 1) % 65536
        links = [
            link
            for link in (self.pcs, self.bms)
            if link is not None and link.name not in skip and self._has(link, "heartbeat")
        ]
        for link in links:
            link.heartbeat_count = self._heartbeat
        return [link for link in links if not link.own_rhythm]

    async def write_heartbeat(self, links: list[DeviceLink]) -> None:
        # both at once: on connections of their own that takes one round trip off the cycle (behind one gateway
        # connection they queue on its turn, no slower than one after the other)
        results = await asyncio.gather(
            *(link.driver.write("heartbeat", self._heartbeat, verify=False) for link in links), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for extra in errors[1:]:  # the caller logs the first; the others would be lost
            log.warning("heartbeat write failed", extra={"device": getattr(extra, "device", None), "error": str(extra)})
        if errors:
            raise errors[0]


class UnitDispatch:
    """One unit's writes: its PCS's setpoint with read-back and its reversion heartbeat, its last setpoint (for
    its ramp) and its read-back hold. A failed write is this unit's alone: it counts against its PCS (so the unit
    goes stale and to 0 MW) and its alarm names the PCS; the other units go on."""

    def __init__(self, links: UnitLinks, limits: Limits, alarms: Alarms):
        self.links = links
        self.unit = links.unit
        self.limits = limits  # the unit's own (allocation.unit_limits)
        self.alarms = alarms
        self.dispatcher = Dispatcher(links.pcs, links.bms, links.pcs.config.reversion_timeout_s)
        self.previous_mw = 0.0  # what its PCS was last told and took (its ramp starts there)
        self.readback_hold_until = 0.0
        self.mismatched = False  # its last write read back another value (settle)

    def safe(self, now: float) -> Decision:
        """0 MW for this unit, through the limit function like every setpoint."""
        return limit(0.0, Snapshot(ts=now), self.limits, self.previous_mw, 0.0, "stopped")

    def begin(self, decision: Decision) -> asyncio.Task[float | None] | DeviceError:
        """The unit's setpoint write (with read-back) started; or why it cannot start (its last is still out)."""
        d = self.dispatcher
        try:
            return d.start("setpoint", d.apply(decision))
        except DeviceError as e:
            return e

    def settle(
        self, decision: Decision, job: asyncio.Task[float | None] | DeviceError, now: float, timeout_s: float
    ) -> float | None:
        """What the write `begin` started came to, once the wait for it (at most `timeout_s`) is over: the
        read-back, or None when it failed (counted against the PCS, so the unit goes stale and to 0 MW) or read
        back another value (then `mismatched`: the unit is held safe, and the caller writes it 0 MW)."""
        pcs, d = self.links.pcs, self.dispatcher
        self.mismatched = False
        try:
            if isinstance(job, DeviceError):
                raise job
            readback = d.outcome("setpoint", job, timeout_s)
        except ReadbackMismatch as e:
            self.readback_hold_until = now + READBACK_HOLD_S
            self.alarms.raise_(readback_key(pcs.name), e.cause, f"unit {self.unit}: {e}")
            self.mismatched = True
            self.previous_mw = 0.0
            return None
        except DeviceError as e:
            # the write did not land: count it against the device so it goes stale and the unit safe
            pcs.count_failure(e)
            d.armed = False  # re-arm the reversion after the device is back
            log.warning(
                "setpoint write failed",
                extra={"device": pcs.name, "unit": self.unit, "cause": e.cause, "error": str(e)},
            )
            self.previous_mw = 0.0 if decision.setpoint_mw == 0.0 else self.previous_mw
            return None
        self.previous_mw = decision.setpoint_mw
        self.alarms.clear(readback_key(pcs.name))
        return readback

    async def write_safe(self, now: float, timeout_s: float) -> None:
        """0 MW after a read-back mismatch (through the limit function), waiting at most `timeout_s`."""
        d = self.dispatcher
        try:
            await d.within("setpoint", d.apply(self.safe(now)), timeout_s)
        except DeviceError as e:
            log.error(
                "safe-state write failed", extra={"device": self.links.pcs.name, "unit": self.unit, "error": str(e)}
            )
        self.previous_mw = 0.0

    async def write_heartbeat(self, timeout_s: float) -> None:
        """Count the heartbeat up and write it to the unit's devices that the cycle writes it to (not those read
        on their own rhythm, nor those failing now), waiting at most `timeout_s`; a failure is logged."""
        pcs, d = self.links.pcs, self.dispatcher
        try:
            links = d.count_heartbeat(skip={link.name for link in (self.links.bms, pcs) if link.failures})
            if links:  # (devices read on their own rhythm write it there: nothing on the wire now)
                await d.within("heartbeat", d.write_heartbeat(links), timeout_s)
        except DeviceError as e:
            log.warning("heartbeat write failed", extra={"device": e.device, "cause": e.cause, "error": str(e)})


async def write_units(
    units: list[UnitDispatch],
    decisions: list[Decision],
    now: float,
    budget_s: Callable[[], float],
    heartbeat: bool = True,
) -> list[float | None]:
    """Every unit's setpoint written at once (with read-back), then its heartbeats (unless not `heartbeat`: the
    fast path's writes between cycles), each wait bounded by what `budget_s()` says is left of the cycle's
    deadline. One task a unit and one wait for them all: the cycle's cost grows by as little as it can per unit.
    A failed write is that unit's alone. Returns each unit's read-back (None where its write failed)."""
    jobs = [u.begin(d) for u, d in zip(units, decisions)]
    started = [job for job in jobs if not isinstance(job, DeviceError)]
    timeout_s = budget_s()
    if started:
        await asyncio.wait(started, timeout=timeout_s)
    readbacks = [u.settle(d, job, now, timeout_s) for u, d, job in zip(units, decisions, jobs)]
    mismatched = [u for u in units if u.mismatched]
    if mismatched:
        timeout_s = budget_s()
        await asyncio.gather(*(u.write_safe(now, timeout_s) for u in mismatched))
    if heartbeat:
        beating = [u for u, r in zip(units, readbacks) if r is not None]
        if beating:
            timeout_s = budget_s()
            await asyncio.gather(*(u.write_heartbeat(timeout_s) for u in beating))
    return readbacks
