"""The Modbus simulator's registers (simulators/modbus_server.py): a value laid again is laid again, whatever a
client or a fault wrote in between, and a point follows its scale factor when that changes (the simulator keeps
the last encoding of each point, so republishing unchanged values every tick costs no encoding)."""

from __future__ import annotations

from pathlib import Path

from drivers.profile import load_profile
from simulators.modbus_server import ModbusSimServer

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"


def bms() -> ModbusSimServer:
    return ModbusSimServer.from_profile(load_profile(PROFILES / "generic-bms.yaml"), name="bms")


def test_the_same_value_laid_again_overwrites_what_was_written_in_between():
    srv = bms()
    srv.set("heartbeat", 5)
    srv.set_raw("heartbeat", [9])  # as a client's write or a raw fault would
    assert srv.get("heartbeat") == 9
    srv.set("heartbeat", 5)
    assert srv.get("heartbeat") == 5


def test_a_point_follows_its_scale_factor_when_the_value_is_the_same():
    srv = bms()
    srv.set("cell_v_sf", -3)
    srv.set("cell_voltage_max_v", 3.456)
    assert srv.get("cell_voltage_max_v") == 3.456
    srv.set("cell_v_sf", -2)
    srv.set("cell_voltage_max_v", 3.456)  # same value, new scale: encoded again, to 346 x 10^-2
    assert srv.get("cell_voltage_max_v") == 3.46


def test_an_int_and_a_float_of_equal_value_are_each_encoded_as_given():
    srv = bms()
    srv.set("heartbeat", 7)
    srv.set("heartbeat", 7.0)
    assert srv.get("heartbeat") == 7
