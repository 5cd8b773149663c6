"""The exchange's order as it comes over the wire (DESIGN.md's order in: MW, EUR/MWh, a delivery period), checked
once here and turned into the engine's integer ticks and lots at the engine's boundary (`OrderIn.to_engine`).

Two models on purpose: the wire speaks MW and EUR/MWh as floats, the engine matches exact integers (0.01 EUR/MWh
ticks, 0.1 MW lots) so that price-time priority and fills never round.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from controller.clock import parse_iso
from controller.trading.market import PERIOD_S
from simulators.exchange.engine import Order, TickOrder, mw_to_lots, price_to_ticks

PRICE_LIMIT_EUR = 9999.0  # the harmonised intraday price limits (±9,999 EUR/MWh)
QUANTITY_MAX_MW = 10000.0


class OrderIn(BaseModel):
    """DESIGN.md's order in; checked once here, then only ticks and lots go inside."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    side: Literal["buy", "sell"]
    # strict: a JSON true or "2" is a client bug, not a quantity
    quantity_mw: float = Field(gt=0, le=QUANTITY_MAX_MW, strict=True)
    price_eur_mwh: float = Field(ge=-PRICE_LIMIT_EUR, le=PRICE_LIMIT_EUR, strict=True)
    delivery_start: StrictStr | StrictInt = Field(description="ISO 8601 UTC (Z) or Unix seconds")
    market: str = Field("intraday", min_length=1, max_length=64)
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"
    participant: str | None = Field(None, min_length=1, max_length=128)
    client_order_id: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("quantity_mw")
    @classmethod
    def _lots(cls, v: float) -> float:
        return _in_units(mw_to_lots, v, "quantity_mw: ")

    @field_validator("price_eur_mwh")
    @classmethod
    def _ticks(cls, v: float) -> float:
        return _in_units(price_to_ticks, v, "price_eur_mwh: ")

    @field_validator("delivery_start")
    @classmethod
    def _period(cls, v: str | int) -> int:
        ts = parse_iso(v) if isinstance(v, str) else v
        if ts != int(ts) or int(ts) % PERIOD_S:
            raise ValueError("must be on a 15-minute boundary (:00/:15/:30/:45 UTC)")
        return int(ts)

    def to_engine(self, participant: str) -> TickOrder:
        """The order in the engine's units, for `participant` (the caller the signature names)."""
        return TickOrder(
            participant=participant,
            side=self.side,
            price_ticks=price_to_ticks(self.price_eur_mwh),
            quantity_lots=mw_to_lots(self.quantity_mw),
            delivery_start=self.delivery_start,
            market=self.market,
            time_in_force=self.time_in_force,
            client_order_id=self.client_order_id,
        )

    def differs_from(self, known: Order) -> str | None:
        """The fields in which this order differs from `known` (the order its client_order_id first named), or
        None."""
        mine = self.to_engine(known.participant)
        fields = ("side", "price_ticks", "quantity_lots", "delivery_start", "market", "time_in_force")
        names = {"price_ticks": "price_eur_mwh", "quantity_lots": "quantity_mw"}
        bad = [names.get(f, f) for f in fields if getattr(known, f) != getattr(mine, f)]
        return ", ".join(bad) if bad else None


def _in_units(convert, v: float, lead: str) -> float:
    """`v` if `convert` (to ticks or lots) takes it exactly; its ValueError without the field name otherwise
    (pydantic names the field)."""
    try:
        convert(v)
    except ValueError as e:
        raise ValueError(str(e).removeprefix(lead)) from None
    return v
