"""Trading: GET /api/market-data, /api/market-history (the stored mark/EMA/VWAP samples), /api/orders,
/api/trades; POST /api/orders/check (the pre-trade check alone), POST /api/orders (checked, then sent to the
exchange), DELETE /api/orders/{order_id}; auto-trading: GET /api/plan, GET /api/auto, POST /api/auto (the kill
switch: operator keys only, a read-only key gets 403)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query

from web import models as m
from web.access import ERRORS, Who
from web.backend import Backend
from web.state import WebState, backend_of, web_state

router = APIRouter(tags=["trading"])


@router.get("/api/market-data", response_model=m.MarketData, responses=ERRORS)
async def market_data(who: str = Who, backend: Backend = Depends(backend_of)):
    return await backend.market_data()


@router.get("/api/market-history", response_model=m.MarketHistory, responses=ERRORS)
async def market_history(
    hours: float = Query(6, gt=0, le=168, description="how far back, hours"),
    who: str = Who,
    backend: Backend = Depends(backend_of),
):
    """The front product's mark, EMA and VWAP as the controller sampled them, oldest first (at most 1,440)."""
    return await backend.market_history(hours)


@router.get("/api/plan", response_model=m.Plan, responses=ERRORS)
async def plan(who: str = Who, backend: Backend = Depends(backend_of)):
    """The auto-trader's last plan: per period the forecast price, the position traded, the plan, the SoC."""
    return await backend.plan()


@router.get("/api/auto", response_model=m.AutoStatus, responses=ERRORS)
async def auto_status(who: str = Who, backend: Backend = Depends(backend_of)):
    return await backend.auto_status()


@router.post("/api/auto", response_model=m.AutoStatus, responses=ERRORS)
async def set_auto(body: m.AutoIn, who: str = Who, state: WebState = Depends(web_state)):
    """The kill switch: off stops placing at once and cancels the auto-trader's open orders."""
    req = body.model_dump()
    return await state.mutate(who, "set_auto", req, state.backend.set_auto(body.enabled, who))


@router.get("/api/orders", response_model=m.Orders, responses=ERRORS)
async def orders(who: str = Who, backend: Backend = Depends(backend_of)):
    return await backend.orders()


@router.get("/api/trades", response_model=m.Trades, responses=ERRORS)
async def trades(limit: int = Query(50, ge=1, le=1000), who: str = Who, backend: Backend = Depends(backend_of)):
    return await backend.trades(limit)


@router.post("/api/orders/check", response_model=m.OrderCheck, responses=ERRORS)
async def check_order(body: m.OrderIn, who: str = Who, backend: Backend = Depends(backend_of)):
    """The pre-trade check alone: would the schedule stay within limits with this order filled? Sends nothing."""
    return await backend.check_order(body.model_dump())


@router.post(
    "/api/orders",
    response_model=m.Order,
    status_code=201,
    responses={
        **ERRORS,
        409: {"model": m.OrderError, "description": "refused by the pre-trade check"},
        422: {"model": m.OrderError | m.InvalidRequest},
        503: {"model": m.Error, "description": "exchange unreachable"},
    },
)
async def place_order(body: m.OrderIn, who: str = Who, state: WebState = Depends(web_state)):
    order = body.model_dump()
    return await state.mutate(who, "place_order", {"order": order}, state.backend.place_order(order, who))


@router.delete(
    "/api/orders/{order_id}",
    response_model=m.Order,
    responses={**ERRORS, 404: {"model": m.Error}, 409: {"model": m.OrderError}},
)
async def cancel_order(order_id: str, who: str = Who, state: WebState = Depends(web_state)):
    if not (1 <= len(order_id) <= 128) or not all(c.isalnum() or c in "-_.:" for c in order_id):
        raise HTTPException(422, "order_id: 1-128 characters of letters, digits, - _ . :")
    return await state.mutate(
        who, "cancel_order", {"order_id": order_id}, state.backend.cancel_order(order_id, who), not_found_ok=True
    )
