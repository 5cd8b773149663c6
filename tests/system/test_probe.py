"""`bess-edge probe` as a real process against real devices: the PCS simulator (SunSpec), the POI meter simulator
(SunSpec 203) and the OPC UA BMS simulator probed, their drafted profiles put in a site file that passes
`check-config` and drives `bess-edge run` to good cycles (setpoints reach the PCS and the meter is polled through the
drafted maps); a device with gaps and exception ranges scanned register by register; gateways (a test fixture's,
the simulators' serve_also, the N-unit site simulator's) with a silent unit id scanned to the end, the silent one
named."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from controller.clock import Clock
from controller.config import load_config
from drivers.modbus import ModbusDriver
from drivers.profile import load_profile
from drivers.sunspec import SunSpecDriver
from simulators.battery import BatteryModel, BatteryParams
from simulators.meter import GridFrequency, GridParams, Meter, MeterParams
from simulators.modbus_server import ModbusSimServer
from simulators.pcs import Pcs, PcsParams
from simulators.site import SitePlant
from tests.conftest import free_port
from tests.fixtures.controller import wait_for
from tests.fixtures.daemon import cli_argv, spawn_daemon
from tests.fixtures.modbus_devices import GappyDevice, ModbusGateway
from tests.fixtures.plant import make_plant  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
ENV = {
    **os.environ,
    "API_KEY": "demo",
    "HMAC_SECRET": "phoenyra_demo_secret",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": str(ROOT),
}


async def bess_edge(*args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    """A bess-edge command as a process; the test's event loop (and the simulators in it) keeps running."""
    proc = await asyncio.create_subprocess_exec(
        *cli_argv(*args), cwd=ROOT, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


def write_site(tmp_path: Path, devices: dict, web_port: int) -> Path:
    """demo-single.yaml with the drafted profiles' devices, MQTT and SCADA off, the web face on a free port."""
    raw = yaml.safe_load((CONFIG / "demo-single.yaml").read_text())
    raw["devices"] = devices
    raw["mqtt"] = {"enabled": False}
    raw["scada"] = {"modbus": {"enabled": False}, "opcua": {"enabled": False}}
    raw["web"] = {"host": "127.0.0.1", "port": web_port}
    raw["cycle"] = {"period_s": 0.5}
    raw["limits"]["ramp_mw_per_s"] = 1000
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@asynccontextmanager
async def running_daemon(site: Path, tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`bess-edge run` on the site file, its log printed when the test fails; always stopped."""
    log_path = tmp_path / "daemon.log"
    daemon = await spawn_daemon(site, tmp_path / "state", ENV, log_path)
    try:
        yield daemon
    except BaseException:
        print(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        if daemon.returncode is None:
            daemon.terminate()
            try:
                await asyncio.wait_for(daemon.wait(), 20)
            except TimeoutError:
                daemon.kill()
                await daemon.wait()


async def wait_online(web: httpx.AsyncClient, daemon: asyncio.subprocess.Process) -> dict:
    """The daemon's status once a cycle had every device fresh (status online); bounded to 120 polls."""
    status: dict = {}
    for _ in range(120):
        try:
            status = (await web.get("/api/bess-status")).json()
        except httpx.HTTPError:
            status = {}
        if status.get("status") == "online" or daemon.returncode is not None:
            break
        await asyncio.sleep(0.25)
    assert status.get("status") == "online", status
    return status


@asynccontextmanager
async def poi_meter(plant) -> AsyncIterator[ModbusSimServer]:
    """The SunSpec POI meter simulator (models 1 + 203) measuring the plant's PCS power, on a free port."""
    server = ModbusSimServer.from_profile(load_profile(CONFIG / "profiles" / "sunspec-meter.yaml"), name="meter")
    meter = Meter(server, [lambda: plant.model.power_mw], MeterParams(), GridFrequency(GridParams()))
    meter.step(0.0)

    async def follow() -> None:
        while True:
            await asyncio.sleep(0.1)
            meter.step(0.1)

    await server.start()
    task = asyncio.create_task(follow())
    try:
        yield server
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


async def test_drafted_pcs_meter_and_opcua_bms_profiles_check_and_run_the_plant(make_plant, tmp_path):
    plant = await make_plant(opcua=True)
    async with poi_meter(plant) as meter:
        await _round_trip(plant, meter, tmp_path)


async def _round_trip(plant, meter: ModbusSimServer, tmp_path: Path) -> None:
    ports, meter_port = plant.ports, meter.port
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    rc, out, err = await bess_edge(
        "probe", "--host", "127.0.0.1", "--port", str(meter_port), "--out", str(profiles / "meter.yaml")
    )
    assert rc == 0 and "role meter" in out and "all known" in out, out + err
    rc, out, err = await bess_edge(
        "probe",
        "--host",
        "127.0.0.1",
        "--port",
        str(ports["pcs"]),
        "--unit-id",
        "auto",
        "--out",
        str(profiles / "pcs.yaml"),
    )
    assert rc == 0, out + err
    assert "model 704 DERCtlAC" in out and "not implemented" in out and "role pcs" in out, out
    assert "draft read back through the driver: " in out and "all known" in out, out
    assert "unit id 0" not in out, "auto stops at the first unit id that answers"
    rc, out, err = await bess_edge(
        "probe", "--opcua", f"opc.tcp://127.0.0.1:{ports['bms_opcua']}", "--out", str(profiles / "bms.yaml")
    )
    assert rc == 0, out + err
    assert "ns=2;s=BMS.SoC" in out and "all known" in out, out
    pcs = (profiles / "pcs.yaml").read_text()
    assert "The device has every point the controller needs" in pcs, pcs
    assert "setpoint_mw: {sunspec: 704.WSet" in pcs and "# needed" in pcs, pcs

    web_port = free_port()
    site = write_site(
        tmp_path,
        {
            "bms": {
                "role": "bms",
                "protocol": "opcua",
                "host": "127.0.0.1",
                "port": ports["bms_opcua"],
                "profile": "profiles/bms.yaml",
                "timeout_s": 1.0,
            },
            "pcs": {
                "role": "pcs",
                "protocol": "sunspec",
                "host": "127.0.0.1",
                "port": ports["pcs"],
                "unit_id": 1,
                "profile": "profiles/pcs.yaml",
                "reversion_timeout_s": 7,
            },
            "poi": {
                "role": "meter",
                "protocol": "sunspec",
                "host": "127.0.0.1",
                "port": meter_port,
                "profile": "profiles/meter.yaml",
            },
        },
        web_port,
    )
    rc, out, err = await bess_edge("check-config", str(site))
    assert rc == 0 and f"{site}: OK" in out, out + err
    # with the site file, the probe connects as the site's OPC UA device does
    rc, out, err = await bess_edge(
        "probe", "--opcua", f"opc.tcp://127.0.0.1:{ports['bms_opcua']}", "--config", str(site), "--json"
    )
    assert rc == 0, out + err
    doc = json.loads(out)
    assert "for device bms" in doc["security"] and doc["draft"]["lacking"] == {}, doc["security"]

    meter_requests = meter.requests
    async with (
        running_daemon(site, tmp_path) as daemon,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{web_port}", headers={"X-API-Key": "demo"}) as web,
    ):
        status = await wait_online(web, daemon)
        assert status["soc_pct"] == pytest.approx(plant.model.soc_pct, abs=1.0)
        assert plant.pcs_server.get("704.WSetRvrtTms") == 7, "reversion armed through the drafted profile"
        assert plant.opcua.heartbeat is not None, "heartbeat written through the drafted OPC UA profile"
        assert meter.requests > meter_requests, "the daemon polls the POI meter through its drafted profile"
        r = await web.post("/api/mode", json={"mode": "manual", "setpoint_mw": 2.0})
        assert r.status_code == 200, r.text
        await wait_for(
            lambda: (plant.pcs_server.get("704.WSet") or 0) == 2_000_000,
            15,
            "the manual 2 MW written to 704.WSet through the drafted profile",
        )


async def test_register_scan_skips_exception_ranges_and_drafts_a_skeleton(tmp_path):
    gaps = {"holding": set(range(10, 20)) | set(range(40, 300)) | {33}, "input": {5}}
    async with GappyDevice(size=300, gaps=gaps) as dev:
        out_file = tmp_path / "skeleton.yaml"
        rc, out, err = await bess_edge(
            "probe",
            "--host",
            "127.0.0.1",
            "--port",
            str(dev.port),
            "--registers",
            "holding:0-299,input:0-9",
            "--out",
            str(out_file),
            "--json",
        )
        assert rc == 0, out + err
        doc = json.loads(out)
        unit = doc["units"][0]
        got = {(r["function"], r["address"]): r["value"] for r in unit["registers"]}
        want_holding = [a for a in range(300) if a not in gaps["holding"]]
        assert sorted(a for f, a in got if f == "holding") == want_holding
        assert sorted(a for f, a in got if f == "input") == [a for a in range(10) if a != 5]
        assert all(v == GappyDevice.value(a) for (_, a), v in got.items())
        assert {(s["function"], s["first"], s["last"]) for s in unit["skipped"]} == {
            ("holding", 10, 19),
            ("holding", 33, 33),
            ("holding", 40, 299),
            ("input", 5, 5),
        }
        assert all("exception 2" in s["why"] for s in unit["skipped"])
        text = out_file.read_text()
        assert "# skipped holding 40-299: exception 2 (illegal data address)" in text, text
        assert "# CHECK: the driver reads across gaps" in text and "holding 33-33, input 5-5" in text, text
        # the skeleton is a valid profile that the Modbus driver reads as the scan saw it (reads not spanning the
        # refused addresses: what the CHECK line tells the engineer to arrange)
        driver = ModbusDriver("skeleton", load_profile(out_file), "127.0.0.1", dev.port, max_gap=0)
        try:
            readings = await driver.read()
        finally:
            await driver.close()
        assert readings["holding_00021"].value == GappyDevice.value(21)
        assert readings["input_00009"].value == GappyDevice.value(9)


async def test_a_gateway_with_a_silent_unit_id_is_scanned_to_the_end(make_plant, tmp_path):
    a, b = await make_plant(), await make_plant()
    routes = {1: (a.ports["pcs"], 1), 2: (b.ports["pcs"], 1)}
    async with ModbusGateway(routes, silent={3}) as gw:
        rc, out, err = await bess_edge(
            "probe",
            "--host",
            "127.0.0.1",
            "--port",
            str(gw.port),
            "--unit-id",
            "1,3",
            "--unit-id",
            "2",
            "--timeout-s",
            "0.3",
            "--retries",
            "1",
            "--out",
            str(tmp_path / "pcs.yaml"),
            "--json",
        )
        assert rc == 0, out + err
        units = {u["unit_id"]: u for u in json.loads(out)["units"]}
        assert [units[u]["status"] for u in (1, 3, 2)] == ["found", "no_answer", "found"]
        assert f"127.0.0.1:{gw.port} unit id 3: no answer to read holding 40000+2 (2 tries, 0.3 s each" in err, err
        assert gw.unanswered == [3, 3], "one try and one retry, then the scan moved on"
        for u in (1, 2):
            assert units[u]["draft"]["lacking"] == {} and units[u]["read_back"]["unknown"] == {}
            assert load_profile(tmp_path / f"pcs-unit{u}.yaml").sunspec.models == [1, 701, 704, 713, 802]
        assert not (tmp_path / "pcs-unit3.yaml").exists()


async def test_a_pcs_a_meter_and_a_silent_unit_behind_one_port(tmp_path):
    """The simulators' own gateway: PCS at unit id 1, the POI meter (SunSpec 203) at 2, a silent meter at 3."""
    pcs = ModbusSimServer.from_profile(load_profile(CONFIG / "profiles" / "sunspec-pcs.yaml"), unit_id=1, name="pcs")
    Pcs(BatteryModel(BatteryParams()), pcs, PcsParams(), Clock())
    shipped_meter = load_profile(CONFIG / "profiles" / "sunspec-meter.yaml")
    meter_srv = ModbusSimServer.from_profile(shipped_meter, unit_id=2, name="meter")
    meter = Meter(
        meter_srv, [lambda: 4.0], MeterParams(aux_load_mw=0.0, loss_fraction=0.0), GridFrequency(GridParams())
    )
    meter.grid.set_wander(False)
    meter.step(0.0)
    silent = ModbusSimServer.from_profile(shipped_meter, unit_id=3, name="silent meter")
    silent.faults.silent = True
    pcs.serve_also(meter_srv)
    pcs.serve_also(silent)
    await pcs.start()
    try:
        rc, out, err = await bess_edge(
            "probe",
            "--host",
            "127.0.0.1",
            "--port",
            str(pcs.port),
            "--unit-id",
            "1,2,3",
            "--timeout-s",
            "0.3",
            "--out",
            str(tmp_path / "dev.yaml"),
            "--json",
        )
        assert rc == 0, out + err
        units = {u["unit_id"]: u for u in json.loads(out)["units"]}
        assert [units[u]["status"] for u in (1, 2, 3)] == ["found", "found", "no_answer"], err
        assert f"127.0.0.1:{pcs.port} unit id 3: no answer to read holding 40000+2" in err, err
        assert [units[u]["draft"]["role"] for u in (1, 2)] == ["pcs", "meter"]
        assert units[2]["draft"]["lacking"] == {} and units[2]["read_back"]["unknown"] == {}
        drafted = load_profile(tmp_path / "dev-unit2.yaml")
        assert drafted.points.keys() == shipped_meter.points.keys()
        assert drafted.points["power_mw"].sign == -1 and "CHECK: power_mw" in units[2]["draft"]["yaml"]
        # the drafted meter profile reads what the shipped one reads: + export, in MW
        readings = {}
        for name, prof in (("drafted", drafted), ("shipped", shipped_meter)):
            driver = SunSpecDriver(name, prof, "127.0.0.1", pcs.port, unit_id=2, timeout_s=1.0, rating_mw=10)
            try:
                readings[name] = {k: r.value for k, r in (await driver.read()).items()}
            finally:
                await driver.close()
        assert readings["drafted"]["power_mw"] == pytest.approx(4.0, abs=0.01)
        for k in ("power_mw", "frequency_hz", "voltage_ll_v", "energy_imported_mwh"):
            assert readings["drafted"][k] == readings["shipped"][k], k
    finally:
        await pcs.stop()


async def test_the_site_simulators_gateway_two_pcs_the_meter_one_silent_one_absent(tmp_path):
    """simulators/site.py from demo.yaml (two units) with both PCS and the POI meter behind one gateway port (unit
    ids 1, 2, 3): unit 2's PCS silenced through its faults, unit id 4 served by nobody (the gateway answers 0B)."""
    raw = yaml.safe_load((CONFIG / "demo.yaml").read_text())
    devices, gateway = raw["devices"], free_port()
    for dev in devices.values():
        dev["profile"] = str(CONFIG / dev["profile"])
        dev["port"] = free_port()
    for name, unit_id in (("pcs1", 1), ("pcs2", 2), ("poi", 3)):
        devices[name].update(port=gateway, unit_id=unit_id)
    raw["simulator"]["units"]["u1"]["bms_modbus_port"] = free_port()
    raw["simulator"]["control_port"] = None
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    site = SitePlant(load_config(tmp_path / "site.yaml"))
    site.faults["u2.pcs"].silent = True
    await site.start()
    try:
        rc, out, err = await bess_edge(
            "probe",
            "--host",
            "127.0.0.1",
            "--port",
            str(gateway),
            "--unit-id",
            "1,2,3,4",
            "--timeout-s",
            "0.3",
            "--json",
            "--out",
            str(tmp_path / "dev.yaml"),
        )
    finally:
        await site.stop()
    assert rc == 0, out + err
    units = {u["unit_id"]: u for u in json.loads(out)["units"]}
    assert [units[u]["status"] for u in (1, 2, 3, 4)] == ["found", "no_answer", "found", "no_answer"], err
    assert f"127.0.0.1:{gateway} unit id 2: no answer to read holding 40000+2 (2 tries, 0.3 s each" in err, err
    assert f"127.0.0.1:{gateway} unit id 4: no answer to read holding 40000+2 (the gateway says exception 11" in err
    assert units[1]["draft"]["role"] == "pcs" and units[3]["draft"]["role"] == "meter"
    assert units[1]["read_back"]["unknown"] == {} and units[3]["read_back"]["unknown"] == {}
    assert sorted(p.name for p in tmp_path.glob("dev-unit*.yaml")) == ["dev-unit1.yaml", "dev-unit3.yaml"]


async def test_exit_codes_and_errors_name_where(tmp_path):
    port = free_port()
    rc, out, err = await bess_edge("probe", "--host", "127.0.0.1", "--port", str(port), "--timeout-s", "0.3")
    assert rc == 1, out + err
    assert f"127.0.0.1:{port} unit id 1: no answer to read holding 40000+2" in err, err
    for bad in (
        ["--host", "h", "--unit-id", "300"],
        ["--host", "h", "--registers", "holding:9-1"],
        ["--port", "502"],
        ["--opcua", "http://x:1"],
        ["--host", "h", "--timeout-s", "0"],
        ["--host", "h", "--config", "site.yaml"],
    ):
        rc, out, err = await bess_edge("probe", *bad)
        assert rc == 2 and "bess-edge probe: " in err and "Traceback" not in err, (bad, err)
    existing = tmp_path / "x.yaml"
    existing.write_text("keep")
    rc, _, err = await bess_edge("probe", "--host", "h", "--out", str(existing))
    assert rc == 2 and "exists" in err and existing.read_text() == "keep"
