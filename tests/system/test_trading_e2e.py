"""Trading end to end with real parts: the site's REST API (a real Daemon: web, uplink, controller on the plant
simulators) → pre-trade check → signed order to the exchange simulator (real uvicorn) → matched against a
resting order of another participant → signed trade on bess/{site}/trades through a real Mosquitto → stored
→ schedule → setpoint on the PCS simulator → ack seen by the exchange; refused orders (site and exchange);
the site's trading API while the exchange is down.

The site and the exchange share one injected clock. Gate closure is 5 minutes before delivery, so an order
can only be for a period that starts at least 300 s from now: the main test runs the shared clock a little
before the next period's gate closure, trades, then steps the clock forward to the start of delivery (as if
the test had waited 5 minutes; the clock only ever moves forward) and reads the PCS: a sell, then a buy.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack

import httpx
import pytest

from controller.clock import Clock, iso
from controller.daemon import Daemon
from controller.signing import request_signature
from controller.trading.exchange import ExchangeClient
from controller.trading.market import PERIOD_S, period_start
from tests.fixtures.controller import wait_for
from tests.fixtures.exchange import running_exchange
from tests.fixtures.mosquitto import mosquitto  # noqa: F401  (fixture)
from tests.fixtures.plant import make_plant  # noqa: F401  (fixture)
from tests.fixtures.trading import (
    GATE_S,
    OTHER_KEY,
    SECRET,
    SITE,
    SITE_KEY,
    THIRD_KEY,
    SteppedClock,
    exchange_kwargs,
    next_open_period,
    order_body,
    publisher_connected,
    running_site,
)

pytestmark = pytest.mark.timeout(90)


async def open_front_period(clock: Clock, margin_s: float = 30.0) -> float:
    """The exchange's front product (the nearest delivery period still open), the one market data's top level
    describes. Within `margin_s` of its gate closure, wait it out and take the next one, so that the front
    cannot move while the test runs."""
    now = clock.now()
    front = period_start(now + GATE_S) + PERIOD_S
    if front - GATE_S - now < margin_s:
        await asyncio.sleep(clock.real_seconds(front - GATE_S - now) + 0.5)
        front += PERIOD_S
    return front


async def api_until(api: httpx.AsyncClient, path: str, predicate, timeout_s: float, what: str) -> dict:
    """GET `path` of the site's API until `predicate(json)` holds; bounded in time and count."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.1) + 1):
        body = (await api.get(path)).json()
        if predicate(body) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert predicate(body), f"timed out after {timeout_s:g} s waiting for {what}: {body}"
    return body


async def step_clock(clock: SteppedClock, ts: float, d: Daemon) -> None:
    """Step the shared clock to `ts`, then wait for a cycle on fresh readings after it: the step makes every
    reading look old for a moment, and the pre-trade check takes only a live, fresh SoC."""
    clock.advance_to(ts)

    def fresh() -> bool:
        snap = d.controller.snapshot
        return snap is not None and snap.ts >= ts and snap.soc_pct is not None

    await wait_for(fresh, 10, "a cycle on fresh readings after the clock step")


