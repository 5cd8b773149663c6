"""The web face through a real uvicorn on loopback (and the ASGI app for the property test): every endpoint,
auth (no key, wrong key, rotated keys, session cookie, lockout, cross-site), bad input never a 500, the
websocket's token checks and throttled pushes, metrics, docs and the dashboard's local assets."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from html.parser import HTMLParser

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from controller.clock import iso
from controller.trading.market import PERIOD_S
from tests.fixtures.controller import wait_for
from tests.fixtures.payloads import STATUS_KEYS
from tests.fixtures.web import KEYS, READ_KEYS, SECRET, MemoryBackend, demo_backend, running_web
from web.app import create_app
from web.auth import fingerprint

H = {"X-API-Key": KEYS[0]}


def next_period(b: MemoryBackend, ahead: int = 2) -> str:
    now = b.now()
    return iso(now - now % PERIOD_S + ahead * PERIOD_S).replace(".000Z", "Z")


def order(b: MemoryBackend, **kw) -> dict:
    return {
        "side": "sell",
        "quantity_mw": 2.0,
        "price_eur_mwh": 85.5,
        "market": "intraday",
        "delivery_start": next_period(b),
        **kw,
    }


async def with_cookie(base_url: str, method: str, path: str, token: str, **kw) -> httpx.Response:
    """A request from a fresh client that holds only this session cookie."""
    async with httpx.AsyncClient(base_url=base_url, cookies={"bess_session": token}) as c:
        return await c.request(method, path, **kw)


def assert_json_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.fixture
async def web():
    async with running_web() as w:
        async with httpx.AsyncClient(base_url=w.url, timeout=10) as client:
            w.client = client
            yield w


# ------------------------------------------------------------------------------------------- health, reads
async def test_health_and_readiness_need_no_key(web):
    r = await web.client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert (await web.client.get("/readyz")).json() == {"ready": True, "detail": None}
    web.backend.is_ready = False
    r = await web.client.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False


async def test_bess_status_has_the_design_shape(web):
    web.backend.cycle(1.0)
    r = await web.client.get("/api/bess-status", headers=H)
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    body = r.json()
    assert STATUS_KEYS <= set(body), STATUS_KEYS - set(body)
    assert body["status"] == "online" and body["mode"] == "auto" and body["alarms"] == []
    assert body["soc_pct"] == pytest.approx(web.backend.soc_pct)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["ts"])


async def test_unknown_numbers_become_null_not_invalid_json(web):
    web.backend.soc_pct = float("nan")
    web.backend.temperature_c = float("inf")
    web.backend._status = None
    r = await web.client.get("/api/bess-status", headers=H)
    assert r.status_code == 200
    assert r.json()["soc_pct"] is None and r.json()["temperature_c"] is None


async def test_alarms_in_status_and_alarm_list(web):
    web.backend.raise_alarm("bms:overtemp", "bms", "overtemperature", "BMS: cell temperature above 55 °C")
    web.backend.cycle(1.0)
    status = (await web.client.get("/api/bess-status", headers=H)).json()
    assert status["alarms"] == ["BMS: cell temperature above 55 °C"] and status["binding"] == "alarm"
    body = (await web.client.get("/api/alarms", headers=H)).json()
    assert [a["key"] for a in body["active"]] == ["bms:overtemp"]
    assert body["active"][0]["raised_ts"].endswith("Z") and body["active"][0]["cleared_ts"] is None
    web.backend.clear_alarm("bms:overtemp")
    body = (await web.client.get("/api/alarms", headers=H)).json()
    assert body["active"] == [] and body["history"][0]["cleared_ts"].endswith("Z")


async def test_market_data_orders_trades(web):
    md = (await web.client.get("/api/market-data", headers=H)).json()
    assert set(md) >= {"mark", "ema", "vwap", "series", "stale"} and len(md["series"]) == 24
    assert set(md["series"][0]) >= {"period_start", "vwap", "volume_mw"}
    assert (await web.client.get("/api/orders", headers=H)).json() == {"orders": [], "stale": False}
    placed = (await web.client.post("/api/orders", headers=H, json=order(web.backend))).json()
    web.backend.fill(placed["order_id"])
    trades = (await web.client.get("/api/trades?limit=5", headers=H)).json()["trades"]
    assert [t["order_id"] for t in trades] == [placed["order_id"]] and trades[0]["side"] == "sell"


async def test_decisions_are_paginated_newest_first(web):
    t0 = 1_800_000_000.0
    web.backend.decision_log = [
        {
            "ts": t0 + i,
            "target_mw": 1.0,
            "setpoint_mw": 1.0,
            "binding": "none",
            "mode": "auto",
            "soc_pct": 50.0,
            "power_mw": 1.0,
            "temperature_c": 25.0,
            "readback_mw": 1.0,
            "reasons": "",
        }
        for i in range(25)
    ]
    seen, before, pages = [], None, 0
    while pages < 10:
        params = {"limit": 10} | ({"before": before} if before else {})
        body = (await web.client.get("/api/decisions", headers=H, params=params)).json()
        seen += [d["ts"] for d in body["decisions"]]
        pages += 1
        before = body["next_before"]
        if before is None:
            break
    assert pages == 3
    assert seen == [iso(t0 + i) for i in range(24, -1, -1)]


async def test_schedule_defaults_to_today_and_has_positions_and_history(web):
    b = web.backend
    placed = (await web.client.post("/api/orders", headers=H, json=order(b, quantity_mw=3.0))).json()
    b.fill(placed["order_id"])
    b.cycle(1.0)
    body = (await web.client.get("/api/schedule", headers=H)).json()
    now = b.now()
    today = now - now % 86400
    assert body["from"] == iso(today) and body["to"] == iso(today + 86400)
    assert body["actual"] and {"ts", "power_mw", "soc_pct"} <= set(body["actual"][-1])
    # Two periods ahead is tomorrow in the last half hour before midnight UTC: then ask for a window that holds it.
    delivery = placed["delivery_start"].replace("Z", ".000Z")
    if delivery >= body["to"]:
        body = (
            await web.client.get("/api/schedule", headers=H, params={"from": iso(today), "to": iso(today + 2 * 86400)})
        ).json()
    assert {"period_start": delivery, "position_mw": 3.0} in body["periods"]
    empty = (
        await web.client.get(
            "/api/schedule", headers=H, params={"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}
        )
    ).json()
    assert empty["periods"] == [] and empty["actual"] == []


# ------------------------------------------------------------------------------------------------- auth
# what a read-only key may GET
READ_PATHS = (
    "/api/bess-status",
    "/api/market-data",
    "/api/orders",
    "/api/trades",
    "/api/alarms",
    "/api/decisions",
    "/api/schedule",
    "/api/ws-token",
)


@pytest.mark.parametrize("path", READ_PATHS)
async def test_every_api_read_needs_a_key(web, path):
    body = assert_json_error(await web.client.get(path), 401)
    assert "API key" in body["detail"]
    assert_json_error(await web.client.get(path, headers={"X-API-Key": "wrong"}), 401)
    assert (await web.client.get(path, headers=H)).status_code == 200


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/api/orders"),
        ("POST", "/api/orders/check"),
        ("POST", "/api/telemetry"),
        ("POST", "/api/mode"),
        ("DELETE", "/api/orders/o-1"),
    ],
)
async def test_every_mutation_needs_a_key(web, method, path):
    assert_json_error(await web.client.request(method, path, json={}), 401)
    assert web.backend.audit_log == []


async def test_rotated_keys_are_both_valid_and_audited_by_fingerprint(web):
    for key in KEYS:
        r = await web.client.post("/api/mode", headers={"X-API-Key": key}, json={"mode": "stopped"})
        assert r.status_code == 200
    assert [a["who"] for a in web.backend.audit_log] == [f"key:{fingerprint(k)}" for k in KEYS]
    assert all(KEYS[0] not in json.dumps(a) for a in web.backend.audit_log)


async def test_login_sets_an_httponly_session_cookie_and_logout_ends_it(web):
    assert_json_error(await web.client.post("/api/login", json={"api_key": "nope"}), 401)
    r = await web.client.post("/api/login", json={"api_key": KEYS[1]})
    assert r.status_code == 200 and r.json()["ok"] is True
    cookie = r.headers["set-cookie"]
    assert (
        "bess_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    token = web.client.cookies["bess_session"]
    assert (await web.client.get("/api/bess-status")).status_code == 200
    r = await web.client.post("/api/mode", json={"mode": "auto"}, headers={"Origin": web.url})
    assert r.status_code == 200 and web.backend.audit_log[-1]["who"] == f"session:{fingerprint(KEYS[1])}"
    page = await web.client.get("/")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers and 'id="soc-value"' in page.text
    await web.client.post("/api/logout")
    assert "bess_session" not in web.client.cookies
    r = await with_cookie(web.url, "GET", "/api/bess-status", token)
    assert_json_error(r, 401)  # a logged-out session stays dead even if the cookie is replayed
    page = await with_cookie(web.url, "GET", "/", token)
    assert page.status_code == 303 and page.headers["location"] == "/login"


async def test_a_session_ends_when_its_key_is_rotated_away():
    async with running_web() as old:
        async with httpx.AsyncClient(base_url=old.url) as c:
            await c.post("/api/login", json={"api_key": KEYS[1]})
            token = c.cookies["bess_session"]
    async with running_web(api_keys=KEYS[:1]) as new:
        async with httpx.AsyncClient(base_url=new.url) as c:
            r = await with_cookie(new.url, "GET", "/api/bess-status", token)
            assert "no longer valid" in assert_json_error(r, 401)["detail"]


async def test_forged_or_foreign_session_cookie_is_refused(web):
    r = await with_cookie(web.url, "GET", "/api/bess-status", "eyJleHAiOjF9.00")
    assert_json_error(r, 401)
    async with running_web(session_secret="another-secret") as other:
        async with httpx.AsyncClient(base_url=other.url) as c:
            await c.post("/api/login", json={"api_key": KEYS[0]})
            foreign = c.cookies["bess_session"]
    assert_json_error(await with_cookie(web.url, "GET", "/api/bess-status", foreign), 401)


async def test_cross_site_mutation_with_the_cookie_is_refused(web):
    await web.client.post("/api/login", json={"api_key": KEYS[0]})
    r = await web.client.post("/api/mode", json={"mode": "stopped"}, headers={"Origin": "http://evil.example"})
    assert "cross-site" in assert_json_error(r, 403)["detail"]
    assert web.backend.mode == "auto"
    # an API key is not ambient authority: the Origin does not matter
    web.client.cookies.clear()
    r = await web.client.post("/api/mode", json={"mode": "stopped"}, headers={**H, "Origin": "http://evil.example"})
    assert r.status_code == 200


async def test_repeated_failures_lock_the_client_out_then_it_recovers():
    async with running_web(lockout_failures=3, lockout_s=1.0) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            for _ in range(3):
                assert (await c.get("/api/bess-status", headers={"X-API-Key": "guess"})).status_code == 401
            r = await c.get("/api/bess-status", headers=H)  # even the right key: the client is locked
            body = assert_json_error(r, 429)
            assert "try again" in body["detail"] and int(r.headers["retry-after"]) >= 1
            assert_json_error(await c.post("/api/login", json={"api_key": KEYS[0]}), 429)
            assert [a["action"] for a in w.backend.audit_log] == ["lockout"]
            await asyncio.sleep(1.1)
            assert (await c.get("/api/bess-status", headers=H)).status_code == 200


async def test_failed_logins_count_towards_the_lockout():
    async with running_web(lockout_failures=2, lockout_s=30) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            await c.post("/api/login", json={"api_key": "a"})
            await c.post("/api/login", json={"api_key": "b"})
            assert (await c.get("/api/bess-status", headers=H)).status_code == 429


# ----------------------------------------------------------------------------------------- read-only keys
RK = {"X-API-Key": READ_KEYS[0]}


def write_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the app that is not a read, with path parameters filled in."""
    out = []
    for r in app.routes:
        for method in sorted(getattr(r, "methods", None) or ()):
            if method not in ("GET", "HEAD") and r.path not in ("/api/login", "/api/logout"):
                out.append((method, r.path.replace("{order_id}", "o-demo-0")))
    return out


