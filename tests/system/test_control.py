"""The control cycle end to end: a real Controller (real drivers) on the real plant simulators (BMS over Modbus
TCP, PCS over SunSpec), config/demo-single-modbus.yaml. What the PCS simulator holds in its registers and what the
battery model delivers are the evidence: trades reach the PCS, limits bind, faults give 0 MW and an alarm
naming the device and the cause, recovery is automatic, period boundaries apply at once, the reversion
timeout is armed and kept fresh.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller.clock import Clock
from controller.cycle.loop import Controller
from controller.cycle.phases import Phase
from controller.trading.market import PERIOD_S, period_start
from simulators.plant import Plant
from tests.fixtures.controller import make_controller, trade, wait_for
from tests.fixtures.plant import make_plant, plant, wset_mw  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(90)

FAST_RAMP = {"limits": {"ramp_mw_per_s": 1000}}  # one cycle from 0 to any target: "within one cycle" is visible


def mid_period_clock(offset_s: float = 300.0) -> Clock:
    """A real-speed clock placed `offset_s` into the current period, so that no test's trade for "the current
    period" runs into a boundary by accident."""
    return Clock(start=period_start(time.time()) + offset_s)


def add_current(c: Controller, trade_id: str, side: str, quantity_mw: float) -> None:
    now = c.clock.now()
    ack = c.accept_trade(trade(trade_id, side, quantity_mw, period_start(now), now), source="test")
    assert ack.accepted, ack


def merge(*dicts: dict[str, Any]) -> dict[str, Any]:
    from tests.fixtures.controller import deep_merge

    out: dict[str, Any] = {}
    for d in dicts:
        out = deep_merge(out, d)
    return out


# ------------------------------------------------------------------------------------------- trades to the PCS
@pytest.mark.parametrize("side,expected_mw", [("sell", 4.0), ("buy", -3.0)])
async def test_trade_for_current_period_reaches_the_pcs_within_one_cycle(plant, tmp_path, side, expected_mw):
    async with make_controller(plant, tmp_path, clock=mid_period_clock(), **FAST_RAMP) as c:
        assert wset_mw(plant) == 0.0
        at_cycle_end: list[tuple[int, float]] = []  # (cycle number, the PCS's setpoint in MW) as each cycle ends
        c.faces.attach(Phase.AFTER_WRITE, lambda st: at_cycle_end.append((st.cycles, wset_mw(plant))))
        n0 = c.stats.cycles
        add_current(c, "T-1", side, abs(expected_mw))
        await wait_for(lambda: at_cycle_end and at_cycle_end[-1][0] >= n0 + 2, 5, "two cycles after the trade")
        # cycle n0+1 may have been running (past its target) when the trade came; n0+2 started after it, and wrote
        # it. How fast that is (the trade wakes the cycle) is bench/cycle.py's trade-to-setpoint figure.
        assert dict(at_cycle_end)[n0 + 2] == pytest.approx(expected_mw, abs=1e-6), at_cycle_end
        # the cycle records its decision just after the write lands at the PCS
        await wait_for(lambda: c.decision.target_mw == pytest.approx(expected_mw), 2, "the cycle's decision")
        assert c.decision.binding == "none"
        assert c.dispatcher.last_readback_mw == pytest.approx(expected_mw, abs=1e-6)
        # the PCS ramps its power stage at 10 MW/s: the battery delivers the target well within a second
        await wait_for(lambda: plant.model.power_mw == pytest.approx(expected_mw, abs=0.01), 3, "the plant's power")
        await wait_for(lambda: c.snapshot.power_mw == pytest.approx(expected_mw, abs=0.01), 3, "power read back")


async def test_a_trade_above_the_power_limits_is_clipped_and_binding_says_why(plant, tmp_path):
    limits = {"limits": {"p_discharge_max_mw": 6, "p_charge_max_mw": 10, "grid_limit_mw": 8}}
    async with make_controller(plant, tmp_path, clock=mid_period_clock(), **merge(FAST_RAMP, limits)) as c:
        add_current(c, "T-sell", "sell", 9.0)
        await wait_for(lambda: wset_mw(plant) == pytest.approx(6.0), 5, "the clipped discharge at the PCS")
        await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(6.0), 2, "the cycle's decision")
        d = c.decision
        assert (d.target_mw, d.setpoint_mw, d.binding) == (9.0, 6.0, "p_discharge_max")
        assert "p_discharge_max 6 MW" in d.reasons[0]
        assert c.status()["binding"] == "p_discharge_max"

        add_current(c, "T-buy", "buy", 18.0)  # net position -9 MW: the 8 MW grid connection binds first
        await wait_for(lambda: wset_mw(plant) == pytest.approx(-8.0), 5, "the clipped charge at the PCS")
        await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(-8.0), 2, "the cycle's decision")
        d = c.decision
        assert (d.target_mw, d.setpoint_mw, d.binding) == (-9.0, -8.0, "grid_limit")
        assert "grid connection limit 8 MW" in d.reasons[0]
        await wait_for(lambda: plant.model.power_mw == pytest.approx(-8.0, abs=0.01), 3, "the plant charging 8 MW")


