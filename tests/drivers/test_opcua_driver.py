"""OpcUaDriver against the real OPC UA BMS simulator (asyncua server behind its fault gate) on loopback: every
point like the Modbus BMS, subscription and polling fallback, verified writes, each injected fault giving its
typed error and the driver recovering by itself, and a controller cycling on the OPC UA BMS."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from asyncua import ua

from controller.clock import Clock
from controller.config import load_config
from drivers import codec
from drivers.errors import DeviceError, DeviceTimeout, Disconnected, OpcUaError, ReadbackMismatch, WriteRefused
from drivers.modbus import ModbusDriver
from drivers.opcua import OpcUaDriver
from drivers.profile import Profile, load_profile
from simulators.battery import ALARM_INJECTED, BatteryModel, BatteryParams
from simulators.faults import Faults
from simulators.opcua_bms import OpcUaBmsServer, bms_values
from simulators.plant import Plant
from tests.conftest import free_port
from tests.fixtures.controller import ROOT, make_controller
from tests.fixtures.drivers import PROFILES, bms_profile
from tests.fixtures.plant import CONFIG as PLANT_CONFIG
from tests.fixtures.plant import plant_kwargs

TIMEOUT_S = 0.3
PUBLISH_S = 0.1


def ua_profile() -> Profile:
    return load_profile(PROFILES / "opcua-bms.yaml")


@dataclass
class Bms:
    server: OpcUaBmsServer
    model: BatteryModel
    faults: Faults

    def driver(self, **kwargs) -> OpcUaDriver:
        kwargs = {"timeout_s": TIMEOUT_S, "publishing_interval_s": PUBLISH_S, "backoff_max_s": 0.4, **kwargs}
        return OpcUaDriver("bms", kwargs.pop("profile", None) or ua_profile(), self.server.endpoint, **kwargs)


# One server for the module (an asyncua server takes ~1.5 s to start); `bms` puts it back to a known state.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ua_server() -> AsyncIterator[Bms]:
    model = BatteryModel(BatteryParams())
    faults = Faults()
    server = OpcUaBmsServer(model, "127.0.0.1", free_port(), Clock(), faults)
    await server.start()
    try:
        yield Bms(server, model, faults)
    finally:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def bms(ua_server: Bms) -> AsyncIterator[Bms]:
    """The OPC UA BMS simulator over a battery model at 62.5 % SoC, 31 °C, that discharged 2 MW for a second
    (values stay put: nothing steps the model unless the test does); faults, limits and setters restored."""
    b = ua_server
    b.faults.clear()
    b.model.set_state(soc_pct=62.5, temperature_c=31.0)
    b.model.step(2.0, 1.0)
    await copied(b)
    try:
        yield b
    finally:
        b.faults.clear()
        iserver = b.server.server.iserver
        iserver.max_subscriptions = 1000
        nid, point = b.server._nodes["heartbeat"]
        b.server.server.set_attribute_value_setter(nid, b.server._setter("heartbeat", point))
        await b.server.server.write_attribute_value(nid, ua.DataValue(ua.Variant(0, ua.VariantType.UInt16)))
        b.server.heartbeat = None


@pytest_asyncio.fixture(loop_scope="module")
async def drivers() -> AsyncIterator[list]:
    """Drivers a test makes; all closed at the end."""
    made: list = []
    try:
        yield made
    finally:
        for d in made:
            await d.close()


@contextlib.asynccontextmanager
async def running_plant(**overrides) -> AsyncIterator[Plant]:
    """The whole plant (tests/fixtures/plant.py's settings) with its OPC UA face, in this module's loop."""
    plant = Plant.from_config(load_config(PLANT_CONFIG), **plant_kwargs(True, **overrides))
    await plant.start()
    try:
        yield plant
    finally:
        await plant.stop()


async def copied(b: Bms) -> None:
    """The simulator copies the model into its variables every 0.1 s; have it copy now rather than sleep for a
    copy that a busy machine may not have made yet."""
    await b.server._write_values()


def vouched_within_max_age(d: OpcUaDriver, before: float, r: dict) -> bool:
    """The driver's promise for a read begun at `before`: no reading older than max_age_s, none from the future."""
    return all(before - d.max_age_s <= x.ts <= time.time() for x in r.values())


async def until(predicate, within_s: float, what: str, interval_s: float = 0.05):
    """Await `predicate()` (an async callable returning a value or None) until truthy; bounded in time."""
    deadline = time.monotonic() + within_s
    last_error: Exception | None = None
    for _ in range(int(within_s / interval_s) + 2):
        try:
            result = await predicate()
            if result:
                return result
        except DeviceError as e:
            last_error = e
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {within_s:g} s waiting for {what} (last error: {last_error!r})")


async def first_error(d: OpcUaDriver, within_s: float, check=None) -> DeviceError:
    """Read as the cycle would until the first failure; only typed errors may come out. `check(before, r)`,
    if given, must hold for every read that succeeds (begun at wall time `before`)."""
    deadline = time.monotonic() + within_s
    for _ in range(int(within_s / 0.05) + 2):
        try:
            before = time.time()
            r = await d.read()
        except DeviceError as e:
            return e
        if check is not None:
            assert check(before, r), {n: x.ts - before for n, x in r.items()}
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"no error within {within_s} s")


