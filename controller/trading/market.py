"""The market's rules, shared by the site and the exchange simulator (which may import this module): 15-minute
delivery periods aligned to :00/:15/:30/:45, and gate closure 5 minutes before delivery. Pure: time is passed in.
"""

from __future__ import annotations

PERIOD_S = 900  # a delivery period (DESIGN.md: 15 minutes)
GATE_CLOSURE_S = 300  # trading for a period closes this long before its delivery starts
PRICE_LIMIT_EUR_MWH = 10_000  # what an order's price may be either way; beyond it a number is not a price


def period_start(ts: float) -> float:
    """The start of the 15-minute period containing `ts` (periods are [start, start + 900))."""
    return ts - ts % PERIOD_S  # float % is exact, so boundaries stay exact


def gate_closes_at(delivery_start: float, gate_closure_s: float = GATE_CLOSURE_S) -> float:
    """When trading for the period starting at `delivery_start` closes."""
    return delivery_start - gate_closure_s


def gate_open(delivery_start: float, now: float, gate_closure_s: float = GATE_CLOSURE_S) -> bool:
    """True while orders for the period starting at `delivery_start` may still be placed at `now`: the gate is
    closed from the instant of closure on (the exchange's rule, which the site's pre-check follows)."""
    return now < gate_closes_at(delivery_start, gate_closure_s)
