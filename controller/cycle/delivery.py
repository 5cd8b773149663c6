"""Delivery accounting: the energy the plant delivered in each 15-minute period, against the schedule's position;
at each period's end a shortfall of more than 1 % is recorded in the store (and logged)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from controller.clock import iso
from controller.trading.market import PERIOD_S, period_start

if TYPE_CHECKING:
    from controller.cycle.snapshot import Snapshot
    from controller.store import Store
    from controller.trading.schedule import Schedule

log = logging.getLogger("bess.cycle")


class Delivery:
    """Integrates the measured power of each cycle over the current period (event loop only)."""

    def __init__(self, schedule: "Schedule", store: "Store"):
        self.schedule = schedule
        self.store = store
        self._period_energy: tuple[float, float] | None = None  # (period_start, MWh delivered so far)

    def account(self, snap: "Snapshot", now: float, dt: float) -> None:
        """Integrate delivered energy per period; at each period end record any shortfall vs the position."""
        p = period_start(now)
        if self._period_energy is None:
            self._period_energy = (p, 0.0)
        start, mwh = self._period_energy
        if p != start:
            position = self.schedule.position_mw(start)
            if position:
                due = position * PERIOD_S / 3600.0
                short = due - mwh if position > 0 else mwh - due
                if short > 0.01 * abs(due):
                    self.store.record_shortfall(start, position, mwh, short)
                    log.warning(
                        "delivery shortfall",
                        extra={
                            "period": iso(start),
                            "position_mw": position,
                            "delivered_mwh": mwh,
                            "shortfall_mwh": short,
                        },
                    )
            self._period_energy = (p, 0.0)
            start, mwh = self._period_energy
        if snap.power_mw is not None and dt > 0:
            self._period_energy = (start, mwh + snap.power_mw * dt / 3600.0)
