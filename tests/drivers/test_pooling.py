"""Devices behind one Modbus TCP gateway share one connection (drivers/modbus.py ModbusPool), each with its own
unit id, against the gateway simulator (two units' BMS and PCS behind two ports): one connection per host:port,
requests serialized on it, and one silent or late unit never poisons the others (no dropped connection, no
answer taken for another's, no error counted against them); a dead gateway is reconnected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.config import load_config
from drivers.errors import DeviceTimeout
from drivers.modbus import ModbusDriver, ModbusPool
from drivers.sunspec import SunSpecDriver
from simulators.site import SitePlant
from tests.fixtures.site_sim import MANUAL, two_unit_config

TIMEOUT_S = 0.3


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[SitePlant, dict, ModbusPool]]:
    """The two-unit plant with both BMS behind one port and both PCS behind another; drivers for all four
    sharing one pool."""
    cfg = load_config(two_unit_config(tmp_path, gateway=True))
    site = SitePlant(cfg, tick_s=MANUAL)
    await site.start()
    pool = ModbusPool()
    drivers = {}
    for name in ("bms1", "bms2", "pcs1", "pcs2"):
        dev = cfg.devices[name]
        cls = SunSpecDriver if dev.protocol == "sunspec" else ModbusDriver
        drivers[name] = cls(
            name,
            cfg.load_profile(dev),
            dev.host,
            dev.port,
            unit_id=dev.unit_id,
            timeout_s=TIMEOUT_S,
            rating_mw=10,
            pool=pool,
        )
    try:
        yield site, drivers, pool
    finally:
        for d in drivers.values():
            await d.close()
        await site.stop()


def modbus(driver) -> ModbusDriver:
    return driver.modbus if isinstance(driver, SunSpecDriver) else driver


def open_connections(site: SitePlant) -> int:
    return sum(len(s._server.active_connections) for s in site._listeners if s._server is not None)


async def test_one_connection_per_gateway_each_device_its_own_unit_id(gateway):
    site, d, pool = gateway
    results = await asyncio.gather(*(x.read() for x in d.values()))  # concurrently: serialized on the wire
    soc = {name: r["soc_pct"].value for name, r in zip(d, results)}
    assert soc["bms1"] == pytest.approx(60, abs=0.1) and soc["bms2"] == pytest.approx(40, abs=0.1)
    assert soc["pcs1"] == pytest.approx(60, abs=0.1) and soc["pcs2"] == pytest.approx(40, abs=0.1)
    assert len(pool.connections) == 2 and all(c.shared for c in pool.connections)
    assert modbus(d["bms1"]).connection is modbus(d["bms2"]).connection
    assert modbus(d["pcs1"]).connection is modbus(d["pcs2"]).connection
    assert sum(modbus(x).stats.connects for x in d.values()) == 2
    assert open_connections(site) == 2


async def test_a_gateway_that_takes_two_connections_gets_two(tmp_path: Path):
    """`connections: 2`: the devices behind the gateway spread over two connections by unit id (modulo 2), so two
    requests run side by side; each device's answers are its own."""
    cfg = load_config(two_unit_config(tmp_path, gateway=True))
    site = SitePlant(cfg, tick_s=MANUAL)
    await site.start()
    pool = ModbusPool()
    drivers = {}
    try:
        for name in ("pcs1", "pcs2"):
            dev = cfg.devices[name]
            drivers[name] = SunSpecDriver(
                name, cfg.load_profile(dev), dev.host, dev.port, unit_id=dev.unit_id, timeout_s=TIMEOUT_S,
                rating_mw=10, pool=pool, connections=2,
            )  # fmt: skip
        assert cfg.devices["pcs1"].unit_id % 2 != cfg.devices["pcs2"].unit_id % 2
        results = await asyncio.gather(*(x.read() for x in drivers.values()))
        assert [r["soc_pct"].value for r in results] == [pytest.approx(60, abs=0.1), pytest.approx(40, abs=0.1)]
        assert len(pool.connections) == 2 and not any(c.shared for c in pool.connections)
        assert modbus(drivers["pcs1"]).connection is not modbus(drivers["pcs2"]).connection
        assert open_connections(site) == 2
        backs = await asyncio.gather(*(x.write("setpoint_mw", mw) for x, mw in zip(drivers.values(), (1.0, -2.0))))
        assert backs == [pytest.approx(1.0), pytest.approx(-2.0)]
    finally:
        for d in drivers.values():
            await d.close()
        await site.stop()
    assert pool.connections == []


