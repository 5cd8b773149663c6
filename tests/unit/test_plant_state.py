"""Every face's projection of a PlantState equals what the code before PlantState computed from the controller's
internals for the same plant: status (/api/bess-status), the MQTT telemetry payload, SCADA's status registers
and the Prometheus metrics. A table of plant states; the old code is kept below, verbatim but for its inputs,
as the reference."""

from __future__ import annotations

import collections
import math
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.clock import iso
from controller.cycle.alarms import CYCLE_FAILED, READBACK, SCHEDULE_INFEASIBLE, AlarmKey, Alarms
from controller.cycle.limits import Decision
from controller.cycle.loop import CycleStats
from controller.cycle.mode import ModeState
from controller.cycle.snapshot import DeviceHealth, Snapshot
from controller.cycle.state import LinkFigures, PlantState, PoiState, UnitState, build, status, telemetry
from controller.metrics import BINDINGS, MODES, Metrics
from controller.scada.points import BINDING_CODES, MODE_CODES, status_values

NOW = 1_796_000_000.0
T = NOW - 0.4


# ------------------------------------------------------------------ the code before PlantState (the reference)
def old_status(c) -> dict:
    s, d = c.snapshot, c.decision
    online = bool(s) and not s.stale and not s.comm_loss
    return {
        "soc_pct": s.soc_pct if s else None,
        "power_mw": s.power_mw if s else None,
        "setpoint_mw": d.setpoint_mw if d else None,
        "target_mw": d.target_mw if d else None,
        "temperature_c": s.temperature_max_c if s else None,
        "status": "online" if online else "offline",
        "mode": c.mode.mode,
        "binding": d.binding if d else "none",
        "reasons": list(d.reasons) if d else [],
        "alarms": [a["message"] for a in c.active_alarms.values()],
        "manual_setpoint_mw": c.mode.manual_setpoint_mw if c.mode.mode == "manual" else None,
        "manual_expires": iso(c.mode.manual_expires_ts) if c.mode.manual_expires_ts else None,
        "ts": iso(s.ts if s else c.clock.now()),
    }


def old_telemetry(c) -> dict:
    st = old_status(c)
    return {
        k: st[k]
        for k in ("ts", "soc_pct", "power_mw", "setpoint_mw", "target_mw", "temperature_c", "status", "mode", "binding")
    }


def old_status_values(c) -> dict:
    s, d = c.snapshot, c.decision
    bits = 0
    if s is not None:
        if s.stale or s.comm_loss:
            bits |= 1 << 0
        bms, pcs = c.devices.bms.name, c.devices.pcs.name
        if any(a.startswith(bms + ":") and not a.endswith("readback_mismatch") for a in s.alarms):
            bits |= 1 << 1
        if any(f.startswith(bms + ":") for f in s.faults):
            bits |= 1 << 2
        if any(x.startswith(pcs + ":") and not x.endswith("readback_mismatch") for x in s.alarms + s.faults):
            bits |= 1 << 3
    if any(k.startswith("pcs_readback:") for k in c.active_alarms):
        bits |= 1 << 4
    if "schedule:infeasible" in c.active_alarms:
        bits |= 1 << 5
    if "controller:cycle_error" in c.active_alarms:
        bits |= 1 << 6
    manual = c.mode.mode == "manual"
    return {
        "soc_pct": s.soc_pct if s else None,
        "power_mw": s.power_mw if s else None,
        "setpoint_mw": d.setpoint_mw if d else None,
        "target_mw": d.target_mw if d else None,
        "temperature_c": s.temperature_max_c if s else None,
        "mode": MODE_CODES[c.mode.mode],
        "binding": BINDING_CODES.get(d.binding, 0) if d else 0,
        "alarm_bits": bits,
        "online": 1 if (s and not s.stale and not s.comm_loss) else 0,
        "heartbeat": c.stats.cycles % 65536,
        "timestamp_s": int(s.ts) if s else None,
        "bms_allowed_charge_mw": s.bms_allowed_charge_mw if s else None,
        "bms_allowed_discharge_mw": s.bms_allowed_discharge_mw if s else None,
        "manual_setpoint_mw": c.mode.manual_setpoint_mw if manual else None,
        "manual_expires_s": int(c.mode.manual_expires_ts) if manual and c.mode.manual_expires_ts else None,
    }


