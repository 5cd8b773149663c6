"""The web face's bounds on a real uvicorn on loopback (tests/fixtures/web.py serves the app with the daemon's server
options), from raw sockets, since a well-behaved HTTP client cannot misbehave: a chunked body counted as it streams
(413), a body nobody reads, endless headers (431), headers and bodies trickled byte by byte (closed at their
deadline), too many connections (503 at once), and the websocket still working behind the guard.
tests/system/test_web_hostile.py throws the same at a real `bess-edge run` and watches its memory and fds."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.fixtures.web import KEYS, answer_of, running_web
from web.server import ACCEPT_WAVE, FD_RESERVE, WAVES_IN_FLIGHT, accept_wave

pytestmark = pytest.mark.timeout(60)

H = {"X-API-Key": KEYS[0]}
CHUNK = b"k" * 65536


async def stream(port: int, head: bytes, chunks, *, chunked: bool = True) -> tuple[int | None, dict, bytes, int]:
    """Send `head`, then the chunks (chunk-encoded if `chunked`) until the server answers or closes; return the
    answer and the body bytes sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    answer = asyncio.create_task(answer_of(reader, timeout_s=30))
    try:
        writer.write(head)
        for chunk in chunks:
            if answer.done():
                break
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break
            sent += len(chunk)
        status, headers, body = await answer
    finally:
        answer.cancel()
        writer.close()
    return status, headers, body, sent


def post_head(path: str, extra: str = "Transfer-Encoding: chunked\r\n") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {KEYS[0]}\r\n{extra}\r\n"
    ).encode()


async def still_serves(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        assert (await c.get("/api/bess-status", headers=H)).status_code == 200


# --------------------------------------------------------------------------------------------------- bodies
@pytest.mark.parametrize("path", ["/api/login", "/api/orders", "/api/mode"])
async def test_a_chunked_body_is_counted_as_it_streams(path):
    """No Content-Length to check up front: the body is counted as it arrives, 413 past the limit, connection
    closed (the rest is never read). Before: the whole endless body was buffered and never answered."""
    async with running_web() as w:
        status, headers, body, sent = await stream(w.port, post_head(path), (CHUNK for _ in range(1000)))
        assert status == 413, (status, sent)
        assert "larger than 1048576 bytes" in json.loads(body)["detail"]
        assert headers["connection"] == "close"
        assert sent < 64 * 1024 * 1024  # answered long before the 64 MB the client was ready to send
        assert w.backend.audit_log == [] and w.backend.orders_by_id == {}
        await still_serves(w.url)


async def test_the_body_limit_is_configurable():
    async with running_web(web={"max_body_bytes": 2048}) as w:
        status, _, body, _ = await stream(w.port, post_head("/api/login"), (b"x" * 1000 for _ in range(10)))
        assert status == 413 and "larger than 2048 bytes" in json.loads(body)["detail"]
        async with httpx.AsyncClient(base_url=w.url) as c:  # a body under the limit is served as before
            assert (await c.post("/api/login", json={"api_key": KEYS[0]})).status_code == 200


async def test_a_body_nobody_reads_ends_the_connection():
    """/api/logout reads no body: the server discards it, but not for ever."""
    async with running_web() as w:
        status, _, _, sent = await stream(w.port, post_head("/api/logout"), (CHUNK for _ in range(2000)))
        # the logout may be answered before the body ends; the connection is closed in any case
        assert status in (200, None), status
        assert sent < 64 * 1024 * 1024
        await still_serves(w.url)


async def test_a_trickled_body_is_closed_at_its_deadline():
    async with running_web(web={"body_timeout_s": 0.5}) as w:
        reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
        writer.write(post_head("/api/login", "Content-Length: 1000\r\n"))
        closed = False
        for _ in range(200):  # a byte every 50 ms: the 1000 bytes would take 50 s
            writer.write(b"x")
            try:
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof() or writer.is_closing():
                closed = True
                break
            try:
                if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                    closed = True
                    break
            except asyncio.TimeoutError:
                pass
            except ConnectionError:
                closed = True
                break
        writer.close()
        assert closed, "the server kept a trickled body open"
        await still_serves(w.url)


# -------------------------------------------------------------------------------------------------- headers
async def test_endless_headers_get_431():
    async with running_web() as w:
        status, headers, body, sent = await stream(
            w.port,
            b"GET /api/bess-status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ",
            (b"a" * 1024 for _ in range(100_000)),
            chunked=False,
        )
        assert status == 431, (status, sent)
        assert "headers larger than 16384 bytes" in json.loads(body)["detail"]
        assert sent < 64 * 1024 * 1024  # answered, not read to the end
        await still_serves(w.url)


async def test_many_headers_within_the_limit_are_served():
    async with running_web() as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            extra = {f"X-H{i}": "v" * 100 for i in range(100)}  # ~11 KB of headers
            assert (await c.get("/api/bess-status", headers={**H, **extra})).status_code == 200


async def test_trickled_headers_get_408_at_their_deadline():
    async with running_web(web={"header_timeout_s": 0.5}) as w:
        reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
        answer = asyncio.create_task(answer_of(reader, timeout_s=20))
        request = b"GET /api/bess-status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 400
        for byte in request:  # a byte every 20 ms: 8 s in all
            if answer.done():
                break
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.02)
        status, _, body = await answer
        writer.close()
        assert status == 408 and "not complete within 0.5 s" in json.loads(body)["detail"]
        await still_serves(w.url)