async def test_a_silent_unit_id_does_not_poison_the_others(gateway):
    site, d, pool = gateway
    await asyncio.gather(*(x.read() for x in d.values()))
    shared = modbus(d["bms1"]).connection
    client = shared.client
    site.faults["u2.bms_modbus"].silent = True
    for _ in range(5):  # rounds as a cycle would run them: every device read concurrently
        r1, r2, p1 = await asyncio.gather(d["bms1"].read(), d["bms2"].read(), d["pcs1"].read(), return_exceptions=True)
        assert isinstance(r2, DeviceTimeout)
        assert r1["soc_pct"].value == pytest.approx(60, abs=0.1)
        assert p1["soc_pct"].value == pytest.approx(60, abs=0.1)
    assert modbus(d["bms1"]).stats.errors == 0 and modbus(d["bms2"]).stats.errors == 5
    assert shared.client is client and shared.connected  # the shared connection was kept
    assert sum(modbus(x).stats.connects for x in d.values()) == 2
    site.faults["u2.bms_modbus"].clear()
    assert (await d["bms2"].read())["soc_pct"].value == pytest.approx(40, abs=0.1)


async def test_a_late_answer_is_never_taken_for_another_units(gateway):
    site, d, pool = gateway
    site.units["u2"].model.set_state(soc_pct=20)
    site.step(0.01)
    site.faults["u2.pcs"].delay_s = TIMEOUT_S + 0.2  # answers, but after its requester gave up
    with pytest.raises(DeviceTimeout):
        await d["pcs2"].read()
    for _ in range(10):  # while unit 2's late answers arrive
        r = await d["pcs1"].read()
        assert r["soc_pct"].value == pytest.approx(60, abs=0.1) and r["serial"].value == "SIM-PCS-u1"
        await asyncio.sleep(0.05)
    assert modbus(d["pcs1"]).stats.errors == 0


async def test_a_dead_gateway_is_reconnected(gateway):
    site, d, pool = gateway
    await asyncio.gather(d["bms1"].read(), d["bms2"].read())
    shared = modbus(d["bms1"]).connection
    first = shared.client
    site.faults["u1.bms_modbus"].silent = site.faults["u2.bms_modbus"].silent = True
    for _ in range(2):  # two rounds with no answer at all: the connection is started afresh
        await asyncio.gather(d["bms1"].read(), d["bms2"].read(), return_exceptions=True)
    assert shared.client is None or shared.client is not first
    site.faults["u1.bms_modbus"].clear()
    site.faults["u2.bms_modbus"].clear()
    r1, r2 = await asyncio.gather(d["bms1"].read(), d["bms2"].read())
    assert r1["soc_pct"].value == pytest.approx(60, abs=0.1) and r2["soc_pct"].value == pytest.approx(40, abs=0.1)
    assert shared.client is not first and shared.connected


async def test_a_lone_device_keeps_its_own_connection_and_behaviour(gateway):
    site, d, _ = gateway
    dev_port = modbus(d["bms1"]).port
    alone = ModbusDriver("alone", modbus(d["bms1"]).profile, "127.0.0.1", dev_port, unit_id=1, timeout_s=TIMEOUT_S)
    try:
        await alone.read()
        assert not alone.connection.shared and alone.connection is not modbus(d["bms1"]).connection
        site.faults["u1.bms_modbus"].silent = True
        with pytest.raises(DeviceTimeout):
            await alone.read()
        assert not alone.connected  # as before pooling: a lone device's timeout starts the connection afresh
    finally:
        await alone.close()


async def test_closing_the_last_device_closes_the_shared_connection(gateway):
    _, d, pool = gateway
    await asyncio.gather(d["bms1"].read(), d["bms2"].read())
    shared = modbus(d["bms1"]).connection
    await d["bms1"].close()
    assert shared.connected and len(pool.connections) == 2
    await d["bms2"].close()
    assert not shared.connected and len(pool.connections) == 1
    assert (await d["bms2"].read())["soc_pct"].value == pytest.approx(40, abs=0.1)  # rejoins on use
