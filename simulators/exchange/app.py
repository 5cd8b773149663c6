"""REST face of the exchange simulator (FastAPI): orders, trades, market data, signed-request auth;
`create_app()` for tests, `serve()` / `main_exchange()` for `bess-edge exchange` (port 9000). This module builds
the app (state, ticker, auth errors); the routes are simulators/exchange/routes.py, the order's wire model wire.py.

Responses: POST /api/orders -> 201 with the order (+ `trades` it made); a `client_order_id` the caller used
before -> 200 with that order as it is now (a retry never places a second order), or 409 if the fields differ;
GET /api/orders?client_order_id=X -> the caller's order with that id as a list of one, or []; an order the
market refuses (gate closed, product not open yet) -> 409 `{detail, order}` with the order in status `rejected`;
bad fields -> 422 `{detail, errors}`; auth failures -> 401 `{detail}`. GET /api/market-data and the day-ahead
auction results (GET /api/auction, /api/auction/{YYYY-MM-DD}: 404 before they are published at 11:00 UTC the day
before) are public market information (a person can open them in a browser); if auth headers are sent, they are
checked.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from controller.clock import Clock
from controller.config import DEMO_API_KEY, DEMO_HMAC_SECRET
from controller.trading.market import GATE_CLOSURE_S
from simulators.exchange.auction import Auction
from simulators.exchange.auth import Authenticator, AuthError
from simulators.exchange.counterparties import Counterparties
from simulators.exchange.curve import PriceCurve
from simulators.exchange.engine import MatchingEngine
from simulators.exchange.marketdata import MarketData
from simulators.exchange.publisher import TradePublisher
from simulators.exchange.routes import ExchangeState, router
from simulators.exchange.service import ExchangeService

log = logging.getLogger("bess.exchange")


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


def _lifespan(service: ExchangeService, clock: Clock, tick_s: float):
    """Start the trade publisher and the ticker (expiry, counterparties) with the app; stop them with it."""
    publisher = service.publisher

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

    return lifespan


def create_app(
    *,
    participants: dict[str, str] | None = None,
    hmac_secret: str = DEMO_HMAC_SECRET,
    clock: Clock | None = None,
    counterparties: int = 0,
    seed: int = 42,
    mqtt_url: str | None = None,
    publisher: TradePublisher | None = None,
    tick_s: float = 1.0,
    gate_closure_s: int = GATE_CLOSURE_S,
    ema_span: int = 20,
    mark_spread_max_eur: float = 5.0,
    markets: tuple[str, ...] = ("intraday",),
    id_prefix: str | None = None,
    auth_window_s: float = 30.0,
) -> FastAPI:
    """The exchange app. `participants` maps API key -> site id (default {"demo": "demo"}); with `mqtt_url`
    (or a `publisher`) the sites' trades are published on bess/{site}/trades. `app.state.exchange` is the
    ExchangeService, `app.state.publisher` the publisher or None; the routes read `app.state.sim`."""
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
    service = ExchangeService(
        engine,
        MarketData(ema_span, mark_spread_max_eur),
        auth.sites,
        publisher,
        Counterparties(counterparties, curve, seed) if counterparties > 0 else None,
    )

    app = FastAPI(title="BESS exchange simulator", lifespan=_lifespan(service, clock, tick_s))
    auction = Auction(curve)
    app.state.sim = ExchangeState(service=service, auth=auth, clock=clock, markets=markets, auction=auction)
    app.state.exchange = service
    app.state.publisher = publisher
    app.state.auth = auth
    app.state.curve = curve
    app.state.auction = auction
    app.state.clock = clock

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        log.info("401 %s %s: %s", request.method, request.url.path, exc.reason)
        return JSONResponse(status_code=401, content={"detail": exc.reason})

    # the router's routes on the app itself (FastAPI 0.16x's include_router keeps a router as one nested entry)
    app.router.routes.extend(router.routes)
    return app


async def serve(host: str = "127.0.0.1", port: int = 9000, **app_kwargs) -> None:
    """Run the exchange app under uvicorn until cancelled or SIGINT/SIGTERM (then stopped gracefully)."""
    from web.server import (  # here: uvicorn is heavy, and only serving needs it
        UvicornServer,
        stop_signals,
    )

    server = UvicornServer(create_app(**app_kwargs), host, port, name="exchange", lifespan="on")
    async with stop_signals() as stop:
        await server.start()
        try:
            await stop.wait()
        finally:
            await server.stop()


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
    log.info(
        "exchange simulator on http://%s:%d, %d counterparties (seed %d), sites %s, MQTT %s",
        args.host,
        args.port,
        args.counterparties,
        args.seed,
        sorted(set(participants.values())),
        mqtt_url,
    )
    try:
        asyncio.run(
            serve(
                args.host,
                args.port,
                participants=participants,
                hmac_secret=secret,
                counterparties=args.counterparties,
                seed=args.seed,
                mqtt_url=mqtt_url,
            )
        )
    except KeyboardInterrupt:
        pass
    return 0