async def test_an_idle_connection_is_closed():
    async with running_web(web={"header_timeout_s": 0.5, "keep_alive_s": 0.5}) as w:
        reader, _ = await asyncio.open_connection("127.0.0.1", w.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without a word


# ------------------------------------------------------------------------------------------------ connections
async def test_connections_over_the_cap_are_refused_at_once_then_served_again():
    async with running_web(web={"max_connections": 8, "max_connections_per_client": 8}) as w:
        held = [await asyncio.open_connection("127.0.0.1", w.port) for _ in range(8)]
        reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
        status, headers, body = await answer_of(reader)
        writer.close()
        assert status == 503 and "too many open connections" in json.loads(body)["detail"]
        for _, wr in held:
            wr.close()
        for _ in range(100):  # the server sees the closes
            if len(w.server.server_state.connections) == 0:
                break
            await asyncio.sleep(0.02)
        await still_serves(w.url)


async def test_one_client_cannot_take_every_connection():
    async with running_web(web={"max_connections": 16, "max_connections_per_client": 4}) as w:
        held = [await asyncio.open_connection("127.0.0.1", w.port) for _ in range(4)]
        reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
        status, _, _ = await answer_of(reader)
        writer.close()
        assert status == 503
        assert len(w.server.server_state.connections) <= 5
        for _, wr in held:
            wr.close()


async def test_keep_alive_requests_and_the_websocket_still_work_behind_the_guard():
    from websockets.asyncio.client import connect

    async with running_web(web={"max_connections": 4, "max_connections_per_client": 4}) as w:
        async with httpx.AsyncClient(base_url=w.url) as c:
            for _ in range(20):  # one keep-alive connection, many requests
                assert (await c.get("/api/bess-status", headers=H)).status_code == 200
            token = (await c.get("/api/ws-token", headers=H)).json()["token"]
            async with connect(f"{w.ws_url}?token={token}", open_timeout=5) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["status"] == "online"
                assert (await c.post("/api/mode", headers=H, json={"mode": "stopped"})).status_code == 200


# ------------------------------------------------------------------------------------------------------ TLS
async def test_tls_handshakes_count_against_the_cap_and_have_a_deadline(tmp_path):
    """With TLS the guard does the handshake: a client that connects and never says hello holds a slot only until
    the header deadline, and connections over the cap are closed at once (asyncio's own handshake would hold each
    socket 60 s, outside any count)."""
    import ssl

    from controller.config import WebTls
    from controller.tls import ensure_certificate

    cert, key = ensure_certificate(WebTls(enabled=True), tmp_path, bind_host="127.0.0.1")
    ctx = ssl.create_default_context(cafile=cert)
    async with running_web(
        web={"max_connections": 6, "max_connections_per_client": 6, "header_timeout_s": 3}, tls=(cert, key)
    ) as w:
        url = f"https://127.0.0.1:{w.port}"
        async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=10) as c:
            assert (await c.get("/api/bess-status", headers=H)).status_code == 200
        for _ in range(100):
            if not w.server.server_state.connections:
                break
            await asyncio.sleep(0.02)
        held = [await asyncio.open_connection("127.0.0.1", w.port) for _ in range(6)]  # no ClientHello, ever
        reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the 7th: closed
        writer.close()
        assert len(w.server.server_state.connections) == 6  # ... while the 6 still hold their slots
        for r, wr in held:  # each closed at its deadline
            assert await asyncio.wait_for(r.read(), 20) == b""
            wr.close()
        for _ in range(100):
            if not w.server.server_state.connections:
                break
            await asyncio.sleep(0.02)
        assert not w.server.server_state.connections
        async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=10) as c:
            assert (await c.get("/api/bess-status", headers=H)).status_code == 200
            r = await c.post(
                "/api/login",
                headers={"Content-Type": "application/json"},
                content=b'{"api_key":"' + b"k" * 1_100_000 + b'"}',
            )
            assert r.status_code == 413  # and the bounds hold inside TLS


def test_the_accept_wave_leaves_the_plant_its_descriptors():
    """The listen backlog (asyncio's accept wave) is ACCEPT_WAVE wherever the descriptor limit holds the cap, the
    waves that may be open at once and FD_RESERVE; a cap that cannot fit is a ValueError naming
    web.max_connections."""
    for cap, limit in ((256, 1024), (64, 1024), (600, 1024), (4, 400), (10_000, 1_048_576)):
        wave = accept_wave(cap, limit)
        assert wave == ACCEPT_WAVE and cap + WAVES_IN_FLIGHT * wave + FD_RESERVE <= limit, (cap, limit, wave)
    with pytest.raises(ValueError, match=r"web.max_connections: 800 open connections do not fit .* limit of 1024"):
        accept_wave(800, 1024)
    with pytest.raises(ValueError, match=r"lower it to at most 704"):
        accept_wave(705, 1024)
