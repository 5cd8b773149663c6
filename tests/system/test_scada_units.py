"""The SCADA faces' unit blocks and POI meter (issue 13) against real clients (pymodbus, asyncua):
- on a real Controller polling the real one-unit plant simulators, the one unit's block and folder carry the
  plant's figures and the POI reads "not available" (no meter);
- for the two-unit demo site file, both units' blocks/folders and the POI, projected from a PlantState put on the
  faces' stream (the same `Faces.latest()` the cycle feeds), at the documented addresses and node ids.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient

from controller.config import load_config
from controller.cycle.phases import Faces
from controller.cycle.state import PlantState, PoiState, UnitState
from controller.scada.controls import ScadaPlant
from controller.scada.face import ScadaFace
from controller.scada.opcua import NAMESPACE
from controller.scada.points import BINDING_CODES, LAYOUT, NA, POI, STATUS, UNIT_BASE, UNIT_STRIDE, unit_points
from tests.conftest import eventually, free_port
from tests.fixtures.controller import make_controller, running_scada, wait_for
from tests.fixtures.plant import make_plant, plant  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
GOOD = ua.StatusCodes.Good
BOTH_FACES = {"scada": {"modbus": {"enabled": True}, "opcua": {"enabled": True, "allow_none_security": True}}}


def decode(points, regs: list[int], start: int) -> dict[str, float | None]:
    out = {}
    for p in points:
        words = regs[p.address - start : p.address - start + p.words]
        raw = words[0] if p.words == 1 else words[0] << 16 | words[1]
        out[p.name] = None if raw == NA[p.type] else p.from_registers(words)
    return out


async def read_map(port: int, units: int) -> dict[str, dict[str, float | None]]:
    """The status, layout and POI tables and every unit block, read as a SCADA master would (<= 125 per read)."""
    cl = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        assert await cl.connect(), "SCADA Modbus face does not accept a connection"
        head = await cl.read_input_registers(0, count=40, device_id=1)
        assert not head.isError(), head
        out = {
            "status": decode(STATUS, head.registers, 0),
            "layout": decode(LAYOUT, head.registers, 0),
            "poi": decode(POI, head.registers, 0),
        }
        for k in range(units):
            block = await cl.read_input_registers(UNIT_BASE + k * UNIT_STRIDE, count=UNIT_STRIDE, device_id=1)
            assert not block.isError(), block
            out[f"unit{k}"] = decode(unit_points(k), block.registers, UNIT_BASE + k * UNIT_STRIDE)
        past = await cl.read_input_registers(UNIT_BASE + units * UNIT_STRIDE, count=1, device_id=1)
        assert past.isError(), "the map ends after the last unit's block"
        return out
    finally:
        cl.close()


@asynccontextmanager
async def opcua(port: int):
    cl = Client(f"opc.tcp://127.0.0.1:{port}/bess-edge/scada", timeout=5)
    cl.set_user("viewer")
    cl.set_password("demo")
    async with cl:
        cl.ns = await cl.get_namespace_index(NAMESPACE)
        yield cl


async def value(cl, node_id: str):
    return await cl.get_node(f"ns={cl.ns};s={node_id}").read_value()


async def status_code(cl, node_id: str):
    dv = await cl.get_node(f"ns={cl.ns};s={node_id}").read_data_value(raise_on_bad_status=False)
    return dv.StatusCode.value


# ---------------------------------------------------------------------------------------------- one unit, live
async def test_a_one_unit_plant_has_one_block_with_the_plants_figures(plant, tmp_path):
    # at the demo's 1 s period: this test's own SCADA servers and clients share the controller's loop, and at the
    # tests' 0.2 s period their start-up stalls outlasted a cycle's write deadline (40-160 ms), failing writes and
    # taking the unit out of service while the test read it (once in a full run, 2026-12-05)
    one_s = {"cycle": {"period_s": 1.0}, "devices": {n: {"poll_interval_s": 1.0} for n in ("bms", "pcs")}}
    async with make_controller(plant, tmp_path, **BOTH_FACES, **one_s) as c, running_scada(c):
        # a cycle with the unit in service (the first cycle may find a device not yet answered under load: the unit
        # is then at 0 MW and unavailable, which is not what this test reads)
        await wait_for(
            lambda: (
                c.faces.latest().units
                and c.faces.latest().units[0].setpoint_mw is not None
                and c.faces.latest().units[0].available
            ),
            10,
            "a cycle with the unit in service",
        )
        m = await read_map(c.config.scada.modbus.port, 1)
        assert m["layout"] == {"unit_count": 1, "unit_base": UNIT_BASE, "unit_stride": UNIT_STRIDE}
        unit, st = m["unit0"], m["status"]
        # both tables are read in one request of the same state: the unit's figures are the plant's
        for name in ("soc_pct", "power_mw", "setpoint_mw", "temperature_c"):
            assert unit[name] == st[name], name
        assert unit["available"] == 1 and st["online"] == 1
        assert m["poi"] == {"power_mw": None, "frequency_hz": None}  # no meter: not available
        unit_name = c.config.unit_plan()[0].unit
        async with opcua(c.config.scada.opcua.port) as cl:
            await eventually(  # the folder is refreshed once per cycle
                lambda: status_code(cl, f"Units.{unit_name}.soc_pct"), lambda s: s == GOOD, within_s=10, every_s=0.1
            )
            assert 0 < await value(cl, f"Units.{unit_name}.soc_pct") < 100
            # in service again by the next cycle, should the test's client have stalled one
            await eventually(
                lambda: value(cl, f"Units.{unit_name}.available"), lambda a: a == 1, within_s=3, every_s=0.1
            )
            assert await status_code(cl, "POI.power_mw") == ua.StatusCodes.BadWaitingForInitialData


# ---------------------------------------------------------------------------------------------- two units
def two_unit_site(tmp_path: Path):
    raw = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    for dev in raw["devices"].values():
        dev["profile"] = str((ROOT / "config" / dev["profile"]).resolve())
    raw["scada"] = {
        "modbus": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        "opcua": {"enabled": True, "host": "127.0.0.1", "port": free_port(), "allow_none_security": True},
    }
    raw.setdefault("cycle", {})["period_s"] = 0.1
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


TWO = PlantState(
    ts=1_796_000_000.0,
    soc_pct=52.0,
    power_mw=3.0,
    setpoint_mw=3.0,
    target_mw=6.0,
    online=True,
    binding="unit_unavailable" if "unit_unavailable" in BINDING_CODES else "none",
    units=(
        UnitState(
            "u1",
            soc_pct=64.5,
            power_mw=3.0,
            setpoint_mw=3.0,
            temperature_c=28.3,
            available=True,
            binding="bms_allowed_discharge",
        ),
        UnitState(
            "u2", soc_pct=39.5, power_mw=0.0, setpoint_mw=0.0, temperature_c=24.1, available=False, binding="stale"
        ),
    ),
    poi=PoiState(power_mw=2.85, frequency_hz=50.012, ts=1_796_000_000.0),
)


async def test_two_units_and_the_poi_on_both_faces(tmp_path):
    cfg = two_unit_site(tmp_path)
    assert [u.unit for u in cfg.unit_plan()] == ["u1", "u2"]
    faces = Faces()
    faces.update(TWO)
    # what the faces read: the site file and the state stream; this test gives no commands and writes no audit
    site = ScadaPlant(None, faces.latest, cfg, None, time.time)
    face = ScadaFace(site, cfg.scada, tmp_path / "state")  # mode: demo: the demo users
    await face.start()
    try:
        m = await read_map(cfg.scada.modbus.port, 2)
        assert m["layout"]["unit_count"] == 2
        assert m["unit0"] == {
            "soc_pct": 64.5,
            "power_mw": 3.0,
            "setpoint_mw": 3.0,
            "temperature_c": pytest.approx(28.3),
            "available": 1,
            "binding": BINDING_CODES["bms_allowed_discharge"],
        }
        assert m["unit1"] == {
            "soc_pct": 39.5,
            "power_mw": 0.0,
            "setpoint_mw": 0.0,
            "temperature_c": pytest.approx(24.1),
            "available": 0,
            "binding": BINDING_CODES["stale"],
        }
        assert m["poi"] == {"power_mw": 2.85, "frequency_hz": pytest.approx(50.012)}
        async with opcua(cfg.scada.opcua.port) as cl:
            # the first refresh runs right after start
            await eventually(lambda: status_code(cl, "Units.u2.soc_pct"), lambda s: s == GOOD, within_s=10, every_s=0.1)
            assert await value(cl, "Units.u1.soc_pct") == pytest.approx(64.5)
            assert await value(cl, "Units.u2.soc_pct") == pytest.approx(39.5)
            assert await value(cl, "Units.u2.available") == 0
            assert await value(cl, "Units.u2.binding") == BINDING_CODES["stale"]
            assert await value(cl, "Units.u1.power_mw") == pytest.approx(3.0)
            assert await value(cl, "POI.power_mw") == pytest.approx(2.85)
            assert await value(cl, "POI.frequency_hz") == pytest.approx(50.012)
    finally:
        await face.stop()