# ----------------------------------------------------------------------------------------------- main path
async def test_order_from_site_api_to_pcs_setpoint_and_ack(mosquitto, make_plant, tmp_path):  # noqa: F811
    # the shared clock starts 60 s before the gate of the period it will trade: start-up can take its time
    real = time.time()
    delivery = next_open_period(real + 60, margin_s=0)  # gate at `delivery - 300` >= real + 60
    clock = SteppedClock(offset_s=(delivery - GATE_S - 60) - real)
    plant = await make_plant()
    async with (
        running_exchange(**exchange_kwargs(clock, mosquitto)) as ex,
        running_site(plant, mosquitto, tmp_path, clock, ex.url) as (d, api),
        ExchangeClient(ex.url, OTHER_KEY, SECRET, now=clock.now) as other,
    ):
        await publisher_connected(ex)
        await step_clock(clock, delivery - GATE_S - 10, d)  # 10 s before gate closure
        ds = iso(delivery).replace(".000Z", "Z")
        assert plant.pcs.requested_mw() == 0.0

        # the counterparty's bid rests on the book; the site's offer crosses it
        bid = await other.place_order(order_body("buy", 2.0, 91.5, delivery))
        assert bid["status"] == "open", bid
        r = await api.post("/api/orders", json=order_body("sell", 3.0, 85.0, delivery))
        assert r.status_code == 201, r.text
        placed = r.json()
        assert (placed["status"], placed["side"], placed["filled_mw"], placed["remaining_mw"]) == (
            "partially_filled",
            "sell",
            2.0,
            1.0,
        ), placed
        assert placed["delivery_start"].startswith(ds[:16])

        # the exchange: one trade at the resting order's price; the site is the seller
        ex_trades = ex.service.trades_of(SITE)
        assert len(ex_trades) == 1, ex_trades
        trade_id = ex_trades[0]["trade_id"]
        assert (
            ex_trades[0]["side"],
            ex_trades[0]["quantity_mw"],
            ex_trades[0]["price_eur_mwh"],
            ex_trades[0]["order_id"],
        ) == ("sell", 2.0, 91.5, placed["order_id"])
        assert (await other.trades())[0]["side"] == "buy"

        # signed over MQTT -> verified and stored by the site's uplink -> ack back to the exchange
        publisher = ex.app.state.publisher
        await wait_for(
            lambda: publisher.delivery(SITE, trade_id)["ack"] is not None, 10, "the site's ack at the exchange"
        )
        delivery_state = publisher.delivery(SITE, trade_id)
        assert delivery_state["published"] is True and delivery_state["ack"]["accepted"] is True, delivery_state
        assert delivery_state["ack"]["reason"] == "stored", delivery_state
        assert d.store.has_trade(trade_id)
        assert d.uplink.stats.get("trades_rejected", 0) == 0
        async with ExchangeClient(ex.url, SITE_KEY, SECRET, now=clock.now) as as_site:
            seen = (await as_site.trades())[0]
        assert seen["trade_id"] == trade_id and seen["ack"]["accepted"] is True, seen

        # the site's own API shows the trade and the order still resting for its remaining 1 MW
        trades = (await api.get("/api/trades")).json()
        assert trades["stale"] is False
        assert [(t["trade_id"], t["side"], t["quantity_mw"], t["price_eur_mwh"]) for t in trades["trades"]] == [
            (trade_id, "sell", 2.0, 91.5)
        ], trades
        assert trades["trades"][0]["delivery_start"].startswith(ds[:16])
        orders = (await api.get("/api/orders")).json()
        assert orders["stale"] is False
        assert [(o["order_id"], o["status"], o["filled_mw"], o["remaining_mw"]) for o in orders["orders"]] == [
            (placed["order_id"], "partially_filled", 2.0, 1.0)
        ], orders
        schedule = (
            await api.get(
                "/api/schedule", params={"from": iso(delivery - PERIOD_S), "to": iso(delivery + 2 * PERIOD_S)}
            )
        ).json()
        assert [(p["period_start"][:16], p["position_mw"]) for p in schedule["periods"]] == [(ds[:16], 2.0)]

        # before delivery the PCS stays at 0 MW; at the period's start the sell is +2 MW (discharge)
        cycles = d.controller.stats.cycles  # a few cycles with the trade in the schedule, counted
        await wait_for(lambda: d.controller.stats.cycles >= cycles + 2, 10, "two cycles before delivery")
        assert plant.pcs.requested_mw() == 0.0 and plant.pcs_server.get("704.WSet") == 0
        soc_before = plant.model.soc_pct
        clock.advance_to(delivery + 0.5)
        await wait_for(lambda: plant.pcs_server.get("704.WSet") == 2_000_000, 5, "WSet = 2 MW on the PCS simulator")
        assert plant.pcs.requested_mw() == pytest.approx(2.0)
        await wait_for(lambda: plant.model.power_mw > 1.99, 5, "the PCS delivering +2 MW (discharge)")
        await wait_for(lambda: plant.model.soc_pct < soc_before, 5, "the SoC falling while discharging")
        status = await api_until(
            api, "/api/bess-status", lambda st: st["power_mw"] > 1.9, 5, "the site's status to show the delivered +2 MW"
        )
        assert (status["target_mw"], status["setpoint_mw"], status["status"]) == (2.0, 2.0, "online"), status

        # past gate closure the rest of the site's order expired at the exchange; the site learns it
        await wait_for(
            lambda: ex.service.engine.orders[placed["order_id"]].status == "expired",
            5,
            "the resting remainder to expire at gate closure",
        )
        await asyncio.sleep(d.config.exchange.cache_s + 0.1)
        assert (await api.get("/api/orders")).json() == {"orders": [], "stale": False}

        # the other sign: a buy in the following period charges (-1 MW), filled completely this time
        nxt = delivery + PERIOD_S
        await step_clock(clock, nxt - GATE_S - 10, d)
        ask = await other.place_order(order_body("sell", 1.0, 40.0, nxt))
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 45.0, nxt))
        assert r.status_code == 201 and r.json()["status"] == "filled", r.text
        buy_trade = ex.service.trades_of(SITE)[-1]
        assert (
            buy_trade["side"],
            buy_trade["quantity_mw"],
            buy_trade["price_eur_mwh"],
            buy_trade["sell_order_id"],
        ) == ("buy", 1.0, 40.0, ask["order_id"])
        await wait_for(
            lambda: (publisher.delivery(SITE, buy_trade["trade_id"])["ack"] or {}).get("accepted"),
            10,
            "the ack of the buy",
        )
        clock.advance_to(nxt + 0.5)
        await wait_for(lambda: plant.pcs_server.get("704.WSet") == -1_000_000, 5, "WSet = -1 MW (charge)")
        await wait_for(lambda: plant.model.power_mw < -0.99, 5, "the PCS charging at 1 MW")
        trades = (await api.get("/api/trades")).json()["trades"]  # newest first
        assert [(t["side"], t["quantity_mw"]) for t in trades] == [("buy", 1.0), ("sell", 2.0)], trades


