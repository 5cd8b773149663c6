"""Executed trades -> net position per 15-minute delivery period, and the feasibility check that simulates the
SoC path of a schedule. Pure: no I/O, no clock reads; every time is passed in (Unix seconds, UTC).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from controller.config import Battery, Limits
from controller.trading.market import PERIOD_S, period_start
from drivers.validation import validation_problems

MAX_DELIVERY_S = 24 * 3600
MAX_QUANTITY_MW = 100_000.0  # far above any single site; keeps sums of positions finite
_PERIOD = timedelta(seconds=PERIOD_S)


def iso_minute(ts: float) -> str:
    """A period start as people read it: 2026-11-25T14:00Z."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


class TradeError(ValueError):
    """A trade that cannot be scheduled; `reason` names the field, e.g. `delivery_start: must be on ...`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _utc(value: Any) -> datetime:
    """ISO 8601 in UTC (with Z or +00:00) or an aware datetime -> an aware UTC datetime."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 time (got {value!r}); use e.g. 2026-11-25T14:00:00Z") from None
    else:
        raise ValueError(f"must be an ISO 8601 UTC time string (got {type(value).__name__})")
    if dt.tzinfo is None:
        raise ValueError(f"has no timezone (got {value!r}); use UTC with Z")
    if dt.utcoffset() != timedelta(0):
        raise ValueError(f"must be UTC, with Z (got offset {dt.utcoffset()} in {value!r})")
    return dt.astimezone(timezone.utc)


class Trade(BaseModel):
    """An executed trade (DESIGN.md's fields). Fields beyond these (ts, sig, order ids) are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    trade_id: str = Field(min_length=1, max_length=128, strict=True)
    side: Literal["buy", "sell"]
    quantity_mw: float = Field(gt=0, le=MAX_QUANTITY_MW, strict=True)
    price_eur_mwh: float = Field(strict=True)
    delivery_start: datetime
    delivery_end: datetime
    market: str = Field(min_length=1, max_length=64, strict=True)
    executed_at: datetime

    @field_validator("trade_id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("quantity_mw", "price_eur_mwh")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number (got {v})")
        return v

    @field_validator("delivery_start", "delivery_end", mode="before")
    @classmethod
    def _period_bound(cls, v: Any) -> datetime:
        dt = _utc(v)
        if dt.minute % 15 or dt.second or dt.microsecond:
            raise ValueError(
                f"must be on a 15-minute boundary (:00, :15, :30, :45 with zero seconds), "
                f"got {dt.isoformat().replace('+00:00', 'Z')}"
            )
        return dt

    @field_validator("executed_at", mode="before")
    @classmethod
    def _executed(cls, v: Any) -> datetime:
        return _utc(v)

    @model_validator(mode="after")
    def _window(self) -> "Trade":
        length_s = (self.delivery_end - self.delivery_start).total_seconds()
        if length_s <= 0:
            raise ValueError(f"delivery_end: must be after delivery_start (got {length_s / 60:g} min)")
        if length_s > MAX_DELIVERY_S:
            raise ValueError(
                f"delivery_end: delivery may last at most {MAX_DELIVERY_S // 3600} h (got {length_s / 3600:g} h)"
            )
        return self

    @property
    def position_mw(self) -> float:
        """What this trade adds to its periods' position: + discharge for a sell, - charge for a buy."""
        return self.quantity_mw if self.side == "sell" else -self.quantity_mw

    @property
    def start_ts(self) -> float:
        return self.delivery_start.timestamp()

    @property
    def end_ts(self) -> float:
        return self.delivery_end.timestamp()

    def period_starts(self) -> list[float]:
        """Every delivery period this trade covers, as Unix seconds."""
        return [float(p) for p in range(int(self.start_ts), int(self.end_ts), PERIOD_S)]


def _format_errors(err: ValidationError) -> str:
    """pydantic's errors as `field: what is wrong (got value)`, joined by '; '."""
    lines = []
    for p in validation_problems(err):
        msg = p.message.replace("Input should be", "must be")
        if p.type == "missing":
            msg = "missing (required)"
        elif p.type != "value_error" and isinstance(p.input, (str, int, float, bool)):
            msg += f" (got {p.input!r:.80})"
        # model-level checks (loc empty) name their field in the message
        lines.append(f"{p.path}: {msg}" if p.path else msg)
    return "; ".join(lines)