async def test_a_read_only_key_reads_and_every_write_is_403():
    async with running_web(demo_backend(), read_keys=READ_KEYS) as w:
        writes = write_routes(w.app)
        assert {
            ("POST", "/api/orders"),
            ("POST", "/api/mode"),
            ("POST", "/api/telemetry"),
            ("DELETE", "/api/orders/o-demo-0"),
            ("POST", "/api/orders/check"),
        } <= set(writes)
        async with httpx.AsyncClient(base_url=w.url) as c:
            for path in READ_PATHS:
                assert (await c.get(path, headers=RK)).status_code == 200, path
            before = (w.backend.mode, len(w.backend.orders_by_id), len(w.backend.telemetry_sent))
            for method, path in writes:
                r = await c.request(method, path, headers=RK, json={"mode": "stopped"})
                assert "read-only" in assert_json_error(r, 403)["detail"], (method, path)
            assert (w.backend.mode, len(w.backend.orders_by_id), len(w.backend.telemetry_sent)) == before
            assert w.backend.orders_by_id["o-demo-0"]["status"] == "open"
            # the full key still writes
            assert (await c.post("/api/mode", headers=H, json={"mode": "stopped"})).status_code == 200
            token = (await c.get("/api/ws-token", headers=RK)).json()["token"]
        async with connect(f"{w.ws_url}?token={token}", open_timeout=5) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["mode"] == "stopped"