async def recovered(d: OpcUaDriver, model: BatteryModel, within_s: float = 5.0) -> dict:
    """Read until a read succeeds and shows the model's SoC (the driver reconnects by itself)."""

    async def ok():
        r = await d.read()
        return r if abs(r["soc_pct"].value - model.soc_pct) < 1e-3 else None

    return await until(ok, within_s, "the driver to read again")


# --- reading ----------------------------------------------------------------------------------------------


async def test_every_point_with_type_unit_and_value_of_the_model(bms, drivers):
    d = bms.driver(subscribe=False)
    drivers.append(d)
    t0 = time.time()
    r = await d.read()
    assert set(r) == set(ua_profile().points)
    expected = bms_values(bms.model)
    assert expected["dc_power_mw"] > 2.0 and expected["current_a"] > 0  # discharging: + on the DC side too
    for name, reading in r.items():
        if name == "heartbeat":
            assert reading.value == 0
            continue
        p = ua_profile().points[name]
        if p.type == "f32":
            assert type(reading.value) is float, name
            # float32 on the wire: 24 bits of mantissa
            assert reading.value == pytest.approx(expected[name], rel=1e-6, abs=1e-9), name
        else:
            assert type(reading.value) is int, name
            assert reading.value == expected[name], name
        assert t0 <= reading.ts <= time.time()
    # canonical units: kW on the wire, MW out of the driver; kWh -> MWh
    assert r["allowed_discharge_mw"].value == pytest.approx(bms.model.allowed_discharge_mw, rel=1e-6)
    assert r["energy_mwh"].value == pytest.approx(bms.model.energy_mwh, rel=1e-6)
    assert r["soc_pct"].value == pytest.approx(62.5 - 2.0 / 0.95 / 3600 / 20 * 100, abs=1e-4)
    assert d.stats.requests == 1 and d.stats.polls == 1  # every node in one Read


async def test_same_readings_as_the_modbus_bms_of_the_same_plant(drivers):
    async with running_plant() as plant:
        await _same_readings(plant, drivers)


async def _same_readings(plant: Plant, drivers: list) -> None:
    ua_d = OpcUaDriver("bms", ua_profile(), f"opc.tcp://127.0.0.1:{plant.ports['bms_opcua']}", timeout_s=1.0)
    mb_d = ModbusDriver("bms", bms_profile(), "127.0.0.1", plant.ports["bms_modbus"], timeout_s=1.0)
    drivers += [ua_d, mb_d]
    plant.model.set_state(soc_pct=47.3, temperature_c=36.6)
    plant.faults["bms_opcua"].alarm_bits = ALARM_INJECTED
    plant.faults["bms_opcua"].fault_bits = 0b10

    def settled(r) -> bool:
        return (
            r["fault_bits"].value == 0b10
            and r["allowed_charge_mw"].value == 0.0
            and r["soc_pct"].value == pytest.approx(47.3, abs=0.01)
        )

    async def both_show_it():
        a, b = await ua_d.read(), await mb_d.read()
        return (a, b) if settled(a) and settled(b) else None

    ua_r, mb_r = await until(both_show_it, 5.0, "both faces to show the new state")
    mb_profile = bms_profile()
    assert set(ua_r) - {"heartbeat"} <= set(mb_r)  # over Modbus the heartbeat register is write-only: never read
    for name, reading in ua_r.items():
        if name == "heartbeat":
            continue
        mb_p = mb_profile.points[name]
        # the Modbus map's resolution (one LSB, in canonical units) bounds the difference
        lsb = codec.resolution(mb_p) * mb_p.factor
        assert reading.value == pytest.approx(mb_r[name].value, abs=lsb + 1e-6, rel=1e-6), name
        assert type(reading.value) is type(mb_r[name].value), name
    # bit points are ints with the profile's bit names, exactly as over Modbus
    assert ua_r["alarm_bits"].value == mb_r["alarm_bits"].value and ua_r["alarm_bits"].value & ALARM_INJECTED
    assert ua_profile().points["alarm_bits"].bits == mb_profile.points["alarm_bits"].bits
    assert ua_profile().points["alarm_bits"].bits[15] == "external"
    assert ua_r["fault_bits"].value == mb_r["fault_bits"].value == 0b10
    assert ua_r["allowed_charge_mw"].value == 0.0  # a BMS fault: no power either way


