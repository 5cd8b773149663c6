"""Trading safety with real parts (issue 11): the site presents EXCHANGE_API_KEY to the exchange, never its local
API key; a site without one still receives trades; the pre-trade check counts every open order as filling and
refuses on an unknown SoC; an order's intent is stored before it is sent and reconciled with the exchange by
client_order_id after a timeout or a kill -9, never placed twice.

Helpers (the stepped clock, the site daemon, the exchange's kwargs) come from test_trading_e2e.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from controller.clock import Clock, iso
from controller.store import DB_FILENAME
from controller.trading.schedule import PERIOD_S
from tests.fixtures.controller import device_ports, site_config, wait_for
from tests.fixtures.daemon import spawn_daemon
from tests.fixtures.exchange import running_exchange
from tests.fixtures.mosquitto import mosquitto  # noqa: F401  (fixture)
from tests.fixtures.plant import make_plant  # noqa: F401  (fixture)
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.trading import (
    GATE_S,
    LOCAL_KEY,
    PARTICIPANTS,
    SECRET,
    SITE,
    SITE_KEY,
    SteppedClock,
    exchange_kwargs,
    next_open_period,
    order_body,
    publisher_connected,
    running_site,
)

pytestmark = pytest.mark.timeout(120)


def stepped_clock_before_gate(lead_s: float = 120.0) -> tuple[SteppedClock, float]:
    """A shared clock `lead_s` before the gate of the period it returns, so start-up can take its time."""
    real = time.time()
    delivery = next_open_period(real + lead_s, margin_s=0)
    return SteppedClock(offset_s=(delivery - GATE_S - lead_s) - real), delivery


# ----------------------------------------------------------------------------------------------- exchange key
async def test_site_presents_exchange_api_key_not_its_local_key(mosquitto, make_plant, tmp_path):  # noqa: F811
    """API_KEY (the local web key) is not a participant at the exchange; EXCHANGE_API_KEY is. The order is placed
    as the site's participant, so the local key was never what the exchange saw."""
    clock, delivery = stepped_clock_before_gate()
    plant = await make_plant()
    async with (
        running_exchange(**exchange_kwargs(clock, mosquitto)) as ex,
        running_site(plant, mosquitto, tmp_path, clock, ex.url) as (d, api),
    ):
        assert LOCAL_KEY not in ex.app.state.auth.participants
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 20.0, delivery))
        assert r.status_code == 201, r.text
        assert r.json()["participant"] == SITE
        assert [o.order_id for o in ex.service.engine.orders_of(SITE)] == [r.json()["order_id"]]


async def test_without_exchange_api_key_orders_are_refused_and_trades_still_received(
    mosquitto,
    make_plant,  # noqa: F811
    tmp_path,
):
    clock, delivery = stepped_clock_before_gate()
    plant = await make_plant()
    async with (
        running_exchange(**exchange_kwargs(clock, mosquitto)) as ex,
        running_site(plant, mosquitto, tmp_path, clock, ex.url, exchange_key=None) as (d, api),
    ):
        await publisher_connected(ex)
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 20.0, delivery))
        assert r.status_code == 503 and "EXCHANGE_API_KEY" in r.json()["detail"], r.text
        r = await api.delete("/api/orders/X-1")
        assert r.status_code == 503 and "EXCHANGE_API_KEY" in r.json()["detail"], r.text
        assert ex.service.engine.orders_of(SITE) == [] and d.store.orders(active_only=False) == []
        assert (await api.get("/api/orders")).status_code == 200
        # the daemon still runs and still takes the trades the exchange sends it
        trade = {
            "trade_id": "T-no-key-1",
            "side": "sell",
            "quantity_mw": 1.0,
            "price_eur_mwh": 50.0,
            "delivery_start": iso(delivery),
            "delivery_end": iso(delivery + PERIOD_S),
            "market": "intraday",
            "executed_at": iso(clock.now()),
        }
        ex.app.state.publisher.publish_trade(SITE, trade)
        await wait_for(lambda: d.store.has_trade("T-no-key-1"), 10, "the trade stored")
        await wait_for(
            lambda: (ex.app.state.publisher.delivery(SITE, "T-no-key-1")["ack"] or {}).get("accepted"),
            10,
            "the trade acked accepted",
        )
        assert d.controller.schedule.position_mw(delivery) == 1.0
        assert d.controller.stats.good_cycles > 0


