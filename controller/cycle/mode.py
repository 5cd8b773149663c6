"""The operating mode: the names a mode may have (the one definition the cycle, the limit function, metrics and
the faces use), the mode the controller is in with a manual setpoint's expiry, and the mode machine's rules
(a request checked, a stored mode restored, expiry)."""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("auto", "manual", "stopped")


@dataclass
class ModeState:
    """The current mode; in manual, the setpoint and when it expires unless renewed (clock seconds)."""

    mode: str = "auto"
    manual_setpoint_mw: float = 0.0
    manual_expires_ts: float | None = None
    source: str = "startup"


def requested(
    mode: str, setpoint_mw: float | None, expires_s: float | None, source: str, now: float, default_timeout_s: float
) -> ModeState:
    """The mode a request asks for, checked (a ValueError names the field): a manual setpoint must be finite and
    expires after `expires_s` (default `default_timeout_s`, at most a day) unless renewed."""
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)} (got {mode!r})")
    if mode != "manual":
        return ModeState(mode, 0.0, None, source)
    if setpoint_mw is None or not math.isfinite(setpoint_mw):
        raise ValueError("setpoint_mw: a finite number is required in manual mode")
    timeout = default_timeout_s if expires_s is None else expires_s
    if not 0 < timeout <= 86400:
        raise ValueError(f"expires_s: must be > 0 and <= 86400 (got {timeout:g})")
    return ModeState("manual", float(setpoint_mw), now + timeout, source)


def restored(saved: object) -> ModeState | None:
    """The mode stored by a previous run (`Store.get_state("mode")`), or None when there is none usable."""
    if isinstance(saved, dict) and saved.get("mode") in MODES:
        return ModeState(
            **{k: saved[k] for k in ("mode", "manual_setpoint_mw", "manual_expires_ts", "source") if k in saved}
        )
    return None


def expired(m: ModeState, now: float) -> bool:
    """A manual setpoint past its expiry (the cycle then goes back to auto)."""
    return m.mode == "manual" and m.manual_expires_ts is not None and now >= m.manual_expires_ts
