"""HTTP control of a running plant simulator (demo and tests), loopback only: set the battery's state,
inject and clear faults on each face. `bess-edge simulate` serves it on `simulator.control_port`.

Garbage readings: `POST /sim/faults/{face}` with `{"raw": {"<point>": <raw>}}` serves that raw value for the
point (Modbus faces: the register content as an int, or a list of ints for a multi-register point; the OPC UA
face: the variable's value) and `{"status_codes": {"<point>": <int StatusCode>}}` (OPC UA face) serves that
status; both add to what the face already serves. `DELETE /sim/faults` clears every fault of every face.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from simulators.battery import BatteryModel


class StateIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    soc_pct: float | None = Field(None, ge=0, le=100)
    temperature_c: float | None = Field(None, ge=-40, le=120)
    ambient_c: float | None = Field(None, ge=-40, le=80)

    @field_validator("soc_pct", "temperature_c", "ambient_c")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be finite")
        return v


class FaultsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    silent: bool | None = None
    delay_s: float | None = Field(None, ge=0, le=60)
    exception_code: int | None = Field(None, ge=0, le=255)
    drop: bool | None = None
    alarm_bits: int | None = Field(None, ge=0, le=0xFFFF)
    fault_bits: int | None = Field(None, ge=0, le=0xFFFF)
    raw: dict[str, Any] | None = Field(None, description="point name -> raw value to serve (see module doc)")
    status_codes: dict[str, Any] | None = Field(None, description="OPC UA face: point name -> StatusCode to serve")


# (face, raw, status_codes) -> None, or ValueError naming the point that cannot be served
FaultCheck = Callable[[str, dict[str, Any], dict[str, Any]], None]


def _json_safe(value: Any) -> Any:
    """NaN and inf (a raw value may be one) as text: JSON has no numbers for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def create_control_app(model: BatteryModel, faults: dict[str, Any], check: FaultCheck | None = None) -> FastAPI:
    """`faults` maps a face name (bms_modbus, pcs, bms_opcua) to its mutable Faults object; `check` validates
    raw values and status codes against the face's points before they are served."""
    app = FastAPI(title="bess-edge plant simulator control", docs_url=None, redoc_url=None)

    def state() -> dict[str, Any]:
        return {"soc_pct": model.soc_pct, "temperature_c": model.temperature_c, "power_mw": model.power_mw,
                "ambient_c": model.p.ambient_c, "allowed_charge_mw": model.allowed_charge_mw,
                "allowed_discharge_mw": model.allowed_discharge_mw, "alarm_bits": model.alarm_bits,
                "faults": {k: {f: _json_safe(getattr(v, f)) for f in FaultsIn.model_fields if hasattr(v, f)}
                           for k, v in faults.items()}}

    @app.get("/sim/state")
    def get_state() -> dict[str, Any]:
        return state()

    @app.post("/sim/state")
    def set_state(body: StateIn) -> dict[str, Any]:
        model.set_state(body.soc_pct, body.temperature_c)
        if body.ambient_c is not None:
            model.p.ambient_c = body.ambient_c
        return state()

    @app.post("/sim/faults/{face}")
    def set_faults(face: str, body: FaultsIn) -> dict[str, Any]:
        if face not in faults:
            raise HTTPException(404, f"face: unknown {face!r} (one of {', '.join(faults)})")
        raw, codes = body.raw or {}, body.status_codes or {}
        if check is not None and (raw or codes):
            try:
                check(face, raw, codes)
            except ValueError as e:
                raise HTTPException(422, str(e)) from None
        for k, v in body.model_dump(exclude_none=True, exclude={"raw", "status_codes"}).items():
            setattr(faults[face], k, v)
        # added to what the face serves already (DELETE /sim/faults clears them)
        faults[face].raw = {**faults[face].raw, **raw}
        faults[face].status_codes = {**faults[face].status_codes, **codes}
        return state()

    @app.delete("/sim/faults")
    def clear_faults() -> dict[str, Any]:
        for f in faults.values():
            f.clear()
        return state()

    return app
