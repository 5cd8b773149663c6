"""Grid services: GET/POST /api/services/fcr (FCR's state; switch it on or off, operator keys only) and
GET /api/provision/{YYYY-MM-DD}.csv (that UTC day's per-second provision records: required vs delivered power
and the frequency, the operator's evidence for the TSO)."""

from __future__ import annotations

from datetime import date, datetime, timezone

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from web import models as m
from web.access import ERRORS, Who
from web.backend import Backend
from web.state import WebState, backend_of, web_state

router = APIRouter(tags=["services"], responses=ERRORS)


NO_FCR = {404: {"model": m.Error, "description": "the site offers no FCR"}}


@router.get("/api/services/fcr", response_model=m.FcrStatus, responses=NO_FCR)
async def fcr_status(who: str = Who, backend: Backend = Depends(backend_of)):
    fcr = backend.status().get("fcr")
    if fcr is None:
        raise HTTPException(404, "this site offers no FCR (services.fcr.capacity_mw is 0 or no POI meter)")
    return fcr


@router.post(
    "/api/services/fcr",
    response_model=m.FcrStatus,
    responses={422: {"model": m.InvalidRequest, "description": "invalid body, or the site offers no FCR"}},
)
async def set_fcr(body: m.FcrIn, who: str = Who, state: WebState = Depends(web_state)):
    return await state.mutate(who, "set_fcr", body.model_dump(), state.backend.set_fcr(body.enabled, who))


@router.get(
    "/api/provision/{day}.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "one row per second with a service on"}},
)
async def provision_csv(day: str, who: str = Who, backend: Backend = Depends(backend_of)):
    try:
        d = date.fromisoformat(day) if len(day) == 10 else None
    except ValueError:
        d = None
    if d is None:
        raise HTTPException(422, f"day: not a date YYYY-MM-DD (got {day[:40]!r})")
    start = datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()
    text = await backend.provision_csv(start)
    headers = {"Content-Disposition": f'attachment; filename="provision-{d.isoformat()}.csv"'}
    return Response(text, media_type="text/csv", headers=headers)
