"""SunSpec over Modbus TCP: discovery ('SunS' marker, model chain), point layout from the published model
definitions shipped with pysunspec2, and a driver that resolves a profile's `701.W` refs into a concrete
register map and then reads and writes through ModbusDriver. A meter profile's `203.W` refs also read a meter
that carries model 201, 202 or 204 instead (same points, same offsets).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import sunspec2

from drivers.base import DriverStats, Reading
from drivers.errors import DeviceError, ModbusError, ProfileError
from drivers.modbus import MAX_REGISTERS, ModbusDriver
from drivers.profile import Point, Profile

log = logging.getLogger("bess.drivers.sunspec")

MODELS_DIR = Path(sunspec2.__file__).resolve().parent / "models" / "json"
SUNS = (0x5375, 0x6E53)
END_ID = 0xFFFF
MAX_MODELS = 256  # a chain longer than this is a corrupt map, not a device
# The integer meter models (single phase, split phase, wye, delta): the same points at the same offsets, so a
# meter profile written for 203 reads a meter that carries any one of them.
METER_MODELS = (201, 202, 203, 204)

# SunSpec unit spellings -> the profile's (drivers.profile unit_factor) spellings, used when a profile point
# leaves `unit` out and takes the model's.
_UNITS = {"WH": "Wh", "Var": "var", "Varh": "varh", "Secs": "s", "Pct": "%", "C": "°C"}


class SunSpecNotFound(DeviceError):
    """No 'SunS' marker at any of the base addresses tried."""

    cause = "sunspec_not_found"


@dataclass(frozen=True)
class ModelPoint:
    """A fixed point of a model: offset from the model's ID register, SunSpec type, size, scale factor."""

    name: str
    offset: int
    type: str
    size: int
    sf: str | int | None
    units: str
    writable: bool


@dataclass(frozen=True)
class ModelLocation:
    id: int
    address: int  # of the model's ID register
    length: int  # L: registers after the two header registers


@dataclass
class SunSpecMap:
    """What discovery found: the base address and every model's place in the chain (in chain order)."""

    base_address: int
    models: list[ModelLocation] = field(default_factory=list)

    def model(self, model_id: int) -> ModelLocation:
        for m in self.models:
            if m.id == model_id:
                return m
        if model_id in METER_MODELS:
            for m in self.models:
                if m.id in METER_MODELS:
                    return m
        raise ProfileError(
            f"SunSpec model {model_id}: the device does not carry it (it has {[m.id for m in self.models]})"
        )

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.models]

    def resolve(self, ref: str) -> tuple[ModelPoint, int]:
        """'704.WSet' -> (its definition, absolute address)."""
        model_s, _, name = ref.partition(".")
        if not model_s.isdigit() or not name:
            raise ProfileError(f"SunSpec point {ref!r}: expected '<model id>.<point>'")
        loc = self.model(int(model_s))
        points = model_points(loc.id)
        if name not in points:
            raise ProfileError(f"SunSpec point {ref!r}: model {loc.id} has no fixed point {name!r}")
        # (a meter ref of model 203 read from a 201, 202 or 204 lands at the same offset: see METER_MODELS)
        mp = points[name]
        if mp.offset + mp.size > loc.length + 2:
            raise ProfileError(f"SunSpec point {ref!r}: beyond the model's length {loc.length} on this device")
        return mp, loc.address + mp.offset


@lru_cache(maxsize=None)
def model_definition(model_id: int) -> dict[str, Any]:
    """The published JSON definition of a model, as shipped with pysunspec2."""
    path = MODELS_DIR / f"model_{model_id}.json"
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ProfileError(f"SunSpec model {model_id}: no definition at {path} ({e.strerror})") from e


@lru_cache(maxsize=None)
def model_points(model_id: int) -> dict[str, ModelPoint]:
    """The model's fixed points by name ('W', 'PFWInj.PF' inside a fixed group), offsets from its ID register.

    Layout stops at the first repeating group: what follows it has no fixed address."""
    top = model_definition(model_id)["group"]
    out: dict[str, ModelPoint] = {}
    _place(top, "", 0, out)
    return out


