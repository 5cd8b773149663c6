"""The plant: GET /api/bess-status, POST /api/telemetry, POST /api/mode, GET /api/alarms, GET /api/decisions
(paged by time), GET /api/schedule (plan and what happened, at most 8 days)."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, HTTPException, Query

from controller.clock import parse_iso
from web import models as m
from web.access import ERRORS, Who
from web.backend import Backend
from web.state import WebState, backend_of, web_state

router = APIRouter(tags=["plant"], responses=ERRORS)

DAY_S = 86_400


def _parse_time(name: str, value: str) -> float:
    try:
        ts = parse_iso(value)
    except (ValueError, OverflowError) as e:
        raise HTTPException(422, f"{name}: not an ISO 8601 UTC time ({e})") from e
    if not math.isfinite(ts):
        raise HTTPException(422, f"{name}: not a finite time")
    return ts


@router.get("/api/bess-status", response_model=m.Status)
async def bess_status(who: str = Who, backend: Backend = Depends(backend_of)):
    return backend.status()


@router.post("/api/telemetry", response_model=m.TelemetryOut)
async def post_telemetry(body: m.TelemetryIn, who: str = Who, state: WebState = Depends(web_state)):
    sample = body.model_dump()
    return await state.mutate(who, "telemetry", {"sample": sample}, state.backend.post_telemetry(sample, who))


@router.post("/api/mode", response_model=m.ModeOut)
async def set_mode(body: m.ModeIn, who: str = Who, state: WebState = Depends(web_state)):
    req = body.model_dump()
    return await state.mutate(
        who, "set_mode", req, state.backend.set_mode(body.mode, body.setpoint_mw, body.expires_s, who)
    )


@router.get("/api/alarms", response_model=m.Alarms)
async def alarms(who: str = Who, backend: Backend = Depends(backend_of)):
    return await backend.alarms()


@router.get("/api/decisions", response_model=m.Decisions)
async def decisions(
    before: str | None = Query(None, max_length=40, description="ISO 8601: rows older than this"),
    limit: int = Query(100, ge=1, le=1000),
    who: str = Who,
    backend: Backend = Depends(backend_of),
):
    before_ts = _parse_time("before", before) if before is not None else None
    rows = await backend.decisions(before_ts, limit)
    page = [m.Decision.model_validate(r) for r in rows[:limit]]
    next_before = page[-1].ts if len(page) == limit else None
    return {"decisions": page, "next_before": next_before}


@router.get("/api/schedule", response_model=m.Schedule)
async def schedule(
    from_: str | None = Query(None, alias="from", max_length=40, description="ISO 8601; default: today 00:00 UTC"),
    to: str | None = Query(None, max_length=40, description="ISO 8601; default: from + 24 h"),
    who: str = Who,
    backend: Backend = Depends(backend_of),
):
    if from_ is None:
        now = backend.now()
        from_ts = now - now % DAY_S  # today 00:00 UTC on the controller's clock
    else:
        from_ts = _parse_time("from", from_)
    to_ts = _parse_time("to", to) if to is not None else from_ts + DAY_S
    if not from_ts < to_ts <= from_ts + 8 * DAY_S:
        raise HTTPException(422, "to: must be after from and at most 8 days later")
    out = await backend.schedule(from_ts, to_ts)
    return {"from": from_ts, "to": to_ts, **out}
