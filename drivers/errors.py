"""Typed device failures that drivers raise and the control cycle turns into alarms and the safe state."""

from __future__ import annotations


class DeviceError(Exception):
    """Base of every device failure; `device` names the device, `cause` is a short machine-readable tag."""

    cause = "device_error"

    def __init__(self, device: str, message: str):
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message


class DeviceTimeout(DeviceError):
    """The device did not answer within the request timeout."""

    cause = "timeout"


class Disconnected(DeviceError):
    """The connection is down (refused, reset, closed by the peer)."""

    cause = "disconnected"


class ModbusError(DeviceError):
    """The device answered with a Modbus exception response."""

    cause = "modbus_exception"

    def __init__(self, device: str, code: int, message: str = ""):
        super().__init__(device, message or f"Modbus exception code {code}")
        self.code = code


class OpcUaError(DeviceError):
    """The OPC UA server answered with a bad status code."""

    cause = "opcua_bad_status"

    def __init__(self, device: str, status: str, message: str = ""):
        super().__init__(device, message or f"OPC UA status {status}")
        self.status = status


class ReadbackMismatch(DeviceError):
    """A written value did not read back as written."""

    cause = "readback_mismatch"

    def __init__(self, device: str, point: str, written: float, read: float | None):
        super().__init__(device, f"{point}: wrote {written}, read back {read}")
        self.point = point
        self.written = written
        self.read = read


class WriteRefused(DeviceError):
    """A write was refused before it reached the wire (point not writable, value out of range)."""

    cause = "write_refused"


class ProfileError(ValueError):
    """A device profile is malformed; the message names the file and the point."""
