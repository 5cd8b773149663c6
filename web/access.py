"""Who may call the web face: the FastAPI dependencies that authenticate a request (API key or session cookie;
for /metrics, /docs and /openapi.json also `Authorization: Bearer`), refuse writes of read-only keys and
cross-site writes with the cookie, and count failures towards the lockout. `Who` is the dependency of every
/api route; `ERRORS` documents what it answers.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyCookie, APIKeyHeader

from web import models as m
from web.auth import TokenError
from web.state import SAFE_METHODS, SESSION_COOKIE, WebState, client_ip, web_state

ERRORS = {
    401: {"model": m.Error, "description": "no or wrong API key / session"},
    403: {
        "model": m.Error,
        "description": "a write with a read-only key or session, or a cross-site request with the session cookie",
    },
    422: {"model": m.InvalidRequest, "description": "invalid parameters or body"},
    429: {"model": m.Error, "description": "locked out after repeated failures"},
}

header_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of the keys in API_KEY")
cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="set by POST /api/login")


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not a browser's cross-site request; SameSite=Strict covers the rest
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


def _refuse_write_if_read_only(state: WebState, request: Request, fp: str, what: str) -> None:
    # the key's rights now, not when a session began: a key moved to API_KEY_READ loses writes at once
    if request.method not in SAFE_METHODS and not state.keys.can_write(fp):
        raise HTTPException(
            403,
            f"read-only {what}: a key from API_KEY_READ may only read (GET); {request.method} needs a key from API_KEY",
        )


async def _key_or_401(state: WebState, ip: str, key: str, what: str, scheme: str) -> str:
    """The key's fingerprint (and the client's failures forgiven), or 401 (counted towards the lockout)."""
    fp = state.keys.check(key)
    if fp is None:
        await state.record_failure(ip, what)
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": scheme})
    state.lockout.success(ip)
    return fp


async def _session_or_401(state: WebState, ip: str, token: str, scheme: str) -> dict:
    """The session's payload, or 401 (a forged cookie counts towards the lockout)."""
    try:
        return state.session_of(token)
    except TokenError as e:
        if e.forged:
            await state.record_failure(ip, "session cookie")
        raise HTTPException(401, f"{e.reason}: log in again", headers={"WWW-Authenticate": scheme}) from e


async def authenticated(
    request: Request,
    api_key: str | None = Security(header_scheme),
    session: str | None = Security(cookie_scheme),
    state: WebState = Depends(web_state),
) -> str:
    """Who is calling: "key:<fingerprint>" or "session:<fingerprint>". 401/403/429 otherwise."""
    ip = client_ip(request)
    state.refuse_if_locked(ip)
    if api_key is not None:
        fp = await _key_or_401(state, ip, api_key, "X-API-Key", "ApiKey")
        _refuse_write_if_read_only(state, request, fp, "API key")
        return f"key:{fp}"
    if session:
        payload = await _session_or_401(state, ip, session, "ApiKey")
        if request.method not in SAFE_METHODS and not _same_origin(request):
            raise HTTPException(403, "cross-site request refused: the Origin does not match this dashboard")
        _refuse_write_if_read_only(state, request, payload["kid"], "session")
        return f"session:{payload['kid']}"
    raise HTTPException(
        401, "API key required: send the X-API-Key header or log in", headers={"WWW-Authenticate": "ApiKey"}
    )


Who = Depends(authenticated)


async def _reader(request: Request, state: WebState) -> str:
    """For /metrics, /docs and /openapi.json: X-API-Key, `Authorization: Bearer <key>` (Prometheus) or the
    session cookie; read keys suffice. 401/429 otherwise."""
    ip = client_ip(request)
    state.refuse_if_locked(ip)
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    candidate = request.headers.get("x-api-key") or (bearer.strip() if scheme.lower() == "bearer" else None)
    if candidate:
        return f"key:{await _key_or_401(state, ip, candidate, 'metrics/docs key', 'Bearer')}"
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        return f"session:{(await _session_or_401(state, ip, token, 'Bearer'))['kid']}"
    raise HTTPException(
        401,
        "API key required: send `Authorization: Bearer <key>` or X-API-Key, or log in",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def metrics_reader(request: Request, state: WebState = Depends(web_state)) -> str:
    """/metrics: open with web.open_metrics, else `_reader`."""
    return "open" if state.open_metrics else await _reader(request, state)


async def docs_reader(request: Request, state: WebState = Depends(web_state)) -> str:
    """/docs and /openapi.json: open with web.open_docs, else `_reader`."""
    return "open" if state.open_docs else await _reader(request, state)
