"""The controller's web face: REST API, live status websocket and the dashboard, on top of a `Backend`.

Every /api/* call and /ws need an API key (X-API-Key, or the HttpOnly session cookie from POST /api/login;
/ws takes a short-lived signed token from GET /api/ws-token). Errors are JSON {"detail": ...} with a 4xx
code; bad input never gives a 500. Mutating calls are audited through the backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Awaitable

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, Security, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import APIKeyCookie, APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect, WebSocketState

from controller.clock import iso, parse_iso
from web import models as m
from web.auth import ApiKeys, Lockout, NonceSet, Signer, TokenError
from web.backend import Backend, ExchangeDown, OrderRefused

log = logging.getLogger("bess.web")

HERE = Path(__file__).parent
SESSION_COOKIE = "bess_session"
DEFAULT_MAX_BODY_BYTES = 1_048_576   # web.max_body_bytes
GATE_MAX_S = 0.05          # longest a request waits for a running control cycle to end
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
DAY_S = 86_400
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

_ERRORS = {401: {"model": m.Error, "description": "no or wrong API key / session"},
           403: {"model": m.Error, "description": "a write with a read-only key or session, or a cross-site "
                                                  "request with the session cookie"},
           422: {"model": m.InvalidRequest, "description": "invalid parameters or body"},
           429: {"model": m.Error, "description": "locked out after repeated failures"}}


def _now_iso() -> str:
    return iso(time.time())


def _json_error(status: int, detail: Any, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _describe_errors(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A one-line detail naming each field, and the errors without their inputs (an input may be NaN or huge,
    which must not break the JSON answer, and may be a secret)."""
    clean, parts = [], []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ())]
        msg = str(e.get("msg", "invalid"))
        clean.append({"loc": loc, "msg": msg, "type": str(e.get("type", ""))})
        parts.append(f"{'.'.join(loc) or 'request'}: {msg}")
    return "; ".join(parts) or "invalid request", clean


class _Metrics:
    """HTTP request durations by route template and status, and open websocket clients."""

    def __init__(self, registry):
        from prometheus_client import Gauge, Histogram

        self.registry = registry
        self.http = self._get_or_make(registry, "bess_http_request_duration_seconds", lambda: Histogram(
            "bess_http_request_duration_seconds", "HTTP request duration by route template, method and status",
            ["route", "method", "status"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)))
        self.ws_clients = self._get_or_make(registry, "bess_ws_clients", lambda: Gauge(
            "bess_ws_clients", "Open websocket clients of the dashboard", registry=registry))

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

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
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
                await _json_error(413, f"request body larger than {self.max_body_bytes} bytes",
                                  {"connection": "close"})(scope, receive, send)
                return
        received = 0
        over = False
        started = False

        async def counted_receive():
            nonlocal received, over
            if over:   # asked again after being told: the body stays refused
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
        except BodyTooLarge as e:   # raised where no exception handler turned it into the answer
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