# --- subscription and polling ------------------------------------------------------------------------------


async def test_subscription_delivers_changes_without_requests(bms, drivers):
    d = bms.driver()
    drivers.append(d)

    async def subscribed():
        await d.read()
        return d.mode == "subscription"

    await until(subscribed, 3.0, "the first subscribed values")
    requests = d.stats.requests
    bms.model.set_state(soc_pct=71.25)

    async def changed():
        r = await d.read()
        return r if r["soc_pct"].value == pytest.approx(71.25, abs=1e-4) else None

    r = await until(changed, 2.0, "the change by subscription", interval_s=0.02)
    assert d.stats.requests == requests, "served from the subscription, not by Read requests"
    assert d.stats.served_from_subscription >= 2 and d.stats.notifications >= len(r)
    # readings carry when the server last vouched for them (a publish response), never older than max_age_s:
    # with nothing changing, a keep-alive vouches for the same values again, still without a Read request
    vouched_at = min(x.ts for x in r.values())

    async def vouched_again():
        before = time.time()
        r = await d.read()
        assert vouched_within_max_age(d, before, r), {n: x.ts - before for n, x in r.items()}
        return r if min(x.ts for x in r.values()) > vouched_at else None

    r = await until(vouched_again, 5.0, "a keep-alive vouching for the unchanged values", interval_s=0.05)
    assert d.mode == "subscription" and d.stats.requests == requests
    assert r["soc_pct"].value == pytest.approx(71.25, abs=1e-4)


async def test_polling_when_subscribe_is_off(bms, drivers):
    d = bms.driver(subscribe=False)
    drivers.append(d)
    await d.read()
    bms.model.set_state(soc_pct=33.0)
    await copied(bms)
    r = await d.read()
    assert r["soc_pct"].value == pytest.approx(33.0)
    assert d.mode == "polling" and d.stats.subscriptions == 0
    assert d.stats.polls == 2 and d.stats.requests == 2


async def test_quiet_subscription_falls_back_to_polling_then_resubscribes(bms, drivers):
    d = bms.driver(resubscribe_after_s=1.0)
    drivers.append(d)

    async def subscribed():
        await d.read()
        return d.mode == "subscription"

    await until(subscribed, 3.0, "the subscription")
    # the server forgets the subscription (as after a server-side lifetime expiry): nothing is delivered
    sub_id = d._sub.subscription_id
    await bms.server.server.iserver.subscription_service.delete_subscriptions([sub_id])
    bms.model.set_state(soc_pct=12.5)

    async def polled_fresh():
        before = time.time()
        r = await d.read()
        # a quiet subscription is noticed within max_age_s: nothing it vouched for longer ago is served
        assert vouched_within_max_age(d, before, r), {n: x.ts - before for n, x in r.items()}
        return r if r["soc_pct"].value == pytest.approx(12.5) else None

    await until(polled_fresh, 5.0, "the new value by polling")
    assert d.stats.subscription_failures == 1 and d.stats.polls >= 1
    # and after resubscribe_after_s, the subscription serves again
    await until(subscribed, 4.0, "a new subscription")
    assert d.stats.subscriptions == 2


async def test_refused_subscription_falls_back_to_polling_then_resubscribes(bms, drivers):
    # a server at its subscription limit answers CreateSubscription with BadTooManySubscriptions
    bms.server.server.iserver.max_subscriptions = 0
    d = bms.driver(resubscribe_after_s=0.5)
    drivers.append(d)
    r = await d.read()
    assert d.mode == "polling" and d.stats.subscription_failures == 1 and d.stats.subscriptions == 0
    assert r["soc_pct"].value == pytest.approx(bms.model.soc_pct, rel=1e-6)
    assert d.stats.polls == 1
    bms.server.server.iserver.max_subscriptions = 1000

    async def subscribed():
        await d.read()
        return d.mode == "subscription"

    await until(subscribed, 3.0, "the subscription once the server accepts it")
    assert d.stats.subscriptions == 1


