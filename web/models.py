"""Request and response models of the REST API: requests are strict (ranges, finite numbers, 15-minute
boundaries, no unknown fields); responses accept what the backend gives (extra fields kept, Unix seconds
turned into ISO 8601, non-finite numbers into null) so that valid JSON always leaves the app.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from controller.clock import iso, parse_iso
from controller.cycle.mode import MODES
from controller.trading.market import PERIOD_S

ModeName = Literal[MODES]  # the cycle's modes, one definition (controller.cycle.mode)


def _iso_ts(v: Any) -> Any:
    """Unix seconds -> ISO 8601 Z; strings pass as they are."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return iso(float(v)) if math.isfinite(v) else None
    return v


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


IsoTs = Annotated[str, BeforeValidator(_iso_ts)]
OptIsoTs = Annotated[str | None, BeforeValidator(_iso_ts)]
OptNum = Annotated[float | None, BeforeValidator(_finite_or_none)]


def _check_finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


# ----------------------------------------------------------------------------------------------- requests
class _Request(BaseModel):
    # strict: "2" is not a number and true is not 1 on a plant controller
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class LoginRequest(_Request):
    api_key: str = Field(min_length=1, max_length=512)


class OrderIn(_Request):
    side: Literal["buy", "sell"]
    quantity_mw: float = Field(gt=0, le=10_000, description="MW, > 0")
    price_eur_mwh: float = Field(ge=-10_000, le=10_000, description="EUR/MWh")
    market: str = Field("intraday", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    delivery_start: str = Field(
        description="ISO 8601 UTC on a 15-minute boundary, e.g. 2026-11-25T14:15:00Z", max_length=40
    )
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"

    _finite = field_validator("quantity_mw", "price_eur_mwh")(_check_finite)

    @field_validator("delivery_start")
    @classmethod
    def _aligned(cls, v: str) -> str:
        try:
            ts = parse_iso(v)
        except (ValueError, OverflowError) as e:
            raise ValueError(f"not an ISO 8601 UTC time ({e})") from e
        if not math.isfinite(ts) or ts % PERIOD_S:
            raise ValueError("must be on a 15-minute boundary (:00, :15, :30, :45)")
        return iso(ts).replace(".000Z", "Z")


class AutoIn(_Request):
    """POST /api/auto: the auto-trader's kill switch."""

    enabled: bool


class TelemetryIn(_Request):
    soc_pct: float = Field(ge=0, le=100, description="%, 0-100")
    power_mw: float = Field(ge=-10_000, le=10_000, description="MW, + discharge")
    temperature_c: float = Field(ge=-60, le=150, description="°C")

    _finite = field_validator("soc_pct", "power_mw", "temperature_c")(_check_finite)


class ModeIn(_Request):
    mode: ModeName
    setpoint_mw: float | None = Field(None, ge=-10_000, le=10_000, description="manual mode only; MW, + discharge")
    expires_s: float | None = Field(None, gt=0, le=86_400, description="manual mode only; default from config")

    @field_validator("setpoint_mw", "expires_s")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        return None if v is None else _check_finite(v)

    @model_validator(mode="after")
    def _manual_needs_setpoint(self) -> "ModeIn":
        if self.mode == "manual" and self.setpoint_mw is None:
            raise ValueError("setpoint_mw: required in manual mode")
        return self


class FcrIn(_Request):
    enabled: bool = Field(description="switch FCR (services.fcr) on or off")


# ---------------------------------------------------------------------------------------------- responses
class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class Error(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    detail: str = Field(description="every problem in one line, naming the field: `body.quantity_mw: ...`")
    errors: list[FieldError] = []


class OrderError(BaseModel):
    detail: str
    period: str | None = None
    limit: str | None = None


class UnitStatus(_Response):
    unit: str
    soc_pct: OptNum = None
    power_mw: OptNum = None
    setpoint_mw: OptNum = None
    temperature_c: OptNum = None
    available: bool = False
    binding: str | None = None


class PoiStatus(_Response):
    power_mw: OptNum = None
    frequency_hz: OptNum = None
    ts: OptIsoTs = None


class AutoBrief(_Response):
    enabled: bool
    state: str
    reason: str = ""


class FcrStatus(_Response):
    enabled: bool
    capacity_mw: OptNum = None
    frequency_hz: OptNum = Field(None, description="the POI frequency FCR follows; null when unknown")
    contribution_mw: OptNum = Field(None, description="the power FCR asks for now, + discharge")
    reserve_held: bool | None = None
    reserve_soc_low_pct: OptNum = None
    reserve_soc_high_pct: OptNum = None
    reserve_restore_mwh: OptNum = None
    reserve_restore_direction: int | None = None
    compliance_pct: OptNum = None


class AfrrStatus(_Response):
    setpoint_mw: OptNum = Field(
        None, description="the last aFRR setpoint taken (after clamping), + up; null before one"
    )
    active_mw: OptNum = Field(None, description="the aFRR part of the target now (ramped), + up")
    band_up_mw: OptNum = Field(None, description="aFRR the plant can give upward (discharge) now")
    band_down_mw: OptNum = Field(None, description="aFRR the plant can give downward (charge) now")
    following: bool = Field(False, description="a setpoint is live (received, not timed out)")
    timed_out: bool = Field(False, description="no setpoint for longer than scada.iec104.afrr_timeout_s: part to 0")
    clamped: bool = Field(False, description="the last setpoint was beyond the offered band and was clamped")
    received: OptIsoTs = None


class Status(_Response):
    soc_pct: OptNum
    power_mw: OptNum
    setpoint_mw: OptNum
    target_mw: OptNum
    temperature_c: OptNum
    status: Literal["online", "offline"]
    mode: str
    binding: str
    alarms: list[str]
    ts: IsoTs
    reasons: list[str] = []
    manual_setpoint_mw: OptNum = None
    manual_expires: OptIsoTs = None
    units: list[UnitStatus] = Field([], description="one per unit of the plant (issue 13), in the site file's order")
    poi: PoiStatus | None = Field(None, description="the POI meter's reading; null on a site without a meter")
    auto_trading: AutoBrief | None = Field(None, description="the auto-trader's switch and state (issue 14)")
    fcr: FcrStatus | None = Field(None, description="grid service FCR (issue 15); null on a site that offers none")
    afrr: AfrrStatus | None = Field(
        None, description="aFRR setpoints over IEC 104 (issue 15); null on a site without the IEC 104 face"
    )


class VwapPoint(_Response):
    period_start: IsoTs
    vwap: OptNum
    volume_mw: OptNum


class MarketData(_Response):
    mark: OptNum
    ema: OptNum
    vwap: OptNum
    series: list[VwapPoint]
    stale: bool = False


class Order(_Response):
    order_id: str
    status: str
    side: str | None = None
    quantity_mw: OptNum = None
    price_eur_mwh: OptNum = None
    delivery_start: OptIsoTs = None
    market: str | None = None
    filled_mw: OptNum = None
    remaining_mw: OptNum = None


class Orders(_Response):
    orders: list[Order]
    stale: bool = False


class Trade(_Response):
    trade_id: str
    side: str | None = None
    quantity_mw: OptNum
    price_eur_mwh: OptNum
    delivery_start: IsoTs
    delivery_end: OptIsoTs = None
    market: str | None = None
    executed_at: OptIsoTs = None


class Trades(_Response):
    trades: list[Trade]
    stale: bool = False


class OrderCheck(_Response):
    ok: bool
    reason: str | None = None
    period: OptIsoTs = None
    limit: str | None = None


class TelemetryOut(_Response):
    source: Literal["manual"]
    ts: IsoTs
    soc_pct: OptNum
    power_mw: OptNum
    temperature_c: OptNum


class ModeOut(_Response):
    mode: ModeName
    setpoint_mw: OptNum = None
    expires: OptIsoTs = None
    source: str | None = None


class Alarm(_Response):
    key: str
    device: str | None = None
    cause: str | None = None
    message: str | None = None
    raised_ts: OptIsoTs = None
    cleared_ts: OptIsoTs = None


class Alarms(_Response):
    active: list[Alarm]
    history: list[Alarm] = []


class Decision(_Response):
    ts: IsoTs
    target_mw: OptNum = None
    setpoint_mw: OptNum = None
    binding: str | None = None
    mode: str | None = None
    soc_pct: OptNum = None
    power_mw: OptNum = None
    temperature_c: OptNum = None
    readback_mw: OptNum = None
    reasons: str | list[str] | None = None


class Decisions(BaseModel):
    decisions: list[Decision]
    next_before: str | None = Field(description="pass as ?before= for the next (older) page; null at the end")


class Period(_Response):
    period_start: IsoTs
    position_mw: OptNum


class ActualPoint(_Response):
    ts: IsoTs
    power_mw: OptNum = None
    soc_pct: OptNum = None
    setpoint_mw: OptNum = None


class _Window(_Response):
    """A response over a time window: `from` and `to` on the wire (`from` is a Python keyword, hence `from_`)."""

    from_: IsoTs = Field(alias="from")
    to: IsoTs

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class Schedule(_Window):
    periods: list[Period]
    actual: list[ActualPoint] = []


class PlanPeriod(_Response):
    period_start: IsoTs
    price_eur_mwh: OptNum
    position_mw: OptNum
    plan_mw: OptNum
    soc_pct_end: OptNum


class Plan(_Response):
    """DESIGN.md's GET /api/plan."""

    generated_at: OptIsoTs
    status: str
    solve_ms: OptNum
    objective_eur: OptNum
    periods: list[PlanPeriod]


class PnlDay(_Response):
    day: str
    pnl_eur: OptNum
    energy_mwh: OptNum


class AutoReservePeriod(_Response):
    period_start: IsoTs
    plan_mw: OptNum
    direction: int  # -1 the period charges the SoC back into the band, +1 discharges it back


class AutoReserve(_Response):
    """GET /api/auto's `reserve` (null on a site without FCR): the FCR reserve as the cycle last saw it (`held`;
    if not, the way back, `restore_direction` +1 discharge / -1 charge, and `restore_mwh`) and whether the plan
    brings the SoC back into the band (`restoring`, `restore_periods`)."""

    fcr_enabled: bool
    held: bool
    soc_low_pct: OptNum
    soc_high_pct: OptNum
    restore_direction: int
    restore_mwh: OptNum
    restoring: bool
    restore_periods: list[AutoReservePeriod] = []


class AutoStatus(_Response):
    """GET /api/auto: the kill switch (`enabled`), whether the site file enables it (`configured`), what it does
    now (`state`: running | off | disabled | stopped | safe_state | exchange_down | no_forecast | no_soc |
    no_plan) and why, counters, the FCR reserve's restore (`reserve`), realised PnL per day."""

    enabled: bool
    configured: bool
    state: str
    reason: str = ""
    replans: int = 0
    last_replan_at: OptIsoTs = None
    plan_id: str | None = None
    orders_placed: int = 0
    orders_cancelled: int = 0
    orders_refused: dict[str, int] = {}
    reserve: AutoReserve | None = None
    pnl_by_day: list[PnlDay] = []


class MarketSample(_Response):
    ts: IsoTs
    mark: OptNum = None
    ema: OptNum = None
    vwap: OptNum = None


class MarketHistory(_Window):
    samples: list[MarketSample]


class WsToken(BaseModel):
    token: str
    expires_in_s: float


class LoginOut(BaseModel):
    ok: bool
    expires: str
    read_only: bool = Field(False, description="a key from API_KEY_READ: the session may only read")


class Health(BaseModel):
    status: str
    ts: str


class Ready(BaseModel):
    ready: bool
    detail: str | None = None