def parse_trade(data: Any) -> Trade:
    """A raw trade (dict from JSON, MQTT or the store) -> Trade, or TradeError naming every bad field."""
    if isinstance(data, Trade):
        return data
    if not isinstance(data, dict):
        raise TradeError(f"trade: must be a JSON object (got {type(data).__name__})")
    try:
        return Trade.model_validate(data)
    except ValidationError as e:
        raise TradeError(_format_errors(e)) from None


class Schedule:
    """Net position per delivery period from executed trades. A trade_id seen before is ignored."""

    def __init__(self, trades: Iterable[Trade] = ()):
        self._trades: dict[str, Trade] = {}
        self._legs: dict[float, list[float]] = {}  # period start -> signed quantities of its trades
        self._position: dict[float, float] = {}  # period start -> net MW, kept in step with _legs
        self._starts: list[float] = []  # sorted keys of _position, for range queries
        for t in trades:
            self.add(t)

    def __len__(self) -> int:
        return len(self._trades)

    def __contains__(self, trade_id: object) -> bool:
        return trade_id in self._trades

    @property
    def trades(self) -> list[Trade]:
        return list(self._trades.values())

    def add(self, trade: Trade) -> bool:
        """Add a trade to its periods. False (and nothing changes) if its trade_id was added before."""
        if trade.trade_id in self._trades:
            return False
        self._trades[trade.trade_id] = trade
        signed = trade.position_mw
        for p in trade.period_starts():
            legs = self._legs.get(p)
            if legs is None:
                legs = self._legs[p] = []
                bisect.insort(self._starts, p)
            legs.append(signed)
            # fsum is exact, so the position does not depend on the order trades arrived in; rounding to
            # 1 µW drops the binary dust of e.g. 0.1 + 0.2 - 0.3
            self._position[p] = round(math.fsum(legs), 9) + 0.0
        return True

    def position_mw(self, ts: float) -> float:
        """Σ sell − Σ buy (MW) of the trades delivering in the period that contains `ts`."""
        return self._position.get(period_start(ts), 0.0)

    def periods(self, from_ts: float, to_ts: float) -> list[tuple[float, float]]:
        """(period start, position MW) of every period with trades that overlaps [from_ts, to_ts), in order.
        Periods where trades cancel out are included, with position 0."""
        lo = bisect.bisect_left(self._starts, period_start(from_ts))
        hi = bisect.bisect_left(self._starts, to_ts)
        return [(p, self._position[p]) for p in self._starts[lo:hi]]


# ---------------------------------------------------------------- feasibility


@dataclass
class Feasibility:
    """The outcome of simulating a schedule: the first breach (period and limit), or ok."""

    ok: bool
    period_start: float | None
    limit: str | None  # soc_min, soc_max, p_discharge_max, p_charge_max, grid_limit; None when ok
    reason: str
    soc_path: list[tuple[float, float]] = field(default_factory=list)  # (ts, SoC %): now, then each period end


_EPS_PCT = 1e-9  # SoC tolerance, so float dust on an exact edge is not a breach
_EPS_MW = 1e-9


def _power_breach(p: float, mw: float, limits: Limits) -> tuple[str, str] | None:
    """The strictest power limit a position exceeds, with a reason; None if it fits."""
    if mw > 0:
        over = [(limits.p_discharge_max_mw, "p_discharge_max"), (limits.grid_limit_mw, "grid_limit")]
        word = "discharge"
    elif mw < 0:
        over = [(limits.p_charge_max_mw, "p_charge_max"), (limits.grid_limit_mw, "grid_limit")]
        word = "charge"
    else:
        return None
    cap, name = min(over, key=lambda x: x[0])
    if abs(mw) <= cap + _EPS_MW:
        return None
    return name, f"period {iso_minute(p)}: {word} {abs(mw):g} MW > {name} {cap:g} MW"


