"""Device profiles: a register map or node map as data (YAML), shared by the drivers and the simulators.

A point's name carries its canonical unit (`soc_pct`, `power_mw`, `temperature_max_c`); `unit` is the
device's unit after scaling. Drivers convert between the two (see `to_canonical` / `from_canonical`), so
nothing outside `drivers/` ever sees W, kW or scale factors.

Readings are checked, not trusted: a value outside its point's plausible range (`plausible`, or its role's
default, see `plausible_range`), a marker value (`invalid_values`, `marker_values`), a non-finite number or
a bad OPC UA status makes the reading unknown.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.errors import ProfileError
from drivers.validation import format_validation_error

PointType = Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "string"]
Function = Literal["holding", "input", "coil", "discrete"]
WordOrder = Literal["big", "little"]

_TYPE_ALIASES = {
    "uint16": "u16",
    "int16": "i16",
    "uint32": "u32",
    "int32": "i32",
    "uint64": "u64",
    "int64": "i64",
    "float32": "f32",
    "float": "f32",
    "str": "string",
    # SunSpec names
    "enum16": "u16",
    "bitfield16": "u16",
    "sunssf": "i16",
    "acc32": "u32",
    "enum32": "u32",
    "bitfield32": "u32",
    "acc64": "u64",
    "count": "u16",
    "pad": "u16",
}

WORDS = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "i64": 4, "f32": 2}

# What plain-Modbus devices put in a register that has no value (sensor missing, not measured yet), as the
# unsigned content of the point's registers. Unsigned types: all ones. Signed types: the two extremes (0x8000
# is also SunSpec's int16 "not implemented"). 0x7FFF/0x8000 are NOT markers of an unsigned point by default:
# there they are ordinary values (bit 15 of an alarm word); a profile lists them in `invalid_values` when its
# device uses them. f32 needs none: NaN and inf are refused as non-finite.
DEFAULT_INVALID_VALUES: dict[str, tuple[int, ...]] = {
    "u16": (0xFFFF,),
    "i16": (0x7FFF, 0x8000),
    "u32": (0xFFFFFFFF,),
    "i32": (0x7FFFFFFF, 0x80000000),
    "u64": (0xFFFFFFFFFFFFFFFF,),
    "i64": (0x7FFFFFFFFFFFFFFF, 0x8000000000000000),
    "f32": (),
    "string": (),
}

# Role defaults of the plausible range, in canonical units, by what a point's name says it is.
SOC_RANGE_PCT = (0.0, 100.0)
TEMPERATURE_RANGE_C = (-40.0, 100.0)
POWER_RATING_FACTOR = 1.5  # power within +-1.5x the rating
SCALE_FACTOR_RANGE = (-10.0, 10.0)  # SunSpec: a scale factor is -10..10

# device unit -> (canonical unit, factor device->canonical)
_UNIT_FACTORS: dict[str, tuple[str, float]] = {
    "W": ("MW", 1e-6),
    "kW": ("MW", 1e-3),
    "MW": ("MW", 1.0),
    "var": ("Mvar", 1e-6),
    "kvar": ("Mvar", 1e-3),
    "Mvar": ("Mvar", 1.0),
    "VA": ("MVA", 1e-6),
    "kVA": ("MVA", 1e-3),
    "MVA": ("MVA", 1.0),
    "Wh": ("MWh", 1e-6),
    "kWh": ("MWh", 1e-3),
    "MWh": ("MWh", 1.0),
    "ms": ("s", 1e-3),
    "s": ("s", 1.0),
}


def unit_factor(unit: str) -> float:
    """Factor that turns a value in `unit` into its canonical unit (MW, MWh, s; 1 for everything else)."""
    return _UNIT_FACTORS.get(unit, (unit, 1.0))[1]


class Point(BaseModel):
    """One point of a device: where it lives and how to decode it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    address: int | None = Field(None, ge=0, le=65535, description="Modbus register address (0-based on the wire)")
    function: Function = "holding"
    type: PointType = "u16"
    words: int | None = Field(None, ge=1, le=125, description="register count, for strings")
    word_order: WordOrder | None = None
    scale: float | str = 1.0
    offset: float = 0.0
    unit: str = ""
    sign: Literal[1, -1] = Field(
        1,
        description=(
            "-1: the device counts the other way round from ours (a grid meter's W is positive for import at most "
            "sites; ours is positive for export): the driver negates the value both ways"
        ),
    )
    writable: bool = False
    min: float | None = None
    max: float | None = None
    node_id: str | None = None
    sunspec: str | None = Field(None, description="'<model id>.<point>' for a point found by SunSpec discovery")
    bits: dict[int, str] | None = Field(None, description="alarm/fault bit number -> name, for bit-field points")
    plausible: tuple[float, float] | None = Field(
        None,
        description="[low, high] in the device unit (like min/max): a reading outside is unknown; "
        "default: the point's role (see plausible_range)",
    )
    invalid_values: list[int] | None = Field(
        None,
        description="plain Modbus: raw register contents that mean 'no value' (unsigned or signed form); "
        "default DEFAULT_INVALID_VALUES of the type, [] for none",
    )
    description: str = ""

    @field_validator("type", mode="before")
    @classmethod
    def _alias_type(cls, v: object) -> object:
        return _TYPE_ALIASES.get(v, v) if isinstance(v, str) else v

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, v: object) -> object:
        # checked before the union: a bad number would otherwise be reported once per member (float, str)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (v == 0 or not math.isfinite(v)):
            raise ValueError(f"must be a finite non-zero number or the name of a scale-factor point (got {v})")
        return v

    @model_validator(mode="after")
    def _check(self) -> "Point":
        if self.type == "string" and self.words is None and self.address is not None:
            raise ValueError("a string point needs 'words' (its length in registers)")
        if self.words is not None and self.type != "string":
            raise ValueError(f"words: only a string point takes 'words' (a {self.type} has {WORDS[self.type]})")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max must be >= min (got {self.max} < {self.min})")
        if self.function in ("coil", "discrete") and self.type != "u16":
            raise ValueError(f"a {self.function} point is a single bit: type must be u16")
        if self.address is not None and self.address + self.count > 0x10000:
            raise ValueError(f"address: {self.address} + {self.count} registers runs past register 65535")
        if self.plausible is not None:
            lo, hi = self.plausible
            if not lo < hi:
                raise ValueError(f"plausible: low must be < high (got [{lo:g}, {hi:g}])")
            if self.type == "string" or self.bits:
                raise ValueError("plausible: a string or bit-field point has no plausible range")
        if self.bits and self.sunspec is None:  # a SunSpec point's type comes from its model, checked then
            width = 16 * WORDS.get(self.type, 0) if self.type not in ("f32", "string") else 0
            if not width:
                raise ValueError(f"bits: a bit-field point needs an integer type (got {self.type})")
            wrong = [b for b in self.bits if not 0 <= b < width]
            if wrong:
                raise ValueError(f"bits: bit numbers must be 0..{width - 1} for a {self.type} (got {wrong})")
        if self.invalid_values is not None:
            if self.function in ("coil", "discrete") or self.type == "string":
                raise ValueError(
                    f"invalid_values: a {self.type if self.type == 'string' else self.function} "
                    "point has no marker values"
                )
            bits = 16 * WORDS[self.type]
            signed = self.type.startswith("i")
            lo = -(1 << (bits - 1)) if signed else 0
            wrong = [v for v in self.invalid_values if not lo <= v < (1 << bits)]
            if wrong:
                raise ValueError(
                    f"invalid_values: {wrong} do not fit the point's type {self.type} ({lo}..{(1 << bits) - 1})"
                )
        return self

    @property
    def count(self) -> int:
        """How many registers the point takes."""
        if self.function in ("coil", "discrete"):
            return 1
        return self.words if self.type == "string" else WORDS[self.type]

    @property
    def factor(self) -> float:
        """Device unit -> canonical unit factor (W -> MW is 1e-6; negative for a point of `sign: -1`)."""
        return unit_factor(self.unit) * self.sign

    def marker_values(self, sunspec: bool = False) -> frozenset[int]:
        """Raw register contents (unsigned, the point's words combined) that mean 'no value': SunSpec's
        'not implemented' for a SunSpec point, else `invalid_values` or the type's defaults."""
        if self.function in ("coil", "discrete") or self.type == "string":
            return frozenset()
        if self.type == "f32":
            return frozenset()  # SunSpec's float 'not implemented' is NaN: refused as non-finite
        bits = 16 * WORDS[self.type]
        if sunspec:  # all ones for unsigned types, the most negative value for signed ones (codec agrees)
            return frozenset([1 << (bits - 1) if self.type.startswith("i") else (1 << bits) - 1])
        values = DEFAULT_INVALID_VALUES[self.type] if self.invalid_values is None else self.invalid_values
        return frozenset(v & ((1 << bits) - 1) for v in values)


