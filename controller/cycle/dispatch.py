"""The only code that writes setpoints: it takes a `Decision` from the limit function, nothing else.

It also arms the PCS's own reversion timeout (SunSpec WSetRvrtTms, reversion to 0 W), so the plant falls
back to 0 MW by itself if the controller stops, and writes the heartbeats.
"""

from __future__ import annotations

import asyncio
import logging

from controller.cycle.devices import DeviceLink
from controller.cycle.limits import Decision

log = logging.getLogger("bess.dispatch")


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

    async def heartbeat(self, skip: set[str] = frozenset()) -> None:
        """Count the heartbeat up on every device that has one (a watchdog for the BMS/PCS side); devices
        that are failing right now (`skip`) are left alone until they answer reads again."""
        self._heartbeat = (self._heartbeat + 1) % 65536
        links = [
            link
            for link in (self.pcs, self.bms)
            if link is not None and link.name not in skip and self._has(link, "heartbeat")
        ]
        # each device has its own connection: writing both at once takes one round trip off every cycle
        results = await asyncio.gather(
            *(link.driver.write("heartbeat", self._heartbeat, verify=False) for link in links), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for extra in errors[1:]:  # the caller logs the first; the others would be lost
            log.warning("heartbeat write failed", extra={"device": getattr(extra, "device", None), "error": str(extra)})
        if errors:
            raise errors[0]
