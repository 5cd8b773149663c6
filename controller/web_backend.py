"""The web app's Backend (web/backend.py) on the real controller: live state projected from the latest PlantState,
trading through the order desk, history from the store. Nothing here talks to a device.

The daemon attaches `cycle_started`/`cycle_over` (the cycle gate) and `publish` (websocket subscribers) to the
cycle's phases, and gives it the uplink's telemetry sink for manual samples."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import httpx

from controller.clock import iso, parse_iso
from controller.cycle.state import PlantState, status
from controller.services.records import csv_lines
from controller.trading.auto import NO_PLAN
from controller.trading.market import gate_open
from controller.trading.orders import OrderDesk, OrderRefused, OrderRequest

if TYPE_CHECKING:
    from controller.cycle.loop import Controller
    from controller.metrics import Metrics
    from controller.trading.auto import AutoTrader

log = logging.getLogger("bess.backend")


class ControllerBackend:
    def __init__(
        self,
        controller: "Controller",
        desk: OrderDesk,
        metrics: "Metrics | None" = None,
        auto: "AutoTrader | None" = None,
        owns_desk: bool = True,
    ):
        """`owns_desk` False: the daemon starts and closes the desk (the auto-trader uses it too)."""
        self.controller = controller
        self.store = controller.store
        self.metrics = metrics
        self._own_desk = owns_desk
        self.desk = desk
        self.auto = auto
        self._schedule_cache: tuple[float, tuple, dict] | None = None
        # set while no cycle runs: a flood of API requests must not stretch the cycle's awaits (each would wait
        # behind a whole event-loop pass of request handling); the web face waits on it (bounded) before serving
        self.cycle_idle = asyncio.Event()
        self.cycle_idle.set()
        self._subscribers: set[asyncio.Queue] = set()
        self.telemetry_sink: Callable[[dict[str, Any]], Any] | None = None  # the uplink's, when MQTT is on

    async def start(self) -> None:
        if self._own_desk:
            await self.desk.start()  # reconciles order intents a previous run left pending

    async def stop(self) -> None:
        if self._own_desk:
            await self.desk.close()

    # ---- phase callbacks (attached by the daemon; event loop)
    def cycle_started(self, _state: PlantState) -> None:
        """READ: the web face holds new requests until the cycle is over (see web/app.py)."""
        self.cycle_idle.clear()

    def cycle_over(self, _state: PlantState) -> None:
        """IDLE: requests may go ahead."""
        self.cycle_idle.set()

    def publish(self, state: PlantState) -> None:
        """AFTER_WRITE: every websocket subscriber's queue gets the new status (latest wins)."""
        if self._subscribers:
            st = self._with_auto(status(state, self.now()))
            for q in list(self._subscribers):
                if q.full():
                    q.get_nowait()
                q.put_nowait(st)

    # ---- live state
    def status(self) -> dict[str, Any]:
        return self._with_auto(status(self.controller.faces.latest(), self.now()))

    def _with_auto(self, st: dict[str, Any]) -> dict[str, Any]:
        """The status with the auto-trader's switch and state (`auto_trading`), when there is one."""
        if self.auto is not None:
            st["auto_trading"] = {"enabled": self.auto.enabled, "state": self.auto.state, "reason": self.auto.reason}
        return st

    def now(self) -> float:
        return self.controller.clock.now()

    def ready(self) -> bool:
        return self.controller.faces.latest().cycles > 0

    def subscribe(self) -> asyncio.Queue:
        """A queue that always holds the latest status (size 1: a slow reader never blocks the cycle)."""
        q: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    # ---- trading
    async def market_data(self) -> dict[str, Any]:
        return await self.desk.market_data()

    async def orders(self) -> dict[str, Any]:
        """The active orders; the auto-trader's carry `placed_by: "auto"`, their `plan_id` and `reason`."""
        out = await self.desk.orders(active_only=True)
        if self.auto is not None and out["orders"]:
            since = self.now() - 3 * 86400.0
            meta = {
                i["client_order_id"]: i["meta"] for i in await asyncio.to_thread(self.store.intents_by, "auto", since)
            }
            for o in out["orders"]:
                m = meta.get(o.get("client_order_id"))
                if m:
                    o.update(placed_by="auto", plan_id=m.get("plan_id"), reason=m.get("reason"))
        return out

    async def trades(self, limit: int) -> dict[str, Any]:
        return self.desk.trades(limit)

    async def check_order(self, order: dict[str, Any]) -> dict[str, Any]:
        req = OrderRequest.model_validate(order)
        start = parse_iso(req.delivery_start)
        if not gate_open(start, self.now()):
            return {
                "ok": False,
                "reason": f"gate closed: delivery {req.delivery_start} starts in less than 5 minutes",
                "period": iso(start),
                "limit": "gate_closure",
            }
        feas = self.desk.pre_trade_check(req)
        return {
            "ok": feas.ok,
            "reason": None if feas.ok else feas.reason,
            "period": iso(feas.period_start) if feas.period_start is not None else None,
            "limit": feas.limit,
        }

    async def place_order(self, order: dict[str, Any], who: str) -> dict[str, Any]:
        try:
            placed = await self.desk.place_order(order, who)
        except OrderRefused:
            if self.metrics:
                self.metrics.orders.labels(order.get("side", "?"), "refused").inc()
            raise
        if self.metrics:
            self.metrics.orders.labels(order.get("side", "?"), "sent").inc()
        return placed

    async def cancel_order(self, order_id: str, who: str) -> dict[str, Any]:
        return await self.desk.cancel_order(order_id, who)

    # ---- auto-trading
    async def plan(self) -> dict[str, Any]:
        return dict(self.auto.plan) if self.auto is not None else dict(NO_PLAN)

    async def auto_status(self) -> dict[str, Any]:
        if self.auto is None:
            return {"enabled": False, "configured": False, "state": "disabled", "reason": "no auto-trader"}
        return {**self.auto.status(), "pnl_by_day": await self.auto.pnl_by_day()}

    async def set_auto(self, enabled: bool, who: str) -> dict[str, Any]:
        if self.auto is None:
            raise ValueError("enabled: this controller has no auto-trader")
        await self.auto.set_enabled(enabled, who)
        return await self.auto_status()

    async def market_history(self, hours: float) -> dict[str, Any]:
        now = self.now()
        samples = await asyncio.to_thread(self.store.market_samples, now - hours * 3600, now + 1, 1440)
        return {"from": iso(now - hours * 3600), "to": iso(now), "samples": samples}

    # ---- operation
    async def post_telemetry(self, sample: dict[str, Any], who: str) -> dict[str, Any]:
        c = self.controller
        now = c.clock.now()
        state = c.faces.latest()
        msg = {
            "ts": iso(now),
            "soc_pct": sample.get("soc_pct"),
            "power_mw": sample.get("power_mw"),
            "temperature_c": sample.get("temperature_c"),
            "source": "manual",
            "site": c.config.site.id,
            "status": "online" if state.online else "offline",
            "mode": state.mode,
        }
        if self.telemetry_sink is not None:
            self.telemetry_sink(msg)
        out = {**msg, "sent": self.telemetry_sink is not None, "simulator_updated": False}
        if c.config.mode == "demo":
            out["simulator_updated"] = await self._set_simulator(sample)
        return out

    async def _set_simulator(self, sample: dict[str, Any]) -> bool:
        """Demo only: the simulator's control endpoint takes the manual state (SoC, temperature, power)."""
        sim = self.controller.config.simulator
        if not sim.control_port:
            return False
        url = f"http://{sim.host}:{sim.control_port}/sim/state"
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                r = await client.post(url, json={k: sample.get(k) for k in ("soc_pct", "temperature_c", "power_mw")})
            return r.status_code == 200
        except httpx.HTTPError as e:
            log.warning("could not set the simulator's state", extra={"url": url, "error": str(e)})
            return False

    async def set_mode(self, mode: str, setpoint_mw: float | None, expires_s: float | None, who: str) -> dict[str, Any]:
        m = self.controller.set_mode(mode, setpoint_mw, expires_s, source=who)
        return {
            "mode": m.mode,
            "setpoint_mw": m.manual_setpoint_mw if m.mode == "manual" else None,
            "expires": iso(m.manual_expires_ts) if m.manual_expires_ts else None,
            "source": m.source,
        }

    async def alarms(self) -> dict[str, Any]:
        return {"active": self.store.active_alarms(), "history": self.store.alarm_history(100)}

    async def decisions(self, before_ts: float | None, limit: int) -> list[dict[str, Any]]:
        return self.store.decisions(before_ts, limit)

    async def schedule(self, from_ts: float, to_ts: float) -> dict[str, Any]:
        key = (from_ts // 10, to_ts // 10)
        if self._schedule_cache and self._schedule_cache[1] == key and time.monotonic() - self._schedule_cache[0] < 5:
            return self._schedule_cache[2]
        periods = [
            {"period_start": iso(p), "position_mw": mw}
            for p, mw in self.controller.schedule.periods(from_ts, to_ts)
            if mw
        ]
        actual = await asyncio.to_thread(self.store.decision_history, from_ts, to_ts, 1000)
        out = {"periods": periods, "actual": actual}
        self._schedule_cache = (time.monotonic(), key, out)
        return out

    # ---- grid services
    async def set_fcr(self, enabled: bool, who: str) -> dict[str, Any]:
        self.controller.set_fcr(enabled, source=who)
        return self.status()["fcr"]

    async def provision_csv(self, day_start_ts: float) -> str:
        self.controller.records.flush()  # the last seconds too

        def build() -> str:  # up to 86,400 rows: off the event loop, which runs the control cycle
            return "\n".join(csv_lines(self.store.provision(day_start_ts, day_start_ts + 86400), iso)) + "\n"

        return await asyncio.to_thread(build)

    async def audit(self, who: str, action: str, details: dict[str, Any]) -> None:
        self.store.audit(who, action, details, self.controller.clock.now())
