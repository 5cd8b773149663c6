"""The web face's HTTP server bounds: what uvicorn is told, and a small guard at the protocol level for what it
does not do itself, so that no client can grow the daemon's memory or file descriptors without limit.

uvicorn (0.3x-0.5x) gives: `timeout_keep_alive` (idle keep-alive connections), `ws_max_size`/`ws_max_queue`
(websocket messages), `limit_concurrency` (a 503 once the headers are in: too late against a client that never
finishes them) and, for h11 only, `h11_max_incomplete_event_size`. The httptools protocol it picks by default
buffers a header of any length (measured: 20 MB of one header value held 20 MB), starts no timer until the first
response, and keeps reading (and dropping) a body nobody reads for as long as it comes. `guarded_protocol()`
adds, per connection:
  - a cap on open connections (total and per client IP): over it, a 503 and the socket closed at once;
  - request line + headers counted as they arrive: 431 past `max_header_bytes`;
  - a deadline for the headers (from the connection, or from the previous response): 408 and closed;
  - a deadline for the body (from the end of the headers): closed when it passes with the body incomplete;
  - a cap on the bytes a request may put on the wire after its headers (a body nobody reads, chunk framing,
    trailers): closed past it.
The body limit itself (413 as the body streams, whatever the headers say) is web/app.py's ASGI middleware, where
the answer can be a proper JSON error.

With TLS on, the guard does the handshake itself (uvicorn gets no ssl), so that a handshake too counts against
the caps and runs under the header deadline; asyncio's own would hold each socket 60 s, uncounted.

`UvicornServer` runs an ASGI app under uvicorn without uvicorn's own signal capture: the process that owns it
(the daemon, `bess-edge simulate`, `bess-edge exchange`) handles SIGTERM/SIGINT and calls `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import signal
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr, is_ssl

log = logging.getLogger("bess.web")

SLICE_BYTES = 4096  # header bytes are fed to the parser in slices this big, so the count is this exact
WS_MAX_MESSAGE_BYTES = 64 * 1024  # the dashboard sends nothing on /ws; this bounds what a client may
WS_MAX_QUEUE = 4
LINGER_S = 2.0  # after an early answer, how long the rest of a request is read and dropped
# descriptors kept for all but the web face (device connections, the store, MQTT, the SCADA faces, logs): a flood of
# the web port must never leave a Modbus reconnect or the broker's without one (measured: with the systemd default of
# 1024, the cap 256 and a wave of 1024, a flood took the daemon to 1024 open and asyncio's accept to EMFILE)
FD_RESERVE = 256
# The listen backlog, which is also how many connections asyncio accepts in one turn of the loop the cycle shares: a
# connect flood costs each turn about this many accepts and refusals, and the kernel's queue of this length sheds
# the rest. bench/flood.py (48,000 connects, RLIMIT_NOFILE 1024, a 0.2 s cycle): a wave of 128 let the cycle reach
# 500 ms, with 2 overruns and a device error; 32 kept it under 100 ms, 16 under 50 ms, 0 overruns, 0 errors.
ACCEPT_WAVE = 16
WAVES_IN_FLIGHT = 4  # accept waves whose refused connections may be open at once (three turns to close, and one spare)


@dataclass(frozen=True)
class Bounds:
    max_header_bytes: int = 16_384
    max_connections: int = 256
    max_connections_per_client: int = 64
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_body_bytes: int = 1_048_576

    @property
    def max_wire_bytes(self) -> int:
        """Bytes a request may send after its headers: twice the body limit (chunk framing, and the app's 413
        comes when it has read past the limit, while up to a buffer more is already in) plus 1 MiB."""
        return 2 * self.max_body_bytes + 1_048_576

    @classmethod
    def of(cls, web: Any) -> "Bounds":
        """From the site file's `web:` section (controller.config.Web)."""
        return cls(
            max_header_bytes=web.max_header_bytes,
            max_connections=web.max_connections,
            max_connections_per_client=web.max_connections_per_client,
            header_timeout_s=web.header_timeout_s,
            body_timeout_s=web.body_timeout_s,
            max_body_bytes=web.max_body_bytes,
        )


