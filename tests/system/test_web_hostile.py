"""Hostile clients against a real `bess-edge run` on the plant simulators: a chunked-body flood (the finding: 7.5 GB
held after 20 s and never an answer), endless headers, and slow-loris clients trickling headers and bodies byte by
byte, all at once. Each gets a 413/431/408/503 or a closed connection; the daemon's RSS and open fds (from /proc)
stay under a bound; its cycles keep their rhythm (the daemon's own overrun counter, read from /metrics before and
after, not the test's clock). Then: sessions are signed with the state directory's own key, not HMAC_SECRET."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from controller.config import Secrets
from controller.daemon import Daemon
from tests.fixtures.controller import device_ports, site_config
from tests.fixtures.daemon import popen_daemon
from tests.fixtures.plant import make_plant, plant  # noqa: F401  (fixtures)
from tests.fixtures.web import answer_of
from web.auth import Signer, fingerprint
from web.session_key import FILENAME

pytestmark = pytest.mark.timeout(120)

KEY = "hostile-test-key-0123456789"
READ_KEY = "hostile-read-key-9876543210"
SECRET = "hostile-test-hmac-secret-0123456789"
QUIET = {"mqtt": {"enabled": False}, "scada": {"modbus": {"enabled": False}, "opcua": {"enabled": False}}}
MAX_CONNECTIONS = 64
OVER_CAP = 36  # slow clients past the cap in the second wave, refused at once
RSS_GROWTH_MAX_KB = 200 * 1024  # old code: grew by the whole flood (640 MB here, 7.5 GB in the finding)
CHUNK = b"f" * 65536


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


class Sampler:
    """The daemon's RSS and fds, sampled every 50 ms while the attack runs; the peaks."""

    def __init__(self, pid: int):
        self.pid = pid
        self.rss_kb = self.fds = 0
        self.samples = 0

    async def run(self) -> None:
        while True:
            self.rss_kb = max(self.rss_kb, rss_kb(self.pid))
            self.fds = max(self.fds, open_fds(self.pid))
            self.samples += 1
            await asyncio.sleep(0.05)


async def flood(port: int, head: bytes, piece: bytes, pieces: int) -> str:
    """One connection: `head`, then `piece` up to `pieces` times, as fast as the server takes it, until it answers.
    The outcome: its status, or "closed" (no answer before the server closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(answer_of(reader, timeout_s=60))
    try:
        writer.write(head)
        for _ in range(pieces):
            if answer.done():
                break
            writer.write(piece)
            try:
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0)  # let the answer be read, as a client reading while it sends would
        status, _, _ = await answer
    finally:
        answer.cancel()
        writer.close()
    return "closed" if status is None else str(status)


async def chunked_flood(port: int, mib: int = 32) -> str:
    """POST /api/login, no key, Transfer-Encoding: chunked, up to `mib` MiB of body: "413", another status, or
    "closed"."""
    head = (
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    return await flood(port, head, b"10000\r\n" + CHUNK + b"\r\n", mib * 16)


async def endless_headers(port: int) -> str:
    """GET with one header that never ends (up to 16 MiB)."""
    return await flood(port, b"GET /api/bess-status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ", b"h" * 1024, 16 * 1024)


async def slow_loris(port: int, body: bool) -> str:
    """A byte every 100 ms of a request's headers (or, with `body`, of its body) until the server ends it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionError:
        return "refused"
    answer = asyncio.create_task(answer_of(reader, timeout_s=60))
    try:
        if body:
            writer.write(
                b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n"
            )
        else:
            writer.write(b"GET /api/bess-status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(600):  # at most 60 s of trickling
            if answer.done():
                break
            writer.write(b"x")
            try:
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.1)
        status, _, _ = await answer
    finally:
        answer.cancel()
        writer.close()
    return "closed" if status is None else str(status)


