"""What the web face's routes share: one `WebState` per app (on `app.state.web`), fetched by the `web_state`
dependency. It holds the backend, the keys and signers, the limits, and the few operations the routers have in
common: session checks, the lockout's bookkeeping, the audit row, and the audited mutating call.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable

from fastapi import HTTPException, Request, WebSocket
from fastapi.templating import Jinja2Templates
from starlette.requests import HTTPConnection

from web import models as m
from web.auth import ApiKeys, Lockout, NonceSet, Signer, TokenError
from web.backend import Backend, ExchangeDown, OrderRefused

log = logging.getLogger("bess.web")

SESSION_COOKIE = "bess_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass
class WebState:
    """One web app's state: built once by `create_app`, read by every route through `web_state`."""

    backend: Backend
    keys: ApiKeys
    lockout: Lockout
    sessions: Signer  # the dashboard's session cookie
    ws_tokens: Signer  # the short-lived /ws tokens
    templates: Jinja2Templates
    asset_version: str  # in the pages' asset URLs, so a browser fetches changed files
    metrics: Any = None  # web.app's HTTP metrics (request durations, websocket clients), or None
    open_metrics: bool = False
    open_docs: bool = False
    session_ttl_s: float = 12 * 3600
    ws_token_ttl_s: float = 60
    ws_max_hz: float = 4.0
    ws_max_clients: int = 200
    ws_send_timeout_s: float = 10.0
    revoked_sessions: NonceSet = field(default_factory=NonceSet)
    used_ws_tokens: NonceSet = field(default_factory=NonceSet)
    ws_clients: set[WebSocket] = field(default_factory=set)
    _status_obj: Any = None
    _status_text: str = ""

    # ---------------------------------------------------------------- sessions and lockout
    def session_of(self, token: str | None) -> dict:
        """The valid session's payload. Raises TokenError (expired, revoked, forged, key rotated away)."""
        payload = self.sessions.verify(token)
        if payload["nonce"] in self.revoked_sessions:
            raise TokenError("session ended", forged=False)
        if not self.keys.known_fingerprint(str(payload.get("kid", ""))):
            raise TokenError("the session's API key is no longer valid", forged=False)
        return payload

    async def record_failure(self, ip: str, what: str) -> None:
        log.warning("authentication failed", extra={"client": ip, "what": what})
        if self.lockout.failure(ip):
            log.warning("client locked out", extra={"client": ip, "lockout_s": self.lockout.lockout_s})
            await self.audit(f"ip:{ip}", "lockout", {"client": ip, "lockout_s": self.lockout.lockout_s, "after": what})

    def refuse_if_locked(self, ip: str) -> None:
        retry = self.lockout.retry_after_s(ip)
        if retry > 0:
            wait_s = math.ceil(retry)
            raise HTTPException(
                429,
                f"too many failed authentication attempts from {ip}: try again in {wait_s} s",
                headers={"Retry-After": str(wait_s)},
            )

    # ---------------------------------------------------------------- audited writes
    async def audit(self, who: str, action: str, details: dict[str, Any]) -> None:
        try:
            await self.backend.audit(who, action, details)
        except Exception:  # the action itself is done: answer it, but say loudly that the audit row is missing
            log.exception("audit write failed", extra={"who": who, "action": action})

    async def mutate(
        self,
        who: str,
        action: str,
        details: dict[str, Any],
        call: Awaitable[dict[str, Any]],
        not_found_ok: bool = False,
    ) -> dict[str, Any]:
        """Run a mutating backend call, audit its outcome (refusals too), turn its typed errors into HTTP."""
        try:
            result = await call
        except OrderRefused as e:
            await self.audit(who, action, {**details, "result": "refused", "reason": e.reason})
            raise
        except ExchangeDown as e:
            await self.audit(who, action, {**details, "result": "exchange_down", "reason": str(e)})
            raise
        except PermissionError as e:
            await self.audit(who, action, {**details, "result": "forbidden", "reason": str(e)})
            raise HTTPException(403, str(e) or "forbidden") from e
        except LookupError as e:
            if not not_found_ok:
                raise
            await self.audit(who, action, {**details, "result": "not_found"})
            raise HTTPException(404, f"not found: {e.args[0] if e.args else e}") from e
        except ValueError as e:
            await self.audit(who, action, {**details, "result": "invalid", "reason": str(e)})
            raise HTTPException(422, str(e)) from e
        await self.audit(who, action, {**details, "result": "ok"})
        return result

    # ---------------------------------------------------------------- live status
    def status_text(self, st: dict[str, Any]) -> str:
        """The status as the websocket sends it. One serialisation per cycle, however many clients: the producer
        puts the same dict in every queue."""
        if st is not self._status_obj:
            self._status_text = json.dumps(m.Status.model_validate(st).model_dump(mode="json"))
            self._status_obj = st
        return self._status_text

    def count_ws_clients(self) -> None:
        if self.metrics is not None:
            self.metrics.ws_clients.set(len(self.ws_clients))


def web_state(conn: HTTPConnection) -> WebState:
    """Dependency: the app's WebState (HTTP requests and websockets alike)."""
    return conn.app.state.web


def backend_of(conn: HTTPConnection) -> Backend:
    """Dependency: the backend, the only way the web reaches the controller."""
    return conn.app.state.web.backend


def client_ip(conn: Request | WebSocket) -> str:
    return conn.client.host if conn.client else "unknown"