# --- writes -----------------------------------------------------------------------------------------------


async def test_write_heartbeat_with_read_back(bms, drivers):
    d = bms.driver()
    drivers.append(d)
    assert await d.write("heartbeat", 4242) == 4242
    assert bms.server.heartbeat == 4242
    assert await d.write("heartbeat", 7, verify=False) is None
    assert bms.server.heartbeat == 7
    r = await recovered(d, bms.model)
    assert r["heartbeat"].value == 7


async def test_write_refused_before_the_wire(bms, drivers):
    d = bms.driver()
    drivers.append(d)
    for point, value in [
        ("heartbeat", 70000),
        ("heartbeat", -1),
        ("heartbeat", 1.5),
        ("heartbeat", float("nan")),
        ("soc_pct", 50.0),
        ("nope", 1),
    ]:
        with pytest.raises(WriteRefused):
            await d.write(point, value)
    assert bms.server.heartbeat is None


async def test_server_refusal_is_an_opcua_error_with_its_status(bms, drivers):
    # the driver's profile claims more than the device allows: the server answers with a bad status
    wide = ua_profile().model_copy(deep=True)
    wide.points["soc_pct"].writable = True
    wide.points["heartbeat"].max = 100000
    wide.points["heartbeat"].type = "u32"
    d = bms.driver(profile=wide)
    drivers.append(d)
    with pytest.raises(OpcUaError) as e:
        await d.write("soc_pct", 10.0)
    assert e.value.status in ("BadNotWritable", "BadUserAccessDenied")  # asyncua checks the user access level
    with pytest.raises(OpcUaError) as e:
        await d.write("heartbeat", 70000)  # a UInt32 into the UInt16 variable
    assert e.value.status == "BadTypeMismatch"
    assert bms.server.heartbeat is None
    # the session survives refusals
    assert (await d.read())["soc_pct"].value == pytest.approx(bms.model.soc_pct, rel=1e-6)


