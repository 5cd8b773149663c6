"""The SCADA faces' write limiter (a token bucket) as a pure function of request times: in any window it lets
through at most `burst + rate x window` writes, and a master that keeps to the rate is never refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.scada.controls import WriteLimiter


class ManualTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


rates = st.floats(0.1, 50, allow_nan=False)
bursts = st.integers(1, 20)
gaps = st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=300)


@given(rates, bursts, gaps)
def test_no_window_lets_more_than_burst_plus_rate_through(rate, burst, gaps_s):
    now = ManualTime()
    limiter = WriteLimiter(rate, burst, now)
    accepted_at = []
    for gap in gaps_s:
        now.t += gap
        if limiter.allow():
            accepted_at.append(now.t)
    for i, start in enumerate(accepted_at):
        for j in range(i, len(accepted_at)):
            window_s = accepted_at[j] - start
            assert j - i + 1 <= burst + rate * window_s + 1e-6, (i, j, window_s)
    assert limiter.refused == len(gaps_s) - len(accepted_at)


@given(rates, bursts, st.integers(1, 200))
def test_a_master_that_keeps_to_the_rate_is_never_refused(rate, burst, writes):
    now = ManualTime()
    limiter = WriteLimiter(rate, burst, now)
    for _ in range(writes):
        assert limiter.allow()
        now.t += 1.0 / rate * (1 + 1e-9)


@given(rates, bursts)
def test_a_burst_then_refusals_until_time_passes(rate, burst):
    now = ManualTime()
    limiter = WriteLimiter(rate, burst, now)
    assert all(limiter.allow() for _ in range(burst))
    assert not limiter.allow()
    now.t += 1.0 / rate * (1 + 1e-9)  # one token back
    assert limiter.allow()


@pytest.mark.parametrize("rate,burst", [(0, 5), (-1, 5), (1, 0), (float("nan"), 5)])
def test_a_limiter_that_lets_nothing_through_is_refused(rate, burst):
    with pytest.raises(ValueError, match="rate_per_s"):
        WriteLimiter(rate, burst)
