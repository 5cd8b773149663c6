"""The one small async interface every device driver offers the control cycle."""

from __future__ import annotations

from typing import Protocol

from controller.snapshot import Reading


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
