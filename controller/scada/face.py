"""The SCADA face: the Modbus TCP and OPC UA servers the site SCADA reads and (allow-listed) writes.

Both faces share one `WriteLimiter`: every accepted mode/setpoint write wakes the control cycle, so a write
storm over either face (or both) would otherwise make the controller cycle flat out.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from controller.cycle.loop import Controller

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
            logger.warning(message, extra={**extra, "refused_since_last_log": self.refused - self._refused_at_last_log,
                                           "write_rate_per_s": self.rate_per_s, "write_burst": self.burst})
            self._last_log = now
            self._refused_at_last_log = self.refused

    @classmethod
    def for_controller(cls, controller: "Controller") -> "WriteLimiter":
        cfg = controller.config.scada
        return cls(cfg.write_rate_per_s, cfg.write_burst)


class ScadaFace:
    """Both SCADA servers, as configured (either can be off), with one write limiter between them."""

    def __init__(self, controller: "Controller", cfg, state_dir):
        self.parts = []
        self.limiter = WriteLimiter.for_controller(controller)
        if cfg.modbus.enabled:
            from controller.scada.modbus import ScadaModbusServer

            self.parts.append(ScadaModbusServer(controller, cfg.modbus, limiter=self.limiter))
        if cfg.opcua.enabled:
            from controller.scada.opcua import ScadaOpcUaServer

            self.parts.append(ScadaOpcUaServer(controller, cfg.opcua, state_dir, demo=controller.config.mode == "demo",
                                               limiter=self.limiter))

    async def start(self) -> None:
        for p in self.parts:
            await p.start()

    async def stop(self) -> None:
        for p in reversed(self.parts):
            await p.stop()
