"""The cycle's named phases and the one narrow interface faces attach to (`Faces`): a callback per phase, handed
the frozen PlantState (never the Controller), plus the accepted-trade event and the latest state on demand.

A cycle runs READ (devices → snapshot) → DECIDE (target → limit) → WRITE (setpoint, read-back, heartbeat) →
AFTER_WRITE (the cycle's PlantState is published: metrics, websocket, telemetry, the uplink's quiet window,
which must be set before the next cycle is due) → IDLE (the cycle is over, whether it completed or failed;
the web face's gate opens). Callbacks run on the event loop, in attach order, and must not block: a face with
slow work hands it to its own task or thread. One that raises is logged and the others still run.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, Callable

from controller.cycle.state import PlantState

log = logging.getLogger("bess.cycle")


class Phase(enum.Enum):
    READ = "read"
    DECIDE = "decide"
    WRITE = "write"
    AFTER_WRITE = "after_write"
    IDLE = "idle"


class Event(enum.Enum):
    TRADE_ACCEPTED = "trade_accepted"  # the callback gets the accepted trade (controller.trading.schedule.Trade)


Point = Phase | Event


class Faces:
    """Where faces attach. The controller calls `fire`; faces call `attach` (from the composition root) and
    `latest`. Everything here runs on the event loop."""

    def __init__(self) -> None:
        self._hooks: dict[Point, list[Callable[[Any], None]]] = {p: [] for p in (*Phase, *Event)}
        self._latest = PlantState()

    def attach(self, point: Point, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call `callback(state)` at every `point` (`callback(trade)` for Event.TRADE_ACCEPTED); returns a
        function that detaches it."""
        hooks = self._hooks[point]
        hooks.append(callback)

        return lambda: self.detach(point, callback)

    def detach(self, point: Point, callback: Callable[[Any], None]) -> None:
        if callback in self._hooks[point]:
            self._hooks[point].remove(callback)

    def attached(self, point: Point) -> tuple[Callable[[Any], None], ...]:
        return tuple(self._hooks[point])

    def latest(self) -> PlantState:
        """The newest PlantState (the last cycle's, or newer when the mode or an alarm changed since)."""
        return self._latest

    def update(self, state: PlantState) -> None:
        """The controller's: a new state, without firing a phase (a mode change between cycles)."""
        self._latest = state

    def fire(self, point: Point, value: Any = None) -> None:
        """The controller's: run every callback of `point` with `value` (the latest state when None)."""
        hooks = self._hooks[point]
        if not hooks:
            return
        arg = self._latest if value is None else value
        for cb in tuple(hooks):
            try:
                cb(arg)
            except Exception:
                log.exception(
                    "face callback failed",
                    extra={"phase": point.value, "callback": getattr(cb, "__qualname__", repr(cb))},
                )
