"""Trading safety with real parts (issue 11): the site presents EXCHANGE_API_KEY to the exchange, never its local
API key; a site without one still receives trades; the pre-trade check counts every open order as filling and
refuses on an unknown SoC; an order's intent is stored before it is sent and reconciled with the exchange by
client_order_id after a timeout or a kill -9, never placed twice.

Helpers (the stepped clock, the site daemon, the exchange's kwargs) come from test_trading_e2e.
"""

from __future__ import annotations

import time

import pytest

from controller.clock import iso
from controller.schedule import PERIOD_S
from simulators.exchange.client import ExchangeClient
from tests.fixtures.controller import wait_for
from tests.fixtures.exchange import running_exchange
from tests.fixtures.mosquitto import mosquitto  # noqa: F401  (fixture)
from tests.fixtures.plant import make_plant  # noqa: F401  (fixture)
from tests.system.test_trading_e2e import (GATE_S, LOCAL_KEY, OTHER_KEY, SECRET, SITE, SITE_KEY, SteppedClock,
                                           exchange_kwargs, next_open_period, order_body, publisher_connected,
                                           running_site)

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
    async with running_exchange(**exchange_kwargs(clock, mosquitto)) as ex, \
            running_site(plant, mosquitto, tmp_path, clock, ex.url) as (d, api):
        assert LOCAL_KEY not in ex.app.state.auth.participants
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 20.0, delivery))
        assert r.status_code == 201, r.text
        assert r.json()["participant"] == SITE
        assert [o.order_id for o in ex.service.engine.orders_of(SITE)] == [r.json()["order_id"]]


async def test_without_exchange_api_key_orders_are_refused_and_trades_still_received(mosquitto, make_plant,  # noqa: F811
                                                                                    tmp_path):
    clock, delivery = stepped_clock_before_gate()
    plant = await make_plant()
    async with running_exchange(**exchange_kwargs(clock, mosquitto)) as ex, \
            running_site(plant, mosquitto, tmp_path, clock, ex.url, exchange_key=None) as (d, api):
        await publisher_connected(ex)
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 20.0, delivery))
        assert r.status_code == 503 and "EXCHANGE_API_KEY" in r.json()["detail"], r.text
        r = await api.delete("/api/orders/X-1")
        assert r.status_code == 503 and "EXCHANGE_API_KEY" in r.json()["detail"], r.text
        assert ex.service.engine.orders_of(SITE) == [] and d.store.orders(active_only=False) == []
        assert (await api.get("/api/orders")).status_code == 200
        # the daemon still runs and still takes the trades the exchange sends it
        trade = {"trade_id": "T-no-key-1", "side": "sell", "quantity_mw": 1.0, "price_eur_mwh": 50.0,
                 "delivery_start": iso(delivery), "delivery_end": iso(delivery + PERIOD_S), "market": "intraday",
                 "executed_at": iso(clock.now())}
        ex.app.state.publisher.publish_trade(SITE, trade)
        await wait_for(lambda: d.store.has_trade("T-no-key-1"), 10, "the trade stored")
        await wait_for(lambda: (ex.app.state.publisher.delivery(SITE, "T-no-key-1")["ack"] or {}).get("accepted"),
                       10, "the trade acked accepted")
        assert d.controller.schedule.position_mw(delivery) == 1.0
        assert d.controller.stats.good_cycles > 0


# ----------------------------------------------------------------------------------------------- pre-trade check
async def test_open_orders_count_as_filled_in_the_pre_trade_check(mosquitto, make_plant, tmp_path):  # noqa: F811
    """From 30 % of 20 MWh, a 10 MW sell for one period takes ~13 %: each of two such sells fits alone, both
    together would end under soc_min (10 %). With the first resting open at the exchange, the second is refused,
    with the worst case named; a buy (it can only raise the SoC) still goes."""
    clock, delivery = stepped_clock_before_gate()
    plant = await make_plant(initial_soc_pct=30)
    async with running_exchange(**exchange_kwargs(clock, mosquitto)) as ex, \
            running_site(plant, mosquitto, tmp_path, clock, ex.url) as (d, api):
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
    async with running_exchange(**exchange_kwargs(clock, mosquitto)) as ex, \
            running_site(plant, mosquitto, tmp_path, clock, ex.url) as (d, api):
        plant.faults["bms_modbus"].silent = True
        await wait_for(lambda: d.controller.snapshot is not None and d.controller.snapshot.soc_pct is None, 20,
                       "the BMS's SoC unknown")
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 20.0, delivery))
        assert r.status_code == 409, r.text
        assert r.json()["limit"] == "soc_unknown" and "SoC unknown" in r.json()["detail"], r.json()
        assert ex.service.engine.orders_of(SITE) == []
        plant.faults["bms_modbus"].silent = False
        await wait_for(lambda: d.controller.snapshot.soc_pct is not None, 20, "the SoC back")
        r = await api.post("/api/orders", json=order_body("buy", 1.0, 20.0, delivery))
        assert r.status_code == 201, r.text