async def test_a_read_only_login_gives_a_read_only_session_and_dashboard():
    async with running_web(read_keys=READ_KEYS) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            r = await c.post("/api/login", json={"api_key": READ_KEYS[0]})
            assert r.status_code == 200 and r.json()["read_only"] is True
            assert (await c.get("/api/bess-status")).status_code == 200
            r = await c.post("/api/mode", json={"mode": "stopped"}, headers={"Origin": w.url})
            assert "read-only session" in assert_json_error(r, 403)["detail"]
            page = (await c.get("/")).text
            assert 'data-read-only="true"' in page and 'id="soc-value"' in page
            for control in ('id="order-form"', 'id="mode-form"', 'id="telemetry-form"'):
                assert control not in page, control
        async with httpx.AsyncClient(base_url=w.url) as c:
            r = await c.post("/api/login", json={"api_key": KEYS[0]})
            assert r.json()["read_only"] is False
            page = (await c.get("/")).text
            assert 'data-read-only="false"' in page and 'id="order-form"' in page and 'id="mode-form"' in page
    assert w.backend.mode == "auto"


def test_a_key_in_both_lists_is_refused():
    with pytest.raises(ValueError, match="API_KEY_READ"):
        create_app(MemoryBackend(), KEYS, SECRET, read_keys=[KEYS[0]])


