"""Profile-driven Modbus TCP client: plans a profile's reads into as few requests as possible, decodes them
into canonical readings, writes with read-back verification, and maps every failure to a typed error.

Devices behind one gateway (one host:port, each its own unit id) share one connection from a ModbusPool: their
requests take turns on it, and waiting for the turn does not count against a device's timeout. A device that
does not answer (a silent unit id) costs the others nothing but its turn: its late answer, should it come, is
skipped by transaction id, so the shared connection is kept; it is dropped only when no device on it has
answered for two rounds of requests (a dead gateway), or when the link itself fails.

A register that holds a marker value, a non-finite float or a value outside the point's plausible range
reads as unknown (value None, with the raw registers and the reason), never as a number to act on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from drivers import codec
from drivers.backoff import Backoff
from drivers.base import DriverStats, Reading, TimeSource, WallTime
from drivers.errors import (
    DeviceTimeout,
    Disconnected,
    ModbusError,
    ReadbackMismatch,
    WriteRefused,
)
from drivers.profile import Function, Point, Profile, plausible_range

log = logging.getLogger("bess.drivers.modbus")

MAX_REGISTERS = 125  # per read request (Modbus spec, function 3/4)
MAX_BITS = 2000  # per read request (function 1/2)


@dataclass(frozen=True)
class ReadRequest:
    """One read on the wire and the points it carries (name, point, offset in the response)."""

    function: Function
    address: int
    count: int
    points: tuple[tuple[str, Point, int], ...]


# Points the controller writes and never reads: its heartbeat counter (a watchdog for the device; reading it back
# every cycle would only cost a request on a gateway that answers one at a time).
WRITE_ONLY = frozenset({"heartbeat"})


def plan_reads(points: dict[str, Point], max_gap: int = 8) -> list[ReadRequest]:
    """Group points per function into as few requests as possible: each ≤125 registers (≤2000 bits), and
    two neighbours share a request when at most `max_gap` unused registers lie between them."""
    by_function: dict[str, list[tuple[str, Point]]] = {}
    for name, p in points.items():
        if p.address is None:
            raise ValueError(f"point {name} has no address: cannot plan a Modbus read")
        by_function.setdefault(p.function, []).append((name, p))
    requests: list[ReadRequest] = []
    for function in ("input", "holding", "coil", "discrete"):
        items = sorted(by_function.get(function, ()), key=lambda np: (np[1].address, np[1].count))
        limit = MAX_BITS if function in ("coil", "discrete") else MAX_REGISTERS
        group: list[tuple[str, Point]] = []
        start = end = 0  # end is exclusive
        for name, p in items:
            p_end = p.address + p.count
            if group and p.address - end <= max_gap and max(end, p_end) - start <= limit:
                group.append((name, p))
                end = max(end, p_end)
                continue
            if group:
                requests.append(_request(function, start, end, group))
            group, start, end = [(name, p)], p.address, p_end
        if group:
            requests.append(_request(function, start, end, group))
    return requests


def _request(function: str, start: int, end: int, group: list[tuple[str, Point]]) -> ReadRequest:
    return ReadRequest(function, start, end - start, tuple((n, p, p.address - start) for n, p in group))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _PointPlan:
    """What decoding and checking one point of a request needs, worked out once per profile: a read then does
    no property lookups (count, factor, word order, ranges) per point, which was most of its CPU time."""

    name: str
    point: Point
    start: int  # offset of the point's registers in the response
    end: int
    word_order: str
    is_sf: bool  # other points scale by this one: it decodes first
    sf_name: str | None  # the scale-factor point this one scales by
    factor: float  # device unit -> canonical unit
    markers: frozenset[int]  # raw contents that mean 'no value'
    marker_kind: str  # how to name a marker in an alarm
    plausible: tuple[float, float] | None  # device unit


def _hex(raw: int, words: int) -> str:
    return f"0x{raw:0{4 * words}X}"


class ModbusConnection:
    """One Modbus TCP connection to host:port, for one device or shared by the devices behind a gateway."""

    def __init__(self, host: str, port: int, backoff_max_s: float = 10.0, slot: int = 0):
        self.host = host
        self.port = port
        self.slot = slot  # which of a gateway's connections (ModbusPool)
        self.client: AsyncModbusTcpClient | None = None
        self.connect_lock = asyncio.Lock()
        self.turn = asyncio.Lock()  # one request on the wire at a time
        # Backoff runs on real time even under a sped-up clock: it protects a real network peer.
        self.backoff = Backoff(backoff_max_s)
        self.users: set[str] = set()
        self.timeouts_in_row = 0

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    @property
    def shared(self) -> bool:
        """More than one device on it: a lone device's connection behaves as it always did."""
        return len(self.users) > 1

    def library_timeout_s(self, timeout_s: float) -> float:
        # Shared: pymodbus's own timeout must never fire before ours (it counts no-answers and closes the
        # connection under the other devices); ours bounds every request.
        return timeout_s + 1.0 if self.shared else timeout_s

    def on_connect_change(self, connected: bool) -> None:
        # pymodbus 3.16 leaves a request in flight waiting for its full timeout when the peer closes the
        # connection; fail it now so a dropped connection reads as Disconnected, not as a timeout.
        if connected or self.client is None:
            return
        fut = getattr(self.client.ctx, "response_future", None)
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionResetError("connection closed by the device"))
            # nobody may be waiting on it (no request in flight): mark the exception seen, or asyncio logs it
            fut.add_done_callback(lambda f: f.exception())

    def answered(self) -> None:
        self.timeouts_in_row = 0
        self.backoff.succeeded()

    def timed_out(self) -> None:
        """A request went unanswered. A lone device's connection starts afresh (a late answer would otherwise
        be taken for the next one's); a shared one only when nobody on it answered for two rounds."""
        self.timeouts_in_row += 1
        if self.timeouts_in_row >= (2 * len(self.users) if self.shared else 1):
            self.timeouts_in_row = 0
            self.drop()

    def drop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.close()


