"""The controller's cycle with dummy devices (OpenEMS style): a table of what the plant reports and what the
controller must write. The protocols themselves are tested against the real simulators in tests/drivers and
tests/system; here the point is the cycle's logic: gate, target, limits, dispatch, alarms, recovery.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.clock import Clock, iso
from controller.config import load_config
from controller.cycle.devices import DeviceSet
from controller.cycle.loop import Controller
from controller.cycle.phases import Event, Phase
from controller.cycle.state import status, telemetry
from controller.store import Store
from drivers.errors import DeviceTimeout, Disconnected
from tests.fixtures.dummy_devices import HEALTHY_BMS, DummyDevice, site_file
from tests.fixtures.payloads import TELEMETRY_KEYS

pytestmark = pytest.mark.timeout(30)


class Rig:
    def __init__(self, tmp_path: Path):
        self.clock = Clock()
        cfg = load_config(site_file(tmp_path))
        cfg.cycle.period_s = 0.1
        cfg.limits.ramp_mw_per_s = 1000.0  # ramping has its own tests; here setpoints should land at once
        cfg.mqtt.enabled = False
        for dev in cfg.devices.values():
            dev.poll_interval_s = 0.001  # poll on every cycle
        self.config = cfg
        self.bms = DummyDevice("bms", self.clock, HEALTHY_BMS)
        self.pcs = DummyDevice("pcs", self.clock, {"power_mw": 0.0, "setpoint_mw": 0.0})
        self.store = Store(tmp_path / "bess-edge.db")
        devices = DeviceSet(cfg, self.clock, drivers={"bms": self.bms, "pcs": self.pcs})
        self.controller = Controller(cfg, self.store, self.clock, devices=devices)

    async def cycles(self, n: int = 1):
        d = None
        for _ in range(n):
            d = await self.controller.run_cycle()
            await asyncio.sleep(0.01)
        return d

    def trade(self, side: str, mw: float, trade_id: str = "T1", periods: int = 1) -> dict:
        start = int(self.clock.now()) // 900 * 900
        return {
            "trade_id": trade_id,
            "side": side,
            "quantity_mw": mw,
            "price_eur_mwh": 80.0,
            "delivery_start": iso(start).replace(".000Z", "Z"),
            "delivery_end": iso(start + 900 * periods).replace(".000Z", "Z"),
            "market": "intraday",
            "executed_at": iso(self.clock.now()),
        }


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.store.close()


async def test_trade_for_the_current_period_reaches_the_pcs(rig):
    await rig.cycles(2)
    assert rig.pcs.setpoints()[-1] == 0.0
    ack = rig.controller.accept_trade(rig.trade("sell", 4.0))
    assert ack.accepted, ack.reason
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(4.0) and d.binding == "none"
    assert rig.pcs.setpoints()[-1] == pytest.approx(4.0)
    assert rig.controller.status()["target_mw"] == pytest.approx(4.0)
    # a buy of 6 MW in the same period nets to -2 MW (charge)
    assert rig.controller.accept_trade(rig.trade("buy", 6.0, "T2")).accepted
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(-2.0)


async def test_an_mqtt_trade_redelivered_before_its_ack_was_confirmed_is_accepted_once(rig):
    """We died between storing an MQTT trade and the broker taking our ack: the exchange got no answer and
    redelivers it. The answer is "accepted" (it is stored and will be delivered), and it is not dispatched twice.
    Once the ack is confirmed, a replay is a refused duplicate; the id with other content is refused either way."""
    t = rig.trade("sell", 3.0)
    assert rig.controller.accept_trade(t, source="mqtt").accepted
    again = rig.controller.accept_trade(t, source="mqtt")
    assert again.accepted and "not dispatched again" in again.reason
    other = rig.controller.accept_trade({**t, "quantity_mw": 5.0}, source="mqtt")
    assert not other.accepted and "duplicate" in other.reason
    rig.controller.confirm_trade_ack("T1")
    replay = rig.controller.accept_trade(t, source="mqtt")
    assert not replay.accepted and "duplicate" in replay.reason
    assert [t["trade_id"] for t in rig.store.trades()] == ["T1"]
    assert rig.controller.schedule.position_mw(rig.clock.now()) == pytest.approx(3.0)


async def test_duplicate_and_bad_trades_change_nothing(rig):
    assert rig.controller.accept_trade(rig.trade("sell", 3.0)).accepted
    # the id again with other content (an identical body within the same millisecond of executed_at would be
    # the unanswered-redelivery case of the test above, accepted without being dispatched again)
    dup = rig.controller.accept_trade(rig.trade("sell", 4.0))
    assert not dup.accepted and "duplicate" in dup.reason
    bad = rig.trade("sell", 3.0, "T9")
    bad["delivery_start"] = (
        bad["delivery_start"].replace(":00Z", ":07Z")
        if bad["delivery_start"].endswith(":00Z")
        else bad["delivery_start"]
    )
    bad["quantity_mw"] = -1
    ack = rig.controller.accept_trade(bad)
    assert not ack.accepted and "quantity_mw" in ack.reason
    assert [t["trade_id"] for t in rig.store.trades()] == ["T1"]
    assert rig.controller.schedule.position_mw(rig.clock.now()) == pytest.approx(3.0)


async def test_trade_above_the_power_limit_is_clipped_and_binding_says_why(rig):
    await rig.cycles(1)
    rig.controller.accept_trade(rig.trade("sell", 14.0))
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(10.0)
    assert d.binding in ("p_discharge_max", "grid_limit")
    rig.bms.values["allowed_discharge_mw"] = 6.0
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(6.0) and d.binding == "bms_allowed_discharge"


async def test_no_setpoint_before_every_device_answered_since_start(rig):
    rig.controller.accept_trade(rig.trade("sell", 5.0))
    rig.bms.error = DeviceTimeout("bms", "no answer")
    rig.controller._started_ts = rig.clock.now()
    d = await rig.cycles(3)
    assert d.setpoint_mw == 0.0 and d.binding in ("stale", "comm_loss")
    assert all(v == 0.0 for v in rig.pcs.setpoints())
    rig.bms.error = None
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(5.0)


@pytest.mark.parametrize(
    "fault, binding",
    [
        (DeviceTimeout("bms", "no answer within 0.5 s"), "comm_loss"),
        (Disconnected("bms", "connection refused"), "comm_loss"),
    ],
)
async def test_device_failure_gives_safe_state_alarm_and_recovery(rig, fault, binding):
    rig.controller.accept_trade(rig.trade("sell", 5.0))
    assert (await rig.cycles(2)).setpoint_mw == pytest.approx(5.0)
    rig.bms.error = fault
    await rig.cycles(1)  # one failed read: not yet stale
    d = await rig.cycles(1)  # two failed reads: stale = unknown -> 0 MW
    assert d.setpoint_mw == 0.0 and d.binding == binding
    assert rig.pcs.setpoints()[-1] == 0.0
    alarms = rig.controller.status()["alarms"]
    assert any("bms" in a and fault.cause in a for a in alarms), alarms
    assert rig.store.active_alarms()
    rig.bms.error = None
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(5.0)
    assert rig.controller.status()["alarms"] == []
    assert rig.store.active_alarms() == []


async def test_bms_alarm_bit_gives_safe_state_named_in_plain_words(rig):
    rig.controller.accept_trade(rig.trade("buy", 5.0))
    assert (await rig.cycles(2)).setpoint_mw == pytest.approx(-5.0)
    rig.bms.values["alarm_bits"] = 1 << 2
    d = await rig.cycles(1)
    assert d.setpoint_mw == 0.0 and d.binding == "alarm"
    assert any("over_temperature" in a for a in rig.controller.status()["alarms"])
    rig.bms.values["alarm_bits"] = 0
    assert (await rig.cycles(1)).setpoint_mw == pytest.approx(-5.0)


async def test_readback_mismatch_raises_alarm_and_commands_safe_state(rig):
    rig.controller.accept_trade(rig.trade("sell", 5.0))
    await rig.cycles(1)
    rig.pcs.readback_offset = 0.5
    await rig.cycles(1)
    assert rig.pcs.writes[-1] == ("setpoint_mw", 0.0) or rig.pcs.setpoints()[-1] == 0.0
    assert any("wrote" in a for a in rig.controller.status()["alarms"])
    rig.pcs.readback_offset = 0.0
    d = await rig.cycles(1)
    assert d.setpoint_mw == 0.0 and d.binding == "alarm"  # held safe for a while after a mismatch
    rig.controller.units[0].readback_hold_until = 0.0
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(5.0)


async def test_manual_mode_is_limited_and_expires(rig):
    await rig.cycles(1)
    rig.controller.set_mode("manual", 25.0, expires_s=0.3)
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(10.0) and d.binding in ("p_discharge_max", "grid_limit")
    expires_ts = rig.controller.mode.manual_expires_ts
    # cycle until the manual setpoint expires (bounded): held at 10 MW until then, never expired early
    for _ in range(500):
        d = await rig.cycles(1)
        if rig.controller.mode.mode != "manual":
            break
        assert d.setpoint_mw == pytest.approx(10.0)
    assert rig.clock.now() >= expires_ts, "expired early"
    assert rig.controller.mode.mode == "auto" and d.setpoint_mw == 0.0, "the manual setpoint did not expire"
    with pytest.raises(ValueError, match="setpoint_mw"):
        rig.controller.set_mode("manual", float("nan"))
    with pytest.raises(ValueError, match="mode"):
        rig.controller.set_mode("turbo")


async def test_stopped_mode_and_mode_survives_restart(rig, tmp_path):
    rig.controller.accept_trade(rig.trade("sell", 5.0))
    rig.controller.set_mode("stopped")
    d = await rig.cycles(2)
    assert d.setpoint_mw == 0.0 and d.binding == "mode_stopped"
    again = Controller(
        rig.config,
        rig.store,
        rig.clock,
        devices=DeviceSet(rig.config, rig.clock, drivers={"bms": rig.bms, "pcs": rig.pcs}),
    )
    assert again.mode.mode == "stopped"
    assert again.schedule.position_mw(rig.clock.now()) == pytest.approx(5.0)


async def test_soc_limits_stop_charge_and_discharge(rig):
    rig.controller.accept_trade(rig.trade("sell", 8.0))
    rig.bms.values["soc_pct"] = 10.0
    d = await rig.cycles(2)
    assert d.setpoint_mw == 0.0 and d.binding == "soc_min"
    rig.bms.values["soc_pct"] = 12.5  # inside the 5 % taper band above soc_min
    d = await rig.cycles(1)
    assert d.setpoint_mw == pytest.approx(5.0) and d.binding == "soc_taper"  # 10 MW * 2.5/5
    rig.controller.accept_trade(rig.trade("buy", 16.0, "T2"))  # net -8 MW: charge
    rig.bms.values["soc_pct"] = 90.0
    d = await rig.cycles(1)
    assert d.setpoint_mw == 0.0 and d.binding == "soc_max"


async def test_temperature_derates_then_stops(rig):
    rig.controller.accept_trade(rig.trade("sell", 10.0))
    rig.bms.values["temperature_max_c"] = 50.0  # halfway between 45 and 55
    d = await rig.cycles(2)
    assert d.setpoint_mw == pytest.approx(5.0) and d.binding == "temperature"
    rig.bms.values["temperature_max_c"] = 56.0
    d = await rig.cycles(1)
    assert d.setpoint_mw == 0.0 and d.binding == "temperature"


async def test_every_cycle_is_recorded_and_published(rig):
    states = []  # every cycle's PlantState, as the faces get it
    rig.controller.faces.attach(Phase.AFTER_WRITE, states.append)
    await rig.cycles(3)
    rig.store.flush()
    assert len(rig.store.decisions(limit=10)) == 3
    assert [st.cycles for st in states] == [1, 2, 3]
    assert set(telemetry(states[-1], 0.0)) == TELEMETRY_KEYS
    assert telemetry(states[-1], 0.0)["fcr"] is None and telemetry(states[-1], 0.0)["afrr"] is None
    assert status(states[-1], 0.0)["status"] == "online"


@pytest.mark.parametrize("watchdog_usec,warned", [("1000000", True), ("60000000", False), (None, False)])
async def test_device_timeouts_near_the_systemd_watchdog_are_warned_about_at_start(
    rig, monkeypatch, caplog, watchdog_usec, warned
):
    """Every completed cycle pings the watchdog, and a silent device stretches a cycle to its timeout: a
    WatchdogSec too short for the devices' timeouts would get a healthy daemon restarted."""
    if watchdog_usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", watchdog_usec)
    await rig.controller.start()
    await rig.controller.stop()
    said = any("timeouts are long for the systemd watchdog" in r.getMessage() for r in caplog.records)
    assert said is warned


