"""FCR's run-time pieces without a plant: the switch and the newest frequency (FcrService), the fast path's
rounds (FastPath, with plain callables for the meter read and the controller's write), the provision records'
seconds and compliance (ProvisionRecorder on a real Store), and their retention, kept by the store's housekeeping."""

from __future__ import annotations

import asyncio

import pytest

from controller.clock import Clock
from controller.config import SiteConfig, load_config
from controller.cycle.loop import Controller
from controller.services.fast import FastPath
from controller.services.records import FLUSH_ROWS, ProvisionRecorder
from controller.services.runtime import FcrService
from controller.services.stack import stack
from controller.store import Store
from drivers.errors import DeviceTimeout
from tests.fixtures.fcr import fcr_site_file

SITE = {
    "site": {"id": "t"},
    "mode": "demo",
    "devices": {
        "bms": {"role": "bms", "protocol": "modbus", "port": 1502, "profile": "/dev/null"},
        "pcs": {"role": "pcs", "protocol": "sunspec", "port": 1503, "profile": "/dev/null"},
        "poi": {"role": "meter", "protocol": "sunspec", "port": 1505, "profile": "/dev/null"},
    },
    "limits": {
        "p_charge_max_mw": 10,
        "p_discharge_max_mw": 10,
        "soc_min_pct": 10,
        "soc_max_pct": 90,
        "grid_limit_mw": 10,
    },
    "battery": {"capacity_mwh": 20},
    "services": {"fcr": {"enabled": True, "capacity_mw": 8}},
}


def site(**fcr) -> SiteConfig:
    raw = {**SITE, "services": {"fcr": {**SITE["services"]["fcr"], **fcr}}}
    return SiteConfig.model_validate(raw)


def test_newest_frequency_wins_and_goes_stale() -> None:
    f = FcrService(site())
    f.observe(49.9, 100.0)
    f.observe(50.1, 99.0)  # older: ignored
    assert f.frequency(100.5) == 49.9 and f.required(100.5).required_mw == pytest.approx(4.0)
    assert f.frequency(102.1) is None and f.required(102.1).required_mw == 0.0  # older than frequency_stale_s
    f.observe(float("nan"), 101.0)  # newest, invalid: unknown
    assert f.frequency(101.0) is None
    f.set_enabled(False)
    f.observe(49.8, 103.0)
    assert f.required(103.0).required_mw == 0.0


def test_switching_needs_a_band_and_a_meter() -> None:
    with pytest.raises(ValueError, match="capacity_mw"):
        FcrService(site(enabled=False, capacity_mw=0)).set_enabled(True)
    no_meter = site(enabled=False)
    no_meter.devices.pop("poi")
    with pytest.raises(ValueError, match="meter"):
        FcrService(no_meter).set_enabled(True)


async def test_fast_path_rounds_count_reads_and_writes() -> None:
    reads, writes, active = [], [], [True]

    async def read() -> None:
        reads.append(1)
        if len(reads) == 2:
            raise DeviceTimeout("poi", "no answer")

    async def act() -> bool:
        writes.append(1)
        return True

    fp = FastPath(read, act, lambda: active[0], 0.05)
    assert await fp.round() is True
    assert await fp.round() is False and fp.failures == 1  # the meter did not answer: nothing written
    assert (fp.rounds, len(writes)) == (1, 1)
    fp.start()
    for _ in range(200):  # bounded wait for three more rounds
        if fp.rounds >= 4:
            break
        await asyncio.sleep(0.01)
    active[0] = False  # FCR off: the rhythm goes on, no reads
    await asyncio.sleep(0.1)
    n = len(reads)
    await asyncio.sleep(0.15)
    await fp.stop()
    assert fp.rounds >= 4 and len(reads) == n


async def test_a_write_the_ramp_held_back_is_followed_up_before_the_period_ends() -> None:
    """A fast-path write the ramp held back (ramp_left_s says how long the rest needs) brings the next round
    forward: with a 30 s period, a second round within seconds can only be the follow-up; once the ramp is done
    (None), the rhythm is the period again."""
    left: list[float | None] = [0.02, 0.0]

    async def read() -> None:
        return None

    async def act() -> bool:
        return True

    fp = FastPath(read, act, lambda: True, 30.0, ramp_left_s=lambda: left.pop(0) if left else None)
    fp.start()
    try:
        for _ in range(500):  # bounded: 5 s, a sixth of the period
            if fp.rounds >= 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # no fourth round: the ramp is done, the next one is a period away
        rounds = fp.rounds
    finally:
        await fp.stop()
    assert rounds == 3  # the first round, its follow-up, and the follow-up's (RAMP_RETRY_MIN_S after: 0 s left)