def old_metrics_on_cycle(self: Metrics, c) -> None:
    s, d = c.snapshot, c.decision
    if s is None or d is None:
        return
    for g, v in (
        (self.soc, s.soc_pct),
        (self.power, s.power_mw),
        (self.temperature, s.temperature_max_c),
        (self.allowed_charge, s.bms_allowed_charge_mw),
        (self.allowed_discharge, s.bms_allowed_discharge_mw),
    ):
        g.set(float("nan") if v is None else v)
    self.setpoint.set(d.setpoint_mw)
    self.target.set(d.target_mw)
    for m in MODES:
        self.mode.labels(m).set(1 if c.mode.mode == m else 0)
    for b in BINDINGS:
        self.binding.labels(b).set(1 if d.binding == b else 0)
    self.online.set(0 if (s.stale or s.comm_loss) else 1)
    self.alarms.set(len(c.active_alarms))
    ages = [s.ts - h.last_good_ts for h in s.devices if h.last_good_ts is not None]
    self.telemetry_age.set(max(ages) if ages and len(ages) == len(s.devices) else float("inf"))
    self.cycle_duration.observe(c.stats.last_duration_s)
    if c.stats.cycles % 10 == 1:
        ds = sorted(c.stats.durations_s)
        if ds:
            self.cycle_p99.set(ds[min(len(ds) - 1, int(len(ds) * 0.99))])
    self.cycles.inc(c.stats.cycles - self._cycles_seen)
    self._cycles_seen = c.stats.cycles
    self.overruns.inc(c.stats.overruns - self._overruns_seen)
    self._overruns_seen = c.stats.overruns
    for name, link in c.devices.links.items():
        self.device_latency.labels(name).set(link.request_latency_s)
        seen = self._errors_seen.get(name, 0)
        self.device_errors.labels(name).inc(link.errors_total - seen)
        self._errors_seen[name] = link.errors_total
    for h in s.devices:
        self.device_up.labels(h.name).set(0 if h.stale else 1)


# ------------------------------------------------------------------ the table
def fresh(name: str) -> DeviceHealth:
    return DeviceHealth(name, True, False, T - 0.1)


GOOD = Snapshot(
    ts=T,
    soc_pct=52.5,
    power_mw=3.2,
    temperature_max_c=31.0,
    temperature_min_c=25.0,
    bms_allowed_charge_mw=8.0,
    bms_allowed_discharge_mw=9.5,
    devices=(fresh("bms"), fresh("pcs")),
)
STALE = Snapshot(
    ts=T,
    power_mw=0.0,
    stale=("bms",),
    comm_loss=("bms",),
    devices=(DeviceHealth("bms", False, True, None, 3, "timeout", "no answer"), fresh("pcs")),
)
ALARMED = Snapshot(
    ts=T,
    soc_pct=10.0,
    power_mw=None,
    temperature_max_c=56.0,
    alarms=("bms:over_temperature", "pcs:readback_mismatch", "bms:readback_mismatch"),
    faults=("pcs:ground_fault",),
    devices=(fresh("bms"), fresh("pcs")),
)
BMS_FAULT = Snapshot(ts=T, soc_pct=50.0, faults=("bms:contactor",), devices=(fresh("bms"), fresh("pcs")))
PASSED = Decision(4.0, 4.0, "none", (), -10.0, 10.0)
BOUND = Decision(10.0, 5.0, "temperature", ("temperature 50 °C derates", "soc taper"), -5.0, 5.0)
SAFE = Decision(0.0, 0.0, "stopped", ("mode stopped",), 0.0, 0.0)
AUTO = ModeState()
MANUAL = ModeState("manual", -2.5, NOW + 600.5, "api")
MANUAL_NO_EXPIRY = ModeState("manual", 1.0, None, "scada-modbus")
STOPPED = ModeState("stopped", 0.0, None, "api")

CASES = {  # name: (snapshot, decision, mode, alarms raised (key, cause, message), cycles)
    "before the first cycle": (None, None, AUTO, [], 0),
    "a failed first cycle (decision, no snapshot)": (
        None,
        SAFE,
        AUTO,
        [(CYCLE_FAILED, "cycle_error", "control cycle failed")],
        0,
    ),
    "good, target passed": (GOOD, PASSED, AUTO, [], 1),
    "good, manual, derated": (GOOD, BOUND, MANUAL, [], 11),
    "manual without expiry": (GOOD, BOUND, MANUAL_NO_EXPIRY, [], 65537),
    "stale BMS": (STALE, SAFE, STOPPED, [(AlarmKey("bms", "comm"), "timeout", "bms: timeout, no fresh readings")], 7),
    "alarms and faults": (
        ALARMED,
        SAFE,
        AUTO,
        [
            (AlarmKey("pcs", READBACK), "readback_mismatch", "pcs read back 1 MW"),
            (SCHEDULE_INFEASIBLE, "infeasible", "SoC would reach 95 %"),
            (AlarmKey.parse("bms:over_temperature"), "over_temperature", "bms reports alarm over_temperature"),
            (CYCLE_FAILED, "cycle_error", "control cycle failed (RuntimeError: x); 0 MW commanded"),
        ],
        21,
    ),
    "BMS fault only": (BMS_FAULT, SAFE, AUTO, [], 3),
}


class FakeStore:
    def raise_alarm(self, *a) -> bool:
        return True

    def clear_alarm(self, *a) -> bool:
        return True


