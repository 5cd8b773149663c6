"""Exchange simulator REST API: through a real uvicorn on loopback (place/match/cancel, market data) and at
API level through httpx's ASGI transport with a settable clock (gate closure, refused fields, auth);
publishing of a site's trades, signed, through a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import paho.mqtt.client as mqtt
import pytest

from controller.clock import iso, parse_iso
from controller.signing import request_signature, verify_message
from controller.trading.exchange import ExchangeAuthError, ExchangeClient, ExchangeRejected
from simulators.exchange.app import create_app, participants_from_env
from simulators.exchange.auth import ReplayCache
from tests.fixtures.exchange import exchange, running_exchange  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import mosquitto  # noqa: F401  (fixture)

SECRET = "test-secret"
T0 = 1_800_000_000 - 1_800_000_000 % 900
DS = T0 + 4 * 900  # one hour ahead of T0


class SetClock:
    """A clock the test moves by hand (the app reads only now())."""

    def __init__(self, t: float):
        self.t = t

    def now(self) -> float:
        return self.t


def order(side="sell", qty=2.0, price=50.0, ds=DS, **extra) -> dict:
    return {
        "side": side,
        "quantity_mw": qty,
        "price_eur_mwh": price,
        "delivery_start": iso(ds),
        "market": "intraday",
        **extra,
    }


@pytest.fixture
async def api():
    """(app, clock, demo client, other client, raw httpx client) over the ASGI transport."""
    clock = SetClock(T0 + 10.0)
    app = create_app(
        participants={"k-demo": "demo", "k-other": "other"}, hmac_secret=SECRET, clock=clock, id_prefix="", tick_s=3600
    )
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        demo = ExchangeClient("http://exchange", "k-demo", SECRET, now=clock.now, transport=transport)
        other = ExchangeClient("http://exchange", "k-other", SECRET, now=clock.now, transport=transport)
        raw = httpx.AsyncClient(base_url="http://exchange", transport=transport)
        try:
            yield app, clock, demo, other, raw
        finally:
            for c in (demo, other):
                await c.aclose()
            await raw.aclose()


def signed(method: str, path: str, body: bytes, ts: float, key: str = "k-demo", secret: str = SECRET) -> dict:
    t = f"{ts:.3f}"
    return {
        "X-API-Key": key,
        "X-Timestamp": t,
        "X-Signature": request_signature(secret, t, method, path, body),
        "Content-Type": "application/json",
    }


# ---- through a real uvicorn -----------------------------------------------------------------------------


async def test_place_match_cancel_over_uvicorn(exchange):  # noqa: F811
    import time

    ds = (int(time.time()) // 900 + 4) * 900
    async with (
        ExchangeClient(exchange.url, "demo", "phoenyra_demo_secret") as demo,
        ExchangeClient(exchange.url, "other-key", "phoenyra_demo_secret") as other,
    ):
        sell = await demo.place_order(order("sell", 2.0, 50.0, ds, client_order_id="c-1"))
        assert (sell["status"], sell["remaining_mw"], sell["participant"]) == ("open", 2.0, "demo")
        buy = await other.place_order(order("buy", 1.5, 55.0, ds, time_in_force="IOC"))
        assert buy["status"] == "filled" and buy["trades"][0]["price_eur_mwh"] == 50.0  # the resting price
        trades = await demo.trades()
        assert len(trades) == 1
        t = trades[0]
        assert (t["side"], t["quantity_mw"], t["price_eur_mwh"], t["order_id"]) == ("sell", 1.5, 50.0, sell["order_id"])
        assert set(t) >= {"trade_id", "buy_order_id", "sell_order_id", "delivery_start", "delivery_end", "executed_at"}
        assert t["delivery_start"] == iso(ds) and t["delivery_end"] == iso(ds + 900)
        active = await demo.orders("active")
        assert [(o["order_id"], o["status"], o["remaining_mw"], o["filled_mw"]) for o in active] == [
            (sell["order_id"], "partially_filled", 0.5, 1.5)
        ]
        with pytest.raises(ExchangeRejected) as e:
            await other.cancel_order(sell["order_id"])  # not its order
        assert e.value.status_code == 404
        cancelled = await demo.cancel_order(sell["order_id"])
        assert cancelled["status"] == "cancelled" and cancelled["filled_mw"] == 1.5
        with pytest.raises(ExchangeRejected) as e:
            await demo.cancel_order(sell["order_id"])
        assert e.value.status_code == 409 and e.value.body["order"]["status"] == "cancelled"
        assert await demo.orders("active") == []
        again = await demo.place_order(order("sell", 2.0, 50.0, ds, client_order_id="c-1"))
        assert again["order_id"] == sell["order_id"]  # idempotent retry by client_order_id
        md = await demo.market_data()
        assert set(md) >= {"mark", "ema", "vwap", "series"}
        assert md["series"] == [{"period_start": iso(ds), "vwap": 50.0, "volume_mw": 1.5}]
        async with httpx.AsyncClient() as anonymous:  # market data is public
            r = await anonymous.get(exchange.url + "/api/market-data")
            assert r.status_code == 200 and r.json()["series"] == md["series"]
            r = await anonymous.get(exchange.url + "/api/orders")
            assert r.status_code == 401 and r.json()["detail"] == "missing X-API-Key header"
            assert (await anonymous.get(exchange.url + "/healthz")).json()["status"] == "ok"


async def test_client_order_id_lookup_and_never_a_second_order(exchange):  # noqa: F811
    """A client that got no answer asks by client_order_id; a retry returns the order it placed, and the id reused
    for another order is refused. Another participant's id is not visible."""
    import time

    ds = (int(time.time()) // 900 + 4) * 900
    async with (
        ExchangeClient(exchange.url, "demo", "phoenyra_demo_secret") as demo,
        ExchangeClient(exchange.url, "other-key", "phoenyra_demo_secret") as other,
    ):
        assert await demo.order_by_client_id("site-c-9") is None
        placed = await demo.place_order(order("buy", 1.0, 40.0, ds, client_order_id="site-c-9"))
        found = await demo.order_by_client_id("site-c-9")
        assert found["order_id"] == placed["order_id"] and found["client_order_id"] == "site-c-9"
        assert await other.order_by_client_id("site-c-9") is None
        retry = await demo.place_order(order("buy", 1.0, 40.0, ds, client_order_id="site-c-9"))
        assert retry["order_id"] == placed["order_id"]
        with pytest.raises(ExchangeRejected) as e:
            await demo.place_order(order("buy", 2.0, 40.0, ds, client_order_id="site-c-9"))
        assert e.value.status_code == 409 and "quantity_mw" in e.value.detail
        assert [o.order_id for o in exchange.service.engine.orders_of("demo")] == [placed["order_id"]]


# ---- API level with a settable clock -----------------------------------------------------------------------


async def test_gate_closure_expires_resting_and_refuses_new(api):
    app, clock, demo, other, raw = api
    resting = await demo.place_order(order("buy", 1.0, 40.0))
    clock.t = DS - 300  # gate closure
    got = await demo.orders()
    assert [(o["order_id"], o["status"]) for o in got] == [(resting["order_id"], "expired")]
    assert "gate closed" in got[0]["reason"]
    with pytest.raises(ExchangeRejected) as e:
        await demo.place_order(order("buy", 1.0, 40.0))
    assert e.value.status_code == 409 and "gate closed" in e.value.detail
    assert e.value.body["order"]["status"] == "rejected"
    with pytest.raises(ExchangeRejected) as e:
        await demo.cancel_order(resting["order_id"])
    assert e.value.status_code == 409


@pytest.mark.parametrize(
    "body, field",
    [
        ({k: v for k, v in order().items() if k != "side"}, "side"),
        (order(side="hold"), "side"),
        (order(qty=0), "quantity_mw"),
        (order(qty=-1), "quantity_mw"),
        (order(qty=1.25), "quantity_mw"),
        (order(qty="lots"), "quantity_mw"),
        (order(qty="2"), "quantity_mw"),
        (order(qty=True), "quantity_mw"),
        (order(price=None), "price_eur_mwh"),
        ({**order(), "delivery_start": True}, "delivery_start"),
        (order(price=10_000.0), "price_eur_mwh"),
        (order(price=12.345), "price_eur_mwh"),
        ({**order(), "delivery_start": iso(DS + 60)}, "delivery_start"),
        ({**order(), "delivery_start": "2027-01-15T10:00:00"}, "delivery_start"),
        ({**order(), "delivery_start": "tomorrow"}, "delivery_start"),
        (order(time_in_force="DAY"), "time_in_force"),
        (order(qty_typo=1), "qty_typo"),
        (order(market="dayahead"), "market"),
    ],
)
async def test_bad_fields_are_422_with_detail(api, body, field):
    app, clock, demo, other, raw = api
    with pytest.raises(ExchangeRejected) as e:
        await demo.place_order(body)
    assert e.value.status_code == 422
    assert e.value.detail.startswith(field), e.value.detail


@pytest.mark.parametrize("content", [b"", b"not json", b"[1,2]", b'{"side": "buy"', b"null"])
async def test_malformed_bodies_are_422(api, content):
    app, clock, demo, other, raw = api
    r = await raw.post("/api/orders", content=content, headers=signed("POST", "/api/orders", content, clock.t))
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


async def test_participant_must_be_the_caller(api):
    app, clock, demo, other, raw = api
    with pytest.raises(ExchangeRejected) as e:
        await demo.place_order(order(participant="other"))
    assert e.value.status_code == 403
    assert (await demo.place_order(order(participant="demo")))["participant"] == "demo"
    with pytest.raises(ExchangeRejected) as e:
        await demo.orders("bogus")
    assert e.value.status_code == 422


async def test_auth_refusals(api):
    app, clock, demo, other, raw = api
    body = json.dumps(order()).encode()

    async def post(headers, content=body):
        r = await raw.post("/api/orders", content=content, headers=headers)
        return r.status_code, r.json()["detail"] if r.status_code != 201 else r.json()["status"]

    assert await post(signed("POST", "/api/orders", body, clock.t, secret="wrong")) == (401, "bad signature")
    assert await post(signed("POST", "/api/orders", body, clock.t, key="nope")) == (401, "unknown API key")
    assert (await post({}))[0] == 401
    tampered = signed("POST", "/api/orders", body, clock.t)
    assert await post(tampered, body.replace(b"50.0", b"5.0")) == (401, "bad signature")
    for skew in (-31, 31):
        code, detail = await post(signed("POST", "/api/orders", body, clock.t + skew))
        assert code == 401 and detail.startswith("stale timestamp")
    ok = signed("POST", "/api/orders", body, clock.t + 29)
    assert await post(ok) == (201, "open")
    assert await post(ok) == (401, "replayed request: this signature was already used")
    assert len(app.state.exchange.engine.orders) == 1  # nothing but the one good order got in
    r = await raw.get("/api/market-data", headers=signed("GET", "/api/market-data", b"", clock.t, secret="x"))
    assert r.status_code == 401  # market data is public, but sent credentials are still checked
    with pytest.raises(ExchangeAuthError):
        await ExchangeClient(
            "http://exchange", "k-demo", "wrong", now=clock.now, transport=httpx.ASGITransport(app=app)
        ).trades()


async def test_same_get_twice_in_one_second_is_not_a_replay(api):
    app, clock, demo, other, raw = api
    for _ in range(5):  # the client's timestamps are strictly increasing (microseconds)
        assert await demo.orders() == []


async def test_counterparties_make_a_market_the_site_trades_into():
    clock = SetClock(T0 + 10.0)
    app = create_app(
        participants={"k": "demo"}, hmac_secret=SECRET, clock=clock, counterparties=4, seed=3, id_prefix="", tick_s=3600
    )
    async with app.router.lifespan_context(app):
        async with ExchangeClient(
            "http://x", "k", SECRET, now=clock.now, transport=httpx.ASGITransport(app=app)
        ) as demo:
            for _ in range(20):  # let them trade a while (the ticker is parked, so step by hand)
                clock.t += 1
                app.state.exchange.tick(clock.t)
            md = await demo.market_data()
            front = md["products"][0]
            assert front["best_bid"] is not None and front["best_ask"] is not None
            assert front["best_bid"] < front["best_ask"] and md["mark"] is not None
            assert any(p["trades"] for p in md["products"])
            placed = await demo.place_order(order("sell", 1.0, front["best_bid"], parse_iso(front["delivery_start"])))
            assert placed["filled_mw"] > 0 and placed["trades"][0]["side"] == "sell"


def test_replay_cache_is_bounded():
    cache = ReplayCache(max_entries=3)
    assert all(cache.add(f"s{i}", expires_at=100.0, now=0.0) for i in range(5))
    assert len(cache) == 3 and cache.evicted == 2
    assert not cache.add("s4", 100.0, 1.0)  # still remembered
    assert cache.add("s9", 300.0, 150.0) and len(cache) == 1  # expired ones are gone


def test_participants_from_env():
    assert participants_from_env({}) == {"demo": "demo"}
    assert participants_from_env({"API_KEY": "a, b", "EXCHANGE_SITE_ID": "s1"}) == {"a": "s1", "b": "s1"}
    # the key a site presents to the exchange is EXCHANGE_API_KEY, not its local API_KEY
    assert participants_from_env({"API_KEY": "local", "EXCHANGE_API_KEY": "ex1"}) == {"ex1": "demo"}
    assert participants_from_env({"EXCHANGE_PARTICIPANTS": "k1=s1,k2=s2", "API_KEY": "x"}) == {"k1": "s1", "k2": "s2"}
    with pytest.raises(ValueError):
        participants_from_env({"EXCHANGE_PARTICIPANTS": "k1"})


# ---- publishing through a real Mosquitto ----------------------------------------------------------------


class Subscriber:
    """A paho client collecting messages of one topic filter (its loop in its own thread)."""

    def __init__(self, host: str, port: int, topic: str):
        self.messages: list[tuple[str, dict]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect(host, port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def test_site_trade_published_signed_and_ack_recorded(mosquitto):  # noqa: F811
    import time

    ds = (int(time.time()) // 900 + 4) * 900
    sub = Subscriber(mosquitto.host, mosquitto.port, "bess/+/trades")
    try:
        await asyncio.to_thread(sub.subscribed.wait, 5)
        async with running_exchange(
            participants={"demo": "demo", "other-key": "other"},
            hmac_secret=SECRET,
            mqtt_url=f"mqtt://{mosquitto.host}:{mosquitto.port}",
            id_prefix="",
            tick_s=0.2,
        ) as ex:
            pub = ex.app.state.publisher
            await wait_for(pub.connected.is_set, 10, "the exchange's MQTT connection")
            async with (
                ExchangeClient(ex.url, "demo", SECRET) as demo,
                ExchangeClient(ex.url, "other-key", SECRET) as other,
            ):
                await other.place_order(order("sell", 3.0, 42.5, ds))
                placed = await demo.place_order(order("buy", 2.0, 45.0, ds))
                trade_id = placed["trades"][0]["trade_id"]
                await wait_for(lambda: len(sub.messages) >= 2, 10, "the trade on both sites' topics")
                by_topic = dict(sub.messages)
                assert set(by_topic) == {"bess/demo/trades", "bess/other/trades"}  # each party is a site here
                assert by_topic["bess/other/trades"]["side"] == "sell"
                msg = by_topic["bess/demo/trades"]
                assert verify_message(msg, SECRET)
                assert {k: msg[k] for k in ("trade_id", "side", "quantity_mw", "price_eur_mwh", "market")} == {
                    "trade_id": trade_id,
                    "side": "buy",
                    "quantity_mw": 2.0,
                    "price_eur_mwh": 42.5,
                    "market": "intraday",
                }
                assert set(msg) == {
                    "trade_id",
                    "side",
                    "quantity_mw",
                    "price_eur_mwh",
                    "delivery_start",
                    "delivery_end",
                    "market",
                    "executed_at",
                    "site",
                    "ts",
                    "sig",
                }
                assert msg["site"] == "demo" and by_topic["bess/other/trades"]["site"] == "other"
                assert not verify_message({**msg, "price_eur_mwh": 1.0}, SECRET)
                assert not verify_message({**msg, "site": "other"}, SECRET)  # the site is under the signature

                for junk in (b"not json", b'{"trade_id": 5}', b'{"trade_id": "x", "accepted": "yes"}'):
                    sub.client.publish("bess/demo/trades/ack", junk, qos=1)  # logged and ignored
                ack = {"trade_id": trade_id, "accepted": True, "reason": None, "ts": iso(time.time())}
                sub.client.publish("bess/demo/trades/ack", json.dumps(ack), qos=1)
                await wait_for(lambda: pub.delivery("demo", trade_id)["ack"] is not None, 10, "the ack")
                (t,) = await demo.trades()
                assert t["published"] is True and t["ack"]["accepted"] is True
                assert list(pub.acks()) == [("demo", trade_id)]

                # broker briefly down: the trade waits in memory and goes out after the reconnect
                mosquitto.stop()
                await wait_for(lambda: not pub.connected.is_set(), 10, "the disconnect")
                second = await demo.place_order(order("buy", 1.0, 45.0, ds))
                second_id = second["trades"][0]["trade_id"]
                assert pub.delivery("demo", second_id)["published"] is False and pub.pending == 2  # both parties
                mosquitto.start()
                # each party's copy gets its own PUBACK, in no fixed order: wait for both
                await wait_for(lambda: pub.pending == 0, 20, "both parties' trades published after the restart")
                assert pub.delivery("demo", second_id)["published"] is True
                assert pub.delivery("other", second_id)["published"] is True
    finally:
        sub.stop()
