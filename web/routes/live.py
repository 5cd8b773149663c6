"""Live status: the /ws websocket pushes the latest status after each control cycle (at most `ws_max_hz`, the
latest wins), after a one-time signed token from GET /api/ws-token. Close codes: 4401 log in again, 1008 locked
out, 1013 too many clients, 1011 the push failed."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from web.auth import TokenError
from web.state import WebState, client_ip, web_state

log = logging.getLogger("bess.web")

router = APIRouter()


async def _admitted(ws: WebSocket, state: WebState, ip: str) -> bool:
    """Check the lockout, the token (signed, unused, its key still valid) and the client cap; close if refused."""
    if state.lockout.retry_after_s(ip) > 0:
        await ws.close(code=1008, reason="locked out after repeated authentication failures")
        return False
    try:
        payload = state.ws_tokens.verify(ws.query_params.get("token"))
        if payload["nonce"] in state.used_ws_tokens:
            raise TokenError("token already used", forged=False)
        if not state.keys.known_fingerprint(str(payload.get("kid", ""))):
            raise TokenError("the token's API key is no longer valid", forged=False)
    except TokenError as e:
        if e.forged:
            await state.record_failure(ip, "websocket token")
        await ws.close(code=4401, reason=e.reason)
        return False
    state.used_ws_tokens.add(payload["nonce"], payload["exp"])
    if len(state.ws_clients) >= state.ws_max_clients:
        await ws.close(code=1013, reason="too many live clients, use polling")
        return False
    return True


async def _push(ws: WebSocket, state: WebState, queue: asyncio.Queue) -> None:
    min_interval_s = 1.0 / state.ws_max_hz if state.ws_max_hz > 0 else 0.0
    await asyncio.wait_for(ws.send_text(state.status_text(state.backend.status())), state.ws_send_timeout_s)
    while True:
        st = await queue.get()
        await asyncio.wait_for(ws.send_text(state.status_text(st)), state.ws_send_timeout_s)
        # throttle: cycles that come meanwhile overwrite the queue's single slot, the latest wins
        await asyncio.sleep(min_interval_s)


async def _listen(ws: WebSocket) -> None:
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return


def _log_end(done: set[asyncio.Task], ip: str) -> None:
    for t in done:
        exc = t.exception()
        if isinstance(exc, asyncio.TimeoutError):
            log.info("websocket client too slow, closing", extra={"client": ip})
        elif exc is not None and not isinstance(exc, (WebSocketDisconnect, RuntimeError, OSError)):
            log.error("websocket push failed", exc_info=exc, extra={"client": ip})


@router.websocket("/ws")
async def ws_status(ws: WebSocket, state: WebState = Depends(web_state)):
    ip = client_ip(ws)
    # accept first: a browser sees the close code (4401 = log in again), never the HTTP status of a refusal
    await ws.accept()
    if not await _admitted(ws, state, ip):
        return
    queue = state.backend.subscribe()
    state.ws_clients.add(ws)
    state.count_ws_clients()
    tasks = [asyncio.create_task(_push(ws, state, queue)), asyncio.create_task(_listen(ws))]
    done: set[asyncio.Task] = set()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        _log_end(done, ip)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        state.backend.unsubscribe(queue)
        state.ws_clients.discard(ws)
        state.count_ws_clients()
        if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
            try:
                await ws.close(code=1011 if not done else 1000)
            except (RuntimeError, OSError):
                pass  # the client went away while we closed
