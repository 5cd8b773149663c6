"""Reconnect backoff shared by the drivers: the first retry after 0.1 s, then double the wait for each failure
in a row, up to a cap. While the wait runs, a request fails at once with Disconnected. It does not wait for a
socket to time out again, so one unreachable device cannot slow the control cycle."""

from __future__ import annotations

import time

from drivers.errors import Disconnected

BACKOFF_MIN_S = 0.1


class Backoff:
    def __init__(self, max_s: float, min_s: float = BACKOFF_MIN_S):
        self.max_s = max_s
        self.min_s = min_s
        self.delay_s = 0.0  # the current wait; 0 after a success
        self.retry_at = 0.0  # time.monotonic() of the next allowed attempt

    def failed(self) -> float:
        """One more failure in a row: push the next attempt out and return the wait."""
        self.delay_s = min(self.max_s, max(self.min_s, 2 * self.delay_s))
        self.retry_at = time.monotonic() + self.delay_s
        return self.delay_s

    def succeeded(self) -> None:
        self.delay_s = 0.0

    def refuse_while_waiting(self, device: str, peer: str) -> None:
        """Raise Disconnected while the wait runs, so a connect fails at once instead of timing out again."""
        wait_s = self.wait_s()
        if wait_s > 0:
            raise Disconnected(device, f"{peer} unreachable, next attempt in {wait_s:.2f} s")

    def wait_s(self) -> float:
        """How long until the next attempt is allowed (<= 0: now)."""
        return self.retry_at - time.monotonic()
