"""Faults a simulator face can be told to show at run time (tests, demo control app): stop answering, answer
late, answer with a Modbus exception, drop connections, raise BMS alarm or fault bits."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Faults:
    """Mutable; every face reads it on each request, so a change applies to the next request."""

    silent: bool = False                 # accept requests, never answer (the client times out)
    delay_s: float = 0.0                 # answer this many real seconds late
    exception_code: int | None = None    # answer every request with this Modbus exception code
    drop: bool = False                   # close connections as they arrive, and the open ones
    alarm_bits: int = 0                  # BMS alarm bits raised on top of the model's own
    fault_bits: int = 0                  # BMS fault bits (a fault stops the PCS)

    def clear(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) != f.default for f in fields(self))

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
