"""The start/stop bookkeeping a simulator shares with the others: the servers it started (stopped in reverse
order, each whatever the others do) and its background tick task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("bess.sim")


class SimulatorParts:
    """Base of a simulator made of parts: subclasses append each started part to `_started` and may run one
    background `_tick` task; `stop()` (and `async with`) ends both."""

    def __init__(self) -> None:
        self._tick: asyncio.Task | None = None
        self._started: list[Any] = []

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick
            self._tick = None
        while self._started:
            part = self._started.pop()
            try:
                await part.stop()
            except Exception:  # noqa: BLE001 - stop the other parts whatever one of them does
                log.exception("stopping a simulator part failed", extra={"part": type(part).__name__})

    async def start(self) -> None:
        raise NotImplementedError

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