async def test_faces_see_the_phases_in_order_and_a_frozen_state(rig):
    """A running cycle goes READ → DECIDE → WRITE → AFTER_WRITE → IDLE; AFTER_WRITE hands over the new state,
    accepted trades come as an event, a callback that raises does not stop the others, and a mode change between
    cycles shows in `latest()` at once."""
    seen: list[tuple[str, int]] = []
    for phase in Phase:
        rig.controller.faces.attach(phase, lambda st, p=phase: seen.append((p.value, st.cycles)))

    def broken(_state):
        raise RuntimeError("a face's bug")

    rig.controller.faces.attach(Phase.AFTER_WRITE, broken)
    trades = []
    rig.controller.faces.attach(Event.TRADE_ACCEPTED, trades.append)
    await rig.controller.start()
    try:
        await wait_until(lambda: sum(1 for p, _ in seen if p == "idle") >= 2)
    finally:
        await rig.controller.stop()
    first = [p for p, _ in seen[:5]]
    assert first == ["read", "decide", "write", "after_write", "idle"], seen
    assert [n for p, n in seen if p == "after_write"][:2] == [1, 2]
    state = rig.controller.faces.latest()
    with pytest.raises(AttributeError):
        state.mode = "stopped"  # frozen
    rig.controller.accept_trade(rig.trade("sell", 2.0))
    assert [t.trade_id for t in trades] == ["T1"]
    rig.controller.set_mode("stopped", source="test")
    assert rig.controller.faces.latest().mode == "stopped" and state.mode == "auto"


async def wait_until(cond, timeout_s: float = 10.0) -> None:
    """A bounded wait for a condition (never a timed assertion)."""
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)
