"""The exchange simulator's REST routes: orders (place, list, read, cancel), the caller's trades, public market
data and day-ahead auction results, health. Their state is one `ExchangeState` on `app.state.sim`, fetched by `exchange_state`; `caller` checks
the request's signature and names the site."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from controller.clock import Clock, iso
from drivers.validation import validation_problems
from simulators.exchange.auction import Auction, AuctionNotPublished, parse_day
from simulators.exchange.auth import Authenticator
from simulators.exchange.engine import OrderNotActive, OrderNotFound
from simulators.exchange.service import ExchangeService
from simulators.exchange.wire import OrderIn

log = logging.getLogger("bess.exchange")

ORDER_STATUSES = ("open", "partially_filled", "filled", "cancelled", "expired", "rejected")

router = APIRouter()


@dataclass(frozen=True)
class ExchangeState:
    """What the routes share: built once by create_app."""

    service: ExchangeService
    auth: Authenticator
    clock: Clock
    markets: tuple[str, ...]
    auction: Auction | None = None


def exchange_state(request: Request) -> ExchangeState:
    return request.app.state.sim


async def caller(request: Request, state: ExchangeState = Depends(exchange_state)) -> str:
    """The site whose key signed this request; AuthError (401) otherwise."""
    body = await request.body()
    return state.auth.check(
        api_key=request.headers.get("x-api-key"),
        timestamp=request.headers.get("x-timestamp"),
        signature=request.headers.get("x-signature"),
        method=request.method,
        path=request.url.path,
        query=request.url.query,
        body=body,
        now=state.clock.now(),
    )


def _json(status: int, content) -> JSONResponse:
    return JSONResponse(status_code=status, content=content)


def _invalid(e: ValidationError) -> JSONResponse:
    errors = [{"field": p.path or "body", "message": p.message} for p in validation_problems(e)]
    return _json(422, {"detail": "; ".join(f"{x['field']}: {x['message']}" for x in errors), "errors": errors})


@router.get("/healthz")
async def healthz(state: ExchangeState = Depends(exchange_state)):
    service, publisher = state.service, state.service.publisher
    return {
        "status": "ok",
        "ts": iso(state.clock.now()),
        "open_books": len(service.engine.books),
        "orders": len(service.engine.orders),
        "trades_total": service.trades_total,
        "mqtt_connected": publisher.connected.is_set() if publisher else None,
        "trades_pending_publish": publisher.pending if publisher else None,
    }


@router.post("/api/orders")
async def place_order(request: Request, site: str = Depends(caller), state: ExchangeState = Depends(exchange_state)):
    try:
        order_in = OrderIn.model_validate_json(await request.body())
    except ValidationError as e:
        return _invalid(e)
    if order_in.participant and order_in.participant != site:
        return _json(403, {"detail": f"participant {order_in.participant!r} is not the caller's ({site!r})"})
    if order_in.market not in state.markets:
        return _json(
            422,
            {
                "detail": f"market: unknown market {order_in.market!r} (known: {', '.join(state.markets)})",
                "errors": [{"field": "market", "message": "unknown market"}],
            },
        )
    if order_in.client_order_id:
        known = state.service.engine.find_client_order(site, order_in.client_order_id)
        if known is not None:
            # never a second order for one client_order_id: a retry gets the order as it is now; the id reused for
            # another order is refused
            differs = order_in.differs_from(known)
            if differs:
                return _json(
                    409,
                    {
                        "detail": f"client_order_id {order_in.client_order_id!r} is already used by "
                        f"order {known.order_id} with another {differs}",
                        "order": known.to_dict(),
                    },
                )
            return _json(200, {**known.to_dict(), "trades": []})
    result = state.service.submit(order_in.to_engine(site), state.clock.now())
    order = result.order.to_dict()
    if result.order.status == "rejected":
        return _json(409, {"detail": result.order.reason, "order": order})
    return _json(201, {**order, "trades": [t.view(site) for t in result.trades]})


@router.get("/api/orders")
async def list_orders(
    status: str | None = None,
    client_order_id: str | None = None,
    site: str = Depends(caller),
    state: ExchangeState = Depends(exchange_state),
):
    """The caller's orders; `status=active` (open or partially filled) or one status; `client_order_id`:
    the caller's order with that id, as a list of one, or [] if there is none (how a client that got no
    answer learns whether its order was taken)."""
    engine = state.service.engine
    state.service.expire(state.clock.now())
    if client_order_id is not None:
        known = engine.find_client_order(site, client_order_id)
        return [known.to_dict()] if known is not None else []
    wanted = {"active": {"open", "partially_filled"}}.get(status, {status} if status else None)
    if status and status != "active" and status not in ORDER_STATUSES:
        return _json(422, {"detail": f"status: expected active or one of {', '.join(ORDER_STATUSES)}"})
    return [o.to_dict() for o in engine.orders_of(site) if wanted is None or o.status in wanted]


@router.get("/api/orders/{order_id}")
async def get_order(order_id: str, site: str = Depends(caller), state: ExchangeState = Depends(exchange_state)):
    state.service.expire(state.clock.now())
    order = state.service.engine.orders.get(order_id)
    if order is None or order.participant != site:
        return _json(404, {"detail": f"no order {order_id}"})
    return order.to_dict()


@router.delete("/api/orders/{order_id}")
async def cancel_order(order_id: str, site: str = Depends(caller), state: ExchangeState = Depends(exchange_state)):
    try:
        return state.service.cancel(order_id, site, state.clock.now()).to_dict()
    except OrderNotFound:
        return _json(404, {"detail": f"no order {order_id}"})
    except OrderNotActive as e:
        return _json(409, {"detail": str(e), "order": e.order.to_dict()})


@router.get("/api/trades")
async def list_trades(site: str = Depends(caller), state: ExchangeState = Depends(exchange_state)):
    return state.service.trades_of(site)


@router.get("/api/market-data")
async def market_data(request: Request, state: ExchangeState = Depends(exchange_state)):
    await _public(request, state)
    return state.service.market_data(state.clock.now())


async def _public(request: Request, state: ExchangeState) -> None:
    """Public market information: anyone may read it; auth headers, if sent, are checked."""
    if request.headers.get("x-api-key") or request.headers.get("x-signature"):
        await caller(request, state)


@router.get("/api/auction")
async def latest_auction(request: Request, state: ExchangeState = Depends(exchange_state)):
    """The latest published day-ahead results (tomorrow's after the daily publication time, else today's)."""
    await _public(request, state)
    now = state.clock.now()
    return state.auction.result(state.auction.latest_day(now), now)


@router.get("/api/auction/{day}")
async def auction_day(day: str, request: Request, state: ExchangeState = Depends(exchange_state)):
    """Day-ahead results of UTC day `day` (YYYY-MM-DD): `{day, market, published_at, periods: [{period_start,
    price_eur_mwh}] * 96}`; 404 with `publishes_at` before they are published; 422 for a bad day."""
    await _public(request, state)
    try:
        wanted = parse_day(day)
    except ValueError as e:
        return _json(422, {"detail": str(e)})
    try:
        return state.auction.result(wanted, state.clock.now())
    except AuctionNotPublished as e:
        return _json(404, {"detail": str(e), "publishes_at": iso(e.publishes_at)})
