"""systemd notify protocol (READY=1, WATCHDOG=1, STATUS=...) over $NOTIFY_SOCKET, no dependency needed."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("bess.systemd")


class Notifier:
    """Sends sd_notify datagrams when run under systemd (Type=notify); a no-op otherwise."""

    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._addr = None
        if address:
            if address.startswith("@"):  # abstract namespace
                address = "\0" + address[1:]
            self._addr = address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ready_sent = False

    @property
    def watchdog_interval_s(self) -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        return int(usec) / 1e6 if usec and usec.isdigit() else None

    def notify(self, state: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(state.encode(), self._addr)
        except OSError as e:
            log.warning("sd_notify failed", extra={"state": state, "error": str(e)})

    def ready(self) -> None:
        if not self.ready_sent:
            self.notify("READY=1\nSTATUS=controlling")
            self.ready_sent = True

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
