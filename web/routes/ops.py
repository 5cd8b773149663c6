"""Operations: /healthz (the process answers), /readyz (the controller runs cycles) and, when the app has a
metrics registry, /metrics (Prometheus text, behind `metrics_reader`)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from controller.clock import iso
from web import models as m
from web.access import metrics_reader
from web.backend import Backend
from web.state import WebState, backend_of, web_state

router = APIRouter(tags=["operations"])
metrics_router = APIRouter()


@router.get("/healthz", response_model=m.Health)
async def healthz():
    return {"status": "ok", "ts": iso(time.time())}


@router.get("/readyz", response_model=m.Ready, responses={503: {"model": m.Ready}})
async def readyz(backend: Backend = Depends(backend_of)):
    if backend.ready():
        return {"ready": True}
    return JSONResponse({"ready": False, "detail": "controller not running cycles yet"}, status_code=503)


@metrics_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(who: str = Depends(metrics_reader), state: WebState = Depends(web_state)):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