def check_feasibility(
    positions: list[tuple[float, float]],
    soc_pct_now: float | None,
    now_ts: float,
    battery: Battery,
    limits: Limits,
    *,
    open_orders: Iterable[tuple[float, float]] = (),
    new_order: tuple[float, float] | None = None,
) -> Feasibility:
    """Whether the schedule `positions` ((period start, MW) pairs; + is discharge) stays within the limits
    whichever of the `open_orders` ((period start, signed MW still open) pairs: + a sell, - a buy) fill, from
    the SoC `soc_pct_now` at `now_ts`; the first period and limit breached otherwise.

    Worst case per limit: for the SoC floor and the discharge power, every open sell fills and no buy; for the
    SoC ceiling and the charge power, every open buy fills and no sell. Any other set of fills (partial fills
    included) lies between those two, because the SoC path only falls as positions rise, so the schedule is
    feasible for every set of fills exactly when it is for both.

    SoC unknown (None): nothing can be checked, and the answer is "not feasible", limit `soc_unknown` (a
    guessed SoC would let an order through that the battery cannot deliver).

    `new_order` (period start, signed MW), the order being checked: see _check_new_order.
    """
    if soc_pct_now is None:
        return Feasibility(
            False,
            None,
            "soc_unknown",
            "SoC unknown: no live, fresh SoC reading from the BMS, so the schedule's SoC path cannot be checked",
        )
    open_orders = list(open_orders)
    if new_order is not None:
        return _check_new_order(positions, soc_pct_now, now_ts, battery, limits, open_orders, new_order)
    if not open_orders:
        return _simulate(positions, soc_pct_now, now_ts, battery, limits)
    sells = [(p, mw) for p, mw in open_orders if mw > 0]
    buys = [(p, mw) for p, mw in open_orders if mw < 0]
    down = _simulate(list(positions) + sells, soc_pct_now, now_ts, battery, limits)
    up = _simulate(list(positions) + buys, soc_pct_now, now_ts, battery, limits)
    breaches = [(f, what) for f, what, legs in ((down, "sell", sells), (up, "buy", buys)) if not f.ok]
    if not breaches:
        lo = min(s for _, s in down.soc_path)
        hi = max(s for _, s in up.soc_path)
        return Feasibility(
            True,
            None,
            None,
            f"feasible whichever open orders fill: SoC stays within {lo:.1f}–{hi:.1f} %",
            down.soc_path,
        )
    f, side = min(breaches, key=lambda b: b[0].period_start if b[0].period_start is not None else -math.inf)
    n = len(sells if side == "sell" else buys)
    if n:  # say which worst case it was, so the operator sees why an order that fits alone was refused
        other = "buy" if side == "sell" else "sell"
        f.reason += f" (worst case: the site's {n} open {side} order(s) all fill, no open {other} order does)"
    return f


def _check_new_order(
    positions: list[tuple[float, float]],
    soc_pct_now: float,
    now_ts: float,
    battery: Battery,
    limits: Limits,
    open_orders: list[tuple[float, float]],
    new_order: tuple[float, float],
) -> Feasibility:
    """The pre-trade check of `new_order` among `open_orders`: refused exactly when some set of fills that includes
    it breaches a limit on its own side. A sell only lowers the SoC path and adds discharge, so it can breach only
    in discharging periods (soc_min, discharge power, export); its worst case is every open sell filling and no
    buy. A buy, the mirror. A breach on the other side stands with or without the order, and the order can only
    help there: when the SoC has drifted (FCR, a fault) and the site's open sells no longer fit, a buy that brings
    it back is accepted, while every further sell is refused. With nothing breached, the same answer as checking
    the order as one more open order."""
    legs = open_orders + [new_order]
    side = 1 if new_order[1] > 0 else -1
    own = [(p, mw) for p, mw in legs if mw * side > 0]
    f = _simulate(list(positions) + own, soc_pct_now, now_ts, battery, limits, side=side)
    word = "sell" if side > 0 else "buy"
    if not f.ok:
        if len(own) > 1:
            other = "buy" if side > 0 else "sell"
            f.reason += (
                f" (worst case: the site's {len(own)} open {word} order(s) all fill, no open {other} order does)"
            )
        return f
    whole = check_feasibility(positions, soc_pct_now, now_ts, battery, limits, open_orders=legs)
    if whole.ok:
        return whole
    return Feasibility(
        True,
        None,
        None,
        f"accepted: this {word} order can only bring the schedule back toward its limits, which it breaches "
        f"already without it ({whole.reason})",
        f.soc_path,
    )


