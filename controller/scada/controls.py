"""What a SCADA write does, once for both faces (Modbus TCP and OPC UA): the pending manual setpoint and expiry a
client writes ahead of the mode change that uses them, and the token bucket every mode/setpoint write passes.

Both faces share one `WriteLimiter`: every accepted mode/setpoint write wakes the control cycle, so a write
storm over either face (or both) would otherwise make the controller cycle flat out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from controller.commands import PlantCommands
from controller.config import Scada, SiteConfig
from controller.cycle.state import PlantState
from controller.scada.points import MODE_NAMES
from controller.store import Store


@dataclass(frozen=True)
class ScadaPlant:
    """What a SCADA server is given of the plant (by the composition root, controller.daemon): the commands it may
    give, the newest frozen PlantState, the site file, and the audit log it records accepted writes in."""

    commands: PlantCommands
    latest: Callable[[], PlantState]
    site: SiteConfig
    store: Store
    now: Callable[[], float]  # the controller's clock: the audit log's time

    def audit(self, source: str, action: str, details: dict[str, Any]) -> None:
        self.store.audit(source, action, details, self.now())


REFUSAL_LOG_EVERY_S = 10.0  # a write storm logs its refusals once per this, with the count, not once per write


class WriteLimiter:
    """A token bucket: `burst` writes back to back, then `rate_per_s` sustained. Time is real (monotonic):
    the point is the load on this machine, whatever speed the controller's clock runs at."""

    def __init__(self, rate_per_s: float, burst: int, now: Callable[[], float] = time.monotonic):
        if not rate_per_s > 0 or burst < 1:
            raise ValueError(f"write limiter: rate_per_s must be > 0 and burst >= 1 (got {rate_per_s}, {burst})")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._now = now
        self._tokens = float(burst)
        self._last = now()
        self.refused = 0
        self._refused_at_last_log = 0
        self._last_log = -float("inf")

    def available(self) -> float:
        """Writes that may go ahead right now (fractions are on their way)."""
        now = self._now()
        self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._last) * self.rate_per_s)
        self._last = now
        return self._tokens

    def allow(self) -> bool:
        """Take one token if there is one: True means the write may go ahead."""
        if self.available() >= 1.0:
            self._tokens -= 1.0
            return True
        self.refused += 1
        return False

    def log_refusal(self, logger: logging.Logger, message: str, **extra) -> None:
        """Log a write refused by the rate, at most once per REFUSAL_LOG_EVERY_S, with the count since."""
        now = self._now()
        if now - self._last_log >= REFUSAL_LOG_EVERY_S:
            logger.warning(
                message,
                extra={
                    **extra,
                    "refused_since_last_log": self.refused - self._refused_at_last_log,
                    "write_rate_per_s": self.rate_per_s,
                    "write_burst": self.burst,
                },
            )
            self._last_log = now
            self._refused_at_last_log = self.refused

    @classmethod
    def for_scada(cls, cfg: Scada) -> "WriteLimiter":
        return cls(cfg.write_rate_per_s, cfg.write_burst)


class PendingControls:
    """A face's control points as its clients last wrote them. A setpoint written in manual mode renews manual
    mode with it; one written in another mode waits for `mode` = manual. The expiry starts at the configured
    `cycle.manual_timeout_s` and applies to the next manual setpoint."""

    def __init__(self, plant: ScadaPlant, source: str):
        self.commands = plant.commands
        self.latest = plant.latest
        self.source = source  # names the face in the mode's source and the audit log
        self.setpoint_mw = 0.0
        self.expires_s: float = plant.site.cycle.manual_timeout_s

    def apply(self, new: dict[str, float]) -> None:
        """One accepted write of one or more control points (range-checked by the face). Raises ValueError when
        the controller refuses the mode change (nothing else changes then)."""
        c = self.commands
        if "manual_expires_s" in new:
            self.expires_s = new["manual_expires_s"]
        if "manual_setpoint_mw" in new:
            self.setpoint_mw = new["manual_setpoint_mw"]
            # latest() is newer than the last cycle's state when the mode changed since: a setpoint written just
            # after mode = manual renews it
            if self.latest().manual and "mode" not in new:  # renew
                c.set_mode("manual", self.setpoint_mw, self.expires_s, source=self.source)
        if "mode" in new:
            mode = MODE_NAMES.get(int(new["mode"]))
            if mode is None:
                raise ValueError(f"mode: unknown code {new['mode']}")
            manual = mode == "manual"
            c.set_mode(
                mode, self.setpoint_mw if manual else None, self.expires_s if manual else None, source=self.source
            )