class ModbusPool:
    """Modbus TCP connections by host:port, shared by the drivers given this pool (one per DeviceSet). A gateway
    that takes several connections (`connections`) gets that many, each shared by the devices whose unit id falls
    to it (unit id modulo the count): their requests then run side by side, one at a time per connection."""

    def __init__(self) -> None:
        self._connections: dict[tuple[str, int, int], ModbusConnection] = {}

    def connection(
        self, host: str, port: int, user: str, backoff_max_s: float = 10.0, slot: int = 0
    ) -> ModbusConnection:
        conn = self._connections.get((host, port, slot))
        if conn is None:
            conn = self._connections[(host, port, slot)] = ModbusConnection(host, port, backoff_max_s, slot)
        conn.users.add(user)
        return conn

    def release(self, conn: ModbusConnection, user: str) -> None:
        """`user` is done with `conn`; the last one out closes it."""
        conn.users.discard(user)
        if not conn.users:
            conn.drop()
            key = (conn.host, conn.port, conn.slot)
            if self._connections.get(key) is conn:
                del self._connections[key]

    @property
    def connections(self) -> list[ModbusConnection]:
        return list(self._connections.values())


class ModbusDriver:
    """A device read and written through its register-map profile over one Modbus TCP connection."""

    def __init__(
        self,
        name: str,
        profile: Profile,
        host: str,
        port: int,
        unit_id: int = 1,
        timeout_s: float = 0.5,
        clock: TimeSource | None = None,
        backoff_max_s: float = 10.0,
        max_gap: int = 8,
        rating_mw: float | None = None,
        pool: ModbusPool | None = None,
        connections: int = 1,
    ):
        self.name = name
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.timeout_s = timeout_s
        self.clock: TimeSource = clock or WallTime()
        self.stats = DriverStats()
        # a pool shares one connection per host:port (a gateway; `connections` of them if the gateway takes more);
        # without one, the connection is this device's
        self._pool = pool
        self.connections = connections
        self._backoff_max_s = backoff_max_s
        self._conn = self._join()
        self.max_gap = max_gap
        # power points are plausible within +-1.5x this (the profile's own rating wins)
        self.rating_mw = rating_mw
        self.use_profile(profile)

    def use_profile(self, profile: Profile, static: frozenset[str] = frozenset()) -> None:
        """Read and write by `profile` from now on (SunSpec resolves its register map after discovery). The points
        named in `static` never change while the device runs (SunSpec's common model): read once per connection,
        their readings then kept. Write-only points (WRITE_ONLY) are written, never read."""
        self.profile = profile
        self._sunspec = profile.protocol == "sunspec"
        self._sf_values: dict[str, int | None] = {}
        readable = {n: p for n, p in profile.points.items() if n not in WRITE_ONLY}
        static_plan = plan_reads({n: p for n, p in readable.items() if n in static}, max_gap=self.max_gap)
        self._plan = static_plan + plan_reads(
            {n: p for n, p in readable.items() if n not in static}, max_gap=self.max_gap
        )
        self._static_requests = len(static_plan)
        self._static_raw: list[tuple[ReadRequest, list[int], float]] = []
        self._static_client: object = None  # the connection (its client) the static points were read on
        # scale-factor points decode first so the points they scale can use them in the same pass
        self._sf_names = {p.scale for p in profile.points.values() if isinstance(p.scale, str)}
        rating = profile.rated_power_mw or self.rating_mw
        kind = "SunSpec's 'not implemented' value" if self._sunspec else "a marker value meaning 'no value'"
        self._decoders = [
            tuple(
                _PointPlan(
                    name,
                    p,
                    off,
                    off + p.count,
                    profile.word_order_of(p),
                    name in self._sf_names,
                    p.scale if isinstance(p.scale, str) else None,
                    p.factor,
                    p.marker_values(self._sunspec),
                    kind,
                    plausible_range(name, p, rating, scale_factor=name in self._sf_names),
                )
                for name, p, off in req.points
            )
            for req in self._plan
        ]

    @property
    def requests_per_read(self) -> int:
        """Requests of a read once the static points are in (the first read on a connection adds theirs)."""
        return len(self._plan) - self._static_requests

    @property
    def plan(self) -> list[ReadRequest]:
        return list(self._plan)

    def _join(self) -> ModbusConnection:
        if self._pool is not None:
            slot = self.unit_id % self.connections
            return self._pool.connection(self.host, self.port, self.name, self._backoff_max_s, slot)
        conn = ModbusConnection(self.host, self.port, self._backoff_max_s)
        conn.users.add(self.name)
        return conn

    @property
    def backoff(self) -> Backoff:
        return self._conn.backoff

    @property
    def connection(self) -> ModbusConnection:
        return self._conn

    @property
    def connected(self) -> bool:
        return self._conn.connected

    # -- connection ------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection unless it is open; while backing off after a failure, raise Disconnected."""
        if self.name not in self._conn.users:  # closed, and used again: back into the pool
            self._conn = self._join()
        conn = self._conn
        if conn.connected:
            return
        async with conn.connect_lock:
            if conn.connected:
                return
            conn.backoff.refuse_while_waiting(self.name, f"{self.host}:{self.port}")
            conn.drop()
            self.stats.connect_attempts += 1
            client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                timeout=conn.library_timeout_s(self.timeout_s),
                retries=0,
                reconnect_delay=0,  # we reconnect ourselves, with backoff, on the next request
                trace_connect=conn.on_connect_change,
            )
            try:
                ok = await asyncio.wait_for(client.connect(), self.timeout_s + 0.1)
            except (asyncio.TimeoutError, OSError) as e:
                ok = False
                log.debug("connect %s:%s failed: %r", self.host, self.port, e)
            if not ok:
                client.close()
                conn.backoff.failed()
                self.stats.failed("connect", "refused or unreachable")
                log.warning(
                    "device %s: cannot connect to %s:%s; next attempt in %.1f s",
                    self.name,
                    self.host,
                    self.port,
                    conn.backoff.delay_s,
                )
                raise Disconnected(self.name, f"cannot connect to {self.host}:{self.port}")
            conn.client = client
            self.stats.connects += 1

    async def close(self) -> None:
        """Leave the connection (the last device on a shared one closes it); safe to call twice."""
        if self._pool is not None:
            self._pool.release(self._conn, self.name)
        else:
            self._conn.users.discard(self.name)
            self._conn.drop()

    # -- requests --------------------------------------------------------------------------------------

    async def _call(self, what: str, method: str, *args, **kwargs):
        """One request on the wire: typed errors, per-request timeout (on a shared connection, the turn is
        waited for first and does not count), stats."""
        await self.connect()
        conn = self._conn
        async with conn.turn:
            if not conn.connected:  # another device's request lost the link while we waited for our turn
                await self.connect()
            client = conn.client
            assert client is not None
            t0 = time.perf_counter()
            self.stats.requests += 1
            try:
                # asyncio.timeout, not wait_for: the request runs in this task instead of a new one per request
                async with asyncio.timeout(self.timeout_s):
                    rr = await getattr(client, method)(*args, device_id=self.unit_id, **kwargs)
            except (asyncio.TimeoutError, ModbusIOException) as e:
                self.stats.failed(what, "timeout")
                conn.timed_out()
                detail = (
                    f"no answer within {self.timeout_s} s"
                    if isinstance(e, asyncio.TimeoutError)
                    else f"no answer ({e})"
                )
                raise DeviceTimeout(self.name, f"{what}: {detail}") from None
            except (ConnectionException, ConnectionError, OSError) as e:
                # a device that accepts connections and drops them at once must not be hammered either
                self.stats.failed(what, "disconnected")
                conn.drop()
                conn.backoff.failed()
                raise Disconnected(self.name, f"{what}: connection lost ({e})") from None
            self.stats.last_latency_s = time.perf_counter() - t0
            conn.answered()
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            self.stats.failed(what, f"exception {code}")
            raise ModbusError(self.name, code, f"{what}: Modbus exception code {code}")
        return rr

    async def read_raw(self, function: Function, address: int, count: int) -> list[int]:
        """Registers (or bits, for coils and discrete inputs) straight off the wire."""
        what = f"read {function} {address}+{count}"
        if function == "holding":
            return list((await self._call(what, "read_holding_registers", address, count=count)).registers)
        if function == "input":
            return list((await self._call(what, "read_input_registers", address, count=count)).registers)
        if function == "coil":
            return [int(b) for b in (await self._call(what, "read_coils", address, count=count)).bits[:count]]
        if function == "discrete":
            return [int(b) for b in (await self._call(what, "read_discrete_inputs", address, count=count)).bits[:count]]
        raise ValueError(f"unknown Modbus function {function!r}")

    # -- read ------------------------------------------------------------------------------------------

    async def read(self) -> dict[str, Reading]:
        """Every point of the profile in canonical units, timestamped when its request was answered."""
        t0 = time.perf_counter()
        if not self.connected:
            await self.connect()
        client = self._conn.client
        fresh = self._static_client is not client or not self._static_raw
        raw: list[tuple[ReadRequest, list[int], float]] = [] if fresh else list(self._static_raw)
        for req in self._plan if fresh else self._plan[self._static_requests :]:
            regs = await self.read_raw(req.function, req.address, req.count)
            raw.append((req, regs, self.clock.now()))
        if fresh and self._static_requests:
            self._static_raw, self._static_client = raw[: self._static_requests], client
        out = self._decode_all(raw)
        self.stats.reads += 1
        self.stats.last_read_latency_s = time.perf_counter() - t0
        return out

    def _decode_all(self, raw: list[tuple[ReadRequest, list[int], float]]) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        later: list[tuple[_PointPlan, list[int], float]] = []
        sf_values = self._sf_values
        for (req, regs, ts), plans in zip(raw, self._decoders):
            if req.function in ("coil", "discrete"):
                for d in plans:
                    out[d.name] = Reading(regs[d.start], ts)
                continue
            for d in plans:
                if d.is_sf:
                    r = self._checked(d, regs[d.start : d.end], None, ts)
                    sf_values[d.name] = r.value if isinstance(r.value, int) else None
                    out[d.name] = r
                else:
                    later.append((d, regs[d.start : d.end], ts))
        for d, words, ts in later:
            sf = sf_values.get(d.sf_name) if d.sf_name is not None else None
            out[d.name] = self._checked(d, words, sf, ts)
        return out

    def _checked(self, d: _PointPlan, words: list[int], sf: int | None, ts: float) -> Reading:
        """One point's registers -> its reading in canonical units, or an unknown reading that says why."""
        p = d.point
        if d.markers:
            raw_u = codec.words_to_int(words, d.word_order)
            if raw_u in d.markers:
                return Reading(None, ts, _hex(raw_u, p.count), d.marker_kind)
        if d.sf_name is not None and sf is None:
            return Reading(None, ts, self._raw_text(d, words), f"scaled by {d.sf_name}, whose value is unknown")
        try:
            value = codec.decode(p, words, d.word_order, sf)
        except ValueError as e:
            raise ValueError(f"device {self.name} point {d.name}: {e}") from None
        if isinstance(value, str):
            return Reading(value, ts)
        if isinstance(value, float) and not math.isfinite(value):
            return Reading(None, ts, self._raw_text(d, words), "not a finite number")
        if d.plausible is not None and not d.plausible[0] <= value <= d.plausible[1]:
            lo, hi = d.plausible
            unit = f" {p.unit}" if p.unit else ""
            return Reading(
                None,
                ts,
                f"{self._raw_text(d, words)} ({value:g}{unit})",
                f"outside the plausible range {lo:g}..{hi:g}{unit}",
            )
        if d.factor != 1:
            value = codec.apply_scale(value, d.factor)
        return Reading(value, ts)

    @staticmethod
    def _raw_text(d: _PointPlan, words: list[int]) -> str:
        return _hex(codec.words_to_int(words, d.word_order), len(words))

    def _decode(self, name: str, p: Point, regs: list[int], sf: int | None):
        try:
            return codec.decode(p, regs, self.profile.word_order_of(p), sf, sunspec=self._sunspec)
        except ValueError as e:
            raise ValueError(f"device {self.name} point {name}: {e}") from None

    @staticmethod
    def _to_canonical(p: Point, value):
        if value is None or isinstance(value, str):
            return value
        f = p.factor
        return value if f == 1 else codec.apply_scale(value, f)

    # -- write -----------------------------------------------------------------------------------------

    async def _scale_factor(self, p: Point) -> int | None:
        """The current value of the point's scale factor (read now if no read has brought it yet)."""
        if not isinstance(p.scale, str):
            return None
        if p.scale not in self._sf_values:
            sfp = self.profile.points[p.scale]
            regs = await self.read_raw(sfp.function, sfp.address, sfp.count)  # type: ignore[arg-type]
            value = self._decode(p.scale, sfp, regs, None)
            self._sf_values[p.scale] = value if isinstance(value, int) else None
        sf = self._sf_values[p.scale]
        if sf is None:
            raise WriteRefused(self.name, f"scale factor {p.scale} is not implemented by the device")
        return sf

    async def read_point(self, point: str) -> float | int | str | None:
        """One point, read now, in canonical units."""
        p = self._point(point)
        regs = await self.read_raw(p.function, p.address, p.count)  # type: ignore[arg-type]
        if p.function in ("coil", "discrete"):
            return regs[0]
        return self._to_canonical(p, self._decode(point, p, regs, await self._scale_factor(p)))

    def _point(self, point: str) -> Point:
        try:
            return self.profile.points[point]
        except KeyError:
            raise WriteRefused(self.name, f"{point}: no such point in profile {self.profile.name}") from None

    async def write(self, point: str, value: float | int | str, verify: bool = True) -> float | int | str | None:
        """Write one writable point given in canonical units; range-checked against the profile (device
        units), read back when `verify`, ReadbackMismatch if it differs by more than half an LSB."""
        p = self._point(point)
        if not p.writable:
            raise WriteRefused(self.name, f"{point}: not writable")
        if p.function not in ("holding", "coil"):
            raise WriteRefused(self.name, f"{point}: a {p.function} point cannot be written")
        if isinstance(value, str):
            device_value: float | int | str = value
        else:
            if isinstance(value, float) and not math.isfinite(value):
                raise WriteRefused(self.name, f"{point}: {value} is not a finite number")
            device_value = codec.apply_scale(value, 1 / p.factor) if p.factor != 1 else value
            # W <-> MW conversions leave float dust (4.9999999999 W): compare with a relative tolerance
            eps = 1e-9 * max(1.0, abs(device_value))
            if p.min is not None and device_value < p.min - eps:
                raise WriteRefused(self.name, f"{point}: {value} is below the minimum ({p.min * p.factor:g})")
            if p.max is not None and device_value > p.max + eps:
                raise WriteRefused(self.name, f"{point}: {value} is above the maximum ({p.max * p.factor:g})")
        what = f"write {point}"
        if p.function == "coil":
            if device_value not in (0, 1):
                raise WriteRefused(self.name, f"{point}: a coil takes 0 or 1, got {value!r}")
            await self._call(what, "write_coil", p.address, bool(device_value))
            if not verify:
                return None
            back = (await self.read_raw("coil", p.address, 1))[0]  # type: ignore[arg-type]
            if back != int(device_value):
                raise ReadbackMismatch(self.name, point, value, back)  # type: ignore[arg-type]
            return back
        sf = await self._scale_factor(p)
        try:
            regs = codec.encode(p, device_value, self.profile.word_order_of(p), sf, name=point)
        except ValueError as e:
            raise WriteRefused(self.name, str(e)) from None
        if verify and self.profile.read_write_multiple:
            # function 23: the device writes, then reads the same registers back, in one request
            rr = await self._call(
                what,
                "readwrite_registers",
                read_address=p.address,
                read_count=p.count,
                write_address=p.address,
                values=regs,
            )
            back_regs = list(rr.registers)
        else:
            if len(regs) == 1:
                await self._call(what, "write_register", p.address, regs[0])
            else:
                await self._call(what, "write_registers", p.address, regs)
            if not verify:
                return None
            back_regs = await self.read_raw("holding", p.address, p.count)  # type: ignore[arg-type]
        back = self._decode(point, p, back_regs, sf)
        if not _same(p, device_value, back, codec.resolution(p, sf)):
            raise ReadbackMismatch(self.name, point, value, self._to_canonical(p, back))  # type: ignore[arg-type]
        return self._to_canonical(p, back)


def _same(p: Point, written, back, lsb: float) -> bool:
    """Did the device keep what we wrote? Within half an LSB (the encoder rounds to the nearest raw)."""
    if back is None:
        return False
    if isinstance(written, str) or isinstance(back, str):
        return str(written).strip("\x00 ") == back
    if p.type == "f32":
        return math.isclose(float(back), float(written), rel_tol=1e-6, abs_tol=1e-30)
    return abs(float(back) - float(written)) <= lsb / 2 + 1e-9 * max(1.0, abs(float(written)))