# ----------------------------------------------------------------------------------------------- refusals
async def test_refused_orders_send_and_store_nothing(mosquitto, make_plant, tmp_path):  # noqa: F811
    # the shared clock 2 minutes before a period boundary: that next period's gate is already closed
    real = time.time()
    boundary = period_start(real) + PERIOD_S
    clock = SteppedClock(offset_s=boundary - 120 - real)
    plant = await make_plant(initial_soc_pct=20)  # 10 MW for 15 min would take 13 % of 20 MWh: below soc_min
    async with (
        running_exchange(**exchange_kwargs(clock, mosquitto)) as ex,
        running_site(plant, mosquitto, tmp_path, clock, ex.url) as (d, api),
    ):
        now = clock.now()
        assert boundary - GATE_S < now < boundary  # start-up took less than 2 minutes
        delivery = next_open_period(now)
        assert delivery == boundary + PERIOD_S
        ds = iso(delivery).replace(".000Z", "Z")

        # infeasible: the pre-trade check names the period and the limit
        r = await api.post("/api/orders", json=order_body("sell", 10.0, 80.0, delivery))
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["limit"] == "soc_min" and body["period"] == iso(delivery), body
        assert "soc_min" in body["detail"] and ds[11:16] in body["detail"], body
        r = await api.post("/api/orders", json=order_body("sell", 12.0, 80.0, delivery))
        assert r.status_code == 409 and r.json()["limit"] == "p_discharge_max", r.text
        check = (await api.post("/api/orders/check", json=order_body("sell", 10.0, 80.0, delivery))).json()
        assert (check["ok"], check["limit"]) == (False, "soc_min"), check

        # after gate closure: the current period, and the next one when it starts in under 5 minutes
        for closed in (period_start(now), boundary):
            r = await api.post("/api/orders", json=order_body("buy", 1.0, 50.0, closed))
            assert r.status_code == 409, r.text
            assert r.json()["limit"] == "gate_closure" and "gate closed" in r.json()["detail"], r.json()
            assert r.json()["period"] == iso(closed), r.json()  # the same format as the SoC check's period

        # bad fields: 422 naming the field
        bad = {
            "side": ({**order_body("buy", 1.0, 50.0, delivery), "side": "hold"}, "side"),
            "quantity_mw <= 0": (order_body("buy", -1.0, 50.0, delivery), "quantity_mw"),
            "quantity_mw not a number": (
                {**order_body("buy", 1.0, 50.0, delivery), "quantity_mw": "lots"},
                "quantity_mw",
            ),
            "price out of range": (order_body("buy", 1.0, 1e6, delivery), "price_eur_mwh"),
            "off the 15-minute grid": (
                {**order_body("buy", 1.0, 50.0, delivery), "delivery_start": iso(delivery + 420)},
                "delivery_start",
            ),
            "not a time": ({**order_body("buy", 1.0, 50.0, delivery), "delivery_start": "tomorrow"}, "delivery_start"),
            "missing delivery_start": (
                {k: v for k, v in order_body("buy", 1.0, 50.0, delivery).items() if k != "delivery_start"},
                "delivery_start",
            ),
            "unknown field": (order_body("buy", 1.0, 50.0, delivery, participant="other"), "participant"),
        }
        for name, (payload, field) in bad.items():
            r = await api.post("/api/orders", json=payload)
            assert r.status_code == 422, (name, r.status_code, r.text)
            assert field in r.json()["detail"], (name, r.json())
        r = await api.post("/api/orders", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"], r.text
        # a market the exchange does not trade: passes the site's checks, refused by the exchange, not stored
        r = await api.post("/api/orders", json={**order_body("buy", 1.0, 50.0, delivery), "market": "day-ahead"})
        assert r.status_code == 422 and "exchange refused" in r.json()["detail"], r.text
        assert "market" in r.json()["detail"], r.json()
        # without the API key
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 50.0, delivery), headers={"X-API-Key": ""})
        assert r.status_code == 401, r.text

        # nothing reached the exchange's book, nothing is stored, nothing scheduled
        assert ex.service.engine.orders_of(SITE) == []
        assert d.store.orders(active_only=False) == []
        assert (await api.get("/api/orders")).json() == {"orders": [], "stale": False}
        assert (await api.get("/api/trades")).json() == {"trades": [], "stale": False}
        assert d.controller.schedule.position_mw(delivery) == 0.0

        # at the exchange itself: a bad signature and a replayed signed request are refused with 401
        async with httpx.AsyncClient(base_url=ex.url, timeout=10) as raw:
            body = json.dumps(order_body("buy", 1.0, 50.0, delivery)).encode()

            def headers(secret: str = SECRET, ts: float | None = None) -> dict:
                t = f"{clock.now() if ts is None else ts:.6f}"
                return {
                    "X-API-Key": SITE_KEY,
                    "X-Timestamp": t,
                    "Content-Type": "application/json",
                    "X-Signature": request_signature(secret, t, "POST", "/api/orders", body),
                }

            r = await raw.post("/api/orders", content=body, headers=headers(secret="not-the-secret"))
            assert (r.status_code, r.json()["detail"]) == (401, "bad signature"), r.text
            h = headers()
            r = await raw.post("/api/orders", content=body.replace(b"1.0", b"9.0"), headers=h)  # tampered body
            assert (r.status_code, r.json()["detail"]) == (401, "bad signature"), r.text
            r = await raw.post("/api/orders", content=body, headers=headers(ts=clock.now() - 60))
            assert r.status_code == 401 and "stale timestamp" in r.json()["detail"], r.text
            first = await raw.post("/api/orders", content=body, headers=h)  # the genuine request, once
            assert first.status_code == 201, first.text
            replay = await raw.post("/api/orders", content=body, headers=h)  # the same bytes again
            assert replay.status_code == 401 and "replayed request" in replay.json()["detail"], replay.text
        assert [o.order_id for o in ex.service.engine.orders_of(SITE)] == [first.json()["order_id"]]


