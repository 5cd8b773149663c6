"""REST face of the exchange simulator (FastAPI): orders, trades, market data, signed-request auth;
`create_app()` for tests, `serve()` / `main_exchange()` for `bess-edge exchange` (port 9000).

Responses: POST /api/orders -> 201 with the order (+ `trades` it made); a `client_order_id` the caller used
before -> 200 with that order as it is now (a retry never places a second order), or 409 if the fields differ;
GET /api/orders?client_order_id=X -> the caller's order with that id as a list of one, or []; an order the
market refuses (gate closed, product not open yet) -> 409 `{detail, order}` with the order in status `rejected`; bad fields -> 422
`{detail, errors}`; auth failures -> 401 `{detail}`. GET /api/market-data is public market information (a
person can open it in a browser); if auth headers are sent, they are checked.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from controller.clock import Clock, iso, parse_iso
from controller.config import DEMO_API_KEY, DEMO_HMAC_SECRET
from simulators.exchange.auth import AuthError, Authenticator
from simulators.exchange.counterparties import Counterparties
from simulators.exchange.curve import PriceCurve
from simulators.exchange.engine import (GATE_CLOSURE_S, PERIOD_S, MatchingEngine, OrderNotActive, OrderNotFound,
                                        OrderRequest, mw_to_lots, price_to_ticks)
from simulators.exchange.marketdata import MarketData
from simulators.exchange.publisher import TradePublisher
from simulators.exchange.service import ExchangeService

log = logging.getLogger("bess.exchange")

PRICE_LIMIT_EUR = 9999.0  # the harmonised intraday price limits (±9,999 EUR/MWh)
QUANTITY_MAX_MW = 10000.0
ORDER_STATUSES = ("open", "partially_filled", "filled", "cancelled", "expired", "rejected")


class OrderIn(BaseModel):
    """DESIGN.md's order in; checked once here, then only ticks and lots go inside."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    side: Literal["buy", "sell"]
    # strict: a JSON true or "2" is a client bug, not a quantity
    quantity_mw: float = Field(gt=0, le=QUANTITY_MAX_MW, strict=True)
    price_eur_mwh: float = Field(ge=-PRICE_LIMIT_EUR, le=PRICE_LIMIT_EUR, strict=True)
    delivery_start: StrictStr | StrictInt = Field(description="ISO 8601 UTC (Z) or Unix seconds")
    market: str = Field("intraday", min_length=1, max_length=64)
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"
    participant: str | None = Field(None, min_length=1, max_length=128)
    client_order_id: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("quantity_mw")
    @classmethod
    def _lots(cls, v: float) -> float:
        try:
            mw_to_lots(v)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("quantity_mw: ")) from None
        return v

    @field_validator("price_eur_mwh")
    @classmethod
    def _ticks(cls, v: float) -> float:
        try:
            price_to_ticks(v)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("price_eur_mwh: ")) from None
        return v

    @field_validator("delivery_start")
    @classmethod
    def _period(cls, v: str | int) -> int:
        ts = parse_iso(v) if isinstance(v, str) else v
        if ts != int(ts) or int(ts) % PERIOD_S:
            raise ValueError("must be on a 15-minute boundary (:00/:15/:30/:45 UTC)")
        return int(ts)


def _errors_detail(e: ValidationError) -> tuple[str, list[dict]]:
    errors = [{"field": ".".join(str(x) for x in err["loc"]) or "body",
               "message": err["msg"].removeprefix("Value error, ")} for err in e.errors()]
    return "; ".join(f"{x['field']}: {x['message']}" for x in errors), errors


def _differs(known, order_in: OrderIn) -> str | None:
    """The fields in which a repeated client_order_id's order differs from the one it first named, or None."""
    fields = {"side": (known.side, order_in.side),
              "price_eur_mwh": (known.price_ticks, price_to_ticks(order_in.price_eur_mwh)),
              "quantity_mw": (known.quantity_lots, mw_to_lots(order_in.quantity_mw)),
              "delivery_start": (known.delivery_start, order_in.delivery_start),
              "market": (known.market, order_in.market), "time_in_force": (known.time_in_force, order_in.time_in_force)}
    bad = [name for name, (a, b) in fields.items() if a != b]
    return ", ".join(bad) if bad else None


def _json(status: int, content) -> JSONResponse:
    return JSONResponse(status_code=status, content=content)


