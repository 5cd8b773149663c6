"""Connections held open on the SCADA faces of a running `bess-edge run` under systemd's default descriptor limit
(RLIMIT_NOFILE 1024). The finding: 2,000 held on the Modbus face took the daemon to 1,024 descriptors; the PCS
could not reconnect after a drop, the web stopped answering, and asyncio logged 1.9 million "out of system resource"
lines. Now each face closes a client past its `max_connections` at once (controller/scada/connections.py): the
daemon's descriptors stay bounded, the web answers, the PCS reconnects after a drop, and the refusals are a few log
lines."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import subprocess

import httpx
import pytest

from tests.conftest import free_port
from tests.fixtures.controller import device_ports, site_config
from tests.fixtures.daemon import popen_daemon
from tests.fixtures.plant import make_plant, plant  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)

KEY = "scada-hostile-key-0123456789"
FD_LIMIT = 1024  # systemd's default soft limit for a service
HELD_PER_FACE = 400  # three faces: more than the whole limit
CAP = 16  # each face's max_connections (the default)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def hold(port: int, n: int) -> list[asyncio.StreamWriter]:
    """`n` connections to `port`, opened at once and left open (those the face closes at once are closed here
    too, so the test process does not keep them)."""

    async def one() -> asyncio.StreamWriter | None:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            return w
        except (OSError, TimeoutError):
            return None

    return [w for w in await asyncio.gather(*(one() for _ in range(n))) if w is not None]


async def test_connections_held_on_every_scada_face_leave_the_plant_its_descriptors(plant, tmp_path):  # noqa: F811
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * HELD_PER_FACE + 200:  # this process holds the connections' other ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    ports = {"modbus": free_port(), "opcua": free_port(), "iec104": free_port()}
    cfg = site_config(
        tmp_path,
        device_ports(plant),
        mqtt={"enabled": False},
        cycle={"period_s": 0.5},
        scada={
            "modbus": {"enabled": True, "port": ports["modbus"]},
            "opcua": {"enabled": True, "port": ports["opcua"], "allow_none_security": True},
            "iec104": {"enabled": True, "port": ports["iec104"]},
        },
    )  # writes tmp_path/site.yaml
    env = {**os.environ, "API_KEY": KEY, "HMAC_SECRET": "scada-hostile-hmac-secret-0123456789"}
    log_path = tmp_path / "daemon.log"
    proc = popen_daemon(tmp_path, env, log_path, fd_limit=FD_LIMIT)
    held: list[asyncio.StreamWriter] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.web.port}", timeout=10) as c:

            async def status() -> dict | None:
                try:
                    r = await c.get("/api/bess-status", headers={"X-API-Key": KEY})
                    return r.json() if r.status_code == 200 else None
                except httpx.TransportError:
                    return None

            for _ in range(300):  # bounded: 30 s
                assert proc.poll() is None, log_path.read_text()[-3000:]
                s = await status()
                if s is not None and s["status"] == "online":
                    break
                await asyncio.sleep(0.1)
            base_fds = open_fds(proc.pid)

            for port in ports.values():
                held += await hold(port, HELD_PER_FACE)
            await asyncio.sleep(1.0)  # the refused ones closed by the faces
            fds_held = open_fds(proc.pid)
            # at most each face's cap held (each admitted connection one descriptor), and some slack for the
            # faces' own; without the caps this was the whole limit
            assert fds_held - base_fds <= 3 * CAP + 40, (base_fds, fds_held, len(held))
            assert await status() is not None, "the web stopped answering"

            # the PCS drops its connections, then answers again: the controller reconnects while the faces are held
            plant.faults["pcs"].drop = True
            await asyncio.sleep(1.5)
            plant.faults["pcs"].drop = False

            async def pcs_back() -> bool:
                s = await status()
                return s is not None and s["status"] == "online" and not any("pcs" in a for a in s["alarms"])

            for _ in range(150):  # bounded: 15 s
                if await pcs_back():
                    break
                await asyncio.sleep(0.1)
            assert await pcs_back(), (await status(), log_path.read_text()[-3000:])
    finally:
        for w in held:
            w.close()
        proc.terminate()
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    text = log_path.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert "out of system resource" not in text and "Too many open files" not in text, text[-3000:]
    refusals = re.findall(r"connection refused: .*", text)
    assert any("scada.modbus.max_connections" in r for r in refusals), text[-3000:]
    assert any("scada.opcua.max_connections" in r for r in refusals), text[-3000:]
    assert len(refusals) <= 10, refusals  # once per face and reason per 10 s, with counts: not once per connection