def create_app(backend: Backend, api_keys: list[str], session_secret: str | bytes, *,
               read_keys: list[str] | tuple[str, ...] = (), max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               open_metrics: bool = False, open_docs: bool = False, lockout_failures: int = 10,
               lockout_s: float = 300, metrics_registry=None, session_ttl_s: float = 12 * 3600,
               ws_token_ttl_s: float = 60, ws_max_hz: float = 4.0, ws_max_clients: int = 200,
               ws_send_timeout_s: float = 10.0) -> FastAPI:
    """The web app. `api_keys` (API_KEY): full access, every key valid (rotation); `read_keys` (API_KEY_READ):
    GET and /ws only, 403 on any write, and their dashboard sessions are read-only. `session_secret` signs the
    session cookie and the websocket tokens (keys derived per purpose): the daemon's random key from its state
    directory (web/session_key.py), never HMAC_SECRET. `max_body_bytes`: request bodies are counted as they
    stream, 413 past it. `metrics_registry`: a prometheus_client CollectorRegistry to serve at /metrics and to
    record request durations in; None serves no /metrics. /metrics, /docs and /openapi.json need a key (X-API-Key,
    `Authorization: Bearer`, or the session cookie; read keys suffice) unless `open_metrics` / `open_docs`."""
    keys = ApiKeys(api_keys, read_keys)
    lockout = Lockout(lockout_failures, lockout_s)
    sessions = Signer(session_secret, "session")
    ws_tokens = Signer(session_secret, "websocket")
    revoked_sessions = NonceSet()
    used_ws_tokens = NonceSet()
    metrics = _Metrics(metrics_registry) if metrics_registry is not None else None
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    ws_clients: set[WebSocket] = set()

    app = FastAPI(title="BESS edge controller", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None,
                  description="Local REST API of the battery plant controller. Power in MW, positive = discharge; "
                              "SoC in %; prices in EUR/MWh; times UTC ISO 8601. Authenticate with the X-API-Key header "
                              "(keys in API_KEY may do everything, keys in API_KEY_READ only GET).")
    app.state.backend = backend

    # ------------------------------------------------------------------ middleware (pure ASGI, outermost last)
    app.add_middleware(_GuardMiddleware, max_body_bytes=max_body_bytes)
    if metrics is not None:
        app.add_middleware(_TimingMiddleware, histogram=metrics.http)
    cycle_idle = getattr(backend, "cycle_idle", None)   # a backend without a control cycle has no gate
    if cycle_idle is not None:
        app.add_middleware(_CycleGateMiddleware, idle=cycle_idle)

    # ------------------------------------------------------------------ errors
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

    # ------------------------------------------------------------------ auth
    header_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of the keys in API_KEY")
    cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="set by POST /api/login")

    def client_ip(conn: Request | WebSocket) -> str:
        return conn.client.host if conn.client else "unknown"

    async def record_failure(ip: str, what: str) -> None:
        log.warning("authentication failed", extra={"client": ip, "what": what})
        if lockout.failure(ip):
            log.warning("client locked out", extra={"client": ip, "lockout_s": lockout.lockout_s})
            await audit(f"ip:{ip}", "lockout", {"client": ip, "lockout_s": lockout.lockout_s, "after": what})

    def refuse_if_locked(ip: str) -> None:
        retry = lockout.retry_after_s(ip)
        if retry > 0:
            raise HTTPException(429, f"too many failed authentication attempts from {ip}: "
                                     f"try again in {math.ceil(retry)} s", headers={"Retry-After": str(math.ceil(retry))})

    def session_of(token: str | None) -> dict | None:
        """The valid session's payload, or None (expired, revoked, forged, key rotated away). Raises TokenError."""
        payload = sessions.verify(token)
        if payload["nonce"] in revoked_sessions:
            raise TokenError("session ended", forged=False)
        if not keys.known_fingerprint(str(payload.get("kid", ""))):
            raise TokenError("the session's API key is no longer valid", forged=False)
        return payload

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:  # not a browser's cross-site request; SameSite=Strict covers the rest
            return True
        host = request.headers.get("host", "")
        return origin.split("://", 1)[-1].rstrip("/") == host

    def refuse_write_if_read_only(request: Request, fp: str, what: str) -> None:
        # the key's rights now, not when a session began: a key moved to API_KEY_READ loses writes at once
        if request.method not in SAFE_METHODS and not keys.can_write(fp):
            raise HTTPException(403, f"read-only {what}: a key from API_KEY_READ may only read (GET); "
                                     f"{request.method} needs a key from API_KEY")

    async def reader(request: Request) -> str:
        """For /metrics, /docs and /openapi.json: X-API-Key, `Authorization: Bearer <key>` (Prometheus) or the
        session cookie; read keys suffice. 401/429 otherwise."""
        ip = client_ip(request)
        refuse_if_locked(ip)
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        candidate = request.headers.get("x-api-key") or (bearer.strip() if scheme.lower() == "bearer" else None)
        if candidate:
            fp = keys.check(candidate)
            if fp is None:
                await record_failure(ip, "metrics/docs key")
                raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
            lockout.success(ip)
            return f"key:{fp}"
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            try:
                return f"session:{session_of(token)['kid']}"
            except TokenError as e:
                if e.forged:
                    await record_failure(ip, "session cookie")
                raise HTTPException(401, f"{e.reason}: log in again", headers={"WWW-Authenticate": "Bearer"}) from e
        raise HTTPException(401, "API key required: send `Authorization: Bearer <key>` or X-API-Key, or log in",
                            headers={"WWW-Authenticate": "Bearer"})

    async def open_access() -> str:
        return "open"

    metrics_access = Depends(open_access if open_metrics else reader)
    docs_access = Depends(open_access if open_docs else reader)

    async def authenticated(request: Request, api_key: str | None = Security(header_scheme),
                            session: str | None = Security(cookie_scheme)) -> str:
        """Who is calling: "key:<fingerprint>" or "session:<fingerprint>". 401/403/429 otherwise."""
        ip = client_ip(request)
        refuse_if_locked(ip)
        if api_key is not None:
            fp = keys.check(api_key)
            if fp is None:
                await record_failure(ip, "X-API-Key")
                raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "ApiKey"})
            lockout.success(ip)
            refuse_write_if_read_only(request, fp, "API key")
            return f"key:{fp}"
        if session:
            try:
                payload = session_of(session)
            except TokenError as e:
                if e.forged:
                    await record_failure(ip, "session cookie")
                raise HTTPException(401, f"{e.reason}: log in again", headers={"WWW-Authenticate": "ApiKey"}) from e
            if request.method not in SAFE_METHODS and not same_origin(request):
                raise HTTPException(403, "cross-site request refused: the Origin does not match this dashboard")
            refuse_write_if_read_only(request, payload["kid"], "session")
            return f"session:{payload['kid']}"
        raise HTTPException(401, "API key required: send the X-API-Key header or log in",
                            headers={"WWW-Authenticate": "ApiKey"})

    Who = Depends(authenticated)

    async def audit(who: str, action: str, details: dict[str, Any]) -> None:
        try:
            await backend.audit(who, action, details)
        except Exception:  # the action itself is done: answer it, but say loudly that the audit row is missing
            log.exception("audit write failed", extra={"who": who, "action": action})

    async def mutate(who: str, action: str, details: dict[str, Any], call: Awaitable[dict[str, Any]],
                     not_found_ok: bool = False) -> dict[str, Any]:
        """Run a mutating backend call, audit its outcome (refusals too), turn its typed errors into HTTP."""
        try:
            result = await call
        except OrderRefused as e:
            await audit(who, action, {**details, "result": "refused", "reason": e.reason})
            raise
        except ExchangeDown as e:
            await audit(who, action, {**details, "result": "exchange_down", "reason": str(e)})
            raise
        except PermissionError as e:
            await audit(who, action, {**details, "result": "forbidden", "reason": str(e)})
            raise HTTPException(403, str(e) or "forbidden") from e
        except LookupError as e:
            if not not_found_ok:
                raise
            await audit(who, action, {**details, "result": "not_found"})
            raise HTTPException(404, f"not found: {e.args[0] if e.args else e}") from e
        except ValueError as e:
            await audit(who, action, {**details, "result": "invalid", "reason": str(e)})
            raise HTTPException(422, str(e)) from e
        await audit(who, action, {**details, "result": "ok"})
        return result

    # ------------------------------------------------------------------ health, metrics
    @app.get("/healthz", response_model=m.Health, tags=["operations"])
    async def healthz():
        return {"status": "ok", "ts": _now_iso()}

    @app.get("/readyz", response_model=m.Ready, tags=["operations"], responses={503: {"model": m.Ready}})
    async def readyz():
        if backend.ready():
            return {"ready": True}
        return JSONResponse({"ready": False, "detail": "controller not running cycles yet"}, status_code=503)

    if metrics is not None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics(who: str = metrics_access):
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ session
    @app.post("/api/login", response_model=m.LoginOut, tags=["auth"],
              responses={k: v for k, v in _ERRORS.items() if k != 403})
    async def login(body: m.LoginRequest, request: Request, response: Response):
        ip = client_ip(request)
        refuse_if_locked(ip)
        fp = keys.check(body.api_key)
        if fp is None:
            await record_failure(ip, "login")
            raise HTTPException(401, "invalid API key")
        lockout.success(ip)
        token, payload = sessions.issue(session_ttl_s, kid=fp)
        response.set_cookie(SESSION_COOKIE, token, max_age=int(session_ttl_s), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        read_only = not keys.can_write(fp)
        await audit(f"session:{fp}", "login", {"client": ip, "read_only": read_only})
        return {"ok": True, "expires": iso(payload["exp"]), "read_only": read_only}

    @app.post("/api/logout", tags=["auth"])
    async def logout(request: Request, response: Response) -> dict[str, bool]:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            try:
                payload = session_of(token)
                revoked_sessions.add(payload["nonce"], payload["exp"])
                await audit(f"session:{payload['kid']}", "logout", {"client": client_ip(request)})
            except TokenError:
                pass  # already invalid: nothing to end
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return {"ok": True}

    @app.get("/api/ws-token", response_model=m.WsToken, tags=["auth"], responses=_ERRORS)
    async def ws_token(who: str = Who):
        token, _ = ws_tokens.issue(ws_token_ttl_s, kid=who.split(":", 1)[1])
        return {"token": token, "expires_in_s": ws_token_ttl_s}

    # ------------------------------------------------------------------ status and plant
    @app.get("/api/bess-status", response_model=m.Status, tags=["plant"], responses=_ERRORS)
    async def bess_status(who: str = Who):
        return backend.status()

    @app.post("/api/telemetry", response_model=m.TelemetryOut, tags=["plant"],
              responses=_ERRORS)
    async def post_telemetry(body: m.TelemetryIn, who: str = Who):
        sample = body.model_dump()
        return await mutate(who, "telemetry", {"sample": sample}, backend.post_telemetry(sample, who))

    @app.post("/api/mode", response_model=m.ModeOut, tags=["plant"], responses=_ERRORS)
    async def set_mode(body: m.ModeIn, who: str = Who):
        req = body.model_dump()
        return await mutate(who, "set_mode", req,
                            backend.set_mode(body.mode, body.setpoint_mw, body.expires_s, who))

    @app.get("/api/alarms", response_model=m.Alarms, tags=["plant"], responses=_ERRORS)
    async def alarms(who: str = Who):
        return await backend.alarms()

    @app.get("/api/decisions", response_model=m.Decisions, tags=["plant"], responses=_ERRORS)
    async def decisions(before: str | None = Query(None, max_length=40, description="ISO 8601: rows older than this"),
                        limit: int = Query(100, ge=1, le=1000), who: str = Who):
        before_ts = _parse_time("before", before) if before is not None else None
        rows = await backend.decisions(before_ts, limit)
        page = [m.Decision.model_validate(r) for r in rows[:limit]]
        next_before = page[-1].ts if len(page) == limit else None
        return {"decisions": page, "next_before": next_before}

    @app.get("/api/schedule", response_model=m.Schedule, tags=["plant"], responses=_ERRORS)
    async def schedule(from_: str | None = Query(None, alias="from", max_length=40,
                                                 description="ISO 8601; default: today 00:00 UTC"),
                       to: str | None = Query(None, max_length=40, description="ISO 8601; default: from + 24 h"),
                       who: str = Who):
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

    # ------------------------------------------------------------------ trading
    @app.get("/api/market-data", response_model=m.MarketData, tags=["trading"], responses=_ERRORS)
    async def market_data(who: str = Who):
        return await backend.market_data()

    @app.get("/api/orders", response_model=m.Orders, tags=["trading"], responses=_ERRORS)
    async def orders(who: str = Who):
        return await backend.orders()

    @app.get("/api/trades", response_model=m.Trades, tags=["trading"], responses=_ERRORS)
    async def trades(limit: int = Query(50, ge=1, le=1000), who: str = Who):
        return await backend.trades(limit)

    @app.post("/api/orders/check", response_model=m.OrderCheck, tags=["trading"], responses=_ERRORS)
    async def check_order(body: m.OrderIn, who: str = Who):
        """The pre-trade check alone: would the schedule stay within limits with this order filled? Sends nothing."""
        return await backend.check_order(body.model_dump())

    @app.post("/api/orders", response_model=m.Order, status_code=201, tags=["trading"],
              responses={**_ERRORS, 409: {"model": m.OrderError, "description": "refused by the pre-trade check"},
                         422: {"model": m.OrderError | m.InvalidRequest}, 503: {"model": m.Error, "description": "exchange unreachable"}})
    async def place_order(body: m.OrderIn, who: str = Who):
        order = body.model_dump()
        placed = await mutate(who, "place_order", {"order": order}, backend.place_order(order, who))
        return placed

    @app.delete("/api/orders/{order_id}", response_model=m.Order, tags=["trading"],
                responses={**_ERRORS, 404: {"model": m.Error}, 409: {"model": m.OrderError}})
    async def cancel_order(order_id: str, who: str = Who):
        if not (1 <= len(order_id) <= 128) or not all(c.isalnum() or c in "-_.:" for c in order_id):
            raise HTTPException(422, "order_id: 1-128 characters of letters, digits, - _ . :")
        return await mutate(who, "cancel_order", {"order_id": order_id}, backend.cancel_order(order_id, who),
                            not_found_ok=True)

    # ------------------------------------------------------------------ websocket
    status_cache: dict[str, Any] = {"obj": None, "text": ""}

    def status_text(st: dict[str, Any]) -> str:
        # one serialisation per cycle, however many clients: the producer puts the same dict in every queue
        if st is not status_cache["obj"]:
            status_cache["text"] = json.dumps(m.Status.model_validate(st).model_dump(mode="json"))
            status_cache["obj"] = st
        return status_cache["text"]

    @app.websocket("/ws")
    async def ws_status(ws: WebSocket):
        ip = client_ip(ws)
        # accept first: a browser sees the close code (4401 = log in again), never the HTTP status of a refusal
        await ws.accept()
        if lockout.retry_after_s(ip) > 0:
            await ws.close(code=1008, reason="locked out after repeated authentication failures")
            return
        try:
            payload = ws_tokens.verify(ws.query_params.get("token"))
            if payload["nonce"] in used_ws_tokens:
                raise TokenError("token already used", forged=False)
            if not keys.known_fingerprint(str(payload.get("kid", ""))):
                raise TokenError("the token's API key is no longer valid", forged=False)
        except TokenError as e:
            if e.forged:
                await record_failure(ip, "websocket token")
            await ws.close(code=4401, reason=e.reason)
            return
        used_ws_tokens.add(payload["nonce"], payload["exp"])
        if len(ws_clients) >= ws_max_clients:
            await ws.close(code=1013, reason="too many live clients, use polling")
            return
        queue = backend.subscribe()
        ws_clients.add(ws)
        if metrics is not None:
            metrics.ws_clients.set(len(ws_clients))
        min_interval_s = 1.0 / ws_max_hz if ws_max_hz > 0 else 0.0

        async def push() -> None:
            await asyncio.wait_for(ws.send_text(status_text(backend.status())), ws_send_timeout_s)
            while True:
                st = await queue.get()
                await asyncio.wait_for(ws.send_text(status_text(st)), ws_send_timeout_s)
                # throttle: cycles that come meanwhile overwrite the queue's single slot, the latest wins
                await asyncio.sleep(min_interval_s)

        async def listen() -> None:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return

        tasks = [asyncio.create_task(push()), asyncio.create_task(listen())]
        done: set[asyncio.Task] = set()
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if isinstance(exc, asyncio.TimeoutError):
                    log.info("websocket client too slow, closing", extra={"client": ip})
                elif exc is not None and not isinstance(exc, (WebSocketDisconnect, RuntimeError, OSError)):
                    log.error("websocket push failed", exc_info=exc, extra={"client": ip})
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            backend.unsubscribe(queue)
            ws_clients.discard(ws)
            if metrics is not None:
                metrics.ws_clients.set(len(ws_clients))
            if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
                try:
                    await ws.close(code=1011 if not done else 1000)
                except (RuntimeError, OSError):
                    pass  # the client went away while we closed

    # ------------------------------------------------------------------ pages, docs, assets
    asset_version = str(int(max(p.stat().st_mtime for p in (HERE / "static").rglob("*") if p.is_file())))

    def page(request: Request, name: str, read_only: bool = False) -> HTMLResponse:
        resp = templates.TemplateResponse(request, name, {"v": asset_version, "read_only": read_only})
        resp.headers["Content-Security-Policy"] = PAGE_CSP
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/", include_in_schema=False)
    async def dashboard(request: Request):
        token = request.cookies.get(SESSION_COOKIE)
        try:
            payload = session_of(token)
        except TokenError:
            return RedirectResponse("/login", status_code=303)
        # a read-only session gets a dashboard without write controls (the API refuses its writes anyway)
        return page(request, "index.html", read_only=not keys.can_write(str(payload["kid"])))

    @app.get("/login", include_in_schema=False)
    async def login_page(request: Request):
        return page(request, "login.html")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(who: str = docs_access):
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(who: str = docs_access):
        return get_swagger_ui_html(openapi_url="/openapi.json", title="BESS edge API",
                                   swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/img/favicon.svg")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return RedirectResponse("/static/img/favicon.svg", status_code=308)

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    return app


def _parse_time(name: str, value: str) -> float:
    try:
        ts = parse_iso(value)
    except (ValueError, OverflowError) as e:
        raise HTTPException(422, f"{name}: not an ISO 8601 UTC time ({e})") from e
    if not math.isfinite(ts):
        raise HTTPException(422, f"{name}: not a finite time")
    return ts