# ------------------------------------------------------------------------------------ metrics and docs keys
@pytest.mark.parametrize("path", ["/metrics", "/docs", "/openapi.json"])
async def test_metrics_and_docs_need_a_key_unless_opened(path):
    registry = CollectorRegistry()
    async with running_web(read_keys=READ_KEYS, metrics_registry=registry) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            r = await c.get(path)
            assert_json_error(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
            assert_json_error(await c.get(path, headers={"Authorization": "Bearer wrong"}), 401)
            for headers in ({"Authorization": f"Bearer {READ_KEYS[0]}"}, {"Authorization": f"bearer {KEYS[1]}"}, RK, H):
                assert (await c.get(path, headers=headers)).status_code == 200, headers
            await c.post("/api/login", json={"api_key": READ_KEYS[0]})
            assert (await c.get(path)).status_code == 200  # the dashboard's session opens the docs
            c.cookies.clear()
            assert (await c.get("/healthz")).status_code == 200 and (await c.get("/readyz")).status_code == 200
    async with running_web(metrics_registry=CollectorRegistry(), open_metrics=True, open_docs=True) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            assert (await c.get(path)).status_code == 200


def test_the_app_refuses_to_start_without_a_key_or_secret():
    with pytest.raises(ValueError, match="API_KEY"):
        create_app(MemoryBackend(), [], SECRET)
    with pytest.raises(ValueError, match="API_KEY"):
        create_app(MemoryBackend(), [" ", ""], SECRET)
    with pytest.raises(ValueError, match="session secret"):
        create_app(MemoryBackend(), KEYS, "")


# ------------------------------------------------------------------------------------------- mutations
async def test_place_order_is_checked_sent_listed_and_audited(web):
    b = web.backend
    body = order(b)
    r = await web.client.post("/api/orders", headers=H, json=body)
    assert r.status_code == 201
    placed = r.json()
    assert (
        placed["status"] == "open"
        and placed["quantity_mw"] == 2.0
        and placed["delivery_start"] == body["delivery_start"]
    )
    listed = (await web.client.get("/api/orders", headers=H)).json()["orders"]
    assert [o["order_id"] for o in listed] == [placed["order_id"]]
    a = b.audit_log[-1]
    assert a["action"] == "place_order" and a["details"]["result"] == "ok" and a["details"]["order"]["side"] == "sell"


async def test_orders_the_pre_trade_check_refuses_answer_409_with_the_reason(web):
    b = web.backend
    r = await web.client.post("/api/orders", headers=H, json=order(b, quantity_mw=11.0))
    body = assert_json_error(r, 409)
    assert body["limit"] == "p_discharge_max" and body["period"] and "10 MW" in body["detail"]
    # SoC 50 % of 20 MWh; each 10 MW quarter hour sold takes 2.5 MWh = 12.5 %: three fit (12.5 % left), a fourth not
    for k in (2, 3, 4):
        r = await web.client.post(
            "/api/orders", headers=H, json=order(b, quantity_mw=10.0, delivery_start=next_period(b, k))
        )
        assert r.status_code == 201
        b.fill(r.json()["order_id"])
    r = await web.client.post(
        "/api/orders", headers=H, json=order(b, quantity_mw=10.0, delivery_start=next_period(b, 5))
    )
    body = assert_json_error(r, 409)
    now = b.now()
    assert body["limit"] == "soc_min" and "SoC would fall" in body["detail"]
    assert body["period"] == iso(now - now % PERIOD_S + 5 * PERIOD_S)
    current = iso(now - now % PERIOD_S)  # always past gate closure
    assert (
        assert_json_error(await web.client.post("/api/orders", headers=H, json=order(b, delivery_start=current)), 409)[
            "limit"
        ]
        == "gate_closure"
    )
    refused = [a for a in b.audit_log if a["details"]["result"] == "refused"]
    assert len(refused) == 3 and all(a["action"] == "place_order" for a in refused)


async def test_order_check_answers_without_sending(web):
    b = web.backend
    ok = (await web.client.post("/api/orders/check", headers=H, json=order(b))).json()
    assert ok == {"ok": True, "reason": None, "period": None, "limit": None}
    b.soc_pct = 85.0  # buying 10 MW for a quarter hour adds 12.5 %
    bad = (await web.client.post("/api/orders/check", headers=H, json=order(b, side="buy", quantity_mw=10.0))).json()
    assert bad["ok"] is False and bad["limit"] == "soc_max" and "SoC would rise" in bad["reason"]
    assert b.orders_by_id == {} and b.audit_log == []


async def test_cancel_order(web):
    b = web.backend
    placed = (await web.client.post("/api/orders", headers=H, json=order(b))).json()
    r = await web.client.delete(f"/api/orders/{placed['order_id']}", headers=H)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await web.client.get("/api/orders", headers=H)).json()["orders"] == []
    assert (
        "cancelled"
        in assert_json_error(await web.client.delete(f"/api/orders/{placed['order_id']}", headers=H), 409)["detail"]
    )
    assert_json_error(await web.client.delete("/api/orders/o-unknown", headers=H), 404)
    assert_json_error(await web.client.delete("/api/orders/bad%20id%21", headers=H), 422)
    assert [a["details"]["result"] for a in b.audit_log if a["action"] == "cancel_order"] == [
        "ok",
        "refused",
        "not_found",
    ]