def uvicorn_options(web: Any, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> dict[str, Any]:
    """uvicorn.Config keywords for the site file's `web:` section. With a certificate and key, the guard does the
    TLS handshake itself (uvicorn is given no ssl): a handshake then counts against the connection caps and has
    the header deadline, where asyncio's own would hold a socket for 60 s outside them."""
    bounds = Bounds.of(web)
    tls = server_tls_context(ssl_certfile, ssl_keyfile) if ssl_certfile else None
    return {
        "http": guarded_protocol(bounds, tls),
        "timeout_keep_alive": web.keep_alive_s,
        "ws_max_size": WS_MAX_MESSAGE_BYTES,
        "ws_max_queue": WS_MAX_QUEUE,
        # the guard refuses connections past the cap; a request on an admitted one is always served
        "limit_concurrency": None,
        "backlog": accept_wave(bounds.max_connections, fd_limit()),
    }


def fd_limit() -> int:
    """The process's open-descriptor limit (the soft one: what open() and accept() run into)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def accept_wave(max_connections: int, limit: int) -> int:
    """The listen backlog: ACCEPT_WAVE, once the descriptor limit is known to hold the web's worst case beside
    FD_RESERVE. A connection past the cap is accepted before it can be refused, and holds its descriptor until it is
    closed three turns later (the accept task, connection_made's 503 and close, connection_lost), while each turn may
    accept another wave: under a flood the web holds the cap plus up to WAVES_IN_FLIGHT waves. A limit too small for
    that is a ValueError naming web.max_connections (the daemon refuses to start on it)."""
    room = limit - max_connections - FD_RESERVE
    if room < WAVES_IN_FLIGHT * ACCEPT_WAVE:
        raise ValueError(
            f"web.max_connections: {max_connections} open connections do not fit in this process's descriptor "
            f"limit of {limit} (RLIMIT_NOFILE) beside {FD_RESERVE} kept for the plant and {WAVES_IN_FLIGHT} waves of "
            f"{ACCEPT_WAVE} refused ones: lower it to at most {limit - FD_RESERVE - WAVES_IN_FLIGHT * ACCEPT_WAVE}, "
            "or raise the limit (LimitNOFILE= in the systemd unit)"
        )
    return ACCEPT_WAVE


class _NoSignalServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the owner handles signals and stops us with should_exit
        yield


class UvicornServer:
    """An ASGI app served by uvicorn as one task of the running loop, without uvicorn's signal capture.
    `options`: more uvicorn.Config keywords (e.g. `uvicorn_options()`'s bounds, `lifespan`). Port 0 binds a free
    port; `port` is the bound one after `start()`."""

    def __init__(self, app: Any, host: str, port: int, *, name: str = "web", **options: Any):
        self.name = name
        self.port = port
        self.server = _NoSignalServer(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, **options)
        )
        self.task: asyncio.Task | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        """Serve; return once listening. Raises the bind error (with its message), or RuntimeError."""
        self.task = asyncio.create_task(self.server.serve(), name=self.name)
        for _ in range(max(1, int(timeout_s / 0.05))):  # bounded
            if self.server.started or self.task.done():
                break
            await asyncio.sleep(0.05)
        if self.task.done():
            self.task.result()  # raises the bind error, with its message
            raise RuntimeError(f"{self.name} server stopped during start")
        if self.port == 0 and self.server.started:
            self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, timeout=5)
            self.task = None


@contextlib.asynccontextmanager
async def stop_signals() -> AsyncIterator[asyncio.Event]:
    """The owner's half of a UvicornServer (which captures no signals): an event that SIGINT or SIGTERM sets while
    inside; the handlers are removed on leaving."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def server_tls_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """What uvicorn would build from ssl_certfile/ssl_keyfile, with TLS 1.2 as the floor."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _Throttled:
    """One warning per kind at most every `every_s`, with how many were not logged: a flood of bad clients must
    not become a flood of log lines."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._count: Counter = Counter()

    def warn(self, kind: str, message: str, **extra: Any) -> None:
        self._count[kind] += 1
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) >= self.every_s:
            self._last[kind] = now
            log.warning(message, extra={**extra, "kind": kind, "count_since_last": self._count.pop(kind)})


_warn = _Throttled()


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n\r\n"
    ).encode() + body


class _CloseLingers:
    """The transport as a request's cycle sees it: its close() lingers (see _Guarded._linger)."""

    def __init__(self, transport: asyncio.Transport, protocol: "_Guarded"):
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol._close_after_response()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(bounds: Bounds, tls: ssl.SSLContext | None = None) -> type[HttpToolsProtocol]:
    """A uvicorn http protocol class (pass as uvicorn.Config(http=...)) enforcing `bounds`, doing the TLS
    handshake itself with `tls` if given. One class per server: the per-client connection counts are shared by
    that server's connections only."""

    class GuardedHttpToolsProtocol(_Guarded):
        BOUNDS = bounds
        TLS = tls
        per_client: Counter = Counter()

    return GuardedHttpToolsProtocol


class _Guarded(HttpToolsProtocol):
    BOUNDS: Bounds
    TLS: ssl.SSLContext | None = None
    per_client: Counter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admitted_as: str | None = None  # the client key counted in per_client, until released
        self._refused = False
        self._in_headers = True  # waiting for, or reading, a request line and headers
        self._header_bytes = 0
        self._wire_bytes = 0  # bytes since the current request's headers ended
        self._deadline: asyncio.TimerHandle | None = None
        self._lingering = False
        self._handshaking = False  # TLS: admitted, handshake under way (the TLS transport not made yet)
        self._early = b""  # TLS: data that came between the handshake's end and connection_made
        self._tls_task: asyncio.Task | None = None

    # ---------------------------------------------------------------- connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.TLS is not None and not is_ssl(transport):
            self._start_tls(transport)
            return
        if self._handshaking:  # the TLS transport, on an admitted connection: its deadline runs since accept
            self._handshaking = False
            super().connection_made(transport)
            early, self._early = self._early, b""
            if early:
                self.data_received(early)
            return
        super().connection_made(transport)  # counts it in the server's connections
        if self._admit(transport, answer=True):
            self._arm(self.BOUNDS.header_timeout_s, self._headers_late)

    def _admit(self, transport: asyncio.Transport, answer: bool) -> bool:
        """Count the connection, or refuse it (503 if `answer`) and close it at once when over a cap."""
        b = self.BOUNDS
        host = self._host()
        if len(self.connections) > b.max_connections or self.per_client[host] >= b.max_connections_per_client:
            self._refused = True
            _warn.warn(
                "connection_refused",
                "web: connection refused, too many open",
                client=host,
                open=len(self.connections),
                open_from_client=self.per_client[host],
            )
            if answer:
                transport.write(_raw_response(503, "Service Unavailable", "too many open connections: try again later"))
            transport.close()
            return False
        self.per_client[host] += 1
        self._admitted_as = host
        return True

    # ---------------------------------------------------------------- TLS inside the guard
    def _start_tls(self, transport: asyncio.Transport) -> None:
        self.transport = transport  # the plain one, until the handshake ends
        self.client = get_remote_addr(transport)
        self.connections.add(self)
        if not self._admit(transport, answer=False):  # a TLS client could not read a plain 503
            self.connections.discard(self)
            return
        self._handshaking = True
        # one deadline from accept for handshake and headers; closing the plain transport ends the handshake
        self._arm(self.BOUNDS.header_timeout_s, self._headers_late)
        self._tls_task = self.loop.create_task(self._handshake(transport))  # referenced until done

    async def _handshake(self, transport: asyncio.Transport) -> None:
        try:
            tls_transport = await self.loop.start_tls(
                transport, self, self.TLS, server_side=True, ssl_handshake_timeout=self.BOUNDS.header_timeout_s
            )
        except Exception as e:  # no TLS client, a bad handshake, too slow
            self._handshake_failed(transport, str(e) or type(e).__name__)
            return
        if tls_transport is None:  # closed during the handshake (asyncio then answers None, not an error)
            self._handshake_failed(transport, "connection closed during the handshake")
            return
        self.connection_made(tls_transport)

    def _handshake_failed(self, transport: asyncio.Transport, why: str) -> None:
        _warn.warn("tls_failed", "web: TLS handshake failed", client=self._host(), error=why)
        self._disarm()
        self._release()
        self._handshaking = False
        self.connections.discard(self)
        transport.close()

    def shutdown(self) -> None:
        if self._handshaking:  # the server stops: end the handshake (which releases the connection)
            self.transport.close()
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)

    def _release(self) -> None:
        if self._admitted_as is not None:
            self.per_client[self._admitted_as] -= 1
            if self.per_client[self._admitted_as] <= 0:
                del self.per_client[self._admitted_as]
            self._admitted_as = None

    def handle_websocket_upgrade(self) -> None:
        # the websocket protocol takes the socket over (its own size limits and pings; the app caps its clients)
        self._disarm()
        self._release()
        super().handle_websocket_upgrade()

    # ---------------------------------------------------------------- timers
    def _arm(self, delay_s: float, callback) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _host(self) -> str:
        """The client's IP address, "" when unknown (what the per-client counts and the log lines use)."""
        return self.client[0] if self.client else ""

    def _idle(self) -> bool:
        """No response in progress on this connection: a raw answer cannot interleave with the app's."""
        return self.cycle is None or self.cycle.response_complete

    def _deadline_passed(self, kind: str, message: str, timeout_s: float) -> bool:
        """A deadline's callback begins here: False if the connection is closing already, else logged."""
        self._deadline = None
        if self.transport.is_closing():
            return False
        _warn.warn(kind, message, client=self._host(), timeout_s=timeout_s)
        return True

    def _headers_late(self) -> None:
        if not self._deadline_passed(
            "header_timeout", "web: request headers too slow, connection closed", self.BOUNDS.header_timeout_s
        ):
            return
        if self._idle() and self._header_bytes:
            detail = f"request headers not complete within {self.BOUNDS.header_timeout_s:g} s"
            self.transport.write(_raw_response(408, "Request Timeout", detail))
            self._linger()
        else:
            self.transport.close()

    def _body_late(self) -> None:
        if not self._deadline_passed(
            "body_timeout", "web: request body too slow, connection closed", self.BOUNDS.body_timeout_s
        ):
            return
        # the app may be answering this request: no raw answer, the app sees a disconnect
        self.transport.close()

    # ---------------------------------------------------------------- closing after an early answer
    def _linger(self) -> None:
        """Close after an answer sent while the client may still be sending (413, 431, 408): send FIN after the
        answer, then read and drop what still comes for at most LINGER_S. Closing at once with unread data makes
        the kernel send a reset, which can destroy the answer before the client reads it."""
        if self._lingering or self.transport.is_closing():
            return
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self._lingering = True
        self.transport.write_eof()
        self.flow.resume_reading()
        self._arm(LINGER_S, self.transport.close)

    def _close_after_response(self) -> None:
        """The app's connection: close (e.g. its 413): linger if the request body is still coming."""
        if not self._in_headers:
            self._linger()
        else:
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._wire_bytes = 0
        self._arm(self.BOUNDS.body_timeout_s, self._body_late)
        real = self.transport
        self.transport = _CloseLingers(real, self)  # what the request's cycle closes when it answers
        try:
            super().on_headers_complete()
        finally:
            self.transport = real

    # ---------------------------------------------------------------- parsing
    def data_received(self, data: bytes) -> None:
        if self._refused or self.parser is None:
            return
        if self._handshaking:  # TLS up, our connection_made for it not yet run: keep it for then (bounded)
            self._early += data
            if len(self._early) > self.BOUNDS.max_header_bytes:
                self.transport.close()
            return
        if self._lingering:  # answered and closing: drop the rest (for LINGER_S at most)
            return
        self._unset_keepalive_if_required()
        view = memoryview(data)
        while view:
            in_headers = self._in_headers
            if in_headers:  # fed in slices, so that the count stops a long header within SLICE_BYTES
                piece, view = view[:SLICE_BYTES], view[SLICE_BYTES:]
            else:
                piece, view = view, view[len(view) :]
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                _warn.warn("bad_request", "web: invalid HTTP request", client=self._host())
                self.send_400_response("Invalid HTTP request received.")
                return
            if in_headers and self._in_headers:
                self._header_bytes += len(piece)
                if self._header_bytes > self.BOUNDS.max_header_bytes:
                    self._refuse(
                        431,
                        "Request Header Fields Too Large",
                        f"request line and headers larger than {self.BOUNDS.max_header_bytes} bytes",
                    )
                    return
            elif not in_headers:
                self._wire_bytes += len(piece)
                if self._wire_bytes > self.BOUNDS.max_wire_bytes:
                    _warn.warn(
                        "body_flood",
                        "web: request body far over the limit, connection closed",
                        client=self._host(),
                        bytes=self._wire_bytes,
                    )
                    self.transport.close()
                    return

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        _warn.warn(f"refused_{status}", f"web: request refused ({status})", client=self._host(), detail=detail)
        self._disarm()
        if self._idle() and not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, detail))
            self._linger()
        else:
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0

    def on_message_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._lingering:
            return
        waiting = bool(self.pipeline)
        super().on_response_complete()
        # ready for the next request: its headers must come within the deadline (a pipelined one already did)
        if not waiting and self._in_headers and not self.transport.is_closing():
            self._arm(self.BOUNDS.header_timeout_s, self._headers_late)