# ------------------------------------------------------------------------------------------------ SoC limits
# The plant's clock runs 20x: 2 % SoC of the 20 MWh battery at 10 MW take ~8 s. The PCS counts its reversion
# timeout on that clock too, so it is set long enough (60 plant s = 3 s real) not to fire between cycles.
SOC_TEST = merge(FAST_RAMP, {"limits": {"soc_taper_band_pct": 0}, "devices": {"pcs": {"reversion_timeout_s": 60}}})


@pytest.mark.parametrize(
    "side,start_soc,binding,bound", [("buy", 88.0, "soc_max", 90.0), ("sell", 12.0, "soc_min", 10.0)]
)
async def test_charging_stops_at_soc_max_and_discharging_at_soc_min(
    make_plant, tmp_path, side, start_soc, binding, bound
):
    plant = await make_plant(clock=Clock(speed=20), initial_soc_pct=start_soc)
    async with make_controller(plant, tmp_path, clock=mid_period_clock(), **SOC_TEST) as c:
        add_current(c, "T-1", side, 10.0)
        sign = -1.0 if side == "buy" else 1.0
        await wait_for(lambda: plant.model.power_mw == pytest.approx(10.0 * sign, abs=0.05), 5, "full power")
        await wait_for(lambda: c.decision.binding == binding, 30, f"the {binding} limit to bind")
        assert c.decision.setpoint_mw == 0.0 and c.decision.target_mw == pytest.approx(10.0 * sign)
        await wait_for(lambda: wset_mw(plant) == 0.0 and abs(plant.model.power_mw) < 1e-6, 3, "the PCS at 0 MW")
        soc_at_stop = plant.model.soc_pct
        # one cycle of 0.2 s real at 20x and 10 MW moves the SoC by ~0.05 %: that is all the overshoot there is
        assert abs(soc_at_stop - bound) < 0.2, soc_at_stop
        cycles = c.stats.cycles  # five cycles (1 s real, 20 plant seconds): still held while the trade asks for 10
        await wait_for(lambda: c.stats.cycles >= cycles + 5, 10, "five more cycles at the limit")
        assert c.decision.binding == binding and wset_mw(plant) == 0.0 and abs(plant.model.power_mw) < 1e-6
        assert abs(plant.model.soc_pct - soc_at_stop) < 0.01
        assert f"{binding} {bound:g} %" in c.decision.reasons[0]


# ------------------------------------------------------------------------------------------------ temperature
async def test_temperature_derates_above_t_derate_and_stops_above_t_max(plant, tmp_path):
    async with make_controller(plant, tmp_path, clock=mid_period_clock(), **FAST_RAMP) as c:
        add_current(c, "T-1", "sell", 8.0)
        await wait_for(lambda: wset_mw(plant) == pytest.approx(8.0), 5, "8 MW at the PCS")
        # 50 °C: the controller derates linearly from 45 to 55 °C -> 50 % of 10 MW; the BMS (48-58 °C) still allows 8
        plant.model.set_state(temperature_c=50.0)
        await wait_for(lambda: c.decision.binding == "temperature", 5, "the temperature derate")
        assert c.decision.setpoint_mw == pytest.approx(5.0, abs=0.05)
        await wait_for(lambda: wset_mw(plant) == pytest.approx(c.decision.setpoint_mw, abs=1e-3), 3, "derated PCS")
        assert 4.9 < wset_mw(plant) < 5.1
        assert "temperature 50" in c.decision.reasons[0]

        plant.model.set_state(temperature_c=56.0)  # above t_max 55 °C: no power at all
        await wait_for(lambda: c.decision.setpoint_mw == 0.0, 5, "0 MW above t_max")
        assert c.decision.binding == "temperature" and "t_max 55" in c.decision.reasons[0]
        await wait_for(lambda: wset_mw(plant) == 0.0 and abs(plant.model.power_mw) < 1e-6, 3, "the PCS at 0 MW")

        plant.model.set_state(temperature_c=30.0)
        await wait_for(lambda: wset_mw(plant) == pytest.approx(8.0), 5, "full power again when cool")
        # the cycle records its decision just after the write lands at the PCS
        await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(8.0), 2, "the cool cycle's decision")
        assert c.decision.binding == "none"