def participants_from_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """API key -> site id: EXCHANGE_PARTICIPANTS="key=site,key2=site2", else every key of EXCHANGE_API_KEY
    (the key a site presents to the exchange; comma-separated), or of API_KEY when that is unset (older
    setups), default "demo", -> EXCHANGE_SITE_ID (default "demo")."""
    env = dict(os.environ if env is None else env)
    spec = env.get("EXCHANGE_PARTICIPANTS", "").strip()
    if spec:
        pairs = [p.split("=", 1) for p in spec.split(",") if p.strip()]
        bad = [p for p in pairs if len(p) != 2 or not p[0].strip() or not p[1].strip()]
        if bad:
            raise ValueError(f"EXCHANGE_PARTICIPANTS: expected key=site,... (got {spec!r})")
        return {k.strip(): s.strip() for k, s in pairs}
    spec = env.get("EXCHANGE_API_KEY", "").strip() or env.get("API_KEY", DEMO_API_KEY)
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    return {k: env.get("EXCHANGE_SITE_ID", "demo") for k in keys}


def create_app(*, participants: dict[str, str] | None = None, hmac_secret: str = DEMO_HMAC_SECRET,
               clock: Clock | None = None, counterparties: int = 0, seed: int = 42, mqtt_url: str | None = None,
               publisher: TradePublisher | None = None, tick_s: float = 1.0, gate_closure_s: int = GATE_CLOSURE_S,
               ema_span: int = 20, mark_spread_max_eur: float = 5.0, markets: tuple[str, ...] = ("intraday",),
               id_prefix: str | None = None, auth_window_s: float = 30.0) -> FastAPI:
    """The exchange app. `participants` maps API key -> site id (default {"demo": "demo"}); with `mqtt_url`
    (or a `publisher`) the sites' trades are published on bess/{site}/trades. `app.state.exchange` is the
    ExchangeService, `app.state.publisher` the publisher or None."""
    clock = clock or Clock()
    participants = participants or {DEMO_API_KEY: "demo"}
    auth = Authenticator(participants, hmac_secret, window_s=auth_window_s)
    if publisher is None and mqtt_url:
        publisher = TradePublisher(mqtt_url, hmac_secret, now=clock.now)
    if id_prefix is None:
        # a fresh prefix per run, so a restarted simulator never reuses a trade_id the site has stored
        id_prefix = f"X{int(clock.now()):x}-"
    curve = PriceCurve(seed)
    engine = MatchingEngine(gate_closure_s=gate_closure_s, id_prefix=id_prefix)
    service = ExchangeService(engine, MarketData(ema_span, mark_spread_max_eur), auth.sites, publisher,
                              Counterparties(counterparties, curve, seed) if counterparties > 0 else None)

    async def ticker() -> None:
        while True:
            try:
                service.tick(clock.now())
                if publisher is not None:
                    publisher.flush()
            except Exception:  # the ticker must survive a bug in one step; the log says what happened
                log.exception("exchange tick failed")
            await asyncio.sleep(tick_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if publisher is not None:
            publisher.start()
        task = asyncio.create_task(ticker())
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            if publisher is not None:
                publisher.stop()

    app = FastAPI(title="BESS exchange simulator", lifespan=lifespan)
    app.state.exchange = service
    app.state.publisher = publisher
    app.state.auth = auth
    app.state.curve = curve
    app.state.clock = clock

    async def caller(request: Request) -> str:
        body = await request.body()
        return auth.check(api_key=request.headers.get("x-api-key"), timestamp=request.headers.get("x-timestamp"),
                          signature=request.headers.get("x-signature"), method=request.method,
                          path=request.url.path, query=request.url.query, body=body, now=clock.now())

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        log.info("401 %s %s: %s", request.method, request.url.path, exc.reason)
        return _json(401, {"detail": exc.reason})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "ts": iso(clock.now()), "open_books": len(engine.books),
                "orders": len(engine.orders), "trades_total": service.trades_total,
                "mqtt_connected": publisher.connected.is_set() if publisher else None,
                "trades_pending_publish": publisher.pending if publisher else None}

    @app.post("/api/orders")
    async def place_order(request: Request):
        site = await caller(request)
        try:
            order_in = OrderIn.model_validate_json(await request.body())
        except ValidationError as e:
            detail, errors = _errors_detail(e)
            return _json(422, {"detail": detail, "errors": errors})
        if order_in.participant and order_in.participant != site:
            return _json(403, {"detail": f"participant {order_in.participant!r} is not the caller's ({site!r})"})
        if order_in.market not in markets:
            return _json(422, {"detail": f"market: unknown market {order_in.market!r} (known: {', '.join(markets)})",
                               "errors": [{"field": "market", "message": "unknown market"}]})
        if order_in.client_order_id:
            known = engine.find_client_order(site, order_in.client_order_id)
            if known is not None:
                # never a second order for one client_order_id: a retry gets the order as it is now; the id
                # reused for another order is refused
                differs = _differs(known, order_in)
                if differs:
                    return _json(409, {"detail": f"client_order_id {order_in.client_order_id!r} is already used by "
                                                 f"order {known.order_id} with another {differs}",
                                       "order": known.to_dict()})
                return _json(200, {**known.to_dict(), "trades": []})
        req = OrderRequest(participant=site, side=order_in.side, price_ticks=price_to_ticks(order_in.price_eur_mwh),
                           quantity_lots=mw_to_lots(order_in.quantity_mw), delivery_start=order_in.delivery_start,
                           market=order_in.market, time_in_force=order_in.time_in_force,
                           client_order_id=order_in.client_order_id)
        result = service.submit(req, clock.now())
        order = result.order.to_dict()
        if result.order.status == "rejected":
            return _json(409, {"detail": result.order.reason, "order": order})
        return _json(201, {**order, "trades": [t.view(site) for t in result.trades]})

    @app.get("/api/orders")
    async def list_orders(request: Request, status: str | None = None, client_order_id: str | None = None):
        """The caller's orders; `status=active` (open or partially filled) or one status; `client_order_id`:
        the caller's order with that id, as a list of one, or [] if there is none (how a client that got no
        answer learns whether its order was taken)."""
        site = await caller(request)
        service.expire(clock.now())
        if client_order_id is not None:
            known = engine.find_client_order(site, client_order_id)
            return [known.to_dict()] if known is not None else []
        wanted = {"active": {"open", "partially_filled"}}.get(status, {status} if status else None)
        if status and status != "active" and status not in ORDER_STATUSES:
            return _json(422, {"detail": f"status: expected active or one of {', '.join(ORDER_STATUSES)}"})
        return [o.to_dict() for o in engine.orders_of(site) if wanted is None or o.status in wanted]

    @app.get("/api/orders/{order_id}")
    async def get_order(order_id: str, request: Request):
        site = await caller(request)
        service.expire(clock.now())
        order = engine.orders.get(order_id)
        if order is None or order.participant != site:
            return _json(404, {"detail": f"no order {order_id}"})
        return order.to_dict()

    @app.delete("/api/orders/{order_id}")
    async def cancel_order(order_id: str, request: Request):
        site = await caller(request)
        try:
            return service.cancel(order_id, site, clock.now()).to_dict()
        except OrderNotFound:
            return _json(404, {"detail": f"no order {order_id}"})
        except OrderNotActive as e:
            return _json(409, {"detail": str(e), "order": e.order.to_dict()})

    @app.get("/api/trades")
    async def list_trades(request: Request):
        site = await caller(request)
        return service.trades_of(site)

    @app.get("/api/market-data")
    async def market_data(request: Request):
        if request.headers.get("x-api-key") or request.headers.get("x-signature"):
            await caller(request)
        return service.market_data(clock.now())

    return app


