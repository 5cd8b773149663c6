"""A device's own read rhythm moved with the cycle's (DeviceLink._due_on_tick, pure on the link's state): a look
re-phased ahead of the regular one it replaces counts as that one, so a device read on every tick is not skipped
for a tick by the move; but it never asks a device resting behind a gateway sooner than its rest, and never counts a
read still in flight as unanswered sooner than the next read is due (DeviceLink.begin)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.config import Device
from controller.cycle.devices import DeviceLink

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
