"""SunSpec register layout computed from the published model definitions shipped with pysunspec2: 'SunS' at
the base address, each model's id + length header and points in definition order, then the end model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import sunspec2

from drivers.errors import ProfileError
from drivers.profile import Point
from drivers.sunspec import METER_MODELS

MODELS_DIR = Path(sunspec2.__file__).resolve().parent / "models" / "json"
SUNS_MARKER = [0x5375, 0x6E53]  # "SunS"
END_MODEL = [0xFFFF, 0]

# The value a SunSpec device reports for a point it does not implement (per the SunSpec information model).
NOT_IMPLEMENTED = {
    "int16": 0x8000,
    "sunssf": 0x8000,
    "pad": 0x8000,
    "uint16": 0xFFFF,
    "enum16": 0xFFFF,
    "bitfield16": 0xFFFF,
    "count": 0,
    "acc16": 0,
    "int32": 0x80000000,
    "uint32": 0xFFFFFFFF,
    "enum32": 0xFFFFFFFF,
    "bitfield32": 0xFFFFFFFF,
    "acc32": 0,
    "ipaddr": 0,
    "int64": 0x8000000000000000,
    "uint64": 0xFFFFFFFFFFFFFFFF,
    "acc64": 0,
    "float32": 0x7FC00000,
    "float64": 0x7FF8000000000000,
}


@dataclass(frozen=True)
class SunSpecPoint:
    """One point of a model at its absolute register address."""

    model_id: int
    name: str  # "W", or "PFWInj.PF" inside a group
    address: int
    type: str  # the SunSpec type: int16, uint32, sunssf, enum16, string ...
    size: int  # registers
    sf: str | int | None = None  # scale factor: a point name of the same model, or a constant exponent
    units: str = ""
    access: str = "R"
    symbols: tuple[tuple[str, int], ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.model_id}.{self.name}"

    @property
    def writable(self) -> bool:
        return self.access == "RW"


@dataclass
class SunSpecModel:
    id: int
    name: str
    address: int  # of the ID register
    length: int  # L: registers after the header
    points: dict[str, SunSpecPoint] = field(default_factory=dict)


@dataclass
class SunSpecLayout:
    base_address: int
    models: dict[int, SunSpecModel]
    end_address: int  # of the end model's 0xFFFF

    @property
    def register_count(self) -> int:
        """Registers from the base address through the end model's length register."""
        return self.end_address + 2 - self.base_address

    def point(self, ref: str) -> SunSpecPoint:
        """'701.W' -> its point; ProfileError for a model or point the layout does not carry."""
        model_s, _, name = ref.partition(".")
        try:
            mid = int(model_s)
            if mid not in self.models and mid in METER_MODELS:  # 201-204: same points (drivers/sunspec.py)
                mid = next((m for m in self.models if m in METER_MODELS), mid)
            return self.models[mid].points[name]
        except (ValueError, KeyError):
            raise ProfileError(f"SunSpec point {ref!r}: not in models {sorted(self.models)}") from None

    def registers(self) -> list[int]:
        """The whole map as a device shows it before any value is set: marker, headers, every point at its
        not-implemented value, end model. Index 0 is the base address."""
        regs = [0] * self.register_count
        regs[0:2] = SUNS_MARKER
        for m in self.models.values():
            for p in m.points.values():
                off = p.address - self.base_address
                if p.name == "ID":
                    regs[off] = m.id
                elif p.name == "L":
                    regs[off] = m.length
                elif p.type == "string":
                    regs[off : off + p.size] = [0] * p.size
                else:
                    raw = NOT_IMPLEMENTED.get(p.type, 0)
                    regs[off : off + p.size] = [(raw >> (16 * (p.size - 1 - i))) & 0xFFFF for i in range(p.size)]
        end = self.end_address - self.base_address
        regs[end : end + 2] = END_MODEL
        return regs

    def profile_points(self) -> dict[str, Point]:
        """Every point as a register-map Point named by its ref ('701.W'), scale = its scale-factor point's ref."""
        out: dict[str, Point] = {}
        for m in self.models.values():
            for p in m.points.values():
                if isinstance(p.sf, str):
                    scale: float | str = f"{m.id}.{p.sf}"
                elif isinstance(p.sf, int):
                    scale = 10.0**p.sf
                else:
                    scale = 1.0
                words = p.size if p.type == "string" else None
                out[p.ref] = Point(
                    address=p.address,
                    function="holding",
                    type=p.type,
                    words=words,
                    word_order="big",
                    scale=scale,
                    unit=p.units,
                    writable=p.writable,
                    sunspec=p.ref,
                    description=f"SunSpec {m.name}.{p.name}",
                )
        return out


