"""Injected time: a real clock and a sped-up one, so tests and the demo can run a day in a minute.

`now()` is Unix seconds (UTC wall time, scaled); `monotonic()` never goes back. `sleep(s)` sleeps `s`
*clock* seconds, i.e. s / speed real seconds.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone


class Clock:
    """Wall time at `speed`× real time from the moment it was made (speed 1 is the real clock)."""

    def __init__(self, speed: float = 1.0, start: float | None = None):
        if speed <= 0:
            raise ValueError(f"clock speed must be > 0 (got {speed})")
        self.speed = speed
        self._real0 = time.time()
        self._mono0 = time.monotonic()
        self._start = self._real0 if start is None else start

    def now(self) -> float:
        if self.speed == 1.0 and self._start == self._real0:
            return time.time()
        return self._start + (time.monotonic() - self._mono0) * self.speed

    def monotonic(self) -> float:
        return (time.monotonic() - self._mono0) * self.speed

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), tz=timezone.utc)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def real_seconds(self, clock_seconds: float) -> float:
        """How many real seconds `clock_seconds` of this clock take."""
        return clock_seconds / self.speed


def iso(ts: float) -> str:
    """Unix seconds -> ISO 8601 UTC with Z, millisecond precision."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """ISO 8601 (with Z or an offset) -> Unix seconds; a naive time is refused."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone; use UTC with Z")
    return dt.timestamp()