def _place(group: dict, prefix: str, offset: int, out: dict[str, ModelPoint]) -> int | None:
    """Lay out `group` from `offset`; returns the next offset, or None when a repeating group was reached."""
    names = {p["name"] for p in group.get("points", [])}
    for p in group.get("points", []):
        sf = p.get("sf")
        if isinstance(sf, str) and sf.lstrip("-").isdigit():
            sf = int(sf)
        elif isinstance(sf, str) and prefix and sf in names:
            sf = prefix + sf  # the group's own scale factor; otherwise it is the model's, top-level
        out[prefix + p["name"]] = ModelPoint(
            name=prefix + p["name"],
            offset=offset,
            type=p["type"],
            size=int(p["size"]),
            sf=sf,
            units=p.get("units", ""),
            writable=p.get("access", "R") == "RW",
        )
        offset += int(p["size"])
    for g in group.get("groups", []):
        count = g.get("count", 1)
        if not (isinstance(count, int) or (isinstance(count, str) and count.isdigit())):
            return None
        for i in range(int(count)):
            sub = prefix + g["name"] + (f"[{i + 1}]" if int(count) > 1 else "") + "."
            nxt = _place(g, sub, offset, out)
            if nxt is None:
                return None
            offset = nxt
    return offset


async def _read_holding(source, address: int, count: int, device_id: int) -> list[int]:
    """Registers from a ModbusDriver (typed errors) or a bare pymodbus async client."""
    if hasattr(source, "read_raw"):
        return await source.read_raw("holding", address, count)
    rr = await source.read_holding_registers(address, count=count, device_id=device_id)
    if rr.isError():
        raise ModbusError(str(source), getattr(rr, "exception_code", 0))
    return list(rr.registers)


async def discover(
    driver_or_client, base_addresses: tuple[int, ...] = (40000, 0, 50000), device_id: int = 1
) -> SunSpecMap:
    """Find 'SunS' at the first base address that has it and walk the model chain (ID, L headers) to the
    end model (0xFFFF). A Modbus exception at a base address means 'not here'; timeouts and lost
    connections propagate."""
    name = getattr(driver_or_client, "name", str(driver_or_client))
    tried = []
    for base in base_addresses:
        try:
            marker = await _read_holding(driver_or_client, base, 2, device_id)
        except ModbusError as e:
            tried.append(f"{base} (exception {e.code})")
            continue
        if tuple(marker) != SUNS:
            tried.append(f"{base} (no marker)")
            continue
        found = SunSpecMap(base_address=base)
        address = base + 2
        for _ in range(MAX_MODELS):
            model_id, length = await _read_holding(driver_or_client, address, 2, device_id)
            if model_id == END_ID:
                log.info("SunSpec device %s: models %s at %d", name, found.ids, base)
                return found
            found.models.append(ModelLocation(model_id, address, length))
            address += 2 + length
            if address + 2 > 0x10000:
                break
        raise SunSpecNotFound(name, f"SunSpec chain at {base} does not end (no 0xFFFF end model)")
    raise SunSpecNotFound(name, "no 'SunS' marker at " + ", ".join(tried))


def concrete_profile(profile: Profile, smap: SunSpecMap) -> tuple[Profile, set[str]]:
    """The profile with every `sunspec:` ref resolved to an address, type and scale-factor point; the
    scale-factor points it needed are added (named by ref, e.g. '704.WSet_SF') and returned as hidden names."""
    points: dict[str, Point] = {}
    hidden: set[str] = set()
    for name, p in profile.points.items():
        if p.sunspec is None:
            points[name] = p
            continue
        mp, address = smap.resolve(p.sunspec)
        model_id = p.sunspec.partition(".")[0]
        scale: float | str = p.scale
        if isinstance(mp.sf, int):
            scale = 10.0**mp.sf
        elif isinstance(mp.sf, str):
            sf_ref = f"{model_id}.{mp.sf}"
            sf_mp, sf_address = smap.resolve(sf_ref)
            if sf_ref not in points:
                points[sf_ref] = _point(sf_mp, sf_address, sf_ref, 1.0, writable=False)
                hidden.add(sf_ref)
            scale = sf_ref
        if p.writable and not mp.writable:
            raise ProfileError(f"points.{name}: {p.sunspec} is read-only in SunSpec model {model_id}")
        try:
            points[name] = _point(
                mp,
                address,
                p.sunspec,
                scale,
                writable=p.writable,
                unit=p.unit or _UNITS.get(mp.units, mp.units),
                minimum=p.min,
                maximum=p.max,
                bits=p.bits,
                plausible=p.plausible,
                description=p.description,
                sign=p.sign,
            )
        except ValueError as e:
            raise ProfileError(f"points.{name}: {p.sunspec} of type {mp.type} cannot be decoded: {e}") from None
    for name in hidden:
        if name in profile.points:
            hidden.discard(name)
    resolved = Profile(
        name=profile.name,
        vendor=profile.vendor,
        protocol="sunspec",
        word_order="big",
        description=profile.description,
        rated_power_mw=profile.rated_power_mw,
        read_write_multiple=profile.read_write_multiple,
        points=points,
    )
    return resolved, hidden


