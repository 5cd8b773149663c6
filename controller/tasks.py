"""Ending background tasks (a face's, a service's or the cycle's own asyncio task): cancel one and wait until it
has ended, so nothing of it runs after its owner's stop() returns; and `Background`, the one task an owner starts
once and stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Background", "cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel `task` and wait for it to end. Its CancelledError is the expected end and swallowed; any other
    exception it ended with is raised here, as awaiting it would."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


class Background:
    """An owner's one background task, named `name`: start() runs `run()` unless it already runs; stop() cancels
    it and waits for it to end (cancel_and_wait); both may be called again."""

    def __init__(self, name: str):
        self.name = name
        self.task: asyncio.Task | None = None

    def start(self, run: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        if self.task is None:
            self.task = asyncio.create_task(run(), name=self.name)

    async def stop(self) -> None:
        if self.task is not None:
            await cancel_and_wait(self.task)
            self.task = None
