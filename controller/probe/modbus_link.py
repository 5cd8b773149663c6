"""One probed Modbus unit: the drivers' ModbusDriver (typed errors, per-request timeout) with a bounded retry,
and failures worded for a site engineer: host, port, unit id and the request that was not answered."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.errors import DeviceTimeout, Disconnected, ModbusError
from drivers.modbus import ModbusDriver
from drivers.profile import Function, Profile

_EMPTY = Profile(name="probe", protocol="modbus", points={})

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}
GATEWAY_CODES = (10, 11)


class NoAnswer(Exception):
    """The unit did not answer (timeouts, refused or lost connection) after every try; the message says where."""


@dataclass
class ProbeTarget:
    host: str
    port: int
    unit_id: int
    timeout_s: float = 1.0
    retries: int = 1

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port} unit id {self.unit_id}"


class ModbusLink:
    """Raw reads for the probe. A Modbus exception is an answer (ModbusError passes through); a timeout or a lost
    connection is retried `retries` times with a fresh connection, then raised as NoAnswer."""

    def __init__(self, target: ProbeTarget):
        self.target = target
        self.requests = 0
        self._driver = self._new_driver()

    def _new_driver(self) -> ModbusDriver:
        t = self.target
        return ModbusDriver(
            f"probe {t.where}",
            _EMPTY,
            t.host,
            t.port,
            unit_id=t.unit_id,
            timeout_s=t.timeout_s,
            backoff_max_s=t.timeout_s,
        )

    async def read(self, function: Function, address: int, count: int) -> list[int]:
        what = f"read {function} {address}+{count}"
        last = ""
        for _ in range(1 + self.target.retries):
            self.requests += 1
            try:
                return await self._driver.read_raw(function, address, count)
            except ModbusError:
                raise
            except (DeviceTimeout, Disconnected) as e:
                last = e.message
                # a refused connect leaves the driver backing off: a retry starts from a fresh one
                await self._driver.close()
                self._driver = self._new_driver()
        tries = 1 + self.target.retries
        raise NoAnswer(
            f"{self.target.where}: no answer to {what} ({tries} tr{'y' if tries == 1 else 'ies'}, "
            f"{self.target.timeout_s:g} s each; last: {last})"
        )

    async def close(self) -> None:
        await self._driver.close()


def exception_text(code: int) -> str:
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
