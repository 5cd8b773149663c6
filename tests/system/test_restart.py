"""kill -9 of a real `bess-edge run` and a restart, against the plant simulators in this process: while the
daemon is dead the PCS falls back to 0 MW by its own reversion timer; after the restart no trade is lost, the
schedule resumes (the PCS back on the target), and no non-zero setpoint reaches the PCS before every device
has given fresh readings.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from controller.clock import iso
from controller.store import Store
from controller.trading.market import PERIOD_S, period_start
from simulators.plant import Plant
from tests.fixtures.controller import device_ports, site_config, wait_for
from tests.fixtures.daemon import ROOT, cli_argv, spawn_daemon
from tests.fixtures.plant import make_plant, wset_mw  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

REVERSION_S = 3.0
ENV = {**os.environ, "API_KEY": "demo", "HMAC_SECRET": "phoenyra_demo_secret", "PYTHONUNBUFFERED": "1"}


async def trade_add(state_dir: Path, trade_id: str, side: str, quantity_mw: float, start: float) -> None:
    """`bess-edge trade add`, the commissioning CLI, as a real process (the plant keeps serving meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        *cli_argv(
            "trade",
            "add",
            "--state-dir",
            str(state_dir),
            "--trade-id",
            trade_id,
            "--side",
            side,
            "--quantity-mw",
            str(quantity_mw),
            "--price-eur-mwh",
            "80",
            "--delivery-start",
            iso(start),
            "--delivery-end",
            iso(start + PERIOD_S),
        ),
        cwd=ROOT,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"trade add {trade_id}: {out.decode()} {err.decode()}"


async def start_daemon(config: Path, state_dir: Path, log_path: Path) -> asyncio.subprocess.Process:
    return await spawn_daemon(config, state_dir, ENV, log_path)


async def stop_process(proc: asyncio.subprocess.Process | None) -> None:
    if proc is not None and proc.returncode is None:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


def spy_on_pcs_writes(plant: Plant) -> list[tuple[float, dict[str, Any]]]:
    """Every write that reaches the PCS simulator, with the time it arrived (the simulator's own write hook)."""
    writes: list[tuple[float, dict[str, Any]]] = []
    inner = plant.pcs_server.on_write

    def hook(changes):
        writes.append((time.monotonic(), dict(changes)))
        return inner(changes)

    plant.pcs_server.on_write = hook
    return writes


async def test_kill_9_reverts_the_pcs_and_a_restart_resumes_the_schedule(make_plant, tmp_path):
    plant = await make_plant()
    site_config(
        tmp_path,
        device_ports(plant),
        mqtt={"enabled": False},
        web={"enabled": False},
        scada={"modbus": {"enabled": False}, "opcua": {"enabled": False}},
        devices={"pcs": {"reversion_timeout_s": REVERSION_S}},
        limits={"ramp_mw_per_s": 1000},
    )
    config_path = tmp_path / "site.yaml"
    state = tmp_path / "state"
    log_path = tmp_path / "daemon.log"
    writes = spy_on_pcs_writes(plant)

    # the same net position over three periods, so a boundary during the test changes nothing
    p0 = period_start(time.time())
    starts = [p0 + i * PERIOD_S for i in range(3)]
    for i, s in enumerate(starts):
        await trade_add(state, f"S-{i}", "sell", 3.0, s)

    daemon = None
    try:
        daemon = await start_daemon(config_path, state, log_path)
        await wait_for(lambda: wset_mw(plant) == pytest.approx(3.0), 30, "the daemon's 3 MW at the PCS")
        assert plant.pcs_server.get("704.WSetRvrtTms") == REVERSION_S, "reversion timeout not armed"

        # a trade added while it runs is picked up from the store (within 2 s) and followed
        for i, s in enumerate(starts):
            await trade_add(state, f"B-{i}", "buy", 1.0, s)
        await wait_for(lambda: wset_mw(plant) == pytest.approx(2.0), 10, "2 MW after the buy trades")
        await wait_for(lambda: plant.model.power_mw == pytest.approx(2.0, abs=0.01), 3, "the plant delivering 2 MW")

        # kill -9: nobody writes 0 MW; the PCS's own reversion timer (armed at REVERSION_S, above) must
        daemon.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(daemon.wait(), 10) == -signal.SIGKILL
        daemon = None
        killed = len(writes)
        reversions = plant.pcs.reversions
        # bounded: the 3 s timer, a plant tick and the ramp take ~3.3 s; how late is the simulator's business
        await wait_for(lambda: abs(plant.model.power_mw) < 1e-6, REVERSION_S + 12, "the plant at 0 MW after kill -9")
        assert plant.pcs.reversions == reversions + 1 and wset_mw(plant) == 0.0, "0 MW, but not by the reversion"
        assert writes[killed:] == [], f"something wrote to the PCS after kill -9: {writes[killed:]}"

        with Store.in_state_dir(state) as store:
            stored = {t["trade_id"] for t in store.trades()}
        assert {"S-0", "S-1", "S-2", "B-0", "B-1", "B-2"} <= stored, stored

        # restart with the BMS not answering: the daemon is up (it writes to the PCS) but may write only 0 MW
        plant.faults["bms_modbus"].silent = True
        plant.pcs_server.set("704.WSetRvrtTms", 10)  # so the new process's arming is visible
        restarted_at = time.monotonic()
        daemon = await start_daemon(config_path, state, log_path)
        await wait_for(lambda: plant.pcs_server.get("704.WSetRvrtTms") == REVERSION_S, 30, "the new daemon arming")
        await wait_for(
            lambda: any(t > restarted_at and "704.WSet" in w for t, w in writes),
            10,
            "the new daemon's first setpoint write",
        )
        # several cycles without fresh BMS readings: each writes (and so refreshes) the setpoint
        await wait_for(
            lambda: sum("704.WSet" in w for t, w in writes if t > restarted_at) >= 4,
            15,
            "four setpoint writes by the new daemon",
        )
        early = [w["704.WSet"] for t, w in writes if t > restarted_at and "704.WSet" in w]
        assert early and all(v == 0 for v in early), f"non-zero setpoint without fresh BMS readings: {early}"
        assert wset_mw(plant) == 0.0 and abs(plant.model.power_mw) < 1e-6

        answered_at = time.monotonic()
        plant.faults["bms_modbus"].clear()
        await wait_for(lambda: wset_mw(plant) == pytest.approx(2.0), 15, "the schedule resumed at 2 MW")
        first_nonzero = next(t for t, w in writes if t > restarted_at and w.get("704.WSet"))
        assert first_nonzero > answered_at
        await wait_for(lambda: plant.model.power_mw == pytest.approx(2.0, abs=0.01), 3, "the plant at 2 MW again")

        # an orderly stop leaves the plant at 0 MW too
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
        daemon = None
        await wait_for(lambda: wset_mw(plant) == 0.0, 2, "0 MW after SIGTERM")
    except BaseException:
        print(log_path.read_text(errors="replace")[-4000:] if log_path.exists() else "no daemon log")
        raise
    finally:
        await stop_process(daemon)
