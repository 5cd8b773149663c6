"""Faults a simulator face can be told to show at run time (tests, demo control app): stop answering, answer
late, answer with a Modbus exception, drop connections, raise BMS alarm or fault bits, serve a raw value for
any point (garbage, marker values) and, on the OPC UA face, a StatusCode."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any


@dataclass
class Faults:
    """Mutable; every face reads it on each request, so a change applies to the next request."""

    silent: bool = False  # accept requests, never answer (the client times out)
    delay_s: float = 0.0  # answer this many real seconds late
    exception_code: int | None = None  # answer every request with this Modbus exception code
    drop: bool = False  # close connections as they arrive, and the open ones
    alarm_bits: int = 0  # BMS alarm bits raised on top of the model's own
    fault_bits: int = 0  # BMS fault bits (a fault stops the PCS)
    # point name -> what the face serves instead of the model's value: Modbus faces the raw register
    # content (a list of registers, checked by the face), the OPC UA face the variable's value
    raw: dict[str, Any] = field(default_factory=dict)
    status_codes: dict[str, int] = field(default_factory=dict)  # OPC UA: point name -> StatusCode served

    def clear(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _default(f))

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) != _default(f) for f in fields(self))

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _default(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default
