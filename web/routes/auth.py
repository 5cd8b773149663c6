"""Sessions: POST /api/login (an API key in, the HttpOnly session cookie out), POST /api/logout, and
GET /api/ws-token (the short-lived signed token /ws needs)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from controller.clock import iso
from web import models as m
from web.access import ERRORS, Who
from web.auth import TokenError
from web.state import SESSION_COOKIE, WebState, client_ip, web_state

router = APIRouter(tags=["auth"])


@router.post("/api/login", response_model=m.LoginOut, responses={k: v for k, v in ERRORS.items() if k != 403})
async def login(body: m.LoginRequest, request: Request, response: Response, state: WebState = Depends(web_state)):
    ip = client_ip(request)
    state.refuse_if_locked(ip)
    fp = state.keys.check(body.api_key)
    if fp is None:
        await state.record_failure(ip, "login")
        raise HTTPException(401, "invalid API key")
    state.lockout.success(ip)
    token, payload = state.sessions.issue(state.session_ttl_s, kid=fp)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(state.session_ttl_s),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    read_only = not state.keys.can_write(fp)
    await state.audit(f"session:{fp}", "login", {"client": ip, "read_only": read_only})
    return {"ok": True, "expires": iso(payload["exp"]), "read_only": read_only}


@router.post("/api/logout")
async def logout(request: Request, response: Response, state: WebState = Depends(web_state)) -> dict[str, bool]:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        try:
            payload = state.session_of(token)
            state.revoked_sessions.add(payload["nonce"], payload["exp"])
            await state.audit(f"session:{payload['kid']}", "logout", {"client": client_ip(request)})
        except TokenError:
            pass  # already invalid: nothing to end
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return {"ok": True}


@router.get("/api/ws-token", response_model=m.WsToken, responses=ERRORS)
async def ws_token(who: str = Who, state: WebState = Depends(web_state)):
    token, _ = state.ws_tokens.issue(state.ws_token_ttl_s, kid=who.split(":", 1)[1])
    return {"token": token, "expires_in_s": state.ws_token_ttl_s}