def _simulate(
    positions: list[tuple[float, float]],
    soc_pct_now: float,
    now_ts: float,
    battery: Battery,
    limits: Limits,
    side: int = 0,
) -> Feasibility:
    """Simulate the SoC from `now_ts` through the last period of `positions` ((period start, MW) pairs; + is
    discharge) and report the first period and limit breached.

    Per interval of h hours at position P (MW, at the grid): stored energy changes by -P/discharge_efficiency*h
    when discharging and by -P*charge_efficiency*h when charging, minus aux_load_mw*h (always drawn from the
    battery) minus self-discharge (self_discharge_pct_per_day of the energy stored at the interval's start,
    pro rata). The current period counts from `now_ts` to its end; periods without a position are idle
    (aux load and self-discharge only); periods before the current one are ignored.

    A period breaches a power limit when |P| exceeds p_discharge_max / p_charge_max / grid_limit; soc_min when
    it discharges and ends below soc_min; soc_max when it charges and ends above soc_max. Idle drift alone is
    not a breach of the schedule (but carries into the following periods). The SoC taper band and
    temperature are not modelled here: the limit function still applies them at delivery.

    `side` +1: only the discharging periods' breaches count (soc_min, discharge power, export), -1: only the
    charging periods' (soc_max, charge power, import); 0: all.
    """
    if not math.isfinite(soc_pct_now):
        raise ValueError(f"soc_pct_now must be a finite number (got {soc_pct_now})")
    if not math.isfinite(now_ts):
        raise ValueError(f"now_ts must be a finite number (got {now_ts})")
    current = period_start(now_ts)
    wanted = _positions_by_period(positions, current)
    path = [(now_ts, soc_pct_now)]
    if not wanted:
        return Feasibility(True, None, None, "feasible: nothing scheduled", path)
    first_power = _first_power_breach({p: mw for p, mw in wanted.items() if _counts(mw, side)}, limits)
    capacity = battery.capacity_mwh
    energy = soc_pct_now / 100.0 * capacity
    last = max(wanted)
    t, p = now_ts, current
    while p <= last:
        if first_power and first_power[0] == p:
            return Feasibility(False, p, first_power[1], first_power[2], path)
        end = p + PERIOD_S
        mw = wanted.get(p, 0.0)
        start_soc = energy / capacity * 100.0
        energy = _energy_after(energy, mw, (end - t) / 3600.0, battery)
        soc = energy / capacity * 100.0
        path.append((end, soc))
        breach = _soc_breach(p, mw, start_soc, soc, limits) if _counts(mw, side) else None
        if breach:
            return Feasibility(False, p, *breach, path)
        energy = max(energy, 0.0)  # an idle battery drained by its aux load stops at empty
        t, p = end, end
    lo = min(s for _, s in path)
    hi = max(s for _, s in path)
    return Feasibility(
        True, None, None, f"feasible: SoC stays within {lo:.1f}–{hi:.1f} % through {iso_minute(last + PERIOD_S)}", path
    )


def _counts(mw: float, side: int) -> bool:
    """Does a period at `mw` count for a check of `side` (+1 discharging, -1 charging, 0 both)?"""
    return side == 0 or mw * side > 0


def _positions_by_period(positions: list[tuple[float, float]], current: float) -> dict[float, float]:
    """Period start -> summed MW of the positions from the current period on (earlier ones are ignored)."""
    wanted: dict[float, float] = {}
    for p, mw in positions:
        if not math.isfinite(mw) or not math.isfinite(p):
            raise ValueError(f"position ({p}, {mw}): must be finite numbers")
        start = period_start(p)
        if start >= current:
            wanted[start] = wanted.get(start, 0.0) + mw
    return wanted


def _first_power_breach(wanted: dict[float, float], limits: Limits) -> tuple[float, str, str] | None:
    """Power limits are known without simulating: the first period that breaches one, its limit and reason."""
    for p in sorted(wanted):
        breach = _power_breach(p, wanted[p], limits)
        if breach:
            return (p, *breach)
    return None


def _energy_after(energy_mwh: float, mw: float, hours: float, battery: Battery) -> float:
    """Stored energy after `hours` at `mw` (at the grid; + is discharge), with aux load and self-discharge."""
    flow = mw / battery.discharge_efficiency if mw > 0 else mw * battery.charge_efficiency
    sd_per_h = battery.self_discharge_pct_per_day / 100.0 / 24.0
    return energy_mwh - (flow * hours + battery.aux_load_mw * hours + energy_mwh * sd_per_h * hours)


def _soc_breach(p: float, mw: float, start_soc: float, soc: float, limits: Limits) -> tuple[str, str] | None:
    """(limit, reason) when period `p` discharges below soc_min or charges above soc_max; idle drift is not."""
    if mw > 0 and soc < limits.soc_min_pct - _EPS_PCT:
        return (
            "soc_min",
            f"period {iso_minute(p)}: SoC would fall to {soc:.1f} % < soc_min "
            f"{limits.soc_min_pct:g} % (discharging {mw:g} MW from {start_soc:.1f} %)",
        )
    if mw < 0 and soc > limits.soc_max_pct + _EPS_PCT:
        return (
            "soc_max",
            f"period {iso_minute(p)}: SoC would rise to {soc:.1f} % > soc_max "
            f"{limits.soc_max_pct:g} % (charging {-mw:g} MW from {start_soc:.1f} %)",
        )
    return None
