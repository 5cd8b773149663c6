"""Device profiles: a register map or node map as data (YAML), shared by the drivers and the simulators.

A point's name carries its canonical unit (`soc_pct`, `power_mw`, `temperature_max_c`); `unit` is the
device's unit after scaling. Drivers convert between the two (see `to_canonical` / `from_canonical`), so
nothing outside `drivers/` ever sees W, kW or scale factors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.errors import ProfileError

PointType = Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "string"]
Function = Literal["holding", "input", "coil", "discrete"]
WordOrder = Literal["big", "little"]

_TYPE_ALIASES = {
    "uint16": "u16", "int16": "i16", "uint32": "u32", "int32": "i32",
    "uint64": "u64", "int64": "i64", "float32": "f32", "float": "f32", "str": "string",
    # SunSpec names
    "enum16": "u16", "bitfield16": "u16", "sunssf": "i16", "acc32": "u32", "enum32": "u32",
    "bitfield32": "u32", "acc64": "u64", "count": "u16", "pad": "u16",
}

WORDS = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "i64": 4, "f32": 2}

# device unit -> (canonical unit, factor device->canonical)
_UNIT_FACTORS: dict[str, tuple[str, float]] = {
    "W": ("MW", 1e-6), "kW": ("MW", 1e-3), "MW": ("MW", 1.0),
    "var": ("Mvar", 1e-6), "kvar": ("Mvar", 1e-3), "Mvar": ("Mvar", 1.0),
    "VA": ("MVA", 1e-6), "kVA": ("MVA", 1e-3), "MVA": ("MVA", 1.0),
    "Wh": ("MWh", 1e-6), "kWh": ("MWh", 1e-3), "MWh": ("MWh", 1.0),
    "ms": ("s", 1e-3), "s": ("s", 1.0),
}


def unit_factor(unit: str) -> float:
    """Factor that turns a value in `unit` into its canonical unit (MW, MWh, s; 1 for everything else)."""
    return _UNIT_FACTORS.get(unit, (unit, 1.0))[1]


class Point(BaseModel):
    """One point of a device: where it lives and how to decode it."""

    model_config = ConfigDict(extra="forbid")

    address: int | None = Field(None, ge=0, le=65535, description="Modbus register address (0-based on the wire)")
    function: Function = "holding"
    type: PointType = "u16"
    words: int | None = Field(None, ge=1, le=125, description="register count, for strings")
    word_order: WordOrder | None = None
    scale: float | str = 1.0
    offset: float = 0.0
    unit: str = ""
    writable: bool = False
    min: float | None = None
    max: float | None = None
    node_id: str | None = None
    sunspec: str | None = Field(None, description="'<model id>.<point>' for a point found by SunSpec discovery")
    bits: dict[int, str] | None = Field(None, description="alarm/fault bit number -> name, for bit-field points")
    description: str = ""

    @field_validator("type", mode="before")
    @classmethod
    def _alias_type(cls, v: object) -> object:
        return _TYPE_ALIASES.get(v, v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "Point":
        if self.type == "string" and self.words is None and self.address is not None:
            raise ValueError("a string point needs 'words' (its length in registers)")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max must be >= min (got {self.max} < {self.min})")
        if self.function in ("coil", "discrete") and self.type != "u16":
            raise ValueError(f"a {self.function} point is a single bit: type must be u16")
        return self

    @property
    def count(self) -> int:
        """How many registers the point takes."""
        if self.function in ("coil", "discrete"):
            return 1
        return self.words if self.type == "string" else WORDS[self.type]

    @property
    def factor(self) -> float:
        """Device unit -> canonical unit factor (W -> MW is 1e-6)."""
        return unit_factor(self.unit)


class SunSpecLayout(BaseModel):
    """Where a SunSpec device's model chain starts and which models a complete device carries."""

    model_config = ConfigDict(extra="forbid")

    base_address: int = 40000
    models: list[int] = Field(default_factory=list)


class Profile(BaseModel):
    """A device profile: protocol, defaults and points by canonical name."""

    model_config = ConfigDict(extra="forbid")

    name: str
    vendor: str = "generic"
    protocol: Literal["modbus", "sunspec", "opcua"]
    word_order: WordOrder = "big"
    description: str = ""
    sunspec: SunSpecLayout | None = None
    namespace: str | None = Field(None, description="OPC UA namespace URI the node ids refer to")
    publishing_interval_s: float = Field(0.2, gt=0, le=60, description="OPC UA subscription publishing interval")
    points: dict[str, Point]

    @model_validator(mode="after")
    def _check(self) -> "Profile":
        for name, p in self.points.items():
            if self.protocol == "modbus" and p.address is None:
                raise ValueError(f"points.{name}: a Modbus point needs an address")
            if self.protocol == "opcua" and p.node_id is None:
                raise ValueError(f"points.{name}: an OPC UA point needs a node_id")
            if self.protocol == "sunspec" and p.sunspec is None and p.address is None:
                raise ValueError(f"points.{name}: a SunSpec point needs 'sunspec: <model>.<point>' or an address")
            if isinstance(p.scale, str) and p.scale not in self.points:
                raise ValueError(f"points.{name}.scale: scale-factor point {p.scale!r} is not in the profile")
        return self

    def word_order_of(self, point: Point) -> WordOrder:
        return point.word_order or self.word_order


def format_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per error, each led by its dotted path: `limits.soc_max_pct: must be > ...`."""
    lines = []
    for e in err.errors():
        path = ".".join(str(x) for x in e["loc"])
        msg = e["msg"]
        for lead in ("Value error, ", "Assertion failed, "):
            if msg.startswith(lead):
                msg = msg[len(lead):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        full = ".".join(p for p in (prefix, path) if p)
        lines.append(f"{full}: {msg}" if full else msg)
    return lines


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; a bad one raises ProfileError naming the file and every bad point."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ProfileError(f"{path}: cannot read profile: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML: {e}") from e
    try:
        return Profile.model_validate(raw)
    except ValidationError as e:
        raise ProfileError(f"{path}: " + "; ".join(format_validation_error(e))) from e
