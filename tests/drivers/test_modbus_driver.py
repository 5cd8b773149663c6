"""ModbusDriver against the real Modbus simulator on loopback: every decode path over the wire, request
planning, verified writes, and each injected fault giving its typed error, then recovery by itself."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.errors import DeviceTimeout, Disconnected, ModbusError, ReadbackMismatch, WriteRefused
from drivers.modbus import ModbusDriver, plan_reads
from drivers.profile import Point, Profile
from simulators.modbus_server import ModbusSimServer
from tests.conftest import free_port
from tests.fixtures.drivers import bms_profile, bms_server  # noqa: F401 - fixture

TIMEOUT_S = 0.3

# Every type, word order, scale, offset and scale-factor path, with registers written out by hand.
TYPES_PROFILE = Profile.model_validate(
    {
        "name": "types",
        "protocol": "modbus",
        "word_order": "big",
        "points": {
            "u16_plain": {"address": 0, "function": "holding", "type": "uint16"},
            "i16_scaled": {"address": 1, "function": "holding", "type": "int16", "scale": 0.1, "unit": "°C"},
            "u32_big": {"address": 2, "function": "holding", "type": "uint32"},
            "u32_little": {"address": 4, "function": "holding", "type": "uint32", "word_order": "little"},
            "i32_big": {"address": 6, "function": "holding", "type": "int32", "scale": 0.01},
            "i32_little": {"address": 8, "function": "holding", "type": "int32", "word_order": "little"},
            "u64_big": {"address": 10, "function": "holding", "type": "u64"},
            "i64_little": {"address": 14, "function": "holding", "type": "i64", "word_order": "little"},
            "f32_big_kw": {"address": 18, "function": "holding", "type": "float32", "unit": "kW"},
            "f32_little": {"address": 20, "function": "holding", "type": "float32", "word_order": "little"},
            "offset_c": {"address": 22, "function": "holding", "type": "u16", "scale": 0.1, "offset": -40},
            "p_sf": {"address": 23, "function": "holding", "type": "i16"},
            "power_mw": {"address": 24, "function": "holding", "type": "i16", "scale": "p_sf", "unit": "W"},
            "name": {"address": 25, "function": "holding", "type": "string", "words": 4},
            "setpoint_mw": {
                "address": 40,
                "function": "holding",
                "type": "i32",
                "scale": 0.1,
                "unit": "kW",
                "writable": True,
                "min": -10000,
                "max": 10000,
            },
            "limit_pct": {"address": 42, "function": "holding", "type": "f32", "writable": True, "min": 0, "max": 100},
            "sf_setpoint_mw": {
                "address": 44,
                "function": "holding",
                "type": "i16",
                "scale": "p_sf",
                "unit": "W",
                "writable": True,
            },
            "read_only": {"address": 45, "function": "holding", "type": "u16"},
            "in_reg": {"address": 3, "function": "input", "type": "u16"},
            "relay": {"address": 5, "function": "coil", "writable": True},
            "door": {"address": 2, "function": "discrete"},
        },
    }
)

# point -> (hand-written registers, expected value in canonical units)
VECTORS = {
    "u16_plain": ([0xBEEF], 0xBEEF),
    "i16_scaled": ([0xFF85], -12.3),
    "u32_big": ([0x0001, 0x86A0], 100000),
    "u32_little": ([0x86A0, 0x0001], 100000),
    "i32_big": ([0xFFFF, 0xCFC7], -123.45),
    "i32_little": ([0xCFC7, 0xFFFF], -12345),
    "u64_big": ([0x0000, 0x0001, 0x0000, 0x0002], 2**32 + 2),
    "i64_little": ([0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    "f32_big_kw": ([0x45FA, 0x0000], 8.0),  # 8000 kW -> 8 MW
    "f32_little": ([0x0000, 0x3FC0], 1.5),
    "offset_c": ([650], 25.0),  # 650 * 0.1 - 40
    "p_sf": ([0x0002], 2),
    "power_mw": ([0xFFF6], -0.001),  # -10 * 10^2 W = -1000 W = -0.001 MW
    "name": ([0x5048, 0x4F45, 0x4E00, 0x0000], "PHOEN"),
    "in_reg": ([7], 7),
}


@pytest.fixture
async def types_server():
    server = ModbusSimServer.from_profile(TYPES_PROFILE, port=0, name="types")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def types_driver(types_server):
    d = ModbusDriver("types", TYPES_PROFILE, "127.0.0.1", types_server.port, timeout_s=TIMEOUT_S, backoff_max_s=0.4)
    try:
        yield d
    finally:
        await d.close()


async def read_until_ok(d: ModbusDriver, within_s: float = 3.0):
    """Poll as the cycle would (every 50 ms) until a read succeeds; the last error if it never does."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await d.read()
        except (DeviceTimeout, Disconnected, ModbusError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# --- decoding over the wire -------------------------------------------------------------------------------


async def test_every_type_word_order_and_scale_over_the_wire(types_server, types_driver):
    for name, (regs, _) in VECTORS.items():
        types_server.set_raw(name, regs)
    types_server.set("relay", 1)
    types_server.set("door", 1)
    t0 = time.time()
    readings = await types_driver.read()
    assert set(readings) == set(TYPES_PROFILE.points)
    for name, (_, expected) in VECTORS.items():
        assert (
            readings[name].value == pytest.approx(expected, rel=1e-12)
            if isinstance(expected, float)
            else readings[name].value == expected
        ), name
        assert type(readings[name].value) is type(expected), name
    assert readings["relay"].value == 1 and readings["door"].value == 1
    assert all(t0 <= r.ts <= time.time() for r in readings.values())


async def test_generic_bms_profile_in_two_requests(bms_server):
    profile = bms_profile()
    bms_server.update(
        {
            "soc_pct": 55.55,
            "current_a": -1234.5,
            "temperature_max_c": -5.5,
            "cell_v_sf": -3,
            "cell_voltage_max_v": 4.012,
            "allowed_charge_mw": 7500.0,
            "dc_power_mw": -2500.5,
            "energy_mwh": 12345,
            "serial": "BMS-0042",
            "alarm_bits": 0b101,
        }
    )
    d = ModbusDriver("bms", profile, "127.0.0.1", bms_server.port, timeout_s=TIMEOUT_S)
    try:
        # input 0..31, coil 0; the heartbeat (holding 100) is written, never read (drivers.modbus.WRITE_ONLY)
        assert d.requests_per_read == 2
        before = bms_server.requests
        r = await d.read()
        assert bms_server.requests - before == 2
        assert d.stats.requests == 2
        assert "heartbeat" not in r
        assert r["soc_pct"].value == 55.55
        assert r["current_a"].value == -1234.5
        assert r["temperature_max_c"].value == -5.5
        assert r["cell_voltage_max_v"].value == 4.012
        assert r["allowed_charge_mw"].value == 7.5
        assert r["dc_power_mw"].value == pytest.approx(-2.5005, rel=1e-12)
        assert r["energy_mwh"].value == pytest.approx(12.345)
        assert r["serial"].value == "BMS-0042"
        assert r["alarm_bits"].value == 0b101
    finally:
        await d.close()


# --- planning -------------------------------------------------------------------------------------------


def _points(spec: dict[str, tuple[int, str, int]]) -> dict[str, Point]:
    """name -> (address, function, words)"""
    return {
        n: Point(
            address=a, function=f, type="string" if w > 2 else ("u32" if w == 2 else "u16"), words=w if w > 2 else None
        )
        if f in ("holding", "input")
        else Point(address=a, function=f)
        for n, (a, f, w) in spec.items()
    }


def test_plan_groups_contiguous_and_small_gaps():
    plan = plan_reads(
        _points(
            {
                "a": (0, "holding", 1),
                "b": (1, "holding", 2),
                "c": (10, "holding", 1),
                "d": (30, "holding", 1),
                "e": (0, "input", 1),
                "f": (0, "coil", 1),
            }
        ),
        max_gap=8,
    )
    assert [(r.function, r.address, r.count) for r in plan] == [
        ("input", 0, 1),
        ("holding", 0, 11),
        ("holding", 30, 1),
        ("coil", 0, 1),
    ]
    holding0 = plan[1]
    assert [(n, off) for n, _, off in holding0.points] == [("a", 0), ("b", 1), ("c", 10)]


def test_plan_splits_at_125_registers_and_2000_bits():
    spec = {f"r{i}": (i * 50, "holding", 50) for i in range(6)}  # 300 contiguous registers
    spec.update({f"c{i}": (i * 500, "coil", 1) for i in range(9)})  # coils 0..4000, gaps 499
    plan = plan_reads(_points(spec), max_gap=500)
    holding = [(r.address, r.count) for r in plan if r.function == "holding"]
    assert holding == [(0, 100), (100, 100), (200, 100)]  # a 50-register point is never split
    assert all(r.count <= 125 for r in plan if r.function == "holding")
    coils = [(r.address, r.count) for r in plan if r.function == "coil"]
    assert all(c <= 2000 for _, c in coils) and len(coils) == 3
    names = sorted(n for r in plan for n, _, _ in r.points)
    assert names == sorted(spec)


def test_plan_of_a_profile_is_made_once(types_driver):
    # input; holding 0..28 and 40..45 (11 unused registers between them is more than max_gap 8); coil; discrete
    assert [(r.function, r.address, r.count) for r in types_driver.plan] == [
        ("input", 3, 1),
        ("holding", 0, 29),
        ("holding", 40, 6),
        ("coil", 5, 1),
        ("discrete", 2, 1),
    ]
    assert types_driver.requests_per_read == 5


# --- writes -----------------------------------------------------------------------------------------------


async def test_write_and_read_back(types_server, types_driver):
    types_server.set("p_sf", 2)
    assert await types_driver.write("setpoint_mw", 5.5) == pytest.approx(5.5)
    assert types_server.get("setpoint_mw") == pytest.approx(5500.0)
    assert await types_driver.write("setpoint_mw", -0.01234) == pytest.approx(-0.0123)  # nearest 0.1 kW
    assert await types_driver.write("limit_pct", 42.5) == 42.5
    assert await types_driver.write("sf_setpoint_mw", 0.0123) == pytest.approx(0.0123)  # 123 * 10^2 W
    assert types_server.get("sf_setpoint_mw") == pytest.approx(12300.0)
    assert await types_driver.write("relay", 0) == 0
    assert types_server.get("relay") == 0
    assert await types_driver.write("setpoint_mw", 1.0, verify=False) is None
    assert (await types_driver.read())["setpoint_mw"].value == 1.0


async def test_write_refused_before_the_wire(types_server, types_driver):
    await types_driver.read()
    before = types_server.requests
    with pytest.raises(WriteRefused, match="not writable"):
        await types_driver.write("read_only", 1)
    with pytest.raises(WriteRefused, match="not writable"):
        await types_driver.write("in_reg", 1)
    with pytest.raises(WriteRefused, match="above the maximum"):
        await types_driver.write("setpoint_mw", 10.5)  # 10 500 kW > max 10 000 kW
    with pytest.raises(WriteRefused, match="below the minimum"):
        await types_driver.write("setpoint_mw", -10.001)
    with pytest.raises(WriteRefused, match="no such point"):
        await types_driver.write("nope", 1)
    with pytest.raises(WriteRefused, match="sf_setpoint_mw"):
        await types_driver.write("sf_setpoint_mw", 1e9)  # beyond int16 at this scale factor
    assert types_server.requests == before


async def test_readback_mismatch_when_the_device_keeps_another_value(types_server, types_driver):
    # a device that accepts the write but clamps the setpoint to 2 MW right after, as a derating PCS would
    loop = asyncio.get_running_loop()

    def clamp(changes):
        if "setpoint_mw" in changes:
            loop.call_soon(types_server.set, "setpoint_mw", 2000.0)
        return None

    types_server.on_write = clamp
    with pytest.raises(ReadbackMismatch) as err:
        await types_driver.write("setpoint_mw", 5.0)
    assert err.value.point == "setpoint_mw" and err.value.written == 5.0 and err.value.read == 2.0


async def test_device_refusal_is_a_modbus_error(types_server, types_driver):
    types_server.on_write = lambda changes: 3  # the device refuses every write: ILLEGAL DATA VALUE
    with pytest.raises(ModbusError) as err:
        await types_driver.write("setpoint_mw", 1.0)
    assert err.value.code == 3


# --- faults -----------------------------------------------------------------------------------------------


async def test_silent_device_times_out_then_recovers(types_server, types_driver):
    await types_driver.read()
    assert types_driver.requests_per_read > 1  # so that a read going on after the first timeout would show
    types_server.faults.silent = True
    on_wire, sent = types_server.requests, types_driver.stats.requests
    # bounded (the driver's own timeout is 0.3 s): a read that never gives up fails here, not in pytest-timeout
    with pytest.raises(DeviceTimeout, match=f"no answer within {TIMEOUT_S} s"):  # the driver's timer
        await asyncio.wait_for(types_driver.read(), 10)
    # one request's timeout: the read stops at its first unanswered request, and nobody retries it
    assert types_server.requests - on_wire == 1 and types_driver.stats.requests - sent == 1
    types_server.faults.clear()
    types_server.set("u16_plain", 77)
    assert (await read_until_ok(types_driver))["u16_plain"].value == 77


async def test_late_answers_time_out_and_never_answer_a_later_request(types_server, types_driver):
    types_server.faults.delay_s = TIMEOUT_S + 0.2
    with pytest.raises(DeviceTimeout):
        await types_driver.read()
    types_server.faults.clear()
    for value in (1, 2, 3):  # the late answer must not be taken for one of these
        types_server.set("u16_plain", value)
        assert (await read_until_ok(types_driver))["u16_plain"].value == value
    await asyncio.sleep(0.25)  # let the late answer arrive on the closed connection


async def test_delay_within_the_timeout_is_fine(types_server, types_driver):
    types_server.faults.delay_s = TIMEOUT_S / 4
    assert (await types_driver.read())["u16_plain"].value == 0


@pytest.mark.parametrize("code", [2, 4, 6])
async def test_exception_response_is_a_modbus_error_with_its_code(types_server, types_driver, code):
    types_server.faults.exception_code = code
    with pytest.raises(ModbusError) as err:
        await types_driver.read()
    assert err.value.code == code and err.value.cause == "modbus_exception"
    types_server.faults.clear()
    await types_driver.read()  # the connection stayed up: an exception is an answer


async def test_dropped_connections_are_disconnected_then_recover(types_server, types_driver):
    await types_driver.read()
    types_server.faults.drop = True
    with pytest.raises(Disconnected):
        await types_driver.read()
    for _ in range(3):  # still dropping: typed error every time, never a library exception
        with pytest.raises(Disconnected):
            await types_driver.read()
        await asyncio.sleep(0.05)
    types_server.faults.clear()
    types_server.set("u16_plain", 9)
    assert (await read_until_ok(types_driver))["u16_plain"].value == 9


async def test_refused_connection_backs_off_then_reconnects_by_itself():
    port = free_port()
    d = ModbusDriver("gone", TYPES_PROFILE, "127.0.0.1", port, timeout_s=TIMEOUT_S, backoff_max_s=0.4)
    server = None
    try:
        with pytest.raises(Disconnected, match="cannot connect"):
            await d.read()
        assert d.stats.connect_attempts == 1
        # while backing off the device is not contacted at all
        for _ in range(5):
            with pytest.raises(Disconnected, match="next attempt"):
                await d.read()
        assert d.stats.connect_attempts == 1
        # attempts double their spacing up to the cap (0.1, 0.2, 0.4, 0.4 ...): bounded, not hammering
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            with pytest.raises(Disconnected):
                await d.read()
            await asyncio.sleep(0.02)
        assert 3 <= d.stats.connect_attempts <= 6
        server = ModbusSimServer.from_profile(TYPES_PROFILE, port=port, name="back")
        await server.start()
        server.set("u16_plain", 5)
        assert (await read_until_ok(d, within_s=2.0))["u16_plain"].value == 5
    finally:
        await d.close()
        if server is not None:
            await server.stop()


async def test_server_restart_mid_session(types_server, types_driver):
    port = types_server.port
    await types_driver.read()
    await types_server.stop()
    with pytest.raises(Disconnected):
        await types_driver.read()
    server = ModbusSimServer.from_profile(TYPES_PROFILE, port=port, name="again")
    await server.start()
    try:
        server.set("u16_plain", 11)
        assert (await read_until_ok(types_driver))["u16_plain"].value == 11
    finally:
        await server.stop()


async def test_stats_and_close_twice(types_driver):
    await types_driver.read()
    assert types_driver.stats.requests == types_driver.requests_per_read
    assert types_driver.stats.last_latency_s > 0
    await types_driver.close()
    await types_driver.close()
    await types_driver.read()  # a read after close opens the connection again