def test_provision_records_one_row_per_second(tmp_path) -> None:
    with Store(tmp_path / "s.db") as store:
        rec = ProvisionRecorder(store, tolerance_mw=0.8)
        for i in range(3 * FLUSH_ROWS):  # two observations a second; half the seconds off by 1 MW
            power = 4.0 if (i // 2) % 2 == 0 else 3.0
            rec.observe(1000.0 + i / 2, 49.9, stack(0.0, 4.0), power)
        rec.close()
        rows = store.provision(0, 2000)
    assert [r["ts"] for r in rows] == list(range(1000, 1000 + 3 * FLUSH_ROWS // 2))
    assert rec.seconds == len(rows) and rec.compliance_pct == pytest.approx(50.0, abs=100 / len(rows))
    assert rows[0]["fcr_required_mw"] == 4.0 and rows[0]["fcr_delivered_mw"] == 4.0 and rows[0]["within_tolerance"] == 1
    assert rows[1]["within_tolerance"] == 0


async def test_provision_records_older_than_their_retention_go_at_housekeeping(tmp_path) -> None:
    """services.records_retention_days reaches the store's housekeeping (Controller.jobs), which prunes the
    provision records with the other tables: rows older than the retention go, newer ones stay."""
    cfg = load_config(fcr_site_file(tmp_path, services={"records_retention_days": 2}))
    clock = Clock()
    day_s = 86400.0
    with Store(tmp_path / "s.db") as store:
        c = Controller(cfg, store, clock)  # not started: its housekeeping job is called by hand
        try:
            now = clock.now()
            ages_days = (5.0, 2.01, 1.99, 0.5)
            store.add_provision([(int(now - a * day_s), 50.0, 0.0, 0.0, 0.0, None, 0.0, 0.0, 1) for a in ages_days])
            await c.jobs.housekeeping()
            kept = [r["ts"] for r in store.provision(0, now + 1)]
            assert kept == [int(now - a * day_s) for a in (1.99, 0.5)]
            await c.jobs.housekeeping()  # nothing more to prune
            assert len(store.provision(0, now + 1)) == 2
        finally:
            await c.devices.close()


def _run(profile, fcr, lag_s: float, plateau: float = 1.0, hold_fail_at: float | None = None):
    """Samples every 0.1 s of a plant that reaches `plateau` x the required power after `lag_s` (linear)."""
    from controller.services.fcr import response
    from controller.services.prequal import Sample

    out, t = [], 0.0
    for i, seg in enumerate(profile):
        req = response(seg.hz, fcr).required_mw * plateau
        prev = response(profile[i - 1].hz, fcr).required_mw * plateau if i else 0.0
        for k in range(int(round(seg.hold_s / 0.1))):
            share = min(1.0, k * 0.1 / lag_s) if lag_s > 0 else 1.0
            p = prev + (req - prev) * share
            if hold_fail_at is not None and seg.sustained and k * 0.1 >= hold_fail_at:
                p = 0.0  # gave up half way through the full activation
            out.append(Sample(t, seg.hz, 0.5 + p, 50.0, i))  # 0.5 MW of base, taken off as the baseline
            t += 0.1
    return out


def test_prequalification_verdicts() -> None:
    from controller.config import Fcr
    from controller.services.prequal import evaluate, standard_profile

    fcr = Fcr(enabled=True, capacity_mw=8)
    long = standard_profile(hold_s=40, full_s=60)
    assert all(r.passed for r in evaluate(_run(long, fcr, lag_s=5), long, fcr))
    slow = evaluate(_run(long, fcr, lag_s=35), long, fcr)  # starts in time, full only after 30 s
    assert not any(r.passed for r in slow) and all("full" in r.why for r in slow)
    late = evaluate(_run(long, fcr, lag_s=0.0, plateau=0.0), long, fcr)  # never moves
    assert all("start never" in r.why for r in late if r.required_mw != 0)
    quit_ = evaluate(_run(long, fcr, lag_s=1, hold_fail_at=30), long, fcr)
    sustained = [r for r in quit_ if r.name.startswith("full activation")]
    assert sustained and all(not r.passed and "held" in r.why for r in sustained)
    assert standard_profile()[0].hold_s == 60 and sum(s.hold_s for s in standard_profile()) == 3540  # 59 min
