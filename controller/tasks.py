"""Ending a background task (a face's, a service's or the cycle's own asyncio task): cancel it and wait until it
has ended, so nothing of it runs after its owner's stop() returns."""

from __future__ import annotations

import asyncio

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel `task` and wait for it to end. Its CancelledError is the expected end and swallowed; any other
    exception it ended with is raised here, as awaiting it would."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