async def test_manual_telemetry_sample(web):
    r = await web.client.post(
        "/api/telemetry", headers=H, json={"soc_pct": 42.5, "power_mw": -3, "temperature_c": 31.2}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["source"] == "manual" and body["soc_pct"] == 42.5 and body["power_mw"] == -3.0
    assert web.backend.telemetry_sent[-1]["source"] == "manual"
    assert (await web.client.get("/api/bess-status", headers=H)).json()["soc_pct"] == 42.5
    assert web.backend.audit_log[-1]["action"] == "telemetry"


async def test_mode_changes(web):
    r = await web.client.post("/api/mode", headers=H, json={"mode": "manual", "setpoint_mw": -2.5, "expires_s": 600})
    assert r.status_code == 200
    body = r.json()
    assert body["mode"] == "manual" and body["setpoint_mw"] == -2.5 and body["expires"].endswith("Z")
    web.backend.cycle(1.0)
    st = (await web.client.get("/api/bess-status", headers=H)).json()
    assert st["mode"] == "manual" and st["setpoint_mw"] == -2.5
    assert (await web.client.post("/api/mode", headers=H, json={"mode": "stopped"})).json()["mode"] == "stopped"
    web.backend.cycle(1.0)
    st = (await web.client.get("/api/bess-status", headers=H)).json()
    assert st["setpoint_mw"] == 0 and st["binding"] == "mode_stopped"
    body = assert_json_error(await web.client.post("/api/mode", headers=H, json={"mode": "manual"}), 422)
    assert "setpoint_mw" in body["detail"]
    assert_json_error(
        await web.client.post("/api/mode", headers=H, json={"mode": "manual", "setpoint_mw": 1, "expires_s": 0}), 422
    )
    assert_json_error(await web.client.post("/api/mode", headers=H, json={"mode": "turbo"}), 422)
    assert [a["details"]["mode"] for a in web.backend.audit_log] == ["manual", "stopped"]


# ------------------------------------------------------------------------------------ bad input, never 500
BAD_BODIES = [
    b"{",
    b"",
    b"null",
    b"[]",
    b'"text"',
    b"{}",
    b'{"side": "sell"}',
    b'{"side":"sell","quantity_mw":"2","price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00Z"}',
    b'{"side":"sell","quantity_mw":true,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00Z"}',
    b'{"side":"sell","quantity_mw":1e400,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00Z"}',
    b'{"side":"sell","quantity_mw":NaN,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00Z"}',
    b'{"side":"sell","quantity_mw":1,"price_eur_mwh":-Infinity,"delivery_start":"2030-01-01T00:00:00Z"}',
    b'{"side":"sell","quantity_mw":0,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00Z"}',
    b'{"side":"sell","quantity_mw":-1,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00Z"}',
    b'{"side":"sell","quantity_mw":1,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:07:00Z"}',
    b'{"side":"sell","quantity_mw":1,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00"}',
    b'{"side":"sell","quantity_mw":1,"price_eur_mwh":1,"delivery_start":"99999-01-01T00:00:00Z"}',
    b'{"side":"sell","quantity_mw":1,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00Z","extra":1}',
    b'{"side":"short","quantity_mw":1,"price_eur_mwh":1,"delivery_start":"2030-01-01T00:00:00Z"}',
    b'{"side":["sell"],"quantity_mw":{"a":1},"price_eur_mwh":null,"delivery_start":12}',
    b'{"soc_pct":101,"power_mw":0,"temperature_c":20}',
    b'{"soc_pct":-0.1,"power_mw":0,"temperature_c":20}',
    b'{"soc_pct":50,"power_mw":1e308,"temperature_c":20}',
    b'{"soc_pct":"50","power_mw":0,"temperature_c":20}',
    b'{"mode":"manual","setpoint_mw":Infinity}',
    b'{"mode":null}',
    b'{"mode":"auto","setpoint_mw":"x"}',
    b'{"api_key":""}',
    b'{"api_key":123}',
    b'{"soc_pct":' + b"9" * 5000 + b',"power_mw":0,"temperature_c":20}',  # over Python's int-parsing digit limit
    '{"side":"\u00e9\u2603\U0001f600","quantity_mw":1}'.encode(),
    b"\xff\xfe\x00garbage",
    b"[" * 5000 + b"]" * 5000,
]


@pytest.mark.parametrize("path", ["/api/orders", "/api/orders/check", "/api/telemetry", "/api/mode", "/api/login"])
async def test_bad_bodies_get_a_4xx_json_answer_never_500(web, path):
    codes = set()
    for raw in BAD_BODIES:
        r = await web.client.post(path, headers={**H, "Content-Type": "application/json"}, content=raw)
        assert 400 <= r.status_code < 500, (raw[:80], r.status_code, r.text[:200])
        assert isinstance(r.json()["detail"], str)
        codes.add(r.status_code)
    r = await web.client.post(path, headers={**H, "Content-Type": "text/plain"}, content=b"side=sell")
    assert 400 <= r.status_code < 500
    assert codes <= {400, 401, 409, 422}
    assert web.backend.orders_by_id == {} and web.backend.telemetry_sent == []


async def test_huge_bodies_are_refused_before_parsing(web):
    r = await web.client.post(
        "/api/orders",
        headers={**H, "Content-Type": "application/json"},
        content=b'{"side":"' + b"x" * 1_100_000 + b'"}',
    )
    assert_json_error(r, 413)
    assert r.headers["connection"] == "close"  # the rest of the body is never read


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=abc", "before=yesterday", "before=2030-13-01T00:00:00Z", "limit=" + "9" * 400],
)
async def test_bad_decision_queries(web, query):
    assert_json_error(await web.client.get(f"/api/decisions?{query}", headers=H), 422)