# ----------------------------------------------------------------------------------------------- pre-trade check
async def test_open_orders_count_as_filled_in_the_pre_trade_check(mosquitto, make_plant, tmp_path):  # noqa: F811
    """From 30 % of 20 MWh, a 10 MW sell for one period takes ~13 %: each of two such sells fits alone, both
    together would end under soc_min (10 %). With the first resting open at the exchange, the second is refused,
    with the worst case named; a buy (it can only raise the SoC) still goes."""
    clock, delivery = stepped_clock_before_gate()
    plant = await make_plant(initial_soc_pct=30)
    async with (
        running_exchange(**exchange_kwargs(clock, mosquitto)) as ex,
        running_site(plant, mosquitto, tmp_path, clock, ex.url) as (d, api),
    ):
        second = delivery + PERIOD_S
        check = await api.post("/api/orders/check", json=order_body("sell", 10.0, 90.0, second))
        assert check.status_code == 200 and check.json()["ok"] is True, check.text  # alone, it fits
        first = await api.post("/api/orders", json=order_body("sell", 10.0, 90.0, delivery))
        assert first.status_code == 201 and first.json()["status"] == "open", first.text
        r = await api.post("/api/orders", json=order_body("sell", 10.0, 90.0, second))
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["limit"] == "soc_min" and "worst case" in body["detail"] and "sell" in body["detail"], body
        assert [o.order_id for o in ex.service.engine.orders_of(SITE)] == [first.json()["order_id"]]
        buy = await api.post("/api/orders", json=order_body("buy", 5.0, 20.0, second))
        assert buy.status_code == 201, buy.text
        # once the first order is cancelled, it no longer counts: the second sell fits again... against the
        # open buy, which may not fill, so the floor's worst case is the sell alone
        assert (await api.delete(f"/api/orders/{first.json()['order_id']}")).status_code == 200
        again = await api.post("/api/orders", json=order_body("sell", 10.0, 90.0, second))
        assert again.status_code == 201, again.text


async def test_unknown_soc_refuses_orders(mosquitto, make_plant, tmp_path):  # noqa: F811
    """The BMS stops answering: its SoC is unknown (no fresh reading), and an order is refused with that reason
    instead of being checked against a guessed 50 %."""
    clock, delivery = stepped_clock_before_gate()
    plant = await make_plant()
    async with (
        running_exchange(**exchange_kwargs(clock, mosquitto)) as ex,
        running_site(plant, mosquitto, tmp_path, clock, ex.url) as (d, api),
    ):
        plant.faults["bms_modbus"].silent = True
        await wait_for(
            lambda: d.controller.snapshot is not None and d.controller.snapshot.soc_pct is None,
            20,
            "the BMS's SoC unknown",
        )
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 20.0, delivery))
        assert r.status_code == 409, r.text
        assert r.json()["limit"] == "soc_unknown" and "SoC unknown" in r.json()["detail"], r.json()
        assert ex.service.engine.orders_of(SITE) == []
        plant.faults["bms_modbus"].silent = False
        await wait_for(lambda: d.controller.snapshot.soc_pct is not None, 20, "the SoC back")
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 20.0, delivery))
        assert r.status_code == 201, r.text


# ----------------------------------------------------------------------------------------------- order intents
WINDOW_S = 1.0  # the exchange's request window in these tests (DESIGN.md's is 30 s): unanswered orders settle fast


def intents(state_dir: Path) -> list[tuple[str, str, str | None]]:
    """(client_order_id, state, order_id) of every order intent in the site's store, read by another connection."""
    db = state_dir / DB_FILENAME
    if not db.exists():
        return []
    c = sqlite3.connect(db, timeout=5)
    try:
        return c.execute("SELECT client_order_id, state, order_id FROM order_intents ORDER BY created_ts").fetchall()
    finally:
        c.close()