class SunSpecLayout(BaseModel):
    """Where a SunSpec device's model chain starts and which models a complete device carries."""

    model_config = ConfigDict(extra="forbid")

    base_address: int = Field(40000, ge=0, le=65533)
    models: list[int] = Field(default_factory=list)

    @field_validator("models")
    @classmethod
    def _ids(cls, v: list[int]) -> list[int]:
        wrong = [m for m in v if not 1 <= m < 0xFFFF]
        if wrong:
            raise ValueError(f"SunSpec model ids are 1..65534 (got {wrong})")
        return v


class Profile(BaseModel):
    """A device profile: protocol, defaults and points by canonical name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    vendor: str = "generic"
    protocol: Literal["modbus", "sunspec", "opcua"]
    word_order: WordOrder = "big"
    description: str = ""
    sunspec: SunSpecLayout | None = None
    namespace: str | None = Field(None, description="OPC UA namespace URI the node ids refer to")
    publishing_interval_s: float = Field(0.2, gt=0, le=60, description="OPC UA subscription publishing interval")
    rated_power_mw: float | None = Field(
        None,
        gt=0,
        le=10_000,
        description="the device's power rating: power points are plausible within "
        "+-1.5x of it (default: the site's largest power limit)",
    )
    read_write_multiple: bool = Field(
        False,
        description="Modbus/SunSpec: the device implements function 23 (read/write multiple registers, the write "
        "done before the read): a verified write and its read-back then take one request instead of two",
    )
    points: dict[str, Point]

    @model_validator(mode="after")
    def _check(self) -> "Profile":
        if self.read_write_multiple and self.protocol == "opcua":
            raise ValueError("read_write_multiple: a Modbus function (23); an OPC UA device has no use for it")
        for name, p in self.points.items():
            if self.protocol == "modbus" and p.address is None:
                raise ValueError(f"points.{name}: a Modbus point needs an address")
            if self.protocol == "opcua" and p.node_id is None:
                raise ValueError(f"points.{name}: an OPC UA point needs a node_id")
            if self.protocol == "sunspec" and p.sunspec is None and p.address is None:
                raise ValueError(f"points.{name}: a SunSpec point needs 'sunspec: <model>.<point>' or an address")
            if isinstance(p.scale, str) and p.scale not in self.points:
                raise ValueError(f"points.{name}.scale: scale-factor point {p.scale!r} is not in the profile")
            if isinstance(p.scale, str) and self.points[p.scale].type not in ("i16", "u16"):
                raise ValueError(f"points.{name}.scale: scale-factor point {p.scale!r} must be an i16 (or u16)")
            if p.invalid_values is not None and self.protocol != "modbus":
                raise ValueError(
                    f"points.{name}.invalid_values: only for plain Modbus (SunSpec fixes its "
                    "'not implemented' values; OPC UA has status codes)"
                )
        return self

    def word_order_of(self, point: Point) -> WordOrder:
        return point.word_order or self.word_order


def _role_range(name: str, rating_mw: float | None) -> tuple[float, float] | None:
    """The default plausible range of a point by what its name says it is, in canonical units."""
    if name.endswith("_pct") and ("soc" in name or "soh" in name):
        return SOC_RANGE_PCT
    if name.endswith("_c") and "temp" in name:
        return TEMPERATURE_RANGE_C
    if name.endswith("_mw") and rating_mw:
        return (-POWER_RATING_FACTOR * rating_mw, POWER_RATING_FACTOR * rating_mw)
    return None


def plausible_range(
    name: str, point: Point, rating_mw: float | None = None, scale_factor: bool = False
) -> tuple[float, float] | None:
    """A reading of `point` outside this range (device unit, like min/max) is unknown. The profile's own
    `plausible`, else its role's: SoC/SoH 0-100 %, temperatures -40..100 °C, power (`*_mw`) within +-1.5x
    `rating_mw`, a scale factor -10..10; None: no range (strings, bit fields, points of no known role)."""
    if point.plausible is not None:
        return point.plausible
    if point.type == "string" or point.bits or point.function in ("coil", "discrete"):
        return None
    if scale_factor:
        return SCALE_FACTOR_RANGE
    rng = _role_range(name, rating_mw)
    if rng is None:
        return None
    f = point.factor
    lo, hi = rng[0] / f, rng[1] / f
    return (min(lo, hi), max(lo, hi))


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