@pytest.mark.parametrize(
    "query",
    [
        "from=nonsense",
        "from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z",
        "from=2030-01-01T00:00:00Z&to=2030-02-01T00:00:00Z",
        "to=2030-01-01T00:00:00",
        "from=" + "1" * 100,
    ],
)
async def test_bad_schedule_queries(web, query):
    assert_json_error(await web.client.get(f"/api/schedule?{query}", headers=H), 422)


async def test_unknown_paths_and_methods_are_json_4xx(web):
    assert_json_error(await web.client.get("/api/nothing", headers=H), 404)
    assert_json_error(await web.client.put("/api/orders", headers=H, json={}), 405)


async def test_a_backend_bug_is_a_json_500_not_a_dropped_connection(web):
    def broken():
        raise RuntimeError("bug")

    web.backend.status = broken
    r = await web.client.get("/api/bess-status", headers=H)
    assert r.status_code == 500 and r.json()["detail"].startswith("internal error")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=15), children, max_size=5),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "side",
        "quantity_mw",
        "price_eur_mwh",
        "market",
        "delivery_start",
        "time_in_force",
        "soc_pct",
        "power_mw",
        "temperature_c",
        "mode",
        "setpoint_mw",
        "expires_s",
        "api_key",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/api/orders", "/api/orders/check", "/api/telemetry", "/api/mode", "/api/login"]),
    body=st.dictionaries(field_names, json_values, max_size=7) | json_values,
)
def test_property_no_json_body_gives_a_5xx(path, body):
    app = create_app(MemoryBackend(), KEYS, SECRET, lockout_failures=10_000)
    raw = json.dumps(body, allow_nan=True)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, headers={**H, "Content-Type": "application/json"}, content=raw)

    r = asyncio.run(post())
    assert r.status_code < 500, (raw[:200], r.text[:300])
    if r.status_code >= 400:
        assert isinstance(r.json()["detail"], str)


# --------------------------------------------------------------------------------------------- websocket
async def ws_token(web) -> str:
    return (await web.client.get("/api/ws-token", headers=H)).json()["token"]