async def test_readback_mismatch_when_the_device_keeps_another_value(bms, drivers):
    nid = ua.NodeId("BMS.Heartbeat", bms.server.ns_index)

    def keeps_half(node_data, attr, dv):  # a device that accepts the write and keeps something else
        node_data.attributes[attr].value = ua.DataValue(ua.Variant(dv.Value.Value // 2, ua.VariantType.UInt16))

    bms.server.server.set_attribute_value_setter(nid, keeps_half)
    d = bms.driver()
    drivers.append(d)
    with pytest.raises(ReadbackMismatch) as e:
        await d.write("heartbeat", 100)
    assert e.value.written == 100 and e.value.read == 50


# --- faults and recovery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("subscribe", [True, False])
async def test_silent_server_times_out_then_recovers(bms, drivers, subscribe):
    d = bms.driver(subscribe=subscribe)
    drivers.append(d)
    await recovered(d, bms.model)
    bms.faults.silent = True
    # a subscription may serve what it vouched for, but never longer than max_age_s; then one request fails
    err = await first_error(d, 10.0, check=lambda before, r: vouched_within_max_age(d, before, r))
    assert isinstance(err, DeviceTimeout) and f"no answer within {TIMEOUT_S} s" in str(err), repr(err)
    # still silent: every read fails with a typed error, quickly: at most one connect attempt or one request,
    # each under the driver's own timer (4 x the timeout for a connect's round trips); bounded here too
    for _ in range(3):
        wire = d.stats.requests + d.stats.connect_attempts
        with pytest.raises((DeviceTimeout, Disconnected)) as e:
            await asyncio.wait_for(d.read(), 10)
        assert d.stats.requests + d.stats.connect_attempts - wire <= 1, repr(e.value)
        if isinstance(e.value, DeviceTimeout):
            assert any(f"within {t:g} s" in str(e.value) for t in (TIMEOUT_S, 4 * TIMEOUT_S)), repr(e.value)
    bms.faults.silent = False
    bms.model.set_state(soc_pct=40.0)
    await recovered(d, bms.model)


async def test_late_answers_time_out_and_short_delays_are_fine(bms, drivers):
    d = bms.driver(subscribe=False)
    drivers.append(d)
    await d.read()
    bms.faults.delay_s = TIMEOUT_S / 3
    r = await d.read()
    assert r["soc_pct"].value == pytest.approx(bms.model.soc_pct, rel=1e-6)
    assert d.stats.last_read_latency_s >= TIMEOUT_S / 3 - 0.02
    bms.faults.delay_s = 3 * TIMEOUT_S
    with pytest.raises(DeviceTimeout):
        await d.read()
    bms.faults.delay_s = 0.0
    await recovered(d, bms.model)


async def test_dropped_connections_are_disconnected_then_recover(bms, drivers):
    d = bms.driver()
    drivers.append(d)
    await recovered(d, bms.model)
    quiet = d.stats.subscription_failures
    bms.faults.drop = True
    err = await first_error(d, 10.0)
    assert isinstance(err, Disconnected), repr(err)
    # noticed at once, not after the subscription aged (that path counts a quiet subscription first)
    assert d.stats.subscription_failures == quiet, "the drop was noticed only after the subscription aged"
    for _ in range(3):
        with pytest.raises(Disconnected):
            await d.read()
    bms.faults.drop = False
    await recovered(d, bms.model)
    assert d.stats.connects >= 2


async def test_server_gone_backs_off_then_reconnects_by_itself(drivers):
    port = free_port()
    model = BatteryModel(BatteryParams(), soc_pct=20.0)
    d = OpcUaDriver("bms", ua_profile(), f"opc.tcp://127.0.0.1:{port}", timeout_s=TIMEOUT_S, backoff_max_s=0.4)
    drivers.append(d)
    attempts_t: list[float] = []
    for _ in range(8):  # nobody listens: refused, with the attempts spaced out by a capped backoff
        before = d.stats.connect_attempts
        with pytest.raises(Disconnected):
            await d.read()
        if d.stats.connect_attempts > before:
            attempts_t.append(time.monotonic())
        await asyncio.sleep(0.05)
    assert 2 <= len(attempts_t) < 8
    assert d.backoff.delay_s == pytest.approx(0.4)  # capped
    server = OpcUaBmsServer(model, "127.0.0.1", port, Clock(), Faults())
    await server.start()
    try:
        r = await recovered(d, model, within_s=3.0)
        assert r["soc_pct"].value == pytest.approx(20.0)
    finally:
        await d.close()
        await server.stop()


async def test_alarm_and_fault_bits_reach_the_readings(bms, drivers):
    d = bms.driver()
    drivers.append(d)
    await recovered(d, bms.model)
    bms.faults.alarm_bits = ALARM_INJECTED
    bms.faults.fault_bits = 0b101

    async def raised():
        r = await d.read()
        return r if r["fault_bits"].value == 0b101 else None

    r = await until(raised, 2.0, "the fault bits")
    assert r["alarm_bits"].value & ALARM_INJECTED
    names = ua_profile().points["fault_bits"].bits
    assert [names[b] for b in range(16) if r["fault_bits"].value >> b & 1] == ["cell_fault", "contactor_fault"]
    bms.faults.clear()

    async def cleared():
        r = await d.read()
        return r if r["fault_bits"].value == 0 and not r["alarm_bits"].value & ALARM_INJECTED else None

    await until(cleared, 2.0, "the bits to clear")


async def test_close_twice_and_reconnect_after_close(bms, drivers):
    d = bms.driver()
    drivers.append(d)
    await d.read()
    await d.close()
    await d.close()
    assert not d.connected
    await recovered(d, bms.model)


# --- the controller on the OPC UA BMS -----------------------------------------------------------------------


async def test_controller_cycles_on_the_opcua_bms(tmp_path):
    async with (
        running_plant(initial_soc_pct=64.0) as plant,
        make_controller(plant, tmp_path, base=ROOT / "config" / "demo-single.yaml") as c,
    ):
        bms_link = c.devices.bms
        assert type(bms_link.driver).__name__ == "OpcUaDriver"
        snap = c.snapshot
        assert snap.soc_pct == pytest.approx(plant.model.soc_pct, abs=0.05)
        assert "bms" not in snap.stale and not snap.faults
        # the heartbeat reaches the device through the OPC UA write
        deadline = time.monotonic() + 5
        while plant.opcua.heartbeat in (None, 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert plant.opcua.heartbeat not in (None, 0)
