"""HTTP control of a running plant simulator (demo and tests), loopback only: set the batteries' state,
inject and clear faults on each face, move the grid frequency and the aux load the POI meter sees.
`bess-edge simulate` serves it on `simulator.control_port`.

State: `GET /sim/state`; `POST /sim/state {"soc_pct", "temperature_c", "ambient_c", "unit"?}` sets every unit's
battery, or only the one named by `unit` (a multi-unit plant; `GET` lists them under `units`, and its top-level
soc_pct is energy-weighted, power_mw the units' sum).

Faces: `POST /sim/faults/{face}` with `{"silent", "delay_s", "exception_code", "drop", "alarm_bits",
"fault_bits"}`. A one-unit plant's faces are `bms_modbus`, `pcs`, `bms_opcua`; a multi-unit plant's are the same
led by the unit's name, `u2.bms_modbus`, `u2.pcs`, `u1.bms_opcua`; the POI meter's face is `meter`.

POI meter (when the plant has one): `POST /sim/frequency` with `{"step_hz": 0.2}` (a step of the grid
frequency, now), `{"ramp_to_hz": 49.8, "ramp_s": 10}` (a linear ramp over clock seconds), `{"hz": 50.0}` (set),
`{"wander": false}` (no slow wander and no noise: the frequency is exactly what was set, for tests); `POST
/sim/aux {"aux_load_mw": 0.5}` sets the plant's own consumption the meter sees. Both answer the meter's state
(`GET /sim/state` has it under `meter`); 404 without a meter.

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
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class UnitStateIn(StateIn):
    unit: str | None = Field(None, description="the unit to set (default: every unit)")


class FrequencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    step_hz: float | None = Field(None, ge=-5, le=5)
    ramp_to_hz: float | None = Field(None, ge=45, le=65)
    ramp_s: float | None = Field(None, gt=0, le=86400)
    hz: float | None = Field(None, ge=45, le=65)
    wander: bool | None = None

    @model_validator(mode="after")
    def _ramp_pair(self) -> "FrequencyIn":
        if (self.ramp_s is None) != (self.ramp_to_hz is None):
            raise ValueError("ramp_to_hz and ramp_s go together")
        return self


class AuxIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    aux_load_mw: float = Field(ge=0, le=1000)


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


def _battery_state(model: BatteryModel) -> dict[str, Any]:
    return {
        "soc_pct": model.soc_pct,
        "temperature_c": model.temperature_c,
        "power_mw": model.power_mw,
        "ambient_c": model.p.ambient_c,
        "allowed_charge_mw": model.allowed_charge_mw,
        "allowed_discharge_mw": model.allowed_discharge_mw,
        "alarm_bits": model.alarm_bits,
    }


def _plant_state(models: dict[str, BatteryModel]) -> dict[str, Any]:
    """One unit: its battery. Several: energy-weighted SoC, summed power and allowed power, the hottest
    temperature, every alarm bit; each unit under `units`."""
    if len(models) == 1:
        return _battery_state(next(iter(models.values())))
    ms = list(models.values())
    capacity = sum(m.p.capacity_mwh for m in ms)
    out = {
        "soc_pct": 100.0 * sum(m.energy_mwh for m in ms) / capacity,
        "temperature_c": max(m.temperature_c for m in ms),
        "power_mw": sum(m.power_mw for m in ms),
        "ambient_c": ms[0].p.ambient_c,
        "allowed_charge_mw": sum(m.allowed_charge_mw for m in ms),
        "allowed_discharge_mw": sum(m.allowed_discharge_mw for m in ms),
        "alarm_bits": 0,
    }
    for m in ms:
        out["alarm_bits"] |= m.alarm_bits
    out["units"] = {name: _battery_state(m) for name, m in models.items()}
    return out


def create_control_app(
    model: BatteryModel | dict[str, BatteryModel],
    faults: dict[str, Any],
    check: FaultCheck | None = None,
    meter: Any = None,
) -> FastAPI:
    """`model`: the plant's battery, or each unit's by unit name; `faults` maps a face name (bms_modbus, pcs,
    bms_opcua, u2.pcs, meter ...) to its mutable Faults object; `check` validates raw values and status codes
    against the face's points before they are served; `meter`: the POI meter (simulators.meter.Meter) or None."""
    app = FastAPI(title="bess-edge plant simulator control", docs_url=None, redoc_url=None)
    models = model if isinstance(model, dict) else {"": model}

    def state() -> dict[str, Any]:
        out = _plant_state(models)
        out["faults"] = {
            k: {f: _json_safe(getattr(v, f)) for f in FaultsIn.model_fields if hasattr(v, f)} for k, v in faults.items()
        }
        if meter is not None:
            out["meter"] = meter.state()
        return out

    @app.get("/sim/state")
    def get_state() -> dict[str, Any]:
        return state()

    @app.post("/sim/state")
    def set_state(body: UnitStateIn) -> dict[str, Any]:
        if body.unit is not None and body.unit not in models:
            raise HTTPException(404, f"unit: unknown {body.unit!r} (one of {', '.join(models)})")
        for name, m in models.items():
            if body.unit is None or name == body.unit:
                m.set_state(body.soc_pct, body.temperature_c)
                if body.ambient_c is not None:
                    m.p.ambient_c = body.ambient_c
        return state()

    _add_meter_routes(app, meter)
    _add_fault_routes(app, faults, check, state)
    return app


def _add_meter_routes(app: FastAPI, meter: Any) -> None:
    """/sim/frequency and /sim/aux: the grid at the POI meter (404 on a plant without one)."""

    def the_meter() -> Any:
        if meter is None:
            raise HTTPException(404, "this plant has no POI meter (a device with role meter in the site file)")
        return meter

    @app.post("/sim/frequency")
    def set_frequency(body: FrequencyIn) -> dict[str, Any]:
        grid = the_meter().grid
        if body.wander is not None:
            grid.set_wander(body.wander)
        if body.hz is not None:
            grid.set_hz(body.hz)
        if body.step_hz is not None:
            grid.step_hz(body.step_hz)
        if body.ramp_to_hz is not None and body.ramp_s is not None:
            grid.ramp_to(body.ramp_to_hz, body.ramp_s)
        meter.publish()
        return meter.state()

    @app.post("/sim/aux")
    def set_aux(body: AuxIn) -> dict[str, Any]:
        the_meter().p.aux_load_mw = body.aux_load_mw
        return meter.state()


def _add_fault_routes(
    app: FastAPI, faults: dict[str, Any], check: FaultCheck | None, state: Callable[[], dict[str, Any]]
) -> None:
    """/sim/faults: set a face's faults (raw values checked against its points first), or clear them all."""

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