# ---------------------------------------------------------------------------------------------- device faults
def _bms_silent(p: Plant) -> None:
    p.faults["bms_modbus"].silent = True


def _bms_late(p: Plant) -> None:
    p.faults["bms_modbus"].delay_s = 1.5  # the BMS device's timeout_s is 1.0


def _bms_exception(p: Plant) -> None:
    p.faults["bms_modbus"].exception_code = 4  # slave device failure


def _bms_drop(p: Plant) -> None:
    p.faults["bms_modbus"].drop = True


def _bms_fault_bit(p: Plant) -> None:
    p.faults["bms_modbus"].fault_bits = 1 << 1  # insulation_fault in the generic BMS profile


def _pcs_silent(p: Plant) -> None:
    p.faults["pcs"].silent = True


# (inject, device, causes the alarm may give, binding of the safe state)
FAULTS = {
    "bms_silent": (_bms_silent, "bms", {"timeout"}, "comm_loss"),
    "bms_late": (_bms_late, "bms", {"timeout"}, "comm_loss"),
    "bms_modbus_exception": (_bms_exception, "bms", {"modbus_exception"}, "stale"),
    "bms_dropped_connection": (_bms_drop, "bms", {"disconnected"}, "comm_loss"),
    "bms_fault_bit": (_bms_fault_bit, "bms", {"insulation_fault"}, "alarm"),
    "pcs_silent": (_pcs_silent, "pcs", {"timeout"}, "comm_loss"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_device_fault_gives_0_mw_and_an_alarm_then_recovers(plant, tmp_path, fault):
    inject, device, causes, binding = FAULTS[fault]
    # the PCS reversion is 2 s here: a silent PCS cannot be told 0 MW, its own timer has to bring it there
    overrides = merge(FAST_RAMP, {"devices": {"pcs": {"reversion_timeout_s": 2}}})
    async with make_controller(plant, tmp_path, clock=mid_period_clock(), **overrides) as c:
        add_current(c, "T-1", "sell", 3.0)
        await wait_for(lambda: wset_mw(plant) == pytest.approx(3.0), 5, "3 MW at the PCS")
        await wait_for(lambda: plant.model.power_mw == pytest.approx(3.0, abs=0.01), 3, "3 MW delivered")

        cycles_before = c.stats.cycles
        inject(plant)
        await wait_for(lambda: c.decision.setpoint_mw == 0.0, 10, f"the safe state after {fault}")
        cycles = c.stats.cycles - cycles_before
        # the cycle running at injection, then the failed reads that make a device stale (2), then the decision
        assert cycles <= 3, f"{fault}: safe state took {cycles} cycles"
        assert c.decision.binding == binding, c.decision
        await wait_for(
            lambda: any(a["device"] == device and a["cause"] in causes for a in c.active_alarms.values()),
            5,
            f"an alarm naming {device} and {causes}",
        )
        alarm = next(a for a in c.active_alarms.values() if a["device"] == device and a["cause"] in causes)
        assert device in alarm["message"] and alarm["message"] in c.status()["alarms"]
        assert c.status()["status"] == ("online" if binding == "alarm" else "offline")
        # the plant itself: 0 MW (for a silent PCS through its own reversion timer, 2 s)
        await wait_for(lambda: abs(plant.model.power_mw) < 1e-6, 6, "the plant at 0 MW")
        if device == "pcs":
            assert plant.pcs.reversions >= 1
        else:
            assert wset_mw(plant) == 0.0

        plant.faults["bms_modbus" if device == "bms" else "pcs"].clear()
        await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(3.0), 15, f"recovery after {fault}")
        await wait_for(lambda: wset_mw(plant) == pytest.approx(3.0), 5, "3 MW at the PCS again")
        await wait_for(lambda: plant.model.power_mw == pytest.approx(3.0, abs=0.01), 3, "3 MW delivered again")
        await wait_for(
            lambda: not [a for a in c.active_alarms.values() if a["device"] == device], 3, "the alarm cleared"
        )
        assert c.decision.binding == "none" and c.status()["status"] == "online"


# ----------------------------------------------------------------------------------------- period boundaries
@pytest.mark.parametrize("next_side,next_mw", [("buy", -3.0), (None, 0.0)])
async def test_new_period_applies_at_the_boundary_and_the_old_one_ends(plant, tmp_path, next_side, next_mw):
    """The cycle is 10 s here (the longest allowed), so a cycle that runs after the boundary and before the next
    regular one is due can only be the boundary wake-up's (APScheduler): the order of the cycles in the
    decision log, stamped by the controller's clock, shows it; no wall-time bound on how soon."""
    period_s = 10.0
    boundary = period_start(time.time()) + PERIOD_S
    clock = Clock(start=boundary - 5.0)
    # stale_after_s must exceed the cycle period and the PCS reversion be >= 2 periods (config checks)
    overrides = merge(
        FAST_RAMP,
        {
            "cycle": {"period_s": period_s},
            "limits": {"stale_after_s": 24},
            "devices": {"pcs": {"reversion_timeout_s": 3 * period_s}},
        },
    )
    async with make_controller(plant, tmp_path, clock=clock, **overrides) as c:
        now = clock.now()
        assert now < boundary - 1.0, "the controller took too long to start"
        ack = c.accept_trade(trade("T-now", "sell", 4.0, boundary - PERIOD_S, now), source="test")
        assert ack.accepted, ack
        if next_side:
            ack = c.accept_trade(trade("T-next", next_side, abs(next_mw), boundary, now), source="test")
            assert ack.accepted, ack
        await wait_for(lambda: wset_mw(plant) == pytest.approx(4.0), 1, "4 MW at the PCS before the boundary")
        wakeups, cycles = c.stats.boundary_wakeups, c.stats.cycles

        await wait_for(lambda: wset_mw(plant) != pytest.approx(4.0), 15, "the setpoint to change at the boundary")
        assert wset_mw(plant) == pytest.approx(next_mw)
        assert c.stats.boundary_wakeups == wakeups + 1
        assert c.stats.cycles - cycles <= 2  # the wake-up's cycle (a regular one is 10 s away)
        await wait_for(lambda: c.decision.target_mw == pytest.approx(next_mw), 2, "the boundary cycle's decision")
        assert c.stats.missed_boundaries == 0
        log = sorted(c.store.decisions(limit=1000), key=lambda d: d["ts"])
        before = [d for d in log if d["ts"] < boundary]
        after = [d for d in log if d["ts"] >= boundary]
        assert before and before[-1]["target_mw"] == pytest.approx(4.0), before[-1:]
        # the first cycle after the boundary applied the new period, and it ran before the next regular cycle
        # was due (at most a period after the last cycle before the boundary)
        assert after and after[0]["target_mw"] == pytest.approx(next_mw), after[:1]
        assert after[0]["ts"] < before[-1]["ts"] + period_s, (before[-1], after[0])


# -------------------------------------------------------------------------------------------------- reversion
# the writes that restart the PCS simulator's reversion timer (simulators/pcs.py, Pcs.on_write)
REVERSION_RESTARTS = {"704.WSet", "704.WSetPct", "802.CtrlHb", "704.WSetRvrtTms", "704.WSetEna"}


async def test_the_pcs_reversion_timeout_is_armed_and_refreshed(plant, tmp_path):
    # the PCS powers up with a 10 s reversion: the controller writes its own (4 s) so the arming is visible
    async with make_controller(
        plant, tmp_path, clock=mid_period_clock(), **merge(FAST_RAMP, {"devices": {"pcs": {"reversion_timeout_s": 4}}})
    ) as c:
        regs = plant.pcs_server
        assert regs.get("704.WSetRvrtTms") == 4
        assert regs.get("704.WSetRvrt") == 0 and regs.get("704.WSetEna") == 1
        add_current(c, "T-1", "sell", 2.0)
        await wait_for(lambda: wset_mw(plant) == pytest.approx(2.0), 5, "2 MW at the PCS")
        # every cycle restarts the device's timer (a setpoint or heartbeat write): counted over 15 cycles, the
        # 3 s of 3/4 of the timeout, rather than sampling how low the remaining time falls on a busy machine
        restarts: list[set[str]] = []
        inner = regs.on_write

        def spy(changes):
            restarts.append(set(changes) & REVERSION_RESTARTS)
            return inner(changes)

        regs.on_write = spy
        cycles = c.stats.cycles
        await wait_for(lambda: c.stats.cycles >= cycles + 15, 15, "15 cycles")
        regs.on_write = inner
        ran = c.stats.cycles - cycles
        assert sum(bool(r) for r in restarts) >= ran - 1, f"{ran} cycles, timer restarted by {restarts}"
        remaining = plant.pcs.reversion_remaining_s  # just after a cycle's refresh
        assert remaining is not None, "reversion timer not running"
        assert remaining >= 2.0, f"reversion timer at {remaining:.2f} s of 4 s just after a cycle"
        assert plant.pcs.reversions == 0 and wset_mw(plant) == pytest.approx(2.0)
        assert regs.get("704.WSetRvrtRem") >= 2
