"""The cycle on a plant of two units with dummy devices (tests/unit/test_controller.py's DummyDevice, no
network): a device failure, a failed write or a read-back mismatch on one unit puts that unit alone at 0 MW,
with an alarm naming its device, while the other unit goes on and takes what it can; every unit's PCS gets a
setpoint in every cycle, through the limit function and the unit's own limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from controller.clock import Clock
from controller.config import load_config
from controller.cycle.devices import DeviceSet
from controller.cycle.loop import Controller
from controller.store import Store
from drivers.errors import DeviceTimeout
from tests.fixtures.dummy_devices import DUMMY_PCS_PROFILE, ROOT, DummyDevice

pytestmark = pytest.mark.timeout(30)

BMS_VALUES = {
    "temperature_max_c": 25.0,
    "temperature_min_c": 24.0,
    "allowed_charge_mw": 5.0,
    "allowed_discharge_mw": 5.0,
    "alarm_bits": 0,
    "fault_bits": 0,
}


def two_unit_file(tmp_path: Path) -> Path:
    """Two 5 MW / 10 MWh units, each a Modbus BMS (generic profile) and a plain Modbus PCS, no meter."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "generic-bms.yaml").write_text((ROOT / "config/profiles/generic-bms.yaml").read_text())
    (tmp_path / "profiles" / "dummy-pcs.yaml").write_text(DUMMY_PCS_PROFILE)
    raw = yaml.safe_load((ROOT / "config" / "demo-single-modbus.yaml").read_text())
    bms, pcs = raw["devices"]["bms"], raw["devices"]["pcs"]
    pcs.update(protocol="modbus", profile="profiles/dummy-pcs.yaml", allow_no_reversion=True)
    raw["devices"] = {
        f"{role}{k}": {**dev, "unit": f"u{k}", "port": dev["port"] + 10 * (k - 1), "poll_interval_s": 0.001}
        for k in (1, 2)
        for role, dev in (("bms", bms), ("pcs", pcs))
    }
    raw["units"] = {"u1": {"rated_mw": 5, "capacity_mwh": 10}, "u2": {"rated_mw": 5, "capacity_mwh": 10}}
    raw["limits"]["ramp_mw_per_s"] = 1000.0
    raw["cycle"]["period_s"] = 0.1
    raw["mqtt"]["enabled"] = False
    raw["simulator"] = {"control_port": 1504}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Rig:
    def __init__(self, tmp_path: Path):
        self.clock = Clock()
        cfg = load_config(two_unit_file(tmp_path))
        self.bms = {
            k: DummyDevice(f"bms{k}", self.clock, {**BMS_VALUES, "soc_pct": soc}) for k, soc in ((1, 60), (2, 40))
        }
        self.pcs = {k: DummyDevice(f"pcs{k}", self.clock, {"power_mw": 0.0, "setpoint_mw": 0.0}) for k in (1, 2)}
        drivers = {**{f"bms{k}": d for k, d in self.bms.items()}, **{f"pcs{k}": d for k, d in self.pcs.items()}}
        self.store = Store(tmp_path / "bess-edge.db")
        self.controller = Controller(cfg, self.store, self.clock, devices=DeviceSet(cfg, self.clock, drivers=drivers))

    async def cycles(self, n: int = 1):
        for _ in range(n):
            await self.controller.run_cycle()
            await asyncio.sleep(0.01)
        return self.controller.allocation

    def last(self, k: int) -> float:
        return self.pcs[k].setpoints()[-1]


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.store.close()


async def test_both_units_are_written_every_cycle_and_share_the_setpoint_toward_equal_socs(rig):
    rig.controller.set_mode("manual", 6.0)
    before = [len(rig.pcs[k].setpoints()) for k in (1, 2)]
    a = await rig.cycles(3)
    assert [len(rig.pcs[k].setpoints()) - b for k, b in zip((1, 2), before)] == [3, 3]
    assert rig.last(1) + rig.last(2) == pytest.approx(6.0) and rig.last(1) > rig.last(2) > 0  # u1 is fuller
    assert a.setpoint_mw == pytest.approx(6.0) and a.binding == "none"
    units = rig.controller.status()["units"]
    assert [u["unit"] for u in units] == ["u1", "u2"] and [u["setpoint_mw"] for u in units] == [
        pytest.approx(rig.last(1)),
        pytest.approx(rig.last(2)),
    ]


async def test_a_failed_write_is_that_units_alone(rig):
    rig.controller.set_mode("manual", 8.0)
    await rig.cycles(2)
    rig.pcs[2].error = DeviceTimeout("pcs2", "no answer")  # reads and writes of unit 2's PCS fail
    a = await rig.cycles(3)
    shares = {s.unit: s for s in a.units}
    assert shares["u2"].setpoint_mw == 0.0 and not shares["u2"].available and shares["u2"].binding == "comm_loss"
    assert shares["u1"].setpoint_mw == pytest.approx(5.0) and rig.last(1) == pytest.approx(5.0)
    assert a.binding == "unit_unavailable" and a.setpoint_mw == pytest.approx(5.0)
    assert "pcs2:comm" in rig.controller.active_alarms and "pcs1:comm" not in rig.controller.active_alarms
    rig.pcs[2].error = None
    a = await rig.cycles(2)
    assert a.setpoint_mw == pytest.approx(8.0) and rig.last(1) + rig.last(2) == pytest.approx(8.0)
    assert "pcs2:comm" not in rig.controller.active_alarms


async def test_a_readback_mismatch_holds_that_unit_alone_at_0_mw(rig):
    rig.controller.set_mode("manual", 6.0)
    await rig.cycles(1)
    rig.pcs[1].readback_offset = 0.5
    await rig.cycles(1)
    assert rig.last(1) == 0.0  # the mismatch: unit 1 told 0 MW at once
    alarms = rig.controller.active_alarms
    assert "pcs_readback:pcs1" in alarms and "unit u1" in alarms["pcs_readback:pcs1"]["message"]
    rig.pcs[1].readback_offset = 0.0
    a = await rig.cycles(1)
    shares = {s.unit: s for s in a.units}
    assert shares["u1"].setpoint_mw == 0.0 and shares["u1"].binding == "alarm"  # held for a while
    assert shares["u2"].setpoint_mw == pytest.approx(5.0) and rig.last(2) == pytest.approx(5.0)
    rig.controller.units[0].readback_hold_until = 0.0
    a = await rig.cycles(1)
    assert a.setpoint_mw == pytest.approx(6.0) and "pcs_readback:pcs1" not in rig.controller.active_alarms


async def test_the_plant_goes_to_0_mw_only_for_plant_level_causes(rig):
    rig.controller.set_mode("manual", 6.0)
    await rig.cycles(1)
    rig.bms[1].error = DeviceTimeout("bms1", "no answer")
    rig.bms[2].error = DeviceTimeout("bms2", "no answer")
    a = await rig.cycles(3)  # every unit out: the plant's safe state
    assert a.setpoint_mw == 0.0 and a.binding == "unit_unavailable" and rig.last(1) == rig.last(2) == 0.0
    rig.bms[1].error = rig.bms[2].error = None
    await rig.cycles(2)
    rig.controller.set_mode("stopped")
    a = await rig.cycles(1)
    assert a.binding == "mode_stopped" and rig.last(1) == rig.last(2) == 0.0
