"""The process image: readings of one cycle, frozen and timestamped per point, that every decision reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.base import Reading

__all__ = ["Reading", "InvalidReading", "DeviceHealth", "Snapshot"]


@dataclass(frozen=True, slots=True)
class InvalidReading:
    """A point whose reading this cycle is unknown because the device sent something implausible."""

    device: str
    point: str
    raw: str
    why: str

    @property
    def key(self) -> str:
        """The alarm key; for an alarm/fault word it is also the entry in Snapshot.alarms."""
        return f"{self.device}:invalid_{self.point}"

    @property
    def message(self) -> str:
        return f"{self.device} {self.point}: raw value {self.raw} is {self.why}: treated as unknown"


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """How a device's last polls went. `stale` means its readings are unknown from now on."""

    name: str
    ok: bool
    stale: bool
    last_good_ts: float | None
    failures: int = 0
    cause: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the controller knows at `ts`. None means unknown (never read, or stale): no power that way."""

    ts: float
    soc_pct: float | None = None
    power_mw: float | None = None
    temperature_max_c: float | None = None
    temperature_min_c: float | None = None
    bms_allowed_charge_mw: float | None = None
    bms_allowed_discharge_mw: float | None = None
    setpoint_readback_mw: float | None = None
    alarms: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    comm_loss: tuple[str, ...] = ()
    devices: tuple[DeviceHealth, ...] = ()
    points: dict[str, Reading] = field(default_factory=dict)
    invalid: tuple[InvalidReading, ...] = ()  # readings that are unknown because implausible (an alarm each)

    @property
    def temperature_c(self) -> float | None:
        return self.temperature_max_c
