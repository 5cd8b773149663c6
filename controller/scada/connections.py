"""What the SCADA faces share against a connect flood: the daemon's descriptors and its event loop are the plant's
too. Each face caps its open connections (`scada.<face>.max_connections`), closes a client past the cap at once,
and listens with a short kernel queue, which is also how many connections asyncio accepts in one turn of the loop
that the control cycle shares (web/server.py ACCEPT_WAVE measures why). Refusals are logged once, then as a count
at most every REFUSAL_LOG_S: a flood must not flood the log either.

The finding: 2,000 connections held open on the Modbus face under RLIMIT_NOFILE 1024 took the daemon to 1,024
descriptors; the PCS could not reconnect after a drop, the web stopped answering, and asyncio logged 1.9 million
"socket.accept() out of system resource" lines.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable

LISTEN_QUEUE = 16  # the web's ACCEPT_WAVE (web/server.py) for the same reason; web may not import controller
REFUSAL_LOG_S = 10.0


def shorten_listen_queue(sockets: Iterable, length: int = LISTEN_QUEUE) -> None:
    """listen(`length`) again on a server's listening sockets (Linux takes the new queue length on a listening
    socket). For servers whose library opens the socket without a backlog of ours (asyncio's default is 100)."""
    for s in sockets:
        dup = socket.socket(fileno=os.dup(s.fileno()))  # the same socket; asyncio's TransportSocket has no listen()
        try:
            dup.listen(length)
        finally:
            dup.close()


class RefusalLog:
    """Connections a face refused, logged as a warning on the first and then as a count at most every
    REFUSAL_LOG_S (per reason)."""

    def __init__(self, logger: logging.Logger, face: str):
        self.logger = logger
        self.face = face
        self.total = 0
        self._since: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    def refused(self, reason: str, client: str | None) -> None:
        self.total += 1
        self._since[reason] = self._since.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -REFUSAL_LOG_S) >= REFUSAL_LOG_S:
            self.logger.warning(
                f"{self.face} connection refused: {reason}",
                extra={"client": client, "refused_since_last_log": self._since[reason], "refused_total": self.total},
            )
            self._logged_at[reason] = now
            self._since[reason] = 0


class RefusalFilter(logging.Filter):
    """On a library's logger that warns once per refused connection (asyncua: "Refusing connection from ..."):
    drops those records and counts them into a RefusalLog instead."""

    def __init__(self, prefix: str, refusals: RefusalLog, reason: str):
        super().__init__()
        self.prefix = prefix
        self.refusals = refusals
        self.reason = reason

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.prefix):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            self.refusals.refused(self.reason, str(peer[0]) if isinstance(peer, tuple) else None)
            return False
        return True
