"""The auto-trader with real parts (issue 14): a Daemon (controller on the plant simulators, web, uplink) planning
against a forecast and trading on the exchange simulator (real uvicorn) through the same order desk and
pre-trade check as a manual order. Orders only inside the risk limits and before gate closure, each with its plan
id and reason; never placed twice after a restart; the kill switch (operator keys only) stops it within one
replan (counted in replans, not time); mode stopped stops it; an exchange that goes down stops it with a status
and an alarm, and it resumes when the exchange is back. The forecast's sources: the exchange's day-ahead auction,
a csv file, an http URL on a local server; GET /api/plan's shape.

The csv forecast alternates cheap (20 EUR/MWh) and dear (200) hours, so the plan always trades in the next hours
whatever the time of day; its order prices (forecast ± margin) are far from the counterparties' quotes (near the
exchange's curve), so the orders rest and the test sees them as placed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from controller.clock import Clock, iso, parse_iso
from controller.trading.market import PERIOD_S
from simulators.exchange.curve import PriceCurve
from tests.conftest import free_port
from tests.fixtures.controller import wait_for
from tests.fixtures.exchange import running_exchange
from tests.fixtures.mosquitto import mosquitto  # noqa: F401  (fixture)
from tests.fixtures.plant import make_plant  # noqa: F401  (fixture)
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.trading import (
    LOCAL_KEY,
    OTHER_KEY,
    PARTICIPANTS,
    SECRET,
    alternating_prices,
    api_get,
    auto_overrides,
    check_orders_inside_limits,
    order_body,
    publisher_connected,
    running_site,
    site_orders,
    until,
    write_csv,
)

pytestmark = pytest.mark.timeout(120)

READ_KEY = "read-key-auto"
PLAN_KEYS = {"generated_at", "status", "solve_ms", "objective_eur", "periods"}
PERIOD_KEYS = {"period_start", "price_eur_mwh", "position_mw", "plan_mw", "soc_pct_end"}


class CsvSite(NamedTuple):
    clock: Clock
    plant: Any
    ex: Any  # the running exchange simulator
    d: Any  # the site's Daemon
    api: httpx.AsyncClient
    proxy: TcpProxy | None


@asynccontextmanager
async def csv_trading(
    mosquitto,  # noqa: F811
    make_plant,  # noqa: F811
    tmp_path: Path,
    proxied: bool = False,
    extra_env: dict[str, str] | None = None,
    **auto,
) -> AsyncIterator[CsvSite]:
    """The exchange simulator and a site whose auto-trader plans against the alternating csv forecast (`auto`:
    more trading.auto settings); `proxied`: the site reaches the exchange through a TcpProxy the test can cut."""
    clock = Clock()
    csv_path = write_csv(tmp_path / "prices.csv", alternating_prices(clock.now()))
    plant = await make_plant()
    over = auto_overrides({"source": "csv", "path": str(csv_path)}, **auto)
    async with AsyncExitStack() as stack:
        ex = await stack.enter_async_context(
            running_exchange(participants=PARTICIPANTS, hmac_secret=SECRET, clock=clock, mqtt_url=mosquitto.url)
        )
        proxy = await stack.enter_async_context(TcpProxy(ex.port)) if proxied else None
        url = proxy.url if proxy is not None else ex.url
        site = running_site(plant, mosquitto, tmp_path, clock, url, extra_env=extra_env, **over)
        d, api = await stack.enter_async_context(site)
        yield CsvSite(clock, plant, ex, d, api, proxy)


# ----------------------------------------------------------------------------------------------- risk limits
async def test_auto_trader_places_orders_inside_risk_limits_with_plan_id_and_reason(
    mosquitto,  # noqa: F811
    make_plant,  # noqa: F811
    tmp_path,
):
    async with csv_trading(mosquitto, make_plant, tmp_path) as site:
        ex, d, api = site.ex, site.d, site.api
        status = await until(api, "/api/auto", lambda s: s["orders_placed"] >= 2 and s["replans"] >= 2, "orders")
        assert status["state"] == "running" and status["enabled"] is True, status
        check_orders_inside_limits(ex, d)
        # every order the auto-trader placed has its plan id and reason with its intent
        await wait_for(lambda: not d.store.order_intents("pending"), 10, "no order on its way")
        intents = d.store.intents_by("auto", 0)
        assert len(intents) >= 2
        for i in intents:
            assert i["meta"]["plan_id"].startswith("P") and "plan" in i["meta"]["reason"], i
            assert i["state"] in ("placed", "pending"), i  # pending: a later pass's order on its way
        placed = {i["client_order_id"] for i in intents if i["state"] == "placed"}
        assert len(placed) >= 2 and placed <= {o.client_order_id for o in site_orders(ex)}
        assert {o.client_order_id for o in site_orders(ex)} <= {
            i["client_order_id"] for i in d.store.intents_by("auto", 0)
        }
        # the site's order list says which orders the auto-trader placed, from which plan and why
        listed = (await api_get(api, "/api/orders"))["orders"]
        auto = [o for o in listed if o.get("placed_by") == "auto"]
        assert auto and all(o["plan_id"].startswith("P") and "forecast" in o["reason"] for o in auto), listed
        # GET /api/plan: exactly DESIGN.md's shape, prices from the csv, SoC inside the window
        plan = await api_get(api, "/api/plan")
        assert set(plan) == PLAN_KEYS and plan["status"] == "optimal", plan
        assert len(plan["periods"]) >= 4 * 24 and all(set(p) == PERIOD_KEYS for p in plan["periods"])
        assert {p["price_eur_mwh"] for p in plan["periods"]} <= {20.0, 200.0}
        assert all(10 - 1e-6 <= p["soc_pct_end"] <= 90 + 1e-6 for p in plan["periods"])
        assert any(p["plan_mw"] > 0 for p in plan["periods"]) and any(p["plan_mw"] < 0 for p in plan["periods"])
        # the status carries the switch and the state; metrics count the orders and the plan
        assert (await api_get(api, "/api/bess-status"))["auto_trading"]["state"] == "running"
        metrics = (await api.get("/metrics", headers={"Authorization": f"Bearer {LOCAL_KEY}"})).text
        assert 'bess_auto_orders_total{reason="' in metrics and "bess_plan_solve_seconds" in metrics
        # another two replans keep every order inside the limits (the answer is stable: nothing placed twice)
        await until(api, "/api/auto", lambda s: s["replans"] >= status["replans"] + 2, "two more replans")
        check_orders_inside_limits(ex, d)
        assert len(site_orders(ex)) <= (await api_get(api, "/api/auto"))["orders_placed"]


# ----------------------------------------------------------------------------------------------- restart
async def test_never_placed_twice_after_a_restart(mosquitto, make_plant, tmp_path):  # noqa: F811
    clock = Clock()
    csv_path = write_csv(tmp_path / "prices.csv", alternating_prices(clock.now()))
    over = auto_overrides({"source": "csv", "path": str(csv_path)})
    plant = await make_plant()
    async with running_exchange(
        participants=PARTICIPANTS, hmac_secret=SECRET, clock=clock, mqtt_url=mosquitto.url
    ) as ex:
        async with running_site(plant, mosquitto, tmp_path, clock, ex.url, **over) as (d, api):
            await until(api, "/api/auto", lambda s: s["orders_placed"] >= 2 and s["replans"] >= 3, "orders")
        first = {o.order_id: o.to_dict() for o in site_orders(ex)}
        assert first and all(o["status"] == "open" for o in first.values())
        # the same state directory: the orders are the store's, the plan is the same, nothing is placed again
        async with running_site(plant, mosquitto, tmp_path, clock, ex.url, **over) as (d, api):
            await until(api, "/api/auto", lambda s: s["replans"] >= 3, "three replans after the restart")
            status = await api_get(api, "/api/auto")
            check_orders_inside_limits(ex, d)
            plan = {parse_iso(p["period_start"]): p for p in (await api_get(api, "/api/plan"))["periods"]}
            still = [o for o in site_orders(ex) if o.active]
            for p in {o.delivery_start for o in still}:
                open_mw = sum((o.remaining_lots if o.side == "sell" else -o.remaining_lots) / 10 for o in still
                              if o.delivery_start == p)  # fmt: skip
                need = plan[float(p)]["plan_mw"] - plan[float(p)]["position_mw"]
                # covered once, never twice: the open orders of a period are at most what the plan still needs
                assert abs(open_mw) <= abs(need) + 0.1 + 1e-9 and open_mw * need >= 0, (iso(p), open_mw, need)
            kept = [oid for oid in first if ex.service.engine.orders[oid].active]
            assert len(kept) >= len(first) - status["orders_cancelled"]
            assert status["orders_placed"] <= status["orders_cancelled"] + 1, status  # re-placed only what it cancelled


# ----------------------------------------------------------------------------------------------- kill switch
async def test_kill_switch_stops_it_within_one_replan_and_only_for_operators(
    mosquitto,  # noqa: F811
    make_plant,  # noqa: F811
    tmp_path,
):
    async with csv_trading(mosquitto, make_plant, tmp_path, extra_env={"API_KEY_READ": READ_KEY}) as site:
        ex, d, api = site.ex, site.d, site.api
        await until(api, "/api/auto", lambda s: s["orders_placed"] >= 1, "a first order")
        read = httpx.AsyncClient(base_url=str(api.base_url), headers={"X-API-Key": READ_KEY}, timeout=10)
        try:
            r = await read.post("/api/auto", json={"enabled": False})  # a read-only key may not switch it
            assert r.status_code == 403, r.text
            assert (await read.get("/api/auto")).status_code == 200  # but may read it
        finally:
            await read.aclose()
        assert (await api.post("/api/auto", json={"enabled": "no"})).status_code == 422
        r = await api.post("/api/auto", json={"enabled": False})
        assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["state"] == "off", r.text
        replans_at_kill = r.json()["replans"]
        count_at_kill = len(site_orders(ex))
        # within one replan: nothing new, and its open orders are gone
        await until(api, "/api/auto", lambda s: s["replans"] >= replans_at_kill + 2, "two replans after the kill")
        assert len(site_orders(ex)) == count_at_kill
        assert not [o for o in site_orders(ex) if o.active], [o.to_dict() for o in site_orders(ex)]
        assert (await api_get(api, "/api/bess-status"))["auto_trading"] == {
            "enabled": False,
            "state": "off",
            "reason": (await api_get(api, "/api/auto"))["reason"],
        }
        assert d.store.get_state("auto_trading")["enabled"] is False  # kept across a restart
        # on again: it trades from the next replan
        assert (await api.post("/api/auto", json={"enabled": True})).json()["enabled"] is True
        await until(api, "/api/auto", lambda s: len([o for o in site_orders(ex) if o.active]) >= 1, "orders again")
        # mode stopped stops it too, and cancels its orders
        assert (await api.post("/api/mode", json={"mode": "stopped"})).status_code == 200
        status = await until(api, "/api/auto", lambda s: s["state"] == "stopped", "stopped by the mode")
        await until(api, "/api/auto", lambda s: s["replans"] >= status["replans"] + 1, "a replan while stopped")
        assert not [o for o in site_orders(ex) if o.active]


# ----------------------------------------------------------------------------------------------- exchange down
async def test_exchange_down_stops_placing_says_so_and_resumes(mosquitto, make_plant, tmp_path):  # noqa: F811
    async with csv_trading(mosquitto, make_plant, tmp_path, proxied=True) as site:
        ex, api, proxy = site.ex, site.api, site.proxy
        assert proxy is not None
        await until(api, "/api/auto", lambda s: s["orders_placed"] >= 1, "a first order")
        await proxy.go_down()
        down = await until(api, "/api/auto", lambda s: s["state"] == "exchange_down", "exchange_down")
        assert "exchange" in down["reason"]
        alarms = await api_get(api, "/api/alarms")
        assert "trading:exchange_down" in {a["key"] for a in alarms["active"]}, alarms
        count = len(site_orders(ex))
        await until(api, "/api/auto", lambda s: s["replans"] >= down["replans"] + 2, "two replans while down")
        assert len(site_orders(ex)) == count  # nothing reached it (nothing could)
        assert (await api_get(api, "/api/auto"))["state"] == "exchange_down"
        await proxy.come_back()
        await until(api, "/api/auto", lambda s: s["state"] == "running", "running again")
        alarms = await api_get(api, "/api/alarms")
        assert "trading:exchange_down" not in {a["key"] for a in alarms["active"]}, alarms


# ----------------------------------------------------------------------------------------------- forecast sources
class _PriceServer(ThreadingHTTPServer):
    prices: dict[float, float] = {}


class _PriceHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps(
            {"periods": [{"period_start": iso(p), "price_eur_mwh": v} for p, v in sorted(self.server.prices.items())]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


async def test_forecast_from_an_http_url(mosquitto, make_plant, tmp_path):  # noqa: F811
    clock = Clock()
    server = _PriceServer(("127.0.0.1", free_port()), _PriceHandler)
    server.prices = {p: 33.0 + (p // PERIOD_S) % 7 for p in alternating_prices(clock.now())}
    thread = threading.Thread(target=server.serve_forever, name="price-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/prices.json"
    plant = await make_plant()
    try:
        async with (
            running_exchange(participants=PARTICIPANTS, hmac_secret=SECRET, clock=clock, mqtt_url=mosquitto.url) as ex,
            running_site(
                plant, mosquitto, tmp_path, clock, ex.url, **auto_overrides({"source": "http", "url": url})
            ) as (d, api),
        ):
            plan = await until(api, "/api/plan", lambda p: p["status"] == "optimal", "a plan")
            for p in plan["periods"]:
                assert p["price_eur_mwh"] == server.prices[parse_iso(p["period_start"])], p
            assert (await api_get(api, "/api/auto"))["forecast"]["source"] == "http"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_forecast_from_the_exchange_auction_and_market_history(mosquitto, make_plant, tmp_path):  # noqa: F811
    clock = Clock()
    plant = await make_plant()
    async with (
        running_exchange(
            participants=PARTICIPANTS, hmac_secret=SECRET, clock=clock, mqtt_url=mosquitto.url, seed=7
        ) as ex,
        running_site(plant, mosquitto, tmp_path, clock, ex.url, **auto_overrides({"source": "exchange"})) as (d, api),
    ):
        plan = await until(api, "/api/plan", lambda p: p["status"] == "optimal", "a plan")
        curve = PriceCurve(7)
        now = clock.now()
        published_until = (int(now) // 86400 + (2 if now % 86400 >= 11 * 3600 else 1)) * 86400
        known = [p for p in plan["periods"] if parse_iso(p["period_start"]) < published_until]
        assert known and all(p["price_eur_mwh"] == curve.price(parse_iso(p["period_start"])) for p in known)
        # beyond the published day: similar day / persistence from the stored results (the same quarter hour a day
        # before), so the forecast still covers the horizon
        later = [p for p in plan["periods"] if parse_iso(p["period_start"]) >= published_until]
        for p in later:
            assert p["price_eur_mwh"] == curve.price(parse_iso(p["period_start"]) - 86400), p
        assert len(plan["periods"]) >= 36 * 4 - 1
        # the exchange's auction is public and 404 before its publication time
        async with httpx.AsyncClient(base_url=ex.url) as public:
            r = await public.get(f"/api/auction/{iso(published_until + 86400)[:10]}")
            assert r.status_code == 404 and "publishes_at" in r.json(), r.text
            latest = (await public.get("/api/auction")).json()
            assert latest["day"] == iso(published_until - 86400)[:10] and len(latest["periods"]) == 96, latest
            assert (await public.get("/api/auction/2026-13-01")).status_code == 422
        # market samples are stored and served as history for the dashboard's chart
        hist = await until(api, "/api/market-history?hours=1", lambda h: len(h["samples"]) >= 1, "a market sample")
        assert set(hist["samples"][0]) >= {"ts", "mark", "ema", "vwap"}
        assert (await api.get("/api/market-history?hours=0")).status_code == 422


# ----------------------------------------------------------------------------------------------- after a fill
async def test_a_fill_makes_it_replan_at_once(mosquitto, make_plant, tmp_path):  # noqa: F811
    """With replan_s an hour, the only replans after the start are the ones a fill sets off: a counterparty
    takes one of its resting orders, the trade comes back over MQTT into the schedule, and the auto-trader plans
    again with the new position (counted in replans, not time)."""
    from controller.trading.exchange import ExchangeClient

    async with (
        csv_trading(mosquitto, make_plant, tmp_path, replan_s=3600) as site,
        ExchangeClient(site.ex.url, OTHER_KEY, SECRET, now=site.clock.now) as other,
    ):
        ex, d, api = site.ex, site.d, site.api
        await publisher_connected(ex)
        status = await until(api, "/api/auto", lambda s: s["orders_placed"] >= 1, "a resting order")
        await wait_for(lambda: not d.store.order_intents("pending"), 10, "no order on its way")
        replans = (await api_get(api, "/api/auto"))["replans"]
        mine = next(o for o in site_orders(ex) if o.active)
        taker = "buy" if mine.side == "sell" else "sell"
        mw = mine.remaining_lots / 10
        signed = mw if mine.side == "sell" else -mw
        taken = order_body(taker, mw, mine.price_ticks / 100, mine.delivery_start, time_in_force="IOC")
        filled = await other.place_order(taken)
        assert filled["status"] == "filled", filled
        await wait_for(lambda: d.controller.schedule.position_mw(mine.delivery_start) == signed, 10, "the trade in")
        start = iso(mine.delivery_start)

        def replanned(plan: dict) -> bool:  # the plan made after the fill carries the new position
            return any(p["period_start"] == start and p["position_mw"] == signed for p in plan["periods"])

        await until(api, "/api/plan", replanned, "a plan with the fill's position")
        after = await api_get(api, "/api/auto")
        assert replans < after["replans"] <= replans + 2, (status, after)  # the fill's replan, not a timer's


# ----------------------------------------------------------------------------------------------- safe state
async def test_a_plant_safe_state_stops_it_and_it_resumes_after(mosquitto, make_plant, tmp_path):  # noqa: F811
    """A BMS fault puts the plant in its safe state (0 MW, binding alarm): the auto-trader places nothing more and
    cancels its open orders; once the fault is gone it trades again."""
    async with csv_trading(mosquitto, make_plant, tmp_path) as site:
        ex, api, plant = site.ex, site.api, site.plant
        await until(api, "/api/auto", lambda s: s["orders_placed"] >= 1, "a first order")
        plant.faults["bms_modbus"].fault_bits = 1 << 1  # insulation_fault in the generic BMS profile
        stopped = await until(api, "/api/auto", lambda s: s["state"] == "safe_state", "stopped by the safe state")
        assert "alarm" in stopped["reason"], stopped
        await until(api, "/api/auto", lambda s: s["replans"] >= stopped["replans"] + 1, "a replan in safe state")
        await wait_for(lambda: not [o for o in site_orders(ex) if o.active], 10, "its open orders cancelled")
        count = len(site_orders(ex))
        await until(api, "/api/auto", lambda s: s["replans"] >= stopped["replans"] + 3, "more replans in safe state")
        assert len(site_orders(ex)) == count  # nothing placed meanwhile
        plant.faults["bms_modbus"].fault_bits = 0
        await until(api, "/api/auto", lambda s: s["state"] == "running", "running again")
        await until(api, "/api/auto", lambda s: any(o.active for o in site_orders(ex)), "orders again")