def settled(state_dir: Path) -> bool:
    rows = intents(state_dir)
    return bool(rows) and all(state != "pending" for _, state, _ in rows)


async def start_daemon(tmp_path: Path, exchange_url: str) -> asyncio.subprocess.Process:
    """`bess-edge run` on tmp_path/site.yaml as a real process, its log appended to tmp_path/daemon.log."""
    env = {
        **os.environ,
        "API_KEY": LOCAL_KEY,
        "EXCHANGE_API_KEY": SITE_KEY,
        "HMAC_SECRET": SECRET,
        "EXCHANGE_BASE_URL": exchange_url,
        "PYTHONUNBUFFERED": "1",
    }
    return await spawn_daemon(tmp_path / "site.yaml", tmp_path / "state", env, tmp_path / "daemon.log")


async def kill_9(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)


async def site_ready(api: httpx.AsyncClient, proc: asyncio.subprocess.Process, tmp_path: Path) -> None:
    """The daemon's API answers with a live SoC (the pre-trade check needs one); bounded."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
        try:
            r = await api.get("/api/bess-status")
            if r.status_code == 200 and r.json().get("soc_pct") is not None:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(
        "the daemon's API with a live SoC did not come up in 30 s: " + (tmp_path / "daemon.log").read_text()[-3000:]
    )


def process_site(tmp_path: Path, plant) -> httpx.AsyncClient:
    cfg = site_config(
        tmp_path,
        device_ports(plant),
        mqtt={"enabled": False},
        scada={"modbus": {"enabled": False}, "opcua": {"enabled": False}},
        exchange={"request_window_s": WINDOW_S, "timeout_s": 60},
    )
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.web.port}", headers={"X-API-Key": LOCAL_KEY}, timeout=60)


class RestartableSite:
    """A site as a real daemon process (started and killed by the test), its exchange behind a TcpProxy, and an
    API client on it; `delivery` is a period still open for orders."""

    def __init__(self, tmp_path: Path, api: httpx.AsyncClient, ex, proxy: TcpProxy):
        self.tmp_path, self.api, self.ex, self.proxy = tmp_path, api, ex, proxy
        self.state = tmp_path / "state"
        self.delivery = next_open_period(time.time())
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, exchange_url: str) -> None:
        self.proc = await start_daemon(self.tmp_path, exchange_url)
        await site_ready(self.api, self.proc, self.tmp_path)

    async def kill_9_mid_order(self, order: dict, *on_its_way: tuple[Callable[[], bool], str]) -> None:
        """POST `order`, wait for each (condition, what) of `on_its_way`, then kill -9 the daemon: the order's
        intent is pending (stored before it was sent) and the POST gets no answer."""
        post = asyncio.create_task(self.api.post("/api/orders", json=order))
        for condition, what in on_its_way:
            await wait_for(condition, 10, what)
        assert [s for _, s, _ in intents(self.state)] == ["pending"]  # stored before it was sent
        await kill_9(self.proc)
        with pytest.raises(httpx.TransportError):
            await post


@asynccontextmanager
async def restartable_site(make_plant, tmp_path: Path) -> AsyncIterator[RestartableSite]:
    plant = await make_plant()
    api = process_site(tmp_path, plant)
    async with (
        running_exchange(participants=PARTICIPANTS, hmac_secret=SECRET, auth_window_s=WINDOW_S, id_prefix="") as ex,
        TcpProxy(ex.port) as proxy,
    ):
        site = RestartableSite(tmp_path, api, ex, proxy)
        try:
            yield site
        finally:
            await api.aclose()
            if site.proc is not None:
                await kill_9(site.proc)


async def test_kill_9_before_the_order_reaches_the_exchange(make_plant, tmp_path):  # noqa: F811
    """The order's intent is stored, then the daemon dies before the exchange sees the request (here the request
    goes into a black hole, which is the same to the exchange). After the restart the intent is reconciled by
    client_order_id: the exchange has no such order, and once the request can no longer arrive (its timestamp
    is out of the exchange's window) it is settled as not placed. Nothing is sent again."""
    async with restartable_site(make_plant, tmp_path) as site:
        site.proxy.blackhole = True
        await site.start(site.proxy.url)
        await site.kill_9_mid_order(
            order_body("sell", 1.0, 80.0, site.delivery),
            (lambda: b"POST /api/orders" in site.proxy.received, "the order's request on its way"),
        )

        await site.start(site.ex.url)  # the exchange reachable again
        await wait_for(lambda: settled(site.state), 30, "the pending intent reconciled and settled")
        [(cid, outcome, order_id)] = intents(site.state)
        assert (outcome, order_id) == ("not_placed", None)
        assert site.ex.service.engine.orders_of(SITE) == []  # never placed, never sent again
        assert (await site.api.get("/api/orders")).json()["orders"] == []


async def test_kill_9_while_the_exchange_takes_the_order(make_plant, tmp_path):  # noqa: F811
    """The exchange takes the order, but its answer never comes back (held by the network), and the daemon dies
    waiting. After the restart the intent is reconciled by client_order_id: the site stores the exchange's order
    and lists it; the exchange holds it once."""
    async with restartable_site(make_plant, tmp_path) as site:
        ex = site.ex
        site.proxy.hold_posts = True
        await site.start(site.proxy.url)
        await site.kill_9_mid_order(
            order_body("buy", 2.0, 20.0, site.delivery),
            (lambda: len(ex.service.engine.orders_of(SITE)) == 1, "the exchange taking the order"),
            (lambda: bool(site.proxy.swallowed), "the exchange's answer (held back)"),
        )

        await site.start(ex.url)
        await wait_for(lambda: settled(site.state), 30, "the pending intent reconciled")
        [at_exchange] = ex.service.engine.orders_of(SITE)  # once, not twice
        [(cid, outcome, order_id)] = intents(site.state)
        assert (outcome, order_id, at_exchange.client_order_id) == ("placed", at_exchange.order_id, cid)
        listed = (await site.api.get("/api/orders")).json()["orders"]
        assert [(o["order_id"], o["status"]) for o in listed] == [(at_exchange.order_id, "open")]
        # and it counts in the next pre-trade check as an open order, like any other
        r = await site.api.post("/api/orders/check", json=order_body("buy", 2.0, 20.0, site.delivery))
        assert r.status_code == 200, r.text


async def test_client_timeout_with_the_order_taken_is_reconciled_not_placed_again(
    mosquitto,
    make_plant,  # noqa: F811
    tmp_path,
):
    """The site's request times out (the exchange's answer is held back) although the exchange took the order:
    the site asks by client_order_id, finds it, stores it and answers 201 with it. Before, the answer was
    'exchange unreachable, order not sent', and the operator's retry placed the order a second time."""
    clock = Clock()
    delivery = next_open_period(clock.now())
    plant = await make_plant()
    async with (
        running_exchange(**exchange_kwargs(clock, mosquitto)) as ex,
        TcpProxy(ex.port) as proxy,
        running_site(plant, mosquitto, tmp_path, clock, proxy.url, exchange={"timeout_s": 0.5}) as (d, api),
    ):
        proxy.hold_posts = True
        r = await api.post("/api/orders", json=order_body("sell", 1.0, 80.0, delivery))
        assert r.status_code == 201, r.text
        assert proxy.swallowed, "the exchange's answer to the POST was not held back"
        [at_exchange] = ex.service.engine.orders_of(SITE)
        assert (r.json()["order_id"], r.json()["client_order_id"]) == (
            at_exchange.order_id,
            at_exchange.client_order_id,
        )
        assert [(o["order_id"], o["status"]) for o in d.store.orders()] == [(at_exchange.order_id, "open")]
        assert [(i["state"], i["order_id"]) for i in d.store.order_intents()] == [("placed", at_exchange.order_id)]