async def test_floods_and_slow_clients_do_not_grow_a_running_daemon(plant, tmp_path):  # noqa: F811
    cfg = site_config(
        tmp_path,
        device_ports(plant),
        **QUIET,
        web={
            "max_connections": MAX_CONNECTIONS,
            "max_connections_per_client": MAX_CONNECTIONS,
            "header_timeout_s": 2,
            "body_timeout_s": 3,
        },
    )  # writes tmp_path/site.yaml
    port = cfg.web.port
    env = {
        **os.environ,
        "API_KEY": KEY,
        "API_KEY_READ": READ_KEY,
        "HMAC_SECRET": SECRET,
        "MQTT_URL": "mqtt://127.0.0.1:1",
    }
    log_path = tmp_path / "daemon.log"
    proc = popen_daemon(tmp_path, env, log_path)
    url = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {READ_KEY}"}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:

            async def ready() -> bool:
                try:
                    return (await c.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            for _ in range(300):  # bounded: 30 s
                assert proc.poll() is None, log_path.read_text()[-3000:]
                if await ready():
                    break
                await asyncio.sleep(0.1)
            assert await ready(), "the daemon never became ready"
            for _ in range(20):  # settle: a few cycles and requests before the baseline
                await c.get("/api/bess-status", headers={"X-API-Key": KEY})
            before = (await c.get("/metrics", headers=bearer)).text
            base_rss, base_fds = rss_kb(proc.pid), open_fds(proc.pid)

            sampler = Sampler(proc.pid)
            sampling = asyncio.create_task(sampler.run())
            # 1: floods beside slow clients, within the connection cap: each flood gets its answer
            floods = [chunked_flood(port) for _ in range(8)] + [endless_headers(port) for _ in range(2)]
            slow = [slow_loris(port, body=i % 5 == 0) for i in range(MAX_CONNECTIONS // 2)]
            outcomes = await asyncio.gather(*floods, *slow)
            flood_out, slow_out = outcomes[:10], outcomes[10:]
            # 2: more slow clients than the cap: the ones over it are refused at once
            slow_out += await asyncio.gather(
                *(slow_loris(port, body=i % 5 == 0) for i in range(MAX_CONNECTIONS + OVER_CAP))
            )
            sampling.cancel()

            after = (await c.get("/metrics", headers=bearer)).text
            assert (await c.get("/api/bess-status", headers={"X-API-Key": KEY})).status_code == 200
            rss_after, fds_after = rss_kb(proc.pid), open_fds(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    cycles = metric(after, "bess_cycles_total") - metric(before, "bess_cycles_total")
    overruns = metric(after, "bess_cycle_overruns_total") - metric(before, "bess_cycle_overruns_total")
    print(
        f"\nfloods: {flood_out}\nslow: {sorted(set(slow_out))} ({len(slow_out)})\n"
        f"rss {base_rss} -> peak {sampler.rss_kb} -> {rss_after} kB; fds {base_fds} -> peak {sampler.fds} -> "
        f"{fds_after}; {sampler.samples} samples; cycles +{cycles:g}, overruns +{overruns:g}"
    )
    assert flood_out == ["413"] * 8 + ["431"] * 2, flood_out
    # every slow client is ended: at its deadline (408, or closed mid-body), or refused at once past the cap (a
    # 503 the client may not read: the socket is closed before its request is read, so the kernel resets it)
    assert set(slow_out) <= {"408", "503", "closed"}, slow_out
    assert "408" in slow_out
    log_text = log_path.read_text()
    assert "connection refused, too many open" in log_text, log_text[-3000:]
    assert sampler.rss_kb - base_rss < RSS_GROWTH_MAX_KB, (base_rss, sampler.rss_kb)
    # the fds: a client past the cap is accepted before it can be refused, and holds its descriptor until its 503 is
    # closed (web/server.py accept_wave): at the peak, the held ones and the refused ones of the second wave (CI
    # counted 64 + 36 over base once); all of them closed again after
    assert sampler.fds - base_fds <= MAX_CONNECTIONS + OVER_CAP + 8, (base_fds, sampler.fds)
    assert fds_after - base_fds <= 8, (base_fds, fds_after)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    # the rhythm, by the daemon's own count: cycles went on, and hardly one overran its period
    assert cycles >= 10, cycles
    assert overruns <= max(2, cycles // 10), (cycles, overruns)


# ----------------------------------------------------------------------------------------------- session key
async def with_cookie(url: str, path: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, cookies={"bess_session": token}, timeout=10) as c:
        return await c.get(path)


def secrets() -> Secrets:
    return Secrets(
        api_keys=[KEY],
        api_keys_read=[READ_KEY],
        hmac_secret=SECRET,
        mqtt_url="mqtt://127.0.0.1:1",
        exchange_base_url="http://127.0.0.1:9",
    )


async def test_sessions_use_the_state_directory_key_and_survive_a_restart(plant, tmp_path):  # noqa: F811
    cfg = site_config(tmp_path, device_ports(plant), **QUIET)
    state = tmp_path / "state"
    url = f"http://127.0.0.1:{cfg.web.port}"
    daemon = Daemon(cfg, secrets(), state)
    try:
        await daemon.start()
        keyfile = state / FILENAME
        assert keyfile.exists() and stat.S_IMODE(keyfile.stat().st_mode) == 0o600
        assert SECRET not in keyfile.read_text() and SECRET.encode().hex() not in keyfile.read_text()
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            assert (await c.post("/api/login", json={"api_key": KEY})).status_code == 200
            cookie = c.cookies["bess_session"]
            # a cookie signed the old way, with HMAC_SECRET, is refused
            forged, _ = Signer(SECRET, "session").issue(3600, kid=fingerprint(KEY))
            r = await with_cookie(url, "/api/bess-status", forged)
            assert r.status_code == 401 and "signature" in r.json()["detail"]
            token, _ = Signer(SECRET, "websocket").issue(60, kid=fingerprint(KEY))
            from websockets.asyncio.client import connect
            from websockets.exceptions import ConnectionClosed

            async with connect(f"ws://127.0.0.1:{cfg.web.port}/ws?token={token}", open_timeout=5) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 4401
            # read-only key through the daemon: reads, no writes; /metrics with its bearer key
            assert (await c.get("/api/bess-status", headers={"X-API-Key": READ_KEY})).status_code == 200
            r = await c.post("/api/mode", headers={"X-API-Key": READ_KEY}, json={"mode": "stopped"})
            assert r.status_code == 403
            c.cookies.clear()
            assert (await c.get("/metrics")).status_code == 401
            assert (await c.get("/metrics", headers={"Authorization": f"Bearer {READ_KEY}"})).status_code == 200
        key_text = keyfile.read_text()
    finally:
        await daemon.stop()
    daemon = Daemon(cfg, secrets(), state)
    try:
        await daemon.start()
        assert keyfile.read_text() == key_text  # kept, not made again
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            r = await with_cookie(url, "/api/bess-status", cookie)
            assert r.status_code == 200  # the session survived the restart
    finally:
        await daemon.stop()


async def test_metrics_and_docs_opened_by_the_site_file(plant, tmp_path):  # noqa: F811
    cfg = site_config(tmp_path, device_ports(plant), **QUIET, web={"open_metrics": True, "open_docs": True})
    daemon = Daemon(cfg, secrets(), tmp_path / "state")
    try:
        await daemon.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.web.port}", timeout=10) as c:
            for path in ("/metrics", "/docs", "/openapi.json", "/healthz"):
                assert (await c.get(path)).status_code == 200, path
            assert (await c.get("/api/bess-status")).status_code == 401  # the API itself stays closed
    finally:
        await daemon.stop()
