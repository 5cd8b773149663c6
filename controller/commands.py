"""The plant's command interface: what a face may ask of the controller, and nothing else. The SCADA servers
(controller.scada) and the order desk (controller.trading.orders) are handed a `PlantCommands` by the composition
root (controller.daemon), never the Controller: they read the plant from the frozen PlantState (controller.cycle
.phases.Faces.latest) and act on it only through these methods. `Controller` (controller.cycle.loop) implements
it; a test can hand a face anything that does.
"""

from __future__ import annotations

from typing import Protocol

from controller.cycle.mode import ModeState
from controller.services.afrr import AfrrState
from controller.trading.schedule import Feasibility


class PlantCommands(Protocol):
    def set_mode(
        self, mode: str, setpoint_mw: float | None = None, expires_s: float | None = None, source: str = "api"
    ) -> ModeState:
        """Switch mode (auto, manual, standby, ...); a manual setpoint still passes the limit function and expires
        after `expires_s` unless renewed. Raises ValueError for a mode the controller refuses."""
        ...

    def feasibility(
        self, open_orders: list[tuple[float, float]] | tuple = (), new_order: tuple[float, float] | None = None
    ) -> Feasibility:
        """The schedule of executed trades checked from the live SoC, with `open_orders` ((period start, signed MW)
        of orders that may still fill) at their worst case, and `new_order` the one being checked (refused only for
        a breach of a worst case it is part of: schedule.check_feasibility): the pre-trade check."""
        ...

    def set_afrr_setpoint(self, setpoint_mw: float, source: str = "scada-iec104") -> AfrrState:
        """The grid operator's aFRR setpoint (MW, + up): clamped to the offered band, ramped in by the cycle and
        stacked on the target, which still passes the limit function. Raises ValueError for a non-finite value."""
        ...

    def set_fcr(self, enabled: bool, source: str = "api") -> bool:
        """Switch FCR (services.fcr) on or off; returns the new state. Raises ValueError when the site offers no
        FCR (no band or no POI meter). Not stored: a restart applies the site file's services.fcr.enabled."""
        ...