async def serve(host: str = "127.0.0.1", port: int = 9000, **app_kwargs) -> None:
    """Run the exchange app under uvicorn until cancelled or signalled."""
    import uvicorn

    app = create_app(**app_kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    await server.serve()


def main_exchange(args) -> int:
    """`bess-edge exchange`: args.host, args.port, args.counterparties, args.seed; secrets from the environment
    (EXCHANGE_PARTICIPANTS / EXCHANGE_API_KEY, HMAC_SECRET, MQTT_URL; demo values when unset; MQTT_URL=none turns
    publishing off)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret = os.environ.get("HMAC_SECRET") or DEMO_HMAC_SECRET
    if secret == DEMO_HMAC_SECRET:
        log.warning("using the demo HMAC secret")
    participants = participants_from_env()
    mqtt_url = os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
    if mqtt_url.strip().lower() in ("", "none"):
        mqtt_url = None  # MQTT_URL=none: no trade publishing (benchmarks, API-only use)
    log.info("exchange simulator on http://%s:%d, %d counterparties (seed %d), sites %s, MQTT %s",
             args.host, args.port, args.counterparties, args.seed, sorted(set(participants.values())), mqtt_url)
    try:
        asyncio.run(serve(args.host, args.port, participants=participants, hmac_secret=secret,
                          counterparties=args.counterparties, seed=args.seed, mqtt_url=mqtt_url))
    except KeyboardInterrupt:
        pass
    return 0
