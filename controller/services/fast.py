"""The FCR fast path: while FCR is on, read the POI meter's frequency every fast_path_s and hand it to the
controller, which decides (the same limit function, on the cycle's latest frozen snapshot) and writes under
the cycle's own write lock: one writer, and no waiting for the next 1 s cycle.

This module only keeps the rhythm: reading and acting are the callables it is given (the controller's), so it
knows nothing of devices or of the cycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from controller.tasks import Background

log = logging.getLogger("bess.services")

RAMP_RETRY_MIN_S = 0.01  # a ramp-bound write is followed up no sooner than this (at most ~10 extra rounds a period)

__all__ = ["FastPath"]


class FastPath:
    """`read()` -> None (it stores what it read; raises DeviceError when the meter does not answer);
    `act()` -> whether a setpoint was written; `active()` -> whether to run a round now (FCR on);
    `ramp_left_s()` -> after a write the ramp held back, how long the ramp needs for the rest (None: it did not):
    the next round comes then (at least RAMP_RETRY_MIN_S later) instead of a whole period later.

    Its counters are the fast path's only ones (status/metrics take them from here through FcrState): `rounds`
    (a good read each), `writes` (of them, those that wrote a new setpoint), `failures` (a failed read, or a
    round that raised)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[None]],
        act: Callable[[], Awaitable[bool]],
        active: Callable[[], bool],
        period_s: float,
        ramp_left_s: Callable[[], float | None] = lambda: None,
    ):
        self._read = read
        self._ramp_left_s = ramp_left_s
        self._act = act
        self._active = active
        self.period_s = period_s
        self.rounds = 0
        self.writes = 0
        self.failures = 0
        self._runner = Background("fcr-fast-path")
        self._last_error: str | None = None

    def start(self) -> None:
        self._runner.start(self._run)

    async def stop(self) -> None:
        await self._runner.stop()

    async def round(self) -> bool:
        """One round: read, then act. Returns whether it wrote. A failed read is logged once per kind."""
        try:
            await self._read()
        except Exception as e:  # DeviceError mostly; a driver bug must not end FCR either: logged, counted
            self.failures += 1
            text = f"{type(e).__name__}: {e}"
            if text != self._last_error:
                log.warning("FCR fast path: meter read failed", extra={"error": text})
            self._last_error = text
            return False
        self._last_error = None
        self.rounds += 1
        wrote = await self._act()
        if wrote:
            self.writes += 1
        return wrote

    async def _run(self) -> None:
        next_t = time.monotonic()
        while True:  # until stop() cancels it
            wrote = False
            if self._active():
                try:
                    wrote = await self.round()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.failures += 1
                    log.exception("FCR fast path round failed")
            next_t += self.period_s
            now = time.monotonic()
            if next_t < now:
                next_t = now  # never a burst of catch-up rounds
            left = self._ramp_left_s() if wrote else None
            if left is not None:  # the ramp held this write back: finish the step as soon as the ramp allows
                next_t = min(next_t, now + max(RAMP_RETRY_MIN_S, left))
            await asyncio.sleep(next_t - now)
