"""The ground every layer stands on: a reading, what a driver needs of a clock, its counters, and the one small
async interface every device driver offers the control cycle. Imports nothing of ours."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Reading:
    """One point's value in canonical units, with the time (Unix s, from the injected clock) it was read.

    A reading the driver could not trust (a marker value, outside its plausible range, not finite, a bad OPC UA
    status) has value None, `raw` (what the device sent, as text) and `invalid` (why it is unknown)."""

    value: float | int | str | None
    ts: float
    raw: str | None = None
    invalid: str | None = None


class TimeSource(Protocol):
    """What a driver needs of a clock: the time to stamp readings with, and how fast it runs against real time
    (an OPC UA subscription's age is real seconds). `controller.clock.Clock` is one."""

    speed: float

    def now(self) -> float:
        """Unix seconds on this time source."""


class WallTime:
    """The real clock, for a driver given none (commissioning tools, tests of one driver)."""

    speed = 1.0

    def now(self) -> float:
        return time.time()


@dataclass
class DriverStats:
    """What a driver counts about its connection: one set of counters for every protocol (the OPC UA ones stay
    0 on Modbus). The cycle's own count of failed reads in a row (DeviceLink.failures) decides staleness."""

    requests: int = 0
    errors: int = 0
    reads: int = 0
    connect_attempts: int = 0
    connects: int = 0
    last_latency_s: float = 0.0  # of the last request
    last_read_latency_s: float = 0.0  # of the last whole read()
    last_error: str | None = None
    polls: int = 0  # OPC UA: reads served by a batched Read request
    served_from_subscription: int = 0  # OPC UA
    notifications: int = 0  # OPC UA
    subscriptions: int = 0  # OPC UA: subscriptions created
    subscription_failures: int = 0  # OPC UA: failed to create, or went quiet

    def failed(self, what: str, why: str) -> None:
        """Count one failed request or connect, and remember what failed and why (for logs and tests)."""
        self.errors += 1
        self.last_error = f"{what}: {why}"


class DeviceDriver(Protocol):
    """A device read and written through its profile. Values are in canonical units (MW, %, °C, s).

    Every method raises a `drivers.errors.DeviceError` subclass on failure, never a library exception.
    """

    name: str

    async def connect(self) -> None:
        """Open the connection (idempotent). Failure raises Disconnected/DeviceTimeout."""

    async def read(self) -> dict[str, Reading]:
        """Read every point of the profile (as few requests as possible); readings carry their read time."""

    async def write(self, point: str, value: float, verify: bool = True) -> float | None:
        """Write one writable point (range-checked against the profile); with verify, read it back and
        raise ReadbackMismatch if it differs; returns the read-back value (canonical units)."""

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
