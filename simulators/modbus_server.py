"""A Modbus TCP device served from a profile (pymodbus 3.16 server, SimDevice datastore): register banks
read and written by point name through the codec, a write hook for the owner, and injected faults (among
them raw register contents served for any point, whatever the owner keeps in its registers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.codec import decode, encode, int_to_words
from drivers.errors import ProfileError
from drivers.profile import Point, Profile
from simulators.faults import Faults
from simulators.sunspec_layout import SunSpecLayout, build_layout

log = logging.getLogger("bess.sim.modbus")

Value = float | int | str | None
# Called with the decoded values (device units) a write would set, before they are stored; returns a Modbus
# exception code to refuse the whole write, or None to accept it.
WriteHook = Callable[[dict[str, Value]], int | None]

_FUNCTION_OF_CODE = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
    4: "input",
}
_WRITE_CODES = {5, 6, 15, 16, 22, 23}
_BITS = ("coil", "discrete")


@dataclass
class _Bank:
    """One address space: `start` is the wire address of `values[0]`; registers, or 0/1 bits for coils."""

    start: int
    values: list[int]

    @property
    def end(self) -> int:
        return self.start + len(self.values)


class ModbusSimServer:
    """Serves `points` (name -> Point with address) at `unit_id`. Values go in and out in the point's device
    unit after scale (`set("allowed_charge_mw", 5000.0)` for a kW point). Wire address N is register N.

    `aliases` maps extra names to point names (a SunSpec profile's `power_mw` -> `701.W`). Writes from clients
    are refused with exception 02 (not a writable point, or part of one) or 03 (outside the point's min/max,
    or refused by `on_write`)."""

    def __init__(
        self,
        points: dict[str, Point],
        *,
        word_order: str = "big",
        unit_id: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        on_write: WriteHook | None = None,
        aliases: dict[str, str] | None = None,
        initial: dict[str, _Bank] | None = None,
        name: str = "modbus",
    ):
        self.points = points
        self.word_order = word_order
        self.unit_id = unit_id
        self.host = host
        self.port = port
        self.faults = faults if faults is not None else Faults()
        self.on_write = on_write
        self.aliases = aliases or {}
        self.name = name
        self.requests = 0
        # called before every access by a client: the owner lays its measurements into the registers now, once
        # per physics step at most, instead of on every tick (see Pcs.refresh): the register image a client reads
        # is as fresh as an eager one, and a plant of many units costs CPU per request, not per tick
        self.refresh: Callable[[], None] | None = None
        self._server: ModbusTcpServer | None = None
        self._members: dict[int, ModbusSimServer] = {}  # other devices served on this port (a gateway)
        self._watch: asyncio.Task | None = None
        # point name -> (value, scale factor, registers) of its last set(): the physics republishes every point
        # on every tick (20 Hz per unit), mostly unchanged, and encoding was most of a many-unit simulator's CPU
        self._encoded: dict[str, tuple[float | int | str, int | None, list[int]]] = {}
        self._banks = initial if initial is not None else {}
        for fn in ("holding", "input", *_BITS):
            if fn not in self._banks:
                mine = [p for p in points.values() if p.function == fn and p.address is not None]
                if mine:
                    end = max(p.address + p.count for p in mine)
                    # the whole range from 0 is readable (zeros between points), as on most devices, so a
                    # client may read across small gaps in one request
                    size = (end + 15) // 16 * 16 if fn in _BITS else end
                    self._banks[fn] = _Bank(0, [0] * size)
        for name_, p in points.items():
            bank = self._banks.get(p.function)
            if p.address is None or bank is None or p.address < bank.start or p.address + p.count > bank.end:
                raise ProfileError(f"points.{name_}: address {p.address} is outside the {p.function} registers")
        self._by_address: dict[str, dict[int, str]] = {fn: {} for fn in self._banks}
        for name_, p in points.items():
            for a in range(p.address, p.address + p.count):
                self._by_address[p.function][a] = name_
        # the registers of writable points: the client's own, never laid by `refresh`
        self._client_owned = {
            fn: {a for a, n in where.items() if self.points[n].writable} for fn, where in self._by_address.items()
        }

    @classmethod
    def from_profile(cls, profile: Profile, **kwargs) -> "ModbusSimServer":
        """A server for a register-map profile, or for a SunSpec profile laid out from its model list."""
        if profile.protocol == "modbus":
            return cls(dict(profile.points), word_order=profile.word_order, **kwargs)
        if profile.protocol != "sunspec" or profile.sunspec is None:
            raise ProfileError(f"profile {profile.name}: a Modbus simulator needs protocol modbus or sunspec")
        layout = build_layout(profile.sunspec.models, profile.sunspec.base_address)
        points, aliases = sunspec_points(profile, layout)
        bank = _Bank(layout.base_address, layout.registers())
        srv = cls(points, word_order="big", aliases=aliases, initial={"holding": bank}, **kwargs)
        srv.layout = layout
        return srv

    # --- values by name ---------------------------------------------------------------------------------

    def point(self, name: str) -> Point:
        try:
            return self.points[self.aliases.get(name, name)]
        except KeyError:
            raise ProfileError(f"point {name!r}: not in this device's profile") from None

    def _regs(self, p: Point, bank_values: list[int] | None = None) -> list[int]:
        bank = self._banks[p.function]
        values = bank.values if bank_values is None else bank_values
        off = p.address - bank.start
        return values[off : off + p.count]

    def _sf(self, p: Point, bank_values: list[int] | None = None) -> int | None:
        if not isinstance(p.scale, str):
            return None
        raw = self._regs(self.points[p.scale], bank_values)[0]
        return raw - 0x10000 if raw & 0x8000 else raw

    def get(self, name: str) -> Value:
        """The point's value in its device unit (None where a SunSpec point is not implemented)."""
        p = self.point(name)
        return self._decode(p, self._regs(p))

    def _decode(self, p: Point, regs: list[int], bank_values: list[int] | None = None) -> Value:
        if p.function in _BITS:
            return regs[0]
        return decode(p, regs, self.word_order_of(p), sf=self._sf(p, bank_values), sunspec=p.sunspec is not None)

    def word_order_of(self, p: Point) -> str:
        return p.word_order or self.word_order

    def set(self, name: str, value: float | int | str) -> None:
        """Lay `value` (device unit, after scale) into the point's registers."""
        p = self.point(name)
        bank = self._banks[p.function]
        off = p.address - bank.start
        if p.function in _BITS:
            bank.values[off] = 1 if value else 0
            return
        if isinstance(value, bool):
            value = int(value)
        sf = self._sf(p)
        last = self._encoded.get(name)
        if last is not None and last[0] == value and last[1] == sf and type(last[0]) is type(value):
            regs = last[2]  # the same value laid again: the registers are still written (a client may have)
        else:
            regs = encode(p, value, self.word_order_of(p), sf=sf, name=name)
            self._encoded[name] = (value, sf, regs)
        bank.values[off : off + p.count] = regs

    def set_raw(self, name: str, regs: list[int]) -> None:
        """Lay raw registers (a SunSpec 'not implemented' value, a string already encoded)."""
        p = self.point(name)
        if len(regs) != p.count:
            raise ValueError(f"point {name}: takes {p.count} registers, got {len(regs)}")
        bank = self._banks[p.function]
        off = p.address - bank.start
        bank.values[off : off + p.count] = [r & 0xFFFF for r in regs]

    def update(self, values: dict[str, float | int | str]) -> None:
        for k, v in values.items():
            self.set(k, v)

    def raw_registers(self, name: str, value: object) -> tuple[Point, list[int]]:
        """What a `faults.raw` entry puts on the wire for point `name`: an int is the point's whole raw content
        (its registers combined in the point's word order; a negative one in two's complement), a list is one
        int per register. Raises ValueError naming the point when it does not fit."""
        try:
            p = self.point(name)
        except ProfileError:
            raise ValueError(f"raw.{name}: no such point on this face") from None
        n = p.count
        if p.function in _BITS:
            if value not in (0, 1) or isinstance(value, (bool, list)):
                raise ValueError(f"raw.{name}: a {p.function} is one bit: 0 or 1 (got {value!r})")
            return p, [int(value)]  # type: ignore[call-overload]
        if isinstance(value, int) and not isinstance(value, bool):
            bits = 16 * n
            if not -(1 << (bits - 1)) <= value < (1 << bits):
                raise ValueError(f"raw.{name}: {value} does not fit the point's {n} register(s)")
            return p, int_to_words(value & ((1 << bits) - 1), n, self.word_order_of(p))
        if (
            isinstance(value, list)
            and len(value) == n
            and all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= 0xFFFF for r in value)
        ):
            return p, list(value)
        raise ValueError(f"raw.{name}: an int, or a list of {n} register values 0..65535 (got {value!r})")

    def _raw_overrides(self, fn: str) -> list[tuple[int, int]]:
        """(address, register) pairs the faults tell this face to serve instead of its own, for one bank."""
        out: list[tuple[int, int]] = []
        for name, value in self.faults.raw.items():
            try:
                p, regs = self.raw_registers(name, value)
            except ValueError as e:  # checked by the control API; an entry set some other way is skipped
                log.warning("raw value not served", extra={"device": self.name, "error": str(e)})
                continue
            if p.function == fn:
                out.extend((p.address + i, r) for i, r in enumerate(regs))
        return out

    # --- the datastore's view -----------------------------------------------------------------------------

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this on every access, before it reads or writes its own copy of the block: serve
        from our banks, and validate writes (then store them in our banks)."""
        fn = _FUNCTION_OF_CODE.get(function_code)
        bank = self._banks.get(fn) if fn else None
        if bank is None:
            return ExcCodes.ILLEGAL_ADDRESS
        if self.refresh is not None and not self._owned_by_client(fn, address, count):
            self.refresh()
        raw = self._raw_overrides(fn) if self.faults.raw else ()
        if fn in _BITS:
            if set_values is not None and function_code in _WRITE_CODES:
                refused = self._write(fn, address, [1 if v else 0 for v in set_values])
                if refused:
                    return refused
            bits = list(bank.values)
            for a, b in raw:
                if bank.start <= a < bank.end:
                    bits[a - bank.start] = b
            # pymodbus keeps bits 16 to a register, bit 0 first
            packed = [sum(1 << i for i, b in enumerate(bits[k : k + 16]) if b) for k in range(0, len(bits), 16)]
            registers[: len(packed)] = packed
            return None
        if set_values is not None and function_code in _WRITE_CODES:
            refused = self._write(fn, address, [int(v) for v in set_values])
            if refused:
                return refused
        off = address - start_address
        registers[off : off + count] = bank.values[address - bank.start : address - bank.start + count]
        for a, r in raw:
            if address <= a < address + count:
                registers[a - start_address] = r
        return None

    def _owned_by_client(self, fn: str, address: int, count: int) -> bool:
        """Every register of the access is a writable point's (a write, or a setpoint's read-back): what the
        physics lays is not in it, so the registers need no refresh first."""
        owned = self._client_owned.get(fn, ())
        return all(a in owned for a in range(address, address + count))

    def _write(self, fn: str, address: int, values: list[int]) -> ExcCodes | None:
        bank = self._banks[fn]
        where = self._by_address[fn]
        touched: list[str] = []
        for a in range(address, address + len(values)):
            name = where.get(a)
            if name is None or not self.points[name].writable:
                log.info("write refused: not writable", extra={"device": self.name, "address": a})
                return ExcCodes.ILLEGAL_ADDRESS
            if not touched or touched[-1] != name:
                touched.append(name)
        image = list(bank.values)
        image[address - bank.start : address - bank.start + len(values)] = values
        changes: dict[str, Value] = {}
        for name in touched:
            p = self.points[name]
            if p.address < address or p.address + p.count > address + len(values):
                log.info("write refused: part of a multi-register point", extra={"device": self.name, "point": name})
                return ExcCodes.ILLEGAL_ADDRESS
            value = self._decode(p, self._regs(p, image), image)
            if isinstance(value, (int, float)) and (
                (p.min is not None and value < p.min) or (p.max is not None and value > p.max)
            ):
                log.info("write refused: out of range", extra={"device": self.name, "point": name, "value": value})
                return ExcCodes.ILLEGAL_VALUE
            changes[name] = value
        if self.on_write is not None:
            code = self.on_write(changes)
            if code:
                return ExcCodes(code)
        bank.values[address - bank.start : address - bank.start + len(values)] = values
        return None

    def _device(self) -> SimDevice:
        def block(fn: str) -> list[SimData]:
            bank = self._banks.get(fn)
            if fn in _BITS:
                if bank is None:  # pymodbus needs every bank; ours answers 02 for it (see _action)
                    return [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
                return [SimData(bank.start, values=[bool(b) for b in bank.values], datatype=DataType.BITS)]
            if bank is None:
                return [SimData(0, datatype=DataType.INVALID)]
            return [SimData(bank.start, values=list(bank.values), datatype=DataType.REGISTERS)]

        return SimDevice(
            self.unit_id,
            simdata=(block("coil"), block("discrete"), block("holding"), block("input")),
            action=self._action,
        )

    # --- serving ------------------------------------------------------------------------------------------

    def serve_also(self, other: "ModbusSimServer") -> None:
        """Serve `other` on this server's port, at its own unit id, as a gateway does for the devices behind
        it (call before start). Each keeps its own registers and faults; a request for a unit id nobody here
        has is answered with exception 0B (gateway target failed to respond)."""
        if other.unit_id in self._members or other.unit_id == self.unit_id:
            raise ValueError(f"{other.name}: unit id {other.unit_id} is already served on {self.name}'s port")
        self._members[other.unit_id] = other
        other.port = self.port

    async def start(self) -> None:
        sims = {self.unit_id: self, **self._members}
        server = _FaultyServer(sims, [s._device() for s in sims.values()], address=(self.host, self.port))
        await server.serve_forever(background=True)
        self._server = server
        self.port = server.transport.sockets[0].getsockname()[1]
        for member in self._members.values():
            member.port = self.port
        self._watch = asyncio.create_task(self._drop_watch(), name=f"{self.name}-drop-watch")
        log.info("Modbus simulator serving", extra={"device": self.name, "port": self.port, "unit_id": self.unit_id})

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
            self._watch = None
        if self._server is not None:
            listener = self._server.transport
            await self._server.shutdown()
            if listener is not None:
                await listener.wait_closed()
            self._server = None

    async def __aenter__(self) -> "ModbusSimServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def drop_connections(self) -> int:
        """Close every open client connection; returns how many."""
        if self._server is None:
            return 0
        conns = list(self._server.active_connections.values())
        for c in conns:
            c.close()
        return len(conns)

    async def _drop_watch(self) -> None:
        # `drop` also cuts connections that are open but idle when it is set
        while True:
            if self.faults.drop:
                self.drop_connections()
            await asyncio.sleep(0.05)


def sunspec_points(profile: Profile, layout: SunSpecLayout) -> tuple[dict[str, Point], dict[str, str]]:
    """Every point of the layout by ref ('704.WSet'), with the profile's min/max carried over, and the
    profile's canonical names as aliases of their refs."""
    points = layout.profile_points()
    aliases: dict[str, str] = {}
    for name, p in profile.points.items():
        if p.sunspec is None:
            raise ProfileError(f"points.{name}: the SunSpec simulator serves only 'sunspec:' points")
        ref = layout.point(p.sunspec).ref
        if p.writable and not points[ref].writable:
            raise ProfileError(f"points.{name}: {ref} is read-only in the SunSpec model")
        update = {k: getattr(p, k) for k in ("min", "max", "bits", "sign") if getattr(p, k) is not None}
        if update:
            points[ref] = points[ref].model_copy(update=update)
        aliases[name] = ref
    return points, aliases


