"""Provision records: per second, what the grid services required and what the plant delivered, with the POI
frequency, kept in the store as the operator's evidence for the TSO (retention: services.records_retention_days,
pruned by the store's housekeeping with its other tables: controller/cycle/jobs.py) and exported as CSV per day;
and the compliance figure (share of recorded seconds within tolerance).

Delivered is measured: the plant's AC power at the PCS minus the base target (the schedule's position or the
manual setpoint) minus the aFRR part required, i.e. all power beyond the base is counted as the service's. The
power is read at the start of a cycle, so it answers the setpoint of the cycle before: a step shows as one or
two seconds outside tolerance while the plant ramps, which is what the records should show.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import TYPE_CHECKING

from controller.services.stack import Stack

if TYPE_CHECKING:
    from controller.store import Store

log = logging.getLogger("bess.services")

__all__ = ["ProvisionRecorder", "FLUSH_ROWS", "csv_lines", "CSV_HEADER"]

FLUSH_ROWS = 10  # rows per store write (~10 s of records; a kill -9 loses at most these)
CSV_HEADER = (
    "ts,frequency_hz,fcr_required_mw,fcr_delivered_mw,afrr_required_mw,afrr_delivered_mw,base_mw,power_mw,"
    "within_tolerance"
)


def _num(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


class ProvisionRecorder:
    """One row per whole second in which a service was on (the last observation of the second wins)."""

    def __init__(self, store: "Store", tolerance_mw: float):
        self.store = store
        self.tolerance_mw = tolerance_mw
        self._current: tuple | None = None  # the row of the second being observed
        self._buffer: list[tuple] = []
        self.seconds = 0  # finished seconds recorded since start
        self.within = 0  # of them, within tolerance

    @property
    def compliance_pct(self) -> float | None:
        return 100.0 * self.within / self.seconds if self.seconds else None

    def observe(self, now: float, frequency_hz: float | None, st: Stack, power_mw: float | None) -> None:
        second = int(math.floor(now))
        power = _num(power_mw)
        delivered = None if power is None else power - st.base_mw - st.afrr_mw
        within = delivered is not None and abs(delivered - st.fcr_mw) <= self.tolerance_mw + 1e-9
        row = (second, _num(frequency_hz), st.fcr_mw, delivered, st.afrr_mw, None, st.base_mw, power, int(within))
        if self._current is not None and self._current[0] != second:
            self._finish(self._current)
        self._current = row

    def _finish(self, row: tuple) -> None:
        self.seconds += 1
        self.within += row[-1]
        self._buffer.append(row)
        if len(self._buffer) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (the cycle calls this through observe; stop calls it too). A database error
        keeps them for the next try (bounded), logged."""
        rows, self._buffer = self._buffer, []
        try:
            self.store.add_provision(rows)
        except sqlite3.Error as e:
            log.warning("provision records not stored yet", extra={"rows": len(rows), "error": str(e)})
            self._buffer = (rows + self._buffer)[-100 * FLUSH_ROWS :]

    def close(self) -> None:
        if self._current is not None:
            self._finish(self._current)
            self._current = None
        if self._buffer:
            self.flush()


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def csv_lines(rows: list[dict], iso) -> list[str]:
    """The CSV of a day's rows (header first; ts as ISO 8601 `Z`; empty cells for unknown values)."""
    out = [CSV_HEADER]
    for r in rows:
        cells = [iso(r["ts"])] + [_cell(r[k]) for k in CSV_HEADER.split(",")[1:]]
        out.append(",".join(cells))
    return out