# ----------------------------------------------------------------------------------------------- exchange down
async def test_exchange_down_site_serves_last_known_data_as_stale(mosquitto, make_plant, tmp_path):  # noqa: F811
    clock = Clock()
    plant = await make_plant()
    async with AsyncExitStack() as exchange_stack:
        ex = await exchange_stack.enter_async_context(running_exchange(**exchange_kwargs(clock, mosquitto)))
        async with running_site(plant, mosquitto, tmp_path, clock, ex.url, exchange={"cache_s": 0.2}) as (d, api):
            delivery = await open_front_period(clock)  # market data's top level is about this product
            async with (
                ExchangeClient(ex.url, OTHER_KEY, SECRET) as other,
                ExchangeClient(ex.url, THIRD_KEY, SECRET) as third,
            ):
                await other.place_order(order_body("sell", 1.5, 64.0, delivery))
                await third.place_order(order_body("buy", 1.5, 70.0, delivery))  # one trade at 64.00
            r = await api.post("/api/orders", json=order_body("buy", 1.0, 10.0, delivery))  # rests: no seller
            assert r.status_code == 201, r.text
            resting = r.json()
            market = (await api.get("/api/market-data")).json()
            assert market["stale"] is False and market["vwap"] == 64.0, market
            assert {"period_start": iso(delivery), "vwap": 64.0, "volume_mw": 1.5} in market["series"], market
            orders = (await api.get("/api/orders")).json()
            assert orders["stale"] is False and [o["order_id"] for o in orders["orders"]] == [resting["order_id"]]

            await exchange_stack.aclose()  # the exchange goes away
            async with httpx.AsyncClient(timeout=2) as probe:
                with pytest.raises(httpx.ConnectError):
                    await probe.get(ex.url + "/healthz")
            await asyncio.sleep(0.3)  # past the site's cache_s
            r = await api.get("/api/market-data")
            assert r.status_code == 200, r.text
            assert r.json() == {**market, "stale": True}
            r = await api.get("/api/orders")
            assert r.status_code == 200 and r.json() == {**orders, "stale": True}, r.text
            r = await api.get("/api/trades")
            assert r.status_code == 200 and r.json()["trades"] == [], r.text
            # a new order is not sent and not stored: 503 with a reason
            r = await api.post("/api/orders", json=order_body("buy", 1.0, 10.0, delivery))
            assert r.status_code == 503 and "exchange unreachable" in r.json()["detail"], r.text
            assert [o["order_id"] for o in d.store.orders(active_only=False)] == [resting["order_id"]]
            # the plant side does not care: cycles go on
            cycles = d.controller.stats.good_cycles
            await wait_for(lambda: d.controller.stats.good_cycles > cycles + 2, 5, "the control cycle running on")