class _FaultyHandler(ServerRequestHandler):
    """pymodbus's per-connection handler with the addressed device's faults applied before each answer.

    Behind a gateway (several devices on one port), `drop` of one device does not cut the shared connection:
    the gateway answers exception 0A (path unavailable) for that device, as a real gateway does when it loses
    the device behind it. A lone device's `drop` closes the connection, as before."""

    def __init__(self, owner: "_FaultyServer", *args):
        super().__init__(owner, *args)
        self.sims = owner.sims
        self.lone = next(iter(owner.sims.values())) if len(owner.sims) == 1 else None

    def callback_connected(self) -> None:
        super().callback_connected()
        if self.lone is not None and self.lone.faults.drop:
            self.close()

    async def handle_request(self) -> None:
        # take the request now: a pipelined next request replaces last_pdu while this one waits
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is None:
            return
        sim = self.sims.get(pdu.dev_id)
        if sim is None:  # nobody at that unit id: answer like a gateway, at once
            await self._answer(None, pdu, addr, ExcCodes.GATEWAY_NO_RESPONSE)
            return
        sim.requests += 1
        faults = sim.faults
        if faults.drop and self.lone is not None:
            self.close()
            return
        if faults.silent:
            return
        if faults.delay_s > 0:
            await asyncio.sleep(faults.delay_s)
            if (faults.drop and self.lone is not None) or faults.silent:
                return
        code = ExcCodes.GATEWAY_PATH_UNAVIABLE if faults.drop else faults.exception_code
        await self._answer(sim, pdu, addr, code)

    async def _answer(self, sim: "ModbusSimServer | None", pdu, addr, code) -> None:
        if code:
            response = ExceptionResponse(pdu.function_code, exception_code=code)
        else:
            try:
                response = await pdu.datastore_update(self.server.context, pdu.dev_id)
            except Exception:  # noqa: BLE001 - a bug in a hook must answer 04 and be logged, not kill the server
                log.exception(
                    "simulator request failed",
                    extra={"device": sim.name if sim else "?", "function": pdu.function_code},
                )
                response = ExceptionResponse(pdu.function_code, exception_code=ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)


class _FaultyServer(ModbusTcpServer):
    def __init__(self, sims: dict[int, "ModbusSimServer"], devices: list[SimDevice], address: tuple[str, int]):
        super().__init__(devices if len(devices) > 1 else devices[0], address=address)
        self.sims = sims

    def callback_new_connection(self) -> ServerRequestHandler:
        return _FaultyHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)
