"""The SCADA face over Modbus TCP (pymodbus SimDevice server): status as input registers, an allow-listed,
range-checked set of holding registers for control; everything else is refused with exception 02/03.
The register map is `controller/scada/points.py` (documented in docs/scada-modbus.md).

Who may write: the masters `scada.modbus.allow_clients` lists (others are disconnected), or, with an empty
list, any client of a face that listens on loopback only. A face bound to any other address with an empty
list denies writes by default (exception 01) and serves reads. Mode/setpoint writes also pass the SCADA
faces' shared `WriteLimiter` (exception 06 past it).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from controller.config import ScadaModbus
from controller.scada.connections import LISTEN_QUEUE, RefusalLog
from controller.scada.controls import PendingControls, ScadaPlant, WriteLimiter
from controller.scada.points import (
    CONTROL,
    MODE_CODES,
    STATUS,
    control_limits,
    input_registers,
    input_words,
)

log = logging.getLogger("bess.scada.modbus")

READ_INPUT, READ_HOLDING, WRITE_SINGLE, WRITE_MULTIPLE = 4, 3, 6, 16
# every Modbus function that writes: coils (5, 15), registers (6, 16), mask write (22), read/write (23)
WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 22, 23})
STATUS_WORDS = max(p.address + p.words for p in STATUS)
CONTROL_START = min(p.address for p in CONTROL)
CONTROL_WORDS = max(p.address + p.words for p in CONTROL) - CONTROL_START


def listens_on_loopback_only(host: str) -> bool:
    """True when a server bound to `host` can be reached from this machine only (127.0.0.0/8, ::1, a name that
    resolves to loopback addresses only). "", 0.0.0.0, :: and every LAN address are not."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP) if host else []
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _listed(host: str | None, networks: list) -> bool:
    try:
        return host is not None and any(ipaddress.ip_address(host) in net for net in networks)
    except ValueError:
        return False


class _ClientHandler(ServerRequestHandler):
    """One client connection. A client off a non-empty allow-list is disconnected before any request is read;
    a client that may not write gets exception 01 for every write function, before the datastore sees it."""

    face: "ScadaModbusServer"

    admitted = False

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else None
        face = self.face
        if face.allowed and not _listed(self.client, face.allowed):
            reason = "client not on the allow-list"
        elif face.open >= face.cfg.max_connections:
            reason = f"scada.modbus.max_connections ({face.cfg.max_connections}) open"
        else:
            reason = None
        if reason is not None:
            face.refusals.refused(reason, self.client)
            # close through the protocol so the server also forgets this connection
            self.transport = transport
            self.close()
            return
        self.admitted = True
        face.open += 1
        self.may_write = bool(face.allowed) or face.loopback_only
        self._refusal_logged = False
        super().connection_made(transport)

    def connection_lost(self, reason) -> None:
        if self.admitted:
            self.admitted = False
            self.face.open -= 1
        super().connection_lost(reason)

    async def handle_request(self):
        pdu = self.last_pdu
        if pdu is not None and pdu.function_code in WRITE_FUNCTIONS and not self.may_write:
            self.face.writes_refused += 1
            if not self._refusal_logged:  # once per connection: a master that keeps trying does not flood the log
                self._refusal_logged = True
                log.warning(
                    "SCADA Modbus write refused: the face listens on a non-loopback address and "
                    "scada.modbus.allow_clients is empty, so writes are denied by default; list the "
                    "SCADA master there",
                    extra={"client": self.client, "host": self.face.cfg.host},
                )
            self.server_send(
                ExceptionResponse(
                    pdu.function_code,
                    exception_code=ExcCodes.ILLEGAL_FUNCTION,
                    device_id=pdu.dev_id,
                    transaction=pdu.transaction_id,
                ),
                self.last_addr,
            )
            return
        await super().handle_request()