def _point(
    mp: ModelPoint,
    address: int,
    ref: str,
    scale: float | str,
    *,
    writable: bool,
    unit: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    bits: dict[int, str] | None = None,
    plausible: tuple[float, float] | None = None,
    description: str = "",
    sign: int = 1,
) -> Point:
    return Point(
        address=address,
        function="holding",
        type=mp.type,
        words=mp.size if mp.type == "string" else None,
        scale=scale,
        unit=unit,
        writable=writable,
        min=minimum,
        max=maximum,
        sunspec=ref,
        bits=bits,
        plausible=plausible,
        description=description or f"SunSpec {ref}",
        sign=sign,
    )


class SunSpecDriver:
    """A SunSpec device read and written by a profile of `<model>.<point>` refs. Discovery runs on the
    first connect; then every read and write goes through a ModbusDriver on the resolved register map.

    `link`: that ModbusDriver's connection options as they are (unit_id, timeout_s, clock, backoff_max_s,
    rating_mw, pool), so both drivers are built with the same arguments (controller.cycle.devices)."""

    def __init__(
        self,
        name: str,
        profile: Profile,
        host: str,
        port: int,
        base_addresses: tuple[int, ...] | None = None,
        **link: Any,
    ):
        self.name = name
        self.profile = profile
        if base_addresses is None:
            base = profile.sunspec.base_address if profile.sunspec else 40000
            base_addresses = tuple(dict.fromkeys((base, 40000, 0, 50000)))
        self.base_addresses = base_addresses
        self.map: SunSpecMap | None = None
        self._hidden: set[str] = set()
        # Until discovery, the connection carries no points; the SunSpec chain is contiguous, so reads
        # may span unused registers freely (max_gap = a whole request).
        empty = Profile(name=profile.name, vendor=profile.vendor, protocol="sunspec", points={})
        self.modbus = ModbusDriver(name, empty, host, port, max_gap=MAX_REGISTERS, **link)

    @property
    def stats(self) -> DriverStats:
        return self.modbus.stats

    @property
    def requests_per_read(self) -> int:
        return self.modbus.requests_per_read

    async def connect(self) -> None:
        await self.modbus.connect()
        if self.map is None:
            smap = await discover(self.modbus, self.base_addresses, device_id=self.modbus.unit_id)
            resolved, self._hidden = concrete_profile(self.profile, smap)
            # the common model (manufacturer, model, serial) does not change while the device runs
            common = frozenset(n for n, p in resolved.points.items() if (p.sunspec or "").partition(".")[0] == "1")
            self.modbus.use_profile(resolved, static=common)
            self.map = smap

    async def read(self) -> dict[str, Reading]:
        await self.connect()
        readings = await self.modbus.read()
        for name in self._hidden:
            readings.pop(name, None)
        return readings

    async def write(self, point: str, value: float | int | str, verify: bool = True) -> float | int | str | None:
        await self.connect()
        return await self.modbus.write(point, value, verify=verify)

    async def read_point(self, point: str) -> float | int | str | None:
        await self.connect()
        return await self.modbus.read_point(point)

    async def close(self) -> None:
        await self.modbus.close()
