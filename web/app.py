"""The controller's web face: REST API, live status websocket and the dashboard, on top of a `Backend`.

Every /api/* call and /ws need an API key (X-API-Key, or the HttpOnly session cookie from POST /api/login;
/ws takes a short-lived signed token from GET /api/ws-token). Errors are JSON {"detail": ...} with a 4xx
code; bad input never gives a 500. Mutating calls are audited through the backend.

This module is the app's frame: the pure-ASGI middleware (body limit and security headers, request timing, the
control-cycle gate), the error handlers, and `create_app`, which builds the one `WebState` (web/state.py) and
adds the routers of web/routes/.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from drivers.validation import validation_problems
from web.auth import ApiKeys, Lockout, Signer
from web.backend import Backend, ExchangeDown, OrderRefused
from web.routes import auth, live, ops, pages, plant, services, trading
from web.state import SAFE_METHODS, SESSION_COOKIE, WebState

__all__ = ["DEFAULT_MAX_BODY_BYTES", "GATE_MAX_S", "SESSION_COOKIE", "create_app"]

log = logging.getLogger("bess.web")

HERE = Path(__file__).parent
DEFAULT_MAX_BODY_BYTES = 1_048_576  # web.max_body_bytes
GATE_MAX_S = 0.05  # longest a request waits for a running control cycle to end


def _json_error(status: int, detail: Any, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _describe_errors(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A one-line detail naming each field, and the errors without their inputs (an input may be NaN or huge,
    which must not break the JSON answer, and may be a secret)."""
    problems = validation_problems(errors)
    clean = [{"loc": list(p.loc), "msg": p.msg, "type": p.type} for p in problems]
    return "; ".join(f"{p.path or 'request'}: {p.msg}" for p in problems) or "invalid request", clean


class _Metrics:
    """HTTP request durations by route template and status, and open websocket clients."""

    def __init__(self, registry):
        from prometheus_client import Gauge, Histogram

        self.registry = registry
        self.http = self._get_or_make(
            registry,
            "bess_http_request_duration_seconds",
            lambda: Histogram(
                "bess_http_request_duration_seconds",
                "HTTP request duration by route template, method and status",
                ["route", "method", "status"],
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            ),
        )
        self.ws_clients = self._get_or_make(
            registry,
            "bess_ws_clients",
            lambda: Gauge("bess_ws_clients", "Open websocket clients of the dashboard", registry=registry),
        )

    @staticmethod
    def _get_or_make(registry, name, make):
        # a second app on the same registry (tests, restarts in one process) reuses the collector
        existing = getattr(registry, "_names_to_collectors", {}).get(name)
        return existing if existing is not None else make()


class BodyTooLarge(HTTPException):
    """A request body past the limit, found while it streams. An HTTPException, so FastAPI's body reading lets it
    through to the exception handlers (any other error there becomes a 400 "error parsing the body")."""

    def __init__(self, limit_bytes: int):
        super().__init__(413, f"request body larger than {limit_bytes} bytes")