class ScadaModbusServer:
    def __init__(self, plant: ScadaPlant, cfg: ScadaModbus, limiter: WriteLimiter | None = None):
        self.plant = plant
        self.cfg = cfg
        self.server: ModbusTcpServer | None = None
        self.pending = PendingControls(plant, "scada-modbus")
        self.writes_refused = 0
        self.open = 0  # admitted connections (scada.modbus.max_connections)
        self.refusals = RefusalLog(log, "SCADA Modbus")
        self.limiter = limiter or WriteLimiter.for_scada(plant.site.scada)
        self.allowed = [ipaddress.ip_network(a, strict=False) for a in cfg.allow_clients]
        self.loopback_only = listens_on_loopback_only(cfg.host)
        # the units are the site file's, fixed at start: so is the register map
        self.units = [u.unit for u in plant.site.unit_plan()]
        self.limits = control_limits(plant.site.limits)

    def _device(self) -> SimDevice:
        # coils and discrete inputs: one placeholder bit each, refused by the action (no bit points exist)
        bits = [SimData(0, count=1, values=False, datatype=DataType.BITS)]
        return SimDevice(
            id=self.cfg.unit_id,
            simdata=(
                bits,
                list(bits),
                [SimData(CONTROL_START, count=CONTROL_WORDS, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=input_words(len(self.units)), values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    async def _action(
        self, fc: int, start: int, address: int, count: int, registers: list[int], values
    ) -> ExcCodes | None:
        if fc == READ_INPUT:
            words = input_registers(self.plant.latest(), self.units)
            for addr, word in words.items():  # gaps between the tables keep their 0
                registers[addr - start] = word
            return None
        if fc == READ_HOLDING:
            self._fill_controls(registers, start)
            return None
        if fc in (WRITE_SINGLE, WRITE_MULTIPLE):
            return self._write(start, address, list(values or []), registers)
        return ExcCodes.ILLEGAL_ADDRESS  # coils / discrete inputs: none exist

    def _fill_controls(self, registers: list[int], start: int) -> None:
        state = self.plant.latest()
        current = {
            "mode": MODE_CODES[state.mode],
            "manual_setpoint_mw": state.manual_setpoint_mw if state.manual else self.pending.setpoint_mw,
            "manual_expires_s": self.pending.expires_s,
        }
        for p in CONTROL:
            registers[p.address - start : p.address - start + p.words] = p.to_registers(current[p.name])

    def _write(self, start: int, address: int, values: list[int], registers: list[int]) -> ExcCodes | None:
        if self.cfg.read_only:
            self.writes_refused += 1
            log.warning("SCADA Modbus write refused: read-only", extra={"address": address})
            return ExcCodes.ILLEGAL_ADDRESS
        end = address + len(values)
        touched = [p for p in CONTROL if p.address < end and address < p.address + p.words]
        for p in touched:  # a multi-word point is written whole or not at all
            if p.address < address or p.address + p.words > end:
                self.writes_refused += 1
                log.warning("SCADA Modbus write refused: partial multi-register point", extra={"point": p.name})
                return ExcCodes.ILLEGAL_ADDRESS
        limits = self.limits
        new: dict[str, float] = {}
        for p in touched:
            v = p.from_registers(values[p.address - address : p.address - address + p.words])
            lo, hi = limits.get(p.name, (None, None))
            if lo is not None and not lo <= v <= hi:
                self.writes_refused += 1
                log.warning(
                    "SCADA Modbus write refused: out of range",
                    extra={"point": p.name, "value": v, "min": lo, "max": hi},
                )
                return ExcCodes.ILLEGAL_VALUE
            new[p.name] = v
        if ("mode" in new or "manual_setpoint_mw" in new) and not self.limiter.allow():
            self.writes_refused += 1
            self.limiter.log_refusal(
                log,
                "SCADA Modbus write refused: mode/setpoint writes over the rate limit (exception 06)",
                address=address,
            )
            return ExcCodes.DEVICE_BUSY
        try:
            self.pending.apply(new)
        except ValueError as e:
            self.writes_refused += 1
            log.warning("SCADA Modbus write refused", extra={"reason": str(e)})
            return ExcCodes.ILLEGAL_VALUE
        self.plant.audit("scada-modbus", "write", new)
        registers[address - start : end - start] = values
        return None

    async def start(self) -> None:
        class Handler(_ClientHandler):
            face = self

        class Server(ModbusTcpServer):
            def callback_new_connection(self):
                return Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

        self.server = Server(self._device(), address=(self.cfg.host, self.cfg.port))
        # pymodbus opens its listening socket with asyncio's default backlog (100): the wave a flood gets accepted in
        # one turn of the loop the cycle shares (controller/scada/connections.py)
        self.server.call_create = functools.partial(self.server.call_create, backlog=LISTEN_QUEUE)
        await self.server.serve_forever(background=True)
        log.info(
            "Modbus SCADA face listening",
            extra={
                "host": self.cfg.host,
                "port": self.cfg.port,
                "read_only": self.cfg.read_only,
                "allow_clients": self.cfg.allow_clients,
            },
        )
        if not self.allowed and not self.loopback_only and not self.cfg.read_only:
            log.warning(
                "SCADA Modbus face listens beyond loopback with an empty scada.modbus.allow_clients: "
                "every write is refused (exception 01) until the SCADA master is listed; reads are open",
                extra={"host": self.cfg.host, "port": self.cfg.port},
            )

    async def stop(self) -> None:
        if self.server:
            await self.server.shutdown()
            self.server = None
