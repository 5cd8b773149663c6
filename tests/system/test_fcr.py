"""FCR on a real plant: the meter and PCS simulators, the real controller and drivers. A frequency step injected
at the meter simulator through its control API reaches the PCS through the fast path, between two cycles
(counted: fast-path writes and cycles, not wall time); FCR off -> nothing; the reserve held back from trading
and its alarm; the provision records and their CSV."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controller.clock import Clock, iso
from controller.config import load_config
from controller.cycle.devices import DeviceSet
from controller.metrics import Metrics
from controller.services.records import CSV_HEADER, csv_lines
from controller.trading.market import PERIOD_S
from tests.fixtures.controller import running_controller, wait_for
from tests.fixtures.fcr import fcr_site_file, running_site_plant, sim

ROOT = Path(__file__).resolve().parents[2]

# a slow cycle (10 s) so that anything that moves the PCS within a few seconds is the fast path's doing
SLOW_CYCLE = {
    "cycle": {"period_s": 10.0},
    "limits": {"stale_after_s": 30.0},
    "devices": {"pcs": {"reversion_timeout_s": 30}},
}


async def test_a_frequency_step_reaches_the_pcs_through_the_fast_path(tmp_path) -> None:
    cfg = load_config(fcr_site_file(tmp_path, **SLOW_CYCLE))
    async with running_site_plant(cfg), running_controller(cfg, tmp_path / "state") as c:
        await sim(cfg, "frequency", wander=False, hz=50.0)
        await wait_for(lambda: c.fcr.frequency_hz == 50.0, 5, "the fast path to read 50 Hz")
        cycles, writes = c.stats.cycles, c.fast_path.writes
        assert c.dispatcher.last_readback_mw == 0.0
        await sim(cfg, "frequency", step_hz=-0.1)  # 100 mHz low: half of the 8 MW band, discharging
        await wait_for(
            lambda: c.dispatcher.last_readback_mw == pytest.approx(4.0, abs=0.01), 8, "4 MW read back from the PCS"
        )
        # it got there by fast-path writes (the ramp of 5 MW/s takes a few of them), with at most one cycle
        assert c.fast_path.writes - writes >= 2
        assert c.stats.cycles - cycles <= 1
        assert c.fast_path.rounds > 0
        status = c.status()
        assert status["fcr"]["enabled"] is True and status["fcr"]["contribution_mw"] == pytest.approx(4.0)
        assert status["fcr"]["frequency_hz"] == pytest.approx(49.9)

        await sim(cfg, "frequency", step_hz=0.3)  # 50.2 Hz: full activation, charging
        await wait_for(lambda: c.dispatcher.last_readback_mw == pytest.approx(-8.0, abs=0.01), 8, "-8 MW read back")


async def test_the_fast_paths_meter_read_shares_the_meters_poll(tmp_path) -> None:
    """DeviceLink.read_now (the fast path's read) awaits a poll's read in flight instead of asking the meter
    again, and updates the link like a poll: the meter is not due for its poll right after."""
    cfg = load_config(fcr_site_file(tmp_path))
    clock = Clock()
    async with running_site_plant(cfg):
        devices = DeviceSet(cfg, clock)
        try:
            meter = devices.meter
            assert meter is not None
            assert await meter.read_now(clock.now()) is True  # connected; the static common model read once
            stats = meter.driver.stats
            reads, requests = stats.reads, stats.requests
            poll = meter.begin(clock.now())  # the meter's own poll, in flight
            assert poll is not None and await meter.read_now(clock.now()) is True
            assert poll.done() and stats.reads == reads + 1  # one read on the wire for the two
            per_read = stats.requests - requests
            asked = clock.now()
            assert await meter.read_now(asked) is True
            assert stats.reads == reads + 2 and stats.requests == requests + 2 * per_read
            assert meter.last_good_ts == asked and meter.last_poll_ts == asked and meter.failures == 0
            assert not meter.due(clock.now())  # the poll skips a meter read just now
            assert meter.value("frequency_hz") is not None
            # the cycle's own read of the meter while the fast path's is in flight (its first cycle does so):
            # waited for as its own, neither asked again nor counted as an unanswered request
            fast = asyncio.ensure_future(meter.read_now(clock.now()))
            await asyncio.sleep(0)  # the fast path's read has started
            assert meter._inflight is not None
            await meter.poll(clock.now(), timeout_s=5.0)
            assert await fast is True and meter.failures == 0 and meter.errors_total == 0
            assert stats.reads == reads + 3
        finally:
            await devices.close()


async def test_the_fast_path_and_the_meters_poll_do_not_double_its_reads(tmp_path) -> None:
    """With the fast path (every 0.1 s) and the meter's own poll (every 0.2 s, on a 0.2 s cycle) both running,
    the meter is read about once per fast-path round, not once per round plus once per poll (counted: the
    meter driver's reads and requests against the fast path's rounds; before, 30 rounds came with ~15 more
    reads). The POI figures still come from the meter's link."""
    cfg = load_config(
        fcr_site_file(tmp_path, cycle={"period_s": 0.2}, services={"fcr": {"enabled": True, "fast_path_s": 0.1}})
    )
    assert cfg.devices["poi"].poll_interval_s == 0.2
    async with running_site_plant(cfg), running_controller(cfg, tmp_path / "state") as c:
        fast, stats = c.fast_path, c._meter.driver.stats
        assert fast is not None
        await wait_for(lambda: c.devices.polling and fast.rounds >= 3, 10, "the meter's poll and the fast path")
        asked0, reads0, requests0 = fast.rounds + fast.failures, stats.reads, stats.requests
        await wait_for(lambda: fast.rounds + fast.failures >= asked0 + 30, 30, "30 fast-path rounds")
        asked, reads, requests = fast.rounds + fast.failures - asked0, stats.reads - reads0, stats.requests - requests0
        per_read = round(requests / max(reads, 1))  # Modbus requests of one read of the meter
        # one read may be in flight at either end of the window (its requests partly counted); a stalled loop may
        # let one poll through
        assert reads <= asked + 2, (reads, asked)
        assert requests <= (asked + 3) * per_read, (requests, reads, asked)
        assert c.status()["poi"]["frequency_hz"] is not None


async def test_fast_path_errors_are_counted_once_and_reach_the_state_and_metrics(tmp_path) -> None:
    """The fast path's counters are its own (FastPath: rounds, writes, failures), the ones FcrState and the metrics
    carry; a silent meter counts fast-path errors there (bess_fcr_fast_path_errors_total), and rounds resume."""
    cfg = load_config(fcr_site_file(tmp_path))
    async with running_site_plant(cfg), running_controller(cfg, tmp_path / "state") as c:
        fast = c.fast_path
        assert fast is not None
        await sim(cfg, "frequency", wander=False, hz=49.9)
        await wait_for(lambda: fast.writes >= 1, 10, "a fast-path write")
        assert fast.failures == 0
        await sim(cfg, "faults/meter", silent=True)
        await wait_for(lambda: fast.failures >= 2, 15, "two failed fast-path rounds")
        cycles = c.stats.cycles
        await wait_for(lambda: c.stats.cycles > cycles, 10, "a cycle")
        state = c.faces.latest()
        assert state.fcr is not None and state.fcr.fast_errors >= 2
        assert state.fcr.fast_writes <= fast.writes and state.fcr.fast_ticks <= fast.rounds
        metrics = Metrics(CollectorRegistry())
        metrics.on_cycle(state)
        value = metrics.registry.get_sample_value
        assert value("bess_fcr_fast_path_errors_total") == state.fcr.fast_errors
        assert value("bess_fcr_fast_path_writes_total") == state.fcr.fast_writes
        await sim(cfg, "faults/meter", silent=False)
        rounds = fast.rounds
        await wait_for(lambda: fast.rounds > rounds + 2, 15, "fast-path rounds again")


async def test_fcr_off_leaves_the_plant_alone_and_on_again_follows(tmp_path) -> None:
    cfg = load_config(fcr_site_file(tmp_path, services={"fcr": {"enabled": False}}))
    async with running_site_plant(cfg), running_controller(cfg, tmp_path / "state") as c:
        await sim(cfg, "frequency", wander=False, hz=49.8)
        cycles = c.stats.cycles
        await wait_for(lambda: c.stats.cycles >= cycles + 3, 10, "three cycles")
        assert c.dispatcher.last_readback_mw == 0.0 and c.status()["fcr"]["enabled"] is False
        assert c.set_fcr(True, source="test") is True
        await wait_for(lambda: c.dispatcher.last_readback_mw == pytest.approx(8.0, abs=0.01), 8, "8 MW")
        c.set_fcr(False, source="test")
        await wait_for(lambda: c.dispatcher.last_readback_mw == 0.0, 8, "back to 0 MW")


async def test_the_reserve_is_held_back_from_trading_and_its_loss_alarmed(tmp_path) -> None:
    """8 MW of FCR on a 10 MW plant leaves 2 MW to trade, and SoC room for 15 min of full activation each way
    (20 MWh, 95 % efficiency: 10.5 % down, 9.5 % up, so the band is 20.5-80.5 %)."""
    cfg = load_config(fcr_site_file(tmp_path))
    async with running_site_plant(cfg), running_controller(cfg, tmp_path / "state") as c:
        await sim(cfg, "frequency", wander=False, hz=50.0)
        nxt = (c.clock.now() // PERIOD_S + 2) * PERIOD_S
        assert c.feasibility([(nxt, 2.0)]).ok
        refused = c.feasibility([(nxt, 5.0)])
        assert not refused.ok and refused.limit == "p_discharge_max", refused.reason
        # a long sell that would take the SoC below the band's floor: refused on soc_min, the band's floor
        # (2 MW for a period is 0.5 MWh, 2.6 % of the SoC with losses)
        assert c.feasibility([(nxt + i * PERIOD_S, 2.0) for i in range(8)]).ok  # 50 % -> about 29 %
        deep = [(nxt + i * PERIOD_S, 2.0) for i in range(14)]  # 50 % -> about 13 %: fine without FCR
        f = c.feasibility(deep)
        assert not f.ok and f.limit == "soc_min" and "20.5" in f.reason, f.reason
        c.set_fcr(False, source="test")
        assert c.feasibility([(nxt, 5.0)]).ok and c.feasibility(deep).ok  # FCR off: the whole plant trades again

        c.set_fcr(True, source="test")
        await sim(cfg, "state", soc_pct=15.0)
        await wait_for(lambda: "services:fcr_reserve" in c.active_alarms, 10, "the reserve alarm")
        fcr = c.status()["fcr"]
        assert fcr["reserve_held"] is False and fcr["reserve_restore_direction"] == -1
        assert fcr["reserve_restore_mwh"] == pytest.approx((20.526 - 15.0) / 100 * 20, abs=0.05)
        await sim(cfg, "state", soc_pct=50.0)
        await wait_for(lambda: "services:fcr_reserve" not in c.active_alarms, 10, "the reserve alarm cleared")


async def test_provision_records_per_second_and_their_csv(tmp_path) -> None:
    cfg = load_config(fcr_site_file(tmp_path))
    async with running_site_plant(cfg), running_controller(cfg, tmp_path / "state") as c:
        await sim(cfg, "frequency", wander=False, hz=49.9)
        await wait_for(lambda: c.dispatcher.last_readback_mw == pytest.approx(4.0, abs=0.01), 8, "4 MW")
        seconds = c.records.seconds
        await wait_for(lambda: c.records.seconds >= seconds + 4, 15, "four more recorded seconds")
        c.records.flush()
        now = c.clock.now()
        rows = c.store.provision(now - 60, now + 1)
        assert len(rows) >= 4 and len({r["ts"] for r in rows}) == len(rows)  # one row per second
        last = rows[-1]
        assert last["frequency_hz"] == pytest.approx(49.9) and last["fcr_required_mw"] == pytest.approx(4.0)
        assert last["fcr_delivered_mw"] == pytest.approx(4.0, abs=0.8) and last["within_tolerance"] == 1
        assert 0 < c.status()["fcr"]["compliance_pct"] <= 100
        lines = csv_lines(rows, iso)
        assert lines[0] == CSV_HEADER and len(lines) == len(rows) + 1
        assert lines[-1].startswith(iso(last["ts"])) and lines[-1].endswith(",1")


async def test_fcr_test_command_passes_on_the_simulator_and_writes_its_plot(tmp_path) -> None:
    """`bess-edge fcr-test --fast` (shortened holds) against the plant simulator and a controller with FCR on:
    every step starts within 2 s and is full within 30 s; the PNG is written; the last line is JSON."""
    path = fcr_site_file(tmp_path)
    cfg = load_config(path)
    png = tmp_path / "fcr.png"
    async with running_site_plant(cfg), running_controller(cfg, tmp_path / "state"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller.cli",
            "fcr-test",
            "--config",
            str(path),
            "--fast",
            "--hold-s",
            "3",
            "--full-s",
            "5",
            "--plot",
            str(png),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["passed"] is True and len(summary["steps"]) == 16
    assert all(s["start_s"] <= 2.0 and s["full_s"] <= 30.0 for s in summary["steps"]), summary["steps"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
