"""The operating mode: the names a mode may have (the one definition the cycle, the limit function, metrics and
the faces use) and the mode the controller is in, with a manual setpoint's expiry."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("auto", "manual", "stopped")


@dataclass
class ModeState:
    """The current mode; in manual, the setpoint and when it expires unless renewed (clock seconds)."""

    mode: str = "auto"
    manual_setpoint_mw: float = 0.0
    manual_expires_ts: float | None = None
    source: str = "startup"
