"""What the bench scripts that run the plant simulator and a Controller share: free loopback ports, percentiles
in milliseconds, a site file's faces switched off, the plant simulator in its own process (this checkout's code),
a Controller in this process until its first good cycle, and one raw Modbus read timed as a floor.

Not a script: bench/cycle.py, units.py and frequency.py import it, poll.py and iec104.py its free_port and pct
(each with the checkout on sys.path).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from controller.clock import Clock
from controller.config import SiteConfig, load_config
from controller.cycle.loop import Controller
from controller.store import Store

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def ms(x: float, digits: int = 3) -> float:
    return round(x * 1e3, digits)


def no_faces(raw: dict[str, Any]) -> None:
    """A site file's faces off (no MQTT, web, SCADA: the cycle alone) and its ramp wide open, so that a figure is
    the software path's, not a configured ramp's (a ramp-limited step takes as long as the ramp says)."""
    raw["limits"]["ramp_mw_per_s"] = 1000
    raw["mqtt"]["enabled"] = False
    raw["web"]["enabled"] = False
    raw["scada"] = {"modbus": {"enabled": False}, "opcua": {"enabled": False}}


async def wait_for(cond, timeout_s: float, why) -> None:
    """Poll `cond` every 0.1 s until true; RuntimeError(why()) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(why())
        await asyncio.sleep(0.1)


async def wait_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"simulator port {port} not open after {timeout_s:g} s")


def stop_process(proc: subprocess.Popen, timeout_s: float) -> int:
    """SIGTERM, then SIGKILL when `proc` has not ended within `timeout_s`; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


class Simulator:
    """`python -m controller.cli simulate --config SITE` (this checkout's code), its log in `tmp`, every device
    port and the control port (when there is one) waited for; always stopped."""

    def __init__(self, site: Path, tmp: Path):
        self.site = site
        self.config = load_config(site)
        self.log_path = tmp / f"{site.stem}-sim.log"
        self.proc: subprocess.Popen | None = None

    async def __aenter__(self) -> "Simulator":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "simulate", "--config", str(self.site)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            ports = {d.port for d in self.config.devices.values()}
            if self.config.simulator.control_port is not None:
                ports.add(self.config.simulator.control_port)
            for port in sorted(ports):
                await wait_port(port)
        except BaseException:
            self.stop()
            raise
        return self

    def cpu_s(self) -> float:
        """The simulator process's CPU time so far (user + system), from /proc."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def control_port(self) -> int:
        port = self.config.simulator.control_port
        assert port is not None
        return port

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)

    async def __aexit__(self, *exc) -> None:
        self.stop()

    async def fault(self, face: str | None, **fault: Any) -> None:
        """Set a face's faults through the simulator's control API; `face` None clears every fault."""
        import httpx

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.control_port}", timeout=10) as c:
            r = await (c.delete("/sim/faults") if face is None else c.post(f"/sim/faults/{face}", json=fault))
            r.raise_for_status()


class Running:
    """A Controller (no faces) on a site file, in this process; started, its first good cycle waited for (at most
    `first_cycle_s`), stopped."""

    def __init__(self, site: Path, state: Path, first_cycle_s: float = 60.0):
        self.config: SiteConfig = load_config(site)
        self.store = Store(state / f"{site.stem}.db")
        self.c = Controller(self.config, self.store, Clock())
        self.first_cycle_s = first_cycle_s

    async def __aenter__(self) -> Controller:
        try:
            await self.c.start()
            await wait_for(
                lambda: self.c.stats.good_cycles > 0, self.first_cycle_s, lambda: f"no good cycle: {self.c.status()}"
            )
        except BaseException:
            await self.__aexit__()
            raise
        return self.c

    async def __aexit__(self, *exc) -> None:
        try:
            await self.c.stop()
        finally:
            self.store.close()


async def raw_reads_s(port: int, unit_id: int, n: int = 200) -> list[float]:
    """One raw 50-register read with pymodbus alone, n times: the wire's (and the simulator's) share of each
    request. The seconds each took."""
    from pymodbus.client import AsyncModbusTcpClient

    took: list[float] = []
    cl = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    await cl.connect()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            rr = await cl.read_holding_registers(40000, count=50, device_id=unit_id)
            took.append(time.perf_counter() - t0)
            if rr.isError():
                raise RuntimeError(f"raw read: {rr}")
    finally:
        cl.close()
    return took
