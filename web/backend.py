"""What the web app needs from the controller: the `Backend` protocol and the typed refusals it may raise.

The app never polls devices: every read is the controller's latest state (or its store), every write goes
through the controller, which applies the limits. The real implementation sits on the controller
(`controller.web_backend.ControllerBackend`); tests use an in-memory one (`tests/fixtures/web.py`).

Errors a backend raises and the HTTP answer the app gives:
  OrderRefused(reason, period, limit, status=409)  -> `status` (409 refused by a check, 422 invalid, 404 unknown)
  ExchangeDown                                     -> 503 (nothing was sent)
  LookupError (KeyError...)                        -> 404
  PermissionError                                  -> 403
  ValueError                                       -> 422 (its message is the detail: name the field)
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

# One error type for the whole path (order desk -> backend -> HTTP): the order desk raises these already.
from controller.trading.errors import ExchangeDown, OrderRefused

__all__ = ["Backend", "ExchangeDown", "OrderRefused"]


@runtime_checkable
class Backend(Protocol):
    """Everything the dashboard and REST API read and change. Timestamps in returned dicts may be ISO 8601
    strings or Unix seconds (the app turns them into ISO 8601 `Z`); numbers may be None when unknown."""

    # ---- live state: in memory, cheap, called on every request and every websocket push
    def status(self) -> dict[str, Any]:
        """The latest cycle, DESIGN.md's /api/bess-status: {soc_pct, power_mw, setpoint_mw, target_mw,
        temperature_c, status: "online"|"offline", mode, binding, alarms: [plain-words str], ts}; may add
        reasons: [str], manual_setpoint_mw, manual_expires."""
        ...

    # optional: `cycle_idle`, an asyncio.Event set while no control cycle runs; HTTP requests that arrive during
    # a cycle wait for it (bounded) so that they cannot stretch the cycle (web/app.py, _CycleGateMiddleware)

    def now(self) -> float:
        """The controller's clock, Unix seconds (the demo may run it faster than real time): "today" and the
        next delivery periods are the controller's, not the browser's."""
        ...

    def ready(self) -> bool:
        """True once the controller runs cycles and the store is open (/readyz)."""
        ...

    def subscribe(self) -> asyncio.Queue:
        """A queue of maxsize 1 that receives status() after every cycle, latest wins (the producer drops the
        queued value when full, so a slow websocket client never blocks the cycle)."""
        ...

    def unsubscribe(self, queue: asyncio.Queue) -> None: ...

    # ---- trading
    async def market_data(self) -> dict[str, Any]:
        """{mark, ema, vwap, series: [{period_start, vwap, volume_mw}], stale: bool} (15-minute VWAP)."""
        ...

    async def orders(self) -> dict[str, Any]:
        """Active orders: {orders: [exchange order dicts: order_id, status, side, quantity_mw, price_eur_mwh,
        delivery_start, market, filled_mw, remaining_mw, ...], stale: bool}."""
        ...

    async def trades(self, limit: int) -> dict[str, Any]:
        """Recent trades, newest first: {trades: [{trade_id, side, quantity_mw, price_eur_mwh, delivery_start,
        delivery_end, market, executed_at, ...}], stale: bool}."""
        ...

    async def check_order(self, order: dict[str, Any]) -> dict[str, Any]:
        """The pre-trade check alone (gate closure + feasibility of the schedule with the order filled), sends
        nothing: {ok: bool, reason: str|None, period: str|None, limit: str|None}. `order` is a validated
        {side, quantity_mw, price_eur_mwh, market, delivery_start, time_in_force}."""
        ...

    async def place_order(self, order: dict[str, Any], who: str) -> dict[str, Any]:
        """Pre-trade check, then send to the exchange; returns the exchange's order dict. Raises OrderRefused
        (with the check's reason, period and limit) or ExchangeDown."""
        ...

    async def cancel_order(self, order_id: str, who: str) -> dict[str, Any]:
        """Cancel at the exchange; returns the order dict. Unknown id: OrderRefused(status=404) or LookupError."""
        ...

    # ---- auto-trading (issue 14)
    async def plan(self) -> dict[str, Any]:
        """The auto-trader's last plan, DESIGN.md's {generated_at, status, solve_ms, objective_eur, periods:
        [{period_start, price_eur_mwh, position_mw, plan_mw, soc_pct_end}]} (status "none" before the first)."""
        ...

    async def auto_status(self) -> dict[str, Any]:
        """{enabled, configured, state, reason, replans, last_replan_at, plan_id, orders_placed,
        orders_cancelled, orders_refused: {reason: n}, pnl_by_day: [{day, pnl_eur, energy_mwh}]}."""
        ...

    async def set_auto(self, enabled: bool, who: str) -> dict[str, Any]:
        """The kill switch; returns auto_status(). ValueError (422) when the site file does not enable it."""
        ...

    async def market_history(self, hours: float) -> dict[str, Any]:
        """{from, to, samples: [{ts, mark, ema, vwap}]}: the stored market samples of the last `hours`."""
        ...

    # ---- operation
    async def post_telemetry(self, sample: dict[str, Any], who: str) -> dict[str, Any]:
        """A manual sample {soc_pct, power_mw, temperature_c} sent upstream marked source: manual (in demo mode
        it also sets the simulator's state). Returns {source: "manual", ts, soc_pct, power_mw, temperature_c, ...}."""
        ...

    async def set_mode(self, mode: str, setpoint_mw: float | None, expires_s: float | None, who: str) -> dict[str, Any]:
        """mode auto|manual|stopped; manual needs setpoint_mw (still limited) and expires after expires_s
        (None: the configured default). Returns {mode, setpoint_mw, expires, source}. ValueError -> 422."""
        ...

    async def alarms(self) -> dict[str, Any]:
        """{active: [alarm], history: [alarm]} with alarm = {key, device, cause, message, raised_ts, cleared_ts}."""
        ...

    async def decisions(self, before_ts: float | None, limit: int) -> list[dict[str, Any]]:
        """Decision log rows with ts < before_ts (all if None), newest first, at most `limit`: {ts, target_mw,
        setpoint_mw, binding, mode, soc_pct, power_mw, temperature_c, readback_mw, reasons}."""
        ...

    async def schedule(self, from_ts: float, to_ts: float) -> dict[str, Any]:
        """The plan and what happened in [from_ts, to_ts): {periods: [{period_start, position_mw}] (every
        15-minute period with a position), actual: [{ts, power_mw, soc_pct, setpoint_mw}] (recorded history,
        thinned to at most ~1,000 points)}."""
        ...

    # ---- grid services (issue 15)
    async def set_fcr(self, enabled: bool, who: str) -> dict[str, Any]:
        """Switch FCR on or off; returns the status' `fcr` object. ValueError (-> 422) when the site offers none."""
        ...

    async def provision_csv(self, day_start_ts: float) -> str:
        """The provision records of the UTC day starting at day_start_ts as CSV text (header first)."""
        ...

    async def audit(self, who: str, action: str, details: dict[str, Any]) -> None:
        """Write one audit row (who, what, when). The app calls it once per mutating request, refused ones
        included, so the backend's own methods need not audit API calls again."""
        ...
