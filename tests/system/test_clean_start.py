"""A clean start (config/demo.yaml's two-unit plant on free loopback ports, the site simulator in-process): the
controller connects and reads every device once before its first cycle (DeviceSet.first_contact), so a start
where every device answers logs no device warning and records no device alarm, while the daemon's faces start
beside its first cycles as in the demo; a device whose port is closed at start still raises its comm alarm,
naming it, and its unit stays at 0 MW while the other unit runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest

from controller.config import SiteConfig
from controller.cycle.loop import Controller
from controller.store import Store
from simulators.site import SitePlant
from tests.conftest import free_port
from tests.fixtures.controller import site_config, wait_for
from tests.fixtures.daemon import spawn_daemon
from tests.fixtures.site_sim import TWO_UNIT

pytestmark = pytest.mark.timeout(120)

DEVICES = ("bms1", "pcs1", "bms2", "pcs2", "poi")
FAST_RAMP = {"ramp_mw_per_s": 1000}  # one cycle from 0 to any target
ENV = {**os.environ, "API_KEY": "demo", "HMAC_SECRET": "phoenyra_demo_secret", "PYTHONUNBUFFERED": "1"}
DEMO_PERIOD = {"cycle": {"period_s": 1.0}, "devices": {n: {"poll_interval_s": 1.0} for n in DEVICES}}  # the demo's
# a device's trouble in the daemon's text log: a warning or error of the device links, the drivers or the dispatch
DEVICE_WARNING = re.compile(r"^\S+ (WARNING|ERROR) +bess\.(devices|dispatch|drivers\.\w+): .*$", re.M)


def plant_and_controller(tmp_path: Path, closed: str | None = None, **overrides) -> tuple[SiteConfig, SiteConfig]:
    """The simulator's config and the controller's: the same plant, except that the controller looks for device
    `closed` on a free port where nothing listens."""
    ports = {n: free_port() for n in DEVICES}
    sim = {"control_port": free_port(), "units": {"u1": {"bms_modbus_port": free_port()}}}
    configs = []
    for part, their_ports in (("plant", ports), ("controller", {**ports, **({closed: free_port()} if closed else {})})):
        (tmp_path / part).mkdir()
        configs.append(
            site_config(tmp_path / part, their_ports, TWO_UNIT, simulator=sim, limits=FAST_RAMP, **overrides)
        )
    return configs[0], configs[1]


def wset_mw(site: SitePlant, unit: str) -> float:
    """The active power setpoint a unit's PCS simulator holds (704.WSet, W), in MW."""
    return (site.units[unit].pcs_server.get("704.WSet") or 0) * 1e-6


def shares(c: Controller) -> dict[str, float]:
    return {s.unit: s.setpoint_mw for s in c.allocation.units} if c.allocation else {}


def pcs_setpoint_writes(site: SitePlant) -> dict[str, int]:
    """Setpoint writes that reached each unit's PCS simulator (every cycle writes one to each unit's PCS)."""
    counts = {u: 0 for u in site.units}
    for unit, u in site.units.items():
        inner = u.pcs_server.on_write

        def hook(changes, unit=unit, inner=inner):
            counts[unit] += "704.WSet" in changes
            return inner(changes) if inner is not None else None

        u.pcs_server.on_write = hook
    return counts


async def test_a_start_with_every_device_answering_logs_no_device_warning_and_records_no_alarm(tmp_path):
    """`bess-edge run` as the demo starts it (its faces, SCADA and web, start beside the first cycles) on the
    two-unit plant at the demo's 1 s period: its first cycles write to both PCSs, and neither the log nor the
    alarm history shows a device in trouble (before the start-up read, the first cycle's 0.4 s read deadline
    met the connects: comm alarms for bms1, pcs1, pcs2 and poi, and a POI fallback, cleared a second later)."""
    plant_cfg, cfg = plant_and_controller(tmp_path, mqtt={"enabled": False}, **DEMO_PERIOD)
    log_path, state = tmp_path / "daemon.log", tmp_path / "state"
    async with SitePlant(plant_cfg, control_port=plant_cfg.simulator.control_port) as site:
        writes = pcs_setpoint_writes(site)
        daemon = await spawn_daemon(tmp_path / "controller" / "site.yaml", state, ENV, log_path)
        try:
            await wait_for(lambda: min(writes.values()) >= 5, 60, "five cycles' setpoint writes to both PCSs")
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(daemon.wait(), 20)
    log = log_path.read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert "controller running" in log, log[-3000:]
    assert DEVICE_WARNING.findall(log) == [], "\n".join(m.group(0) for m in DEVICE_WARNING.finditer(log))
    with Store.in_state_dir(state) as store:
        history = store.alarm_history(1000)
    assert [a for a in history if a["device"] in DEVICES] == [], history
    assert not re.search(r"alarm raised alarm=(bms1|pcs1|bms2|pcs2|poi):", log), log[-3000:]


@pytest.mark.parametrize("closed, unit, other", [("bms1", "u1", "u2"), ("pcs2", "u2", "u1")])
async def test_a_device_closed_at_start_raises_its_comm_alarm_and_holds_its_unit_at_0_mw(tmp_path, closed, unit, other):
    """Nothing listens on the port of `closed` (the OPC UA BMS of unit 1; the SunSpec PCS of unit 2): its comm alarm
    names it from the first cycle on, its unit gets 0 MW of a 4 MW target while the other unit takes it, and no
    other device is alarmed. At the demo's 1 s period: at the tests' 0.2 s, a loaded CI machine once stalled this
    process (simulator and controller share its loop) past two cycles' write deadlines, 40 to 160 ms, and both PCSs
    were alarmed for timeouts that were the test's own."""
    plant_cfg, cfg = plant_and_controller(tmp_path, closed, **DEMO_PERIOD)
    async with SitePlant(plant_cfg, control_port=plant_cfg.simulator.control_port) as site:
        store = Store(tmp_path / "state.db")
        c = Controller(cfg, store)
        try:
            await c.start()
            await wait_for(lambda: c.stats.cycles >= 1, 30, "the first cycle")
            assert f"{closed}:comm" in c.active_alarms, c.active_alarms
            assert closed in c.active_alarms[f"{closed}:comm"]["message"]
            c.set_mode("manual", 4.0)
            await wait_for(lambda: shares(c).get(other) == pytest.approx(4.0), 10, f"4 MW allocated to {other}")
            await wait_for(lambda: wset_mw(site, other) == pytest.approx(4.0, abs=1e-3), 5, f"4 MW at {other}'s PCS")
            assert shares(c)[unit] == 0.0 and wset_mw(site, unit) == 0.0
            alarmed = {a["device"] for a in store.alarm_history(1000) if a["device"] in DEVICES}
            assert alarmed == {closed}, store.alarm_history(1000)
        finally:
            await c.stop()
            store.close()