async def close_code(url: str) -> int:
    async with connect(url, open_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as e:
            await asyncio.wait_for(ws.recv(), 5)
    return e.value.rcvd.code


async def test_websocket_pushes_status_on_every_cycle(web):
    token = await ws_token(web)
    async with connect(f"{web.ws_url}?token={token}", open_timeout=5) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert set(first) >= {"soc_pct", "power_mw", "status", "mode", "binding", "alarms", "ts"}
        await asyncio.sleep(0.3)  # the throttle window after the first push
        web.backend.mode, web.backend.manual_setpoint_mw, web.backend.manual_expires_ts = (
            "manual",
            4.0,
            web.backend.now() + 60,
        )
        web.backend.cycle(1.0)
        pushed = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert pushed["mode"] == "manual" and pushed["setpoint_mw"] == 4.0 and pushed["power_mw"] == 4.0


async def test_websocket_is_throttled_and_the_latest_value_wins():
    async with running_web(ws_max_hz=4.0) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            token = (await c.get("/api/ws-token", headers=H)).json()["token"]
        async with connect(f"{w.ws_url}?token={token}", open_timeout=5) as ws:
            await asyncio.wait_for(ws.recv(), 5)
            received = []

            async def reader():
                while True:
                    received.append(json.loads(await ws.recv()))

            task = asyncio.create_task(reader())
            t0 = time.monotonic()
            for i in range(100):  # 100 cycles in ~1 s: far faster than the browser needs
                w.backend.soc_pct = 10.0 + i * 0.5
                w.backend.cycle(0.0)
                await asyncio.sleep(0.01)
            last_soc = w.backend.soc_pct
            # the latest value wins: it is pushed once the throttle window allows (bounded wait, not a sleep)
            await wait_for(
                lambda: any(m["soc_pct"] == pytest.approx(last_soc) for m in received),
                5,
                "the last cycle's value at the client",
            )
            task.cancel()
            # an upper bound on the pushes: a slow machine only lengthens the window, so it cannot fail this
            elapsed = time.monotonic() - t0
        assert 2 <= len(received) <= math.ceil(elapsed * 4) + 1, (len(received), elapsed)
        assert received[-1]["soc_pct"] == pytest.approx(last_soc)


async def test_websocket_refuses_bad_expired_and_reused_tokens():
    # the good token lives the default minute: on a loaded CI machine the three refusals before it once took
    # longer than a 0.3 s lifetime, and the good token was refused as expired
    async with running_web() as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            token = (await c.get("/api/ws-token", headers=H)).json()["token"]
        assert await close_code(w.ws_url) == 4401
        assert await close_code(f"{w.ws_url}?token=garbage") == 4401
        body, mac = token.split(".")
        assert await close_code(f"{w.ws_url}?token={body}.{'0' * len(mac)}") == 4401
        async with connect(f"{w.ws_url}?token={token}", open_timeout=5) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["status"] == "online"
        assert await close_code(f"{w.ws_url}?token={token}") == 4401  # single use
    # expiry on a server of short-lived tokens (a slow machine only makes the token older)
    async with running_web(ws_token_ttl_s=0.3) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            stale = (await c.get("/api/ws-token", headers=H)).json()["token"]
        await asyncio.sleep(0.4)
        assert await close_code(f"{w.ws_url}?token={stale}") == 4401  # expired


async def test_websocket_tokens_from_another_secret_count_as_failures():
    async with running_web(lockout_failures=2, lockout_s=30) as w, running_web(session_secret="other") as other:
        async with httpx.AsyncClient(base_url=other.url) as c:
            foreign = (await c.get("/api/ws-token", headers=H)).json()["token"]
        assert await close_code(f"{w.ws_url}?token={foreign}") == 4401
        assert await close_code(f"{w.ws_url}?token={foreign}") == 4401
        assert await close_code(f"{w.ws_url}?token=x.y") == 1008  # locked out now
        async with httpx.AsyncClient(base_url=w.url) as c:
            assert (await c.get("/api/bess-status", headers=H)).status_code == 429


async def test_an_idle_client_does_not_hold_up_the_others(web):
    t1, t2 = await ws_token(web), await ws_token(web)
    # the idle client reads nothing (its library stops reading from the socket once one message waits)
    async with (
        connect(f"{web.ws_url}?token={t1}", open_timeout=5, max_queue=1, close_timeout=0.5),
        connect(f"{web.ws_url}?token={t2}", open_timeout=5) as reader,
    ):
        await asyncio.wait_for(reader.recv(), 5)
        got = 0
        for _ in range(8):
            web.backend.cycle(1.0)
            await asyncio.wait_for(reader.recv(), 5)
            got += 1
        assert got == 8 and len(web.backend._subscribers) == 2
    await wait_for(lambda: not web.backend._subscribers, 10, "both handlers to notice the close and unsubscribe")


# -------------------------------------------------------------------------------- metrics, docs, assets
async def test_metrics_record_requests_by_route_template():
    registry = CollectorRegistry()
    async with running_web(metrics_registry=registry) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            await c.get("/api/bess-status", headers=H)
            await c.delete("/api/orders/o-x", headers=H)
            await c.get("/api/nothing")
            text = (await c.get("/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"})).text
    assert 'bess_http_request_duration_seconds_count{method="GET",route="/api/bess-status",status="200"} 1.0' in text
    assert 'route="/api/orders/{order_id}",status="404"' in text
    assert 'route="unmatched",status="404"' in text
    assert "bess_ws_clients 0.0" in text
    create_app(MemoryBackend(), KEYS, SECRET, metrics_registry=registry)  # a second app on the registry is fine


