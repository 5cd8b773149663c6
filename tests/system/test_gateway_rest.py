"""A silent device behind a shared Modbus gateway rests (controller/cycle/devices.py DeviceLink.rest_periods): the
gateway answers one request at a time, and each unanswered request holds it for the device's timeout, time the
other devices behind it need. So a stale device there is asked every 2, 4, then 8 poll intervals, and its first
answer ends the rest. The two-unit demo with both BMS behind one port and both PCS behind another (the gateway
simulator, in-process), a real Controller with real drivers; what the simulator counts is the evidence."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.cycle.devices import GATEWAY_REST_MAX_PERIODS, DeviceSet
from controller.cycle.phases import Phase
from simulators.site import SitePlant
from tests.fixtures.controller import ROOT, running_controller, site_config, wait_for
from tests.fixtures.site_sim import two_unit_config

pytestmark = pytest.mark.timeout(120)

CYCLES = 30


def gateway_site(tmp_path: Path):
    """demo.yaml's two units behind two gateway ports (BMS on one, PCS on the other), cycle 0.2 s, on free ports."""
    (tmp_path / "gw").mkdir()
    base = two_unit_config(tmp_path / "gw", gateway=True)
    ports = {n: d["port"] for n, d in yaml.safe_load(base.read_text())["devices"].items()}
    # bms2 gives up on a request within a cycle (0.2 s), but after the cycle's read deadline (0.4 x 0.2 s): every
    # request to it while it is silent costs unit 1's BMS, behind the same gateway port, one read
    return site_config(tmp_path, ports, base, devices={"bms2": {"timeout_s": 0.1}})


def test_only_devices_sharing_a_host_port_are_behind_a_gateway(tmp_path):
    from controller.clock import Clock
    from controller.config import load_config

    behind = {n: link.behind_gateway for n, link in DeviceSet(gateway_site(tmp_path), Clock()).links.items()}
    assert behind == {"bms1": True, "pcs1": True, "bms2": True, "pcs2": True, "poi": False}
    alone = DeviceSet(load_config(ROOT / "config" / "demo.yaml"), Clock())  # every device on its own port
    assert not any(link.behind_gateway for link in alone.links.values())


async def test_a_resting_device_is_not_read_now_before_its_turn(tmp_path):
    """read_now (the FCR fast path's meter read) leaves a silent device resting behind a gateway alone until its
    rhythm's next turn: no request, False at once; once it is due, it is asked (here: nobody listens, so the read
    fails and counts)."""
    from controller.clock import Clock

    devices = DeviceSet(gateway_site(tmp_path), Clock())
    link = devices.links["bms2"]
    try:
        link.failures = 3  # stale and resting: asked every 4 poll intervals
        link.last_poll_ts = now = 1_000.0
        poll_s = link.config.poll_interval_s
        assert link.rest_periods() == 4
        assert await link.read_now(now + 2 * poll_s) is False  # half its rest
        assert link.driver.stats.requests == 0 and link.driver.stats.connect_attempts == 0 and link.failures == 3
        assert await link.read_now(now + 4 * poll_s) is False  # its turn: asked, no answer
        assert link.failures == 4 and link.last_poll_ts == now + 4 * poll_s
    finally:
        await devices.close()


async def test_a_silent_bms_behind_a_gateway_is_asked_less_often_and_the_other_unit_goes_on(tmp_path):
    cfg = gateway_site(tmp_path)
    site = SitePlant(cfg)
    async with site, running_controller(cfg, tmp_path / "state") as c:
        c.set_mode("manual", 2.0)
        u1_down: list[bool] = []
        c.faces.attach(Phase.AFTER_WRITE, lambda s: u1_down.append(not s.units[0].available))
        bms2 = site.units["u2"].bms
        site.faults["u2.bms_modbus"].silent = True
        await wait_for(lambda: c.devices.links["bms2"].failures >= 2, 20, "bms2 stale")
        asked0, cycles0 = bms2.requests, c.stats.cycles
        u1_down.clear()
        await wait_for(lambda: c.stats.cycles >= cycles0 + CYCLES, 30, f"{CYCLES} more cycles")
        asked = bms2.requests - asked0
        # resting 2, 4, then 8 intervals: a handful of requests where every cycle would have asked once
        assert 1 <= asked <= 2 + CYCLES // GATEWAY_REST_MAX_PERIODS + 2, asked
        assert c.devices.links["bms2"].rest_periods() == GATEWAY_REST_MAX_PERIODS
        assert not any(u1_down), f"unit 1, behind the same gateways, unavailable in cycles: {u1_down}"
        site.faults["u2.bms_modbus"].clear()
        # its next poll, at most GATEWAY_REST_MAX_PERIODS intervals away, ends the rest
        await wait_for(lambda: all(u.available for u in c.faces.latest().units), 20, "unit 2 back")
        assert c.devices.links["bms2"].rest_periods() == 1