@lru_cache(maxsize=None)
def model_definition(model_id: int) -> dict:
    """The published JSON definition of a model, as shipped with pysunspec2."""
    path = MODELS_DIR / f"model_{model_id}.json"
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ProfileError(f"SunSpec model {model_id}: no definition at {path} ({e.strerror})") from e


def _points_len(group: dict) -> int:
    return sum(p["size"] for p in group.get("points", []))


def _group_len(group: dict, repeats: dict[str, int]) -> int:
    """Registers of one instance of `group`, nested groups included."""
    n = _points_len(group)
    for g in group.get("groups", []):
        n += _group_len(g, repeats) * _count(g, repeats)
    return n


def _count(group: dict, repeats: dict[str, int]) -> int:
    """A group without `count` occurs once; a constant count as given; a count naming a point (a repeating
    group) as chosen in `repeats` (0 or 1 so that the model length matches its declaration)."""
    c = group.get("count")
    if c is None:
        return 1
    if isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
        return int(c)
    return repeats.get(group["name"], 0)


def _repeats_for(top: dict, declared_len: int | None) -> dict[str, int]:
    """Pick 0 or 1 instances of each variable repeating group so that the body length equals the declared L."""
    variable = [g["name"] for g in top.get("groups", []) if not _count_is_fixed(g)]
    best: dict[str, int] = {name: 0 for name in variable}
    if declared_len is None or not variable:
        return best
    for mask in range(1 << len(variable)):
        pick = {name: (mask >> i) & 1 for i, name in enumerate(variable)}
        if _group_len(top, pick) - 2 == declared_len:
            return pick
    return best


def _count_is_fixed(group: dict) -> bool:
    c = group.get("count")
    return c is None or isinstance(c, int) or (isinstance(c, str) and c.isdigit())


def _lay_out(
    group: dict, model_id: int, address: int, prefix: str, repeats: dict[str, int], points: dict[str, SunSpecPoint]
) -> int:
    """Place `group`'s points from `address` on; returns the next free address."""
    for p in group.get("points", []):
        sf = p.get("sf")
        if isinstance(sf, str) and sf.lstrip("-").isdigit():
            sf = int(sf)
        name = prefix + p["name"]
        points[name] = SunSpecPoint(
            model_id=model_id,
            name=name,
            address=address,
            type=p["type"],
            size=p["size"],
            sf=sf,
            units=p.get("units", ""),
            access=p.get("access", "R"),
            symbols=tuple((s["name"], s["value"]) for s in p.get("symbols", [])),
        )
        address += p["size"]
    for g in group.get("groups", []):
        n = _count(g, repeats)
        for i in range(n):
            sub = f"{prefix}{g['name']}" + (f"[{i + 1}]" if not _count_is_fixed(g) or n > 1 else "") + "."
            address = _lay_out(g, model_id, address, sub, repeats, points)
    return address


def build_layout(model_ids: list[int], base_address: int = 40000) -> SunSpecLayout:
    """Lay out the models in order from `base_address`. Each model's length is its declared L (checked against
    the sum of its points) or, where the definition leaves L open, that sum."""
    models: dict[int, SunSpecModel] = {}
    address = base_address + 2
    for mid in model_ids:
        if mid in models:
            raise ProfileError(f"SunSpec model {mid}: listed twice")
        d = model_definition(mid)
        top = d["group"]
        declared = next((p.get("value") for p in top["points"] if p["name"] == "L"), None)
        repeats = _repeats_for(top, declared)
        body_len = _group_len(top, repeats) - 2
        if declared is not None and declared != body_len:
            raise ProfileError(
                f"SunSpec model {mid}: points add up to {body_len} registers, definition says L={declared}"
            )
        m = SunSpecModel(id=mid, name=top["name"], address=address, length=body_len)
        end = _lay_out(top, mid, address, "", repeats, m.points)
        assert end == address + 2 + body_len, (mid, end, address, body_len)
        models[mid] = m
        address = end
    return SunSpecLayout(base_address=base_address, models=models, end_address=address)
