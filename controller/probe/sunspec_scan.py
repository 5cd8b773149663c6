"""SunSpec discovery for the probe: the 'SunS' marker at the usual base addresses (drivers.sunspec.discover), then
every model block read and its fixed points decoded from the published definitions (scale factors applied,
SunSpec's 'not implemented' values shown as such)."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.probe.modbus_link import (
    GATEWAY_CODES,
    ModbusLink,
    NoAnswer,
    ProbeTarget,
    exception_text,
)
from drivers import codec
from drivers.errors import ModbusError, ProfileError
from drivers.modbus import MAX_REGISTERS
from drivers.profile import Point
from drivers.sunspec import (
    ModelLocation,
    ModelPoint,
    SunSpecNotFound,
    discover,
    model_definition,
    model_points,
)

BASE_ADDRESSES = (40000, 0, 50000)
NOT_IMPLEMENTED = "not implemented"


@dataclass
class PointValue:
    """One fixed point of a model as the device shows it now."""

    name: str
    address: int
    type: str
    units: str
    writable: bool
    value: float | int | str | None = None
    raw: str = ""
    status: str = "ok"  # ok, not implemented, scale factor not implemented, undecoded

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "address": self.address,
            "type": self.type,
            "units": self.units,
            "writable": self.writable,
            "value": self.value,
            "raw": self.raw,
            "status": self.status,
        }


@dataclass
class ModelScan:
    id: int
    name: str
    address: int
    length: int
    points: dict[str, PointValue] = field(default_factory=dict)
    note: str = ""

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "address": self.address,
            "length": self.length,
            "note": self.note,
            "points": [p.as_json() for p in self.points.values()],
        }


@dataclass
class UnitScan:
    """What probing one unit id found; `error` says what did not answer or why nothing was found."""

    target: ProbeTarget
    base_address: int | None = None
    models: list[ModelScan] = field(default_factory=list)
    error: str | None = None
    status: str = "found"  # found, not_found, no_answer

    def model(self, model_id: int) -> ModelScan | None:
        return next((m for m in self.models if m.id == model_id), None)

    def point(self, ref: str) -> PointValue | None:
        model_s, _, name = ref.partition(".")
        m = self.model(int(model_s))
        return None if m is None else m.points.get(name)


class _Source:
    """drivers.sunspec.discover reads through anything with `read_raw` and a `name`."""

    def __init__(self, link: ModbusLink):
        self.link = link
        self.name = link.target.where

    async def read_raw(self, function: str, address: int, count: int) -> list[int]:
        try:
            return await self.link.read(function, address, count)  # type: ignore[arg-type]
        except ModbusError as e:
            if e.code in GATEWAY_CODES:  # the gateway answers for a unit behind it that did not
                raise NoAnswer(
                    f"{self.name}: no answer to read {function} {address}+{count} "
                    f"(the gateway says {exception_text(e.code)})"
                ) from None
            raise


async def scan_unit(target: ProbeTarget, base_addresses: tuple[int, ...] = BASE_ADDRESSES) -> UnitScan:
    """Discover and read one unit; never raises for device trouble (it lands in `error`)."""
    link = ModbusLink(target)
    out = UnitScan(target)
    try:
        smap = await discover(_Source(link), base_addresses, device_id=target.unit_id)
        out.base_address = smap.base_address
        for loc in smap.models:
            out.models.append(await _read_model(link, loc))
    except NoAnswer as e:
        out.status, out.error = "no_answer", str(e)
    except SunSpecNotFound as e:
        out.status, out.error = "not_found", str(e)
    except ModbusError as e:
        out.status, out.error = "not_found", f"{target.where}: {e.message}"
    finally:
        await link.close()
    return out


async def _read_block(link: ModbusLink, address: int, count: int) -> list[int]:
    regs: list[int] = []
    while count > 0:
        n = min(count, MAX_REGISTERS)
        regs += await link.read("holding", address, n)
        address += n
        count -= n
    return regs


async def _read_model(link: ModbusLink, loc: ModelLocation) -> ModelScan:
    try:
        name = model_definition(loc.id)["group"]["name"]
        points = model_points(loc.id)
    except ProfileError:
        return ModelScan(loc.id, "?", loc.address, loc.length, note="no published definition (vendor model?)")
    scan = ModelScan(loc.id, name, loc.address, loc.length)
    try:
        regs = await _read_block(link, loc.address, loc.length + 2)
    except ModbusError as e:
        scan.note = f"block {loc.address}+{loc.length + 2} not readable: {exception_text(e.code)}"
        return scan
    fixed = {n: mp for n, mp in points.items() if mp.offset + mp.size <= loc.length + 2}
    if len(fixed) < len(points) or _has_repeats(loc.id):
        scan.note = "repeating blocks after the fixed points are not decoded"
    values = {
        n: _decode(mp, regs[mp.offset : mp.offset + mp.size])
        for n, mp in fixed.items()
        if mp.type != "pad" and n not in ("ID", "L")
    }
    for n, pv in values.items():
        mp = fixed[n]
        pv.address = loc.address + mp.offset
        _apply_sf(pv, mp, values)
    scan.points = values
    return scan


def _has_repeats(model_id: int) -> bool:
    return any(not str(g.get("count", 1)).isdigit() for g in model_definition(model_id)["group"].get("groups", []))


def _decode(mp: ModelPoint, regs: list[int]) -> PointValue:
    pv = PointValue(mp.name, 0, mp.type, mp.units, mp.writable, raw="0x" + "".join(f"{r:04X}" for r in regs))
    try:
        point = Point(type=mp.type, words=mp.size if mp.type == "string" else None)
        value = codec.decode(point, regs, "big", sunspec=True)
    except ValueError:  # a type the profile schema does not carry (ipaddr, float64, eui48 ...)
        pv.status = "undecoded"
        return pv
    if value is None:
        pv.status = NOT_IMPLEMENTED
    pv.value = value
    return pv


def _apply_sf(pv: PointValue, mp: ModelPoint, values: dict[str, PointValue]) -> None:
    if pv.status != "ok" or not isinstance(pv.value, (int, float)) or mp.sf is None:
        return
    sf = mp.sf if isinstance(mp.sf, int) else None
    if isinstance(mp.sf, str):
        sf_pv = values.get(mp.sf)
        if sf_pv is None or not isinstance(sf_pv.value, int):
            pv.status, pv.value = f"scale factor {mp.sf} {NOT_IMPLEMENTED}", None
            return
        sf = sf_pv.value
    if sf:
        pv.value = codec.apply_scale(pv.value, 10.0**sf)


async def scan_units(targets: list[ProbeTarget], stop_at_first: bool = False) -> list[UnitScan]:
    """Each unit id in turn on the same host:port (a gateway answers one request at a time); each is bounded by
    its own timeouts and retries, so a silent one costs at most (1 + retries) x timeout per base address tried."""
    out = []
    for t in targets:
        scan = await scan_unit(t)
        out.append(scan)
        if stop_at_first and scan.status == "found":
            break
    return out