async def test_docs_and_openapi_are_served_locally(web):
    docs = await web.client.get("/docs", headers=H)
    assert docs.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert not re.search(r"https?://(?!127\.0\.0\.1)", docs.text.split("<script>")[0])
    spec = (await web.client.get("/openapi.json", headers=H)).json()
    for path in (
        "/api/bess-status",
        "/api/market-data",
        "/api/orders",
        "/api/trades",
        "/api/telemetry",
        "/api/mode",
        "/api/orders/{order_id}",
        "/api/alarms",
        "/api/decisions",
        "/api/schedule",
        "/healthz",
        "/readyz",
    ):
        assert path in spec["paths"], path
    assert "X-API-Key" in json.dumps(spec["components"]["securitySchemes"])
    for asset in ("/static/vendor/swagger-ui/swagger-ui-bundle.js", "/static/vendor/swagger-ui/swagger-ui.css"):
        assert (await web.client.get(asset)).status_code == 200


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if a.get(k) and tag in ("script", "link", "img"):
                self.urls.append(a[k])


async def test_every_dashboard_asset_is_served_locally(web):
    await web.client.post("/api/login", json={"api_key": KEYS[0]})
    pages = [(await web.client.get("/")).text, (await web.client.get("/login")).text]
    urls = set()
    for html in pages:
        p = _Assets()
        p.feed(html)
        urls |= set(p.urls)
    assert len(urls) >= 8
    for url in sorted(urls):
        assert url.startswith("/static/"), url
        r = await web.client.get(url)
        assert r.status_code == 200 and r.content, url
        if url.endswith(".css"):  # fonts referenced by the CSS are there too
            base = url.rsplit("/", 1)[0]
            for ref in re.findall(r"url\((\.\./[^)]+)\)", r.text):
                font = base.rsplit("/", 1)[0] + ref[2:]
                assert (await web.client.get(font)).status_code == 200, font
    for html in pages:
        assert not re.search(r"""(src|href)=["']https?:""", html)
    for lic in (
        "/static/vendor/apexcharts/LICENSE",
        "/static/vendor/fontawesome/LICENSE.txt",
        "/static/vendor/swagger-ui/LICENSE",
    ):
        assert (await web.client.get(lic)).status_code == 200


# ------------------------------------------------------------------------------------------------ cycle gate
async def test_a_request_arriving_during_a_control_cycle_waits_for_its_end(monkeypatch):
    """The controller clears `cycle_idle` while a cycle runs; the web face parks new requests until it is set."""
    import web.app

    monkeypatch.setattr(web.app, "GATE_MAX_S", 30.0)
    backend = MemoryBackend()
    backend.cycle_idle = asyncio.Event()
    backend.cycle_idle.set()
    async with running_web(backend) as w, httpx.AsyncClient(base_url=w.url, headers=H, timeout=10) as c:
        assert (await c.get("/api/bess-status")).status_code == 200
        backend.cycle_idle.clear()  # a cycle starts
        pending = asyncio.create_task(c.get("/api/bess-status"))
        await asyncio.sleep(0.5)
        assert not pending.done(), "served while the cycle ran"
        backend.cycle_idle.set()  # the cycle ends
        r = await asyncio.wait_for(pending, 5)
        assert r.status_code == 200 and r.json()["mode"]


async def test_a_cycle_that_hangs_holds_requests_only_briefly(monkeypatch):
    """A cycle stuck on a device timeout does not stop the API: a request waits at most GATE_MAX_S."""
    import web.app

    monkeypatch.setattr(web.app, "GATE_MAX_S", 0.2)
    backend = MemoryBackend()
    backend.cycle_idle = asyncio.Event()  # never set: the cycle never ends
    async with running_web(backend) as w, httpx.AsyncClient(base_url=w.url, headers=H, timeout=10) as c:
        results = await asyncio.gather(*(c.get("/api/bess-status") for _ in range(5)), c.get("/healthz"))
        assert [r.status_code for r in results] == [200] * 6