def parts(case: str):
    """The controller's internals (the old code's input) and the PlantState built from them (the new one's)."""
    snap, decision, mode, raised, cycles = CASES[case]
    clock = SimpleNamespace(now=lambda: NOW)
    alarms = Alarms(FakeStore(), clock)
    for key, cause, message in raised:
        alarms.raise_(key, cause, message)
    stats = CycleStats(
        cycles=cycles,
        overruns=cycles // 7,
        last_duration_s=0.0042,
        durations_s=collections.deque([0.001 * (i % 13) for i in range(500)], maxlen=4096),
    )
    links = {
        "bms": SimpleNamespace(name="bms", request_latency_s=0.0031, errors_total=cycles // 3),
        "pcs": SimpleNamespace(name="pcs", request_latency_s=0.0012, errors_total=2),
    }
    devices = SimpleNamespace(bms=links["bms"], pcs=links["pcs"], links=links)
    old = SimpleNamespace(
        snapshot=snap,
        decision=decision,
        mode=mode,
        active_alarms=alarms.as_dicts(),
        stats=stats,
        devices=devices,
        clock=clock,
    )
    p99 = None
    if cycles % 10 == 1:
        ds = sorted(stats.durations_s)
        p99 = ds[min(len(ds) - 1, int(len(ds) * 0.99))]
    state = build(
        snap,
        decision,
        mode,
        alarms,
        stats,
        [LinkFigures(n, lk.request_latency_s, lk.errors_total) for n, lk in links.items()],
        "bms",
        "pcs",
        p99,
    )
    return old, state


def same(a: dict, b: dict) -> bool:
    """Equal, with NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(a.values(), b.values())
    )


@pytest.mark.parametrize("case", list(CASES))
def test_status_and_telemetry_are_the_old_ones(case):
    """The old fields unchanged and in their order; issue 13's units and poi follow them, then issue 15's fcr."""
    old, state = parts(case)
    for new, was in ((status(state, NOW), old_status(old)), (telemetry(state, NOW), old_telemetry(old))):
        assert list(new) == list(was) + ["units", "poi", "fcr", "afrr"]  # the key order too (the JSON reads the same)
        assert {k: new[k] for k in was} == was
        assert new["poi"] is None  # a one-unit site without a meter
        assert new["fcr"] is None  # nor FCR (issue 15)
        assert new["afrr"] is None  # nor the IEC 104 face's aFRR (issue 15)
        assert new["units"] == [
            {
                "unit": "u1",
                "soc_pct": state.soc_pct,
                "power_mw": state.power_mw,
                "setpoint_mw": state.setpoint_mw,
                "temperature_c": state.temperature_c,
                "available": state.online and not state.device_faults,
                "binding": state.binding,
            }
        ]


def test_units_and_poi_project_as_design_says():
    state = PlantState(
        units=(
            UnitState("u1", 50.0, 2.0, 2.0, 25.0, True, None),
            UnitState("u2", None, None, 0.0, None, False, "unit_unavailable"),
        ),
        poi=PoiState(2.0, 50.01, NOW),
    )
    st = status(state, NOW)
    assert st["units"][1] == {
        "unit": "u2",
        "soc_pct": None,
        "power_mw": None,
        "setpoint_mw": 0.0,
        "temperature_c": None,
        "available": False,
        "binding": "unit_unavailable",
    }
    assert st["poi"] == {"power_mw": 2.0, "frequency_hz": 50.01, "ts": iso(NOW)}
    assert telemetry(state, NOW)["units"] == st["units"] and telemetry(state, NOW)["poi"] == st["poi"]


@pytest.mark.parametrize("case", list(CASES))
def test_scada_registers_are_the_old_ones(case):
    old, state = parts(case)
    assert same(status_values(state), old_status_values(old))


@pytest.mark.parametrize("case", list(CASES))
def test_metrics_are_the_old_ones(case):
    old, state = parts(case)
    m_old, m_new = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    for _ in range(2):  # twice: the counters count only what is new
        old_metrics_on_cycle(m_old, old)
        m_new.on_cycle(state)
    # issue 13 adds the per-unit series (label `unit`); everything else is exposed exactly as before
    unit_series = [line for line in exposed(m_new) if line.startswith("bess_unit_")]
    assert [line for line in exposed(m_new) if line not in unit_series] == exposed(m_old)
    if state.has_cycle:  # the one unit's series are the plant's own figures
        nan = float("nan")
        by_name = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in unit_series}
        for name, v in (
            ("bess_unit_soc_pct", state.soc_pct),
            ("bess_unit_power_mw", state.power_mw),
            ("bess_unit_setpoint_mw", state.setpoint_mw),
            ("bess_unit_temperature_celsius", state.temperature_c),
        ):
            assert same({name: by_name[name]}, {name: nan if v is None else float(v)}), name
        assert all('{unit="u1"}' in line for line in unit_series), unit_series
    else:
        assert unit_series == []


def exposed(m: Metrics) -> list[str]:
    """The /metrics text but for the `_created` series (the time each metric object was made)."""
    return [line for line in generate_latest(m.registry).decode().splitlines() if "_created" not in line]


def test_the_table_sets_every_alarm_bit():
    bits = 0
    for case in CASES:
        bits |= status_values(parts(case)[1])["alarm_bits"]
    assert bits == 0b1111111
