"""AlarmKey: one string form (the stored/API form of before), parsed back to the same key; the Alarms owner
raises, clears and syncs against a snapshot the way the controller always did."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.clock import Clock
from controller.cycle.alarms import (
    COMM,
    CYCLE_ERROR,
    CYCLE_FAILED,
    INFEASIBLE,
    INVALID,
    POI_FALLBACK,
    READBACK,
    REPORTED,
    SCHEDULE_INFEASIBLE,
    AlarmKey,
    Alarms,
)
from controller.cycle.snapshot import DeviceHealth, InvalidReading, Snapshot
from controller.store import Store

names = st.text(
    alphabet=st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda s: s not in ("pcs_readback", "controller", "schedule", "services", "trading"))
words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=16)


@st.composite
def keys(draw) -> AlarmKey:
    kind = draw(st.sampled_from([COMM, INVALID, REPORTED, READBACK]))
    device = draw(names)
    if kind == INVALID:
        return AlarmKey(device, INVALID, draw(words))
    if kind == REPORTED:
        # the string form's reserved words (a device alarm bit named like them would read as the controller's own)
        detail = draw(words.filter(lambda w: w not in (COMM, POI_FALLBACK) and not w.startswith("invalid_")))
        return AlarmKey(device, REPORTED, detail)
    return AlarmKey(device, kind)


@given(keys())
def test_key_round_trips_through_its_string(key: AlarmKey) -> None:
    assert AlarmKey.parse(str(key)) == key


@given(names, words)
def test_every_stored_string_round_trips(head: str, tail: str) -> None:
    text = f"{head}:{tail}"
    assert str(AlarmKey.parse(text)) == text


def test_string_forms_are_the_stored_ones() -> None:
    table = [
        (AlarmKey("bms", COMM), "bms:comm"),
        (AlarmKey("bms", INVALID, "soc_pct"), "bms:invalid_soc_pct"),
        (AlarmKey("pcs", REPORTED, "over_temp"), "pcs:over_temp"),
        (AlarmKey("pcs", READBACK), "pcs_readback:pcs"),
        (SCHEDULE_INFEASIBLE, "schedule:infeasible"),
        (CYCLE_FAILED, "controller:cycle_error"),
    ]
    for key, text in table:
        assert str(key) == text
        assert AlarmKey.parse(text) == key
    assert SCHEDULE_INFEASIBLE.kind == INFEASIBLE and CYCLE_FAILED.kind == CYCLE_ERROR
    assert AlarmKey("pcs", READBACK).latched and SCHEDULE_INFEASIBLE.latched and not CYCLE_FAILED.latched


def test_sync_raises_and_clears_like_before(tmp_path) -> None:
    store = Store.in_state_dir(tmp_path)
    alarms = Alarms(store, Clock())
    alarms.raise_(AlarmKey("pcs", READBACK), "readback_mismatch", "pcs read back 1.0 MW, wrote 2.0 MW")
    bad = InvalidReading("bms", "soc_pct", "0xFFFF", "out of range")
    snap = Snapshot(
        ts=1.0,
        alarms=("pcs:over_temp", bad.key),
        faults=("bms:contactor",),
        invalid=(bad,),
        devices=(DeviceHealth("bms", False, True, None, 3, "timeout", "no answer"),),
    )
    alarms.sync(snap)
    got = alarms.as_dicts()
    assert list(got) == ["pcs_readback:pcs", "bms:comm", "pcs:over_temp", "bms:invalid_soc_pct", "bms:contactor"]
    assert got["bms:comm"] == {
        **got["bms:comm"],
        "device": "bms",
        "cause": "timeout",
        "message": "bms: timeout, no fresh readings (no answer)",
    }
    assert got["pcs:over_temp"]["message"] == "pcs reports alarm over_temp"
    assert got["bms:contactor"]["message"] == "bms reports fault contactor"
    assert got["bms:invalid_soc_pct"]["cause"] == "invalid_reading"
    assert [a["key"] for a in store.active_alarms()] == list(got)
    alarms.sync(Snapshot(ts=2.0))  # all clear, except the latched read-back alarm
    assert list(alarms.as_dicts()) == ["pcs_readback:pcs"]
    assert [a["key"] for a in store.active_alarms()] == ["pcs_readback:pcs"]
    store.close()
