"""The web face's grid-service endpoints through a real uvicorn (the in-memory backend): FCR's state and switch
(operator keys only; read keys may look), the per-day provision CSV, and bad input -> 4xx JSON."""

from __future__ import annotations

import httpx
import pytest

from controller.clock import parse_iso
from controller.services.records import CSV_HEADER
from tests.fixtures.web import KEYS, READ_KEYS, MemoryBackend, running_web

H = {"X-API-Key": KEYS[0]}
R = {"X-API-Key": READ_KEYS[0]}
FCR = {"enabled": False, "capacity_mw": 8.0, "frequency_hz": 50.0, "contribution_mw": 0.0, "reserve_held": True}


@pytest.fixture
async def web():
    backend = MemoryBackend()
    backend.fcr = dict(FCR)
    day = parse_iso("2026-12-03T00:00:00Z")
    backend.provision_rows = [
        dict(
            ts=int(day) + i,
            frequency_hz=49.9,
            fcr_required_mw=4.0,
            fcr_delivered_mw=3.9,
            afrr_required_mw=0.0,
            afrr_delivered_mw=None,
            base_mw=0.0,
            power_mw=3.9,
            within_tolerance=1,
        )
        for i in range(3)
    ]
    async with running_web(backend, read_keys=READ_KEYS) as w:
        async with httpx.AsyncClient(base_url=w.url) as client:
            w.client = client
            yield w


async def test_fcr_state_and_switch(web) -> None:
    r = await web.client.get("/api/services/fcr", headers=R)
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = await web.client.post("/api/services/fcr", headers=H, json={"enabled": True})
    assert r.status_code == 200 and r.json()["enabled"] is True
    st = (await web.client.get("/api/bess-status", headers=H)).json()
    assert st["fcr"]["enabled"] is True and st["fcr"]["capacity_mw"] == 8.0
    assert web.backend.audit_log[-1]["action"] == "set_fcr"


async def test_fcr_switch_refusals_are_4xx_json(web) -> None:
    assert (await web.client.post("/api/services/fcr", json={"enabled": True})).status_code == 401
    r = await web.client.post("/api/services/fcr", headers=R, json={"enabled": True})
    assert r.status_code == 403 and r.json()["detail"]  # a read key may look, not switch
    for body in ({}, {"enabled": "yes"}, {"enabled": 1}, {"enabled": True, "extra": 1}):
        r = await web.client.post("/api/services/fcr", headers=H, json=body)
        assert r.status_code == 422 and r.json()["detail"], body
    web.backend.fcr = None  # a site without FCR
    r = await web.client.post("/api/services/fcr", headers=H, json={"enabled": True})
    assert r.status_code == 422 and "capacity_mw" in r.json()["detail"]
    r = await web.client.get("/api/services/fcr", headers=H)
    assert r.status_code == 404 and "FCR" in r.json()["detail"]


async def test_provision_csv_per_day(web) -> None:
    r = await web.client.get("/api/provision/2026-12-03.csv", headers=R)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="provision-2026-12-03.csv"' in r.headers["content-disposition"]
    lines = r.text.strip().split("\n")
    assert lines[0] == CSV_HEADER and len(lines) == 4
    assert lines[1] == "2026-12-03T00:00:00.000Z,49.9,4,3.9,0,,0,3.9,1"
    empty = await web.client.get("/api/provision/2026-12-04.csv", headers=R)
    assert empty.status_code == 200 and empty.text.strip() == CSV_HEADER


@pytest.mark.parametrize("day", ["2026-13-01", "yesterday", "2026-12-3", "2026-02-30", "20261203", "9" * 200])
async def test_provision_csv_bad_day_is_422_json(web, day: str) -> None:
    r = await web.client.get(f"/api/provision/{day}.csv", headers=H)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json"), (day, r.text)
    assert "day" in r.json()["detail"]


async def test_provision_csv_needs_a_key(web) -> None:
    assert (await web.client.get("/api/provision/2026-12-03.csv")).status_code == 401
