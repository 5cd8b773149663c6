"""A device's own read rhythm moved with the cycle's (DeviceLink._due_on_tick, pure on the link's state): a look
re-phased ahead of the regular one it replaces counts as that one, so a device read on every tick is not skipped
for a tick by the move; but it never asks a device resting behind a gateway sooner than its rest, and never counts a
read still in flight as unanswered sooner than the next read is due (DeviceLink.begin). And how far ahead of a cycle
a device reads (DeviceLink.read_lead_s): behind a gateway, early enough for a read running to its timeout."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.config import Device
from controller.cycle.devices import MAX_READ_LEAD, READ_LEAD_MARGIN_S, DeviceLink

IN_FLIGHT = object()  # stands for the read task: _due_on_tick only asks whether there is one


def _link(poll_s: float, failures: int, behind_gateway: bool, in_flight: bool, last_poll_ts: float) -> DeviceLink:
    dev = Device(role="bms", protocol="modbus", port=1502, profile="generic-bms.yaml", poll_interval_s=poll_s)
    # the driver and profile are never touched by the rhythm's decision
    link = DeviceLink("bms", "bms", dev, None, None, failures=failures, behind_gateway=behind_gateway)  # type: ignore[arg-type]
    link.last_poll_ts = last_poll_ts
    link._inflight = IN_FLIGHT if in_flight else None  # type: ignore[assignment]
    return link


@given(
    poll_s=st.floats(0.05, 60),
    failures=st.integers(0, 12),
    behind_gateway=st.booleans(),
    in_flight=st.booleans(),
    elapsed_polls=st.floats(0, 20),
    early_polls=st.floats(0, 1),
)
def test_a_look_moved_ahead_counts_as_the_one_it_replaces_but_never_shortens_a_rest_or_a_reads_turn(
    poll_s, failures, behind_gateway, in_flight, elapsed_polls, early_polls
):
    now = 10_000.0
    link = _link(poll_s, failures, behind_gateway, in_flight, now - elapsed_polls * poll_s)
    early_s = early_polls * poll_s
    reads = link._due_on_tick(now, early_s)
    assert link._due_on_tick(now, 0.0) == link.due(now)  # a regular look: as before
    if link.due(now):
        assert reads  # a move ahead never skips a read the device is due for
    if link.rest_periods() > 1 or in_flight:
        assert reads == link.due(now)  # resting, or a read in flight: asked only when really due
    else:
        assert reads == link.due(now + early_s)  # the regular look it replaces


@given(
    timeout_s=st.floats(0.05, 5),
    tick_s=st.floats(0.1, 5),
    lead_share=st.floats(0.1, 0.5),
    behind_gateway=st.booleans(),
)
def test_a_read_behind_a_gateway_that_runs_to_its_timeout_ends_before_the_cycle_when_the_period_allows(
    timeout_s, tick_s, lead_share, behind_gateway
):
    """DeviceLink.read_lead_s: on a connection of its own a device reads the usual lead before a cycle; behind a
    gateway never later, and early enough that a read running to its timeout ends (with the margin) before the
    cycle's writes on the shared connection, unless that is more than MAX_READ_LEAD of the period: then that far
    ahead (the last cycle's writes are over by then)."""
    link = _link(tick_s, 0, behind_gateway, False, 0.0)
    link.config = link.config.model_copy(update={"timeout_s": timeout_s})
    usual_s = lead_share * tick_s
    lead = link.read_lead_s(usual_s, tick_s)
    if not behind_gateway:
        assert lead == usual_s
        return
    assert usual_s <= lead <= max(usual_s, MAX_READ_LEAD * tick_s)
    if timeout_s + READ_LEAD_MARGIN_S <= MAX_READ_LEAD * tick_s:
        assert lead >= timeout_s + READ_LEAD_MARGIN_S  # a silent device's read is over before the cycle
    else:
        assert lead == max(usual_s, MAX_READ_LEAD * tick_s)