class _GuardMiddleware:
    """Pure ASGI: count each request body as it streams, whatever Content-Length or Transfer-Encoding say, and stop
    at `max_body_bytes` with a 413 before anything buffers more (a chunked body has no length to check up front);
    add the security headers. A refused body ends the connection (connection: close), so the rest of it is never
    read."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]
    CLOSE = (b"connection", b"close")

    def __init__(self, app, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _json_error(400, "content-length: not a number", {"connection": "close"})(scope, receive, send)
                return
            if int(length) > self.max_body_bytes:
                await _json_error(
                    413, f"request body larger than {self.max_body_bytes} bytes", {"connection": "close"}
                )(scope, receive, send)
                return
        received = 0
        over = False
        started = False

        async def counted_receive():
            nonlocal received, over
            if over:  # asked again after being told: the body stays refused
                raise BodyTooLarge(self.max_body_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = True
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = list(message.get("headers", [])) + self.HEADERS + ([self.CLOSE] if over else [])
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_headers)
        except BodyTooLarge as e:  # raised where no exception handler turned it into the answer
            if started:
                raise
            await _json_error(413, e.detail, {"connection": "close"})(scope, receive, send_with_headers)


class _CycleGateMiddleware:
    """Pure ASGI: while a control cycle runs, a new HTTP request waits (at most GATE_MAX_S) before anything is
    done for it. The cycle shares this event loop: under a flood of requests each of the cycle's awaits would
    otherwise wait behind a whole loop pass of request handling (measured: cycle p99 0.5 s at 4,000 req/s).
    Parked requests are cheap, and a keep-alive client sends nothing more until it is answered, so the cycle
    soon has the loop to itself. The bound keeps the API answering when a cycle waits on a device timeout."""

    def __init__(self, app, idle: "asyncio.Event"):
        self.app = app
        self.idle = idle

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.idle.is_set():
            try:
                async with asyncio.timeout(GATE_MAX_S):
                    await self.idle.wait()
            except TimeoutError:
                pass
        await self.app(scope, receive, send)


class _TimingMiddleware:
    """Pure ASGI: observe each HTTP request's duration under its route template (the router writes the matched
    route into the shared scope), so /api/orders/{order_id} is one series, and unknown paths are "unmatched"."""

    def __init__(self, app, histogram):
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            self.histogram.labels(template, scope.get("method", ""), str(status)).observe(time.perf_counter() - start)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON {"detail": ...}: invalid input 422 naming the field, refusals their own code,
    an unreachable exchange 503, a bug 500 (logged) and never a traceback."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        detail, errors = _describe_errors(list(exc.errors()))
        return _json_error(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and request.method not in SAFE_METHODS:
            # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): a bad body like any other,
            # so the documented 422 with a detail that says what was wrong
            return _json_error(422, "body: not valid JSON (UTF-8)", errors=[])
        return _json_error(exc.status_code, exc.detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(OrderRefused)
    async def _refused(request: Request, exc: OrderRefused):
        status = exc.status if exc.status in (400, 403, 404, 409, 422) else 409
        return _json_error(status, exc.reason, period=exc.period, limit=exc.limit)

    @app.exception_handler(ExchangeDown)
    async def _exchange_down(request: Request, exc: ExchangeDown):
        return _json_error(503, str(exc) or "exchange unreachable")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.error("unhandled error in the web app", exc_info=exc, extra={"path": request.url.path})
        return _json_error(500, "internal error (see the controller log)")


def create_app(
    backend: Backend,
    api_keys: list[str],
    session_secret: str | bytes,
    *,
    read_keys: list[str] | tuple[str, ...] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    open_metrics: bool = False,
    open_docs: bool = False,
    lockout_failures: int = 10,
    lockout_s: float = 300,
    metrics_registry=None,
    session_ttl_s: float = 12 * 3600,
    ws_token_ttl_s: float = 60,
    ws_max_hz: float = 4.0,
    ws_max_clients: int = 200,
    ws_send_timeout_s: float = 10.0,
) -> FastAPI:
    """The web app. `api_keys` (API_KEY): full access, every key valid (rotation); `read_keys` (API_KEY_READ):
    GET and /ws only, 403 on any write, and their dashboard sessions are read-only. `session_secret` signs the
    session cookie and the websocket tokens (keys derived per purpose): the daemon's random key from its state
    directory (web/session_key.py), never HMAC_SECRET. `max_body_bytes`: request bodies are counted as they
    stream, 413 past it. `metrics_registry`: a prometheus_client CollectorRegistry to serve at /metrics and to
    record request durations in; None serves no /metrics. /metrics, /docs and /openapi.json need a key (X-API-Key,
    `Authorization: Bearer`, or the session cookie; read keys suffice) unless `open_metrics` / `open_docs`."""
    metrics = _Metrics(metrics_registry) if metrics_registry is not None else None
    state = WebState(
        backend=backend,
        keys=ApiKeys(api_keys, read_keys),
        lockout=Lockout(lockout_failures, lockout_s),
        sessions=Signer(session_secret, "session"),
        ws_tokens=Signer(session_secret, "websocket"),
        templates=Jinja2Templates(directory=str(HERE / "templates")),
        asset_version=str(int(max(p.stat().st_mtime for p in (HERE / "static").rglob("*") if p.is_file()))),
        metrics=metrics,
        open_metrics=open_metrics,
        open_docs=open_docs,
        session_ttl_s=session_ttl_s,
        ws_token_ttl_s=ws_token_ttl_s,
        ws_max_hz=ws_max_hz,
        ws_max_clients=ws_max_clients,
        ws_send_timeout_s=ws_send_timeout_s,
    )

    app = FastAPI(
        title="BESS edge controller",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        description="Local REST API of the battery plant controller. Power in MW, positive = discharge; "
        "SoC in %; prices in EUR/MWh; times UTC ISO 8601. Authenticate with the X-API-Key header "
        "(keys in API_KEY may do everything, keys in API_KEY_READ only GET).",
    )
    app.state.backend = backend
    app.state.web = state

    # middleware (pure ASGI, outermost last)
    app.add_middleware(_GuardMiddleware, max_body_bytes=max_body_bytes)
    if metrics is not None:
        app.add_middleware(_TimingMiddleware, histogram=metrics.http)
    cycle_idle = getattr(backend, "cycle_idle", None)  # a backend without a control cycle has no gate
    if cycle_idle is not None:
        app.add_middleware(_CycleGateMiddleware, idle=cycle_idle)

    _add_error_handlers(app)
    routers = [ops.router] + ([ops.metrics_router] if metrics is not None else [])
    for router in routers + [auth.router, plant.router, trading.router, services.router, live.router, pages.router]:
        # the routers' routes on the app itself, so that app.routes lists every operation (FastAPI 0.16x's
        # include_router keeps a router as one nested entry); they take no prefix, tags or dependencies here
        app.router.routes.extend(router.routes)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    return app
