"""The BMS simulator's OPC UA face: the battery model's BMS values as typed variables with engineering units,
laid out by the OPC UA BMS profile, with a writable heartbeat and injectable faults.

Faults act on the wire, the way a sick device or network shows them: the asyncua server listens on an
internal loopback port and a small TCP gate on the public port forwards bytes both ways. `silent` holds
every byte (requests get no answer, subscriptions stop publishing), `delay_s` holds the server's answers
that long, `drop` closes every connection and refuses new ones; alarm/fault bits are ORed into the values;
`raw` serves a given value for a point (any type: garbage as a device would send it) and `status_codes` a
given StatusCode, to reads and subscriptions alike.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

from asyncua import Server, ua

from controller.clock import Clock
from drivers.opcua import (  # one mapping of profile types to OPC UA types
    INT_RANGES,
    VARIANT_TYPES,
)
from drivers.profile import Point, Profile, load_profile
from simulators.battery import BatteryModel
from simulators.faults import Faults

log = logging.getLogger("bess.sim.opcua_bms")

DEFAULT_PROFILE = Path(__file__).resolve().parent.parent / "config" / "profiles" / "opcua-bms.yaml"
APP_URI = "urn:phoenyra:bess:bms:simulator"
UPDATE_PERIOD_S = 0.1  # real seconds between copies of the model into the address space

# UNECE Rec. 20 common codes: the OPC UA EUInformation UnitId is the code's bytes as one integer
_UNECE = {
    "%": "P1",
    "°C": "CEL",
    "V": "VLT",
    "A": "AMP",
    "W": "WTT",
    "kW": "KWT",
    "MW": "MAW",
    "kWh": "KWH",
    "MWh": "MWH",
    "Wh": "WHR",
    "s": "SEC",
    "ms": "C26",
}
_UNECE_NS = "http://www.opcfoundation.org/UA/units/un/cefact"


def engineering_units(unit: str) -> ua.EUInformation:
    code = _UNECE.get(unit, "")
    unit_id = int.from_bytes(code.encode(), "big") if code else -1
    return ua.EUInformation(
        NamespaceUri=_UNECE_NS, UnitId=unit_id, DisplayName=ua.LocalizedText(unit), Description=ua.LocalizedText(unit)
    )


def bms_values(model: BatteryModel, faults: Faults | None = None) -> dict[str, float | int]:
    """What the BMS reports, by profile point name, in canonical units (%, V, A, °C, MW, MWh, bits): the
    model's own readings, exactly what the Modbus face serves, so a controller cannot tell the faces apart;
    this face's injected bits are ORed in (a plant merges every face's bits into the model as well)."""
    values = dict(model.readings())
    values["alarm_bits"] = (int(values["alarm_bits"]) | (faults.alarm_bits if faults else 0)) & 0xFFFF
    values["fault_bits"] = (int(values["fault_bits"]) | (faults.fault_bits if faults else 0)) & 0xFFFF
    return values


def profile_node_id(point: Point, ns_index: int) -> ua.NodeId:
    """A profile node id with its namespace index replaced by the live index of the profile's namespace URI
    (a profile's non-zero `ns=` stands for its `namespace`; servers may number namespaces differently)."""
    nid = ua.NodeId.from_string(point.node_id)
    if nid.NamespaceIndex == 0:
        return nid
    return ua.NodeId(nid.Identifier, ns_index, nid.NodeIdType)


def to_variant(point: Point, canonical: float | int | str) -> ua.Variant:
    """Canonical value -> the point's device unit and OPC UA type (integers clamped to the type's range)."""
    vt = VARIANT_TYPES[point.type]
    if point.type == "string":
        return ua.Variant(str(canonical), vt)
    device = canonical / point.factor if point.factor != 1.0 else canonical
    if point.type == "f32":
        return ua.Variant(float(device), vt)
    lo, hi = INT_RANGES[point.type]
    return ua.Variant(min(hi, max(lo, int(round(device)))), vt)


_F32_MAX = 3.4028234663852886e38


def raw_variant(point: Point, value: object) -> ua.Variant:
    """A `faults.raw` value as the variant served: the point's own type when the value fits it, else the
    nearest OPC UA type that holds it (a device sending the wrong type is one of the faults to show)."""
    if value is None:
        return ua.Variant()
    if isinstance(value, bool):
        return ua.Variant(value, ua.VariantType.Boolean)
    if isinstance(value, int):
        lo, hi = INT_RANGES.get(point.type, (1, 0))
        if lo <= value <= hi:
            return ua.Variant(value, VARIANT_TYPES[point.type])
        if point.type == "f32":
            return ua.Variant(float(value), ua.VariantType.Float)
        if -(2**63) <= value < 2**63:
            return ua.Variant(value, ua.VariantType.Int64)
        if 0 <= value < 2**64:
            return ua.Variant(value, ua.VariantType.UInt64)
        raise ValueError(f"raw.{point.node_id}: {value} does not fit any OPC UA integer type")
    if isinstance(value, float):
        fits_f32 = not math.isfinite(value) or abs(value) <= _F32_MAX
        vt = ua.VariantType.Float if point.type == "f32" and fits_f32 else ua.VariantType.Double
        return ua.Variant(value, vt)
    if isinstance(value, str):
        return ua.Variant(value, ua.VariantType.String)
    raise ValueError(f"raw: a number, a string, true/false or null (got {type(value).__name__})")


class _Gate:
    """The TCP forwarder between the public port and the asyncua server that makes the faults happen."""

    def __init__(self, faults: Faults, inner_port: int):
        self.faults = faults
        self.inner_port = inner_port
        self.server: asyncio.AbstractServer | None = None
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port)

    def drop_all(self) -> None:
        for client_w, server_w in list(self.links):
            client_w.transport.abort()
            server_w.transport.abort()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.drop_all()  # the pumps see their transports close and the handlers end by themselves
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=1.0)
            for task in pending:
                task.cancel()
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            await self._link(client_r, client_w)
        except asyncio.CancelledError:
            # only stop() cancels a handler; asyncio's stream callback would log a cancelled handler as an error
            log.debug("OPC UA gate link cancelled at stop")
        finally:
            self.tasks.discard(task)

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.faults.drop:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.inner_port)
        except OSError as e:
            log.warning("OPC UA gate cannot reach the inner server", extra={"error": str(e)})
            client_w.transport.abort()
            return
        link = (client_w, server_w)
        self.links.add(link)
        pumps = [
            asyncio.create_task(self._pump(client_r, server_w, answers=False)),
            asyncio.create_task(self._pump(server_r, client_w, answers=True)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self.links.discard(link)
            client_w.transport.abort()
            server_w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool) -> None:
        try:
            while chunk := await reader.read(65536):
                arrived = time.monotonic()
                while self.faults.silent:  # hold the bytes: the peer sees a device that stopped answering
                    await asyncio.sleep(0.02)
                if answers and self.faults.delay_s > 0:
                    await asyncio.sleep(max(0.0, arrived + self.faults.delay_s - time.monotonic()))
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError) as e:
            log.debug("OPC UA gate link closed", extra={"error": str(e)})


class OpcUaBmsServer:
    """asyncua server for the BMS variables of `profile` (default: config/profiles/opcua-bms.yaml),
    refreshed from `model` every UPDATE_PERIOD_S real seconds. None security, anonymous, loopback."""

    def __init__(
        self, model: BatteryModel, host: str, port: int, clock: Clock, faults: Faults, profile: Profile | None = None
    ):
        self.model = model
        self.host = host
        self.port = port
        self.clock = clock
        self.faults = faults
        self.profile = profile or load_profile(DEFAULT_PROFILE)
        if self.profile.protocol != "opcua" or not self.profile.namespace:
            raise ValueError(f"profile {self.profile.name}: an OPC UA profile with a namespace URI is needed")
        self.server: Server | None = None
        self.ns_index: int | None = None
        self.heartbeat: int | None = None
        self.heartbeat_ts: float | None = None  # clock time of the last heartbeat a client wrote
        self._nodes: dict[str, tuple[ua.NodeId, Point]] = {}
        self._written: dict[str, ua.DataValue] = {}  # writable point -> what a client last wrote
        self._overridden: set[str] = set()  # points served from faults.raw / status_codes
        self._retyped: set[str] = set()  # points that hold a variant of another type than theirs
        self._internal_write = False  # our own write of a writable point: no range check
        self._gate: _Gate | None = None
        self._task: asyncio.Task | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}"

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.socket_address = ("127.0.0.1", 0)  # the inner server; the gate serves the public port
        server.set_server_name("bess-edge BMS simulator")
        await server.set_application_uri(APP_URI)
        # lab simulator: explicitly no security and anonymous login, nothing else offered
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        self.ns_index = await server.register_namespace(self.profile.namespace)
        await self._build(server)
        await server.start()
        self.server = server
        try:
            await self._write_values()
            self._gate = _Gate(self.faults, server.bserver.port)
            await self._gate.start(self.host, self.port)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._update_loop(), name=f"opcua-bms:{self.port}")
        log.info("OPC UA BMS simulator listening", extra={"endpoint": self.endpoint, "ns": self.ns_index})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._gate is not None:
            await self._gate.stop()
            self._gate = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def _build(self, server: Server) -> None:
        idx = self.ns_index
        folder = await server.nodes.objects.add_object(ua.NodeId("BMS", idx), ua.QualifiedName("BMS", idx))
        initial = bms_values(self.model, self.faults)
        for name, point in self.profile.points.items():
            nid = profile_node_id(point, idx)
            browse = str(nid.Identifier).rsplit(".", 1)[-1]
            variant = to_variant(point, initial.get(name, 0))
            node = await folder.add_variable(nid, ua.QualifiedName(browse, idx), variant)
            await node.write_attribute(
                ua.AttributeIds.Description,
                ua.DataValue(ua.Variant(ua.LocalizedText(point.description or name), ua.VariantType.LocalizedText)),
            )
            if point.unit:
                await node.add_property(
                    ua.NodeId(f"{nid.Identifier}.EngineeringUnits", idx),
                    ua.QualifiedName("EngineeringUnits", 0),
                    ua.Variant(engineering_units(point.unit), ua.VariantType.ExtensionObject),
                )
            if point.writable:
                await node.set_writable(True)
                server.set_attribute_value_setter(nid, self._setter(name, point))
            self._nodes[name] = (nid, point)

    def _setter(self, name: str, point: Point):
        """Range-check a client's write; a refused one answers BadOutOfRange and changes nothing."""

        def setter(node_data, attr, datavalue: ua.DataValue) -> None:
            if self._internal_write:  # a fault served on a writable point, or putting it back
                node_data.attributes[attr].value = datavalue
                return
            value = datavalue.Value.Value if datavalue.Value is not None else None
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ua.UaStatusCodeError(ua.StatusCodes.BadTypeMismatch)
            if (point.min is not None and value < point.min) or (point.max is not None and value > point.max):
                log.warning("OPC UA BMS write refused: out of range", extra={"point": name, "value": value})
                raise ua.UaStatusCodeError(ua.StatusCodes.BadOutOfRange)
            node_data.attributes[attr].value = datavalue
            self._written[name] = datavalue
            if name == "heartbeat":
                self.heartbeat = int(value)
                self.heartbeat_ts = self.clock.now()

        return setter

    def check_fault(self, raw: dict[str, object], status_codes: dict[str, int]) -> None:
        """Raise ValueError naming the point when a raw value or status code cannot be served."""
        for name, value in raw.items():
            if name not in self._nodes:
                raise ValueError(f"raw.{name}: no such point on this face (one of {', '.join(self._nodes)})")
            try:
                raw_variant(self._nodes[name][1], value)
            except ValueError as e:
                raise ValueError(f"raw.{name}: {e}") from None
        for name, code in status_codes.items():
            if name not in self._nodes:
                raise ValueError(f"status_codes.{name}: no such point on this face (one of {', '.join(self._nodes)})")
            if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 0xFFFFFFFF:
                raise ValueError(f"status_codes.{name}: a StatusCode is an int 0..0xFFFFFFFF (got {code!r})")

    async def _write_values(self) -> None:
        values = bms_values(self.model, self.faults)
        source_ts = self.clock.utcnow()
        raw, codes = self.faults.raw, self.faults.status_codes
        for name, (nid, point) in self._nodes.items():
            overridden = name in raw or name in codes
            if overridden:
                self._overridden.add(name)
            elif name in self._overridden:
                self._overridden.discard(name)
                if point.writable:  # put back what the client wrote, with a good status
                    dv = self._written.get(name) or ua.DataValue(to_variant(point, 0))
                    await self._write_internal(nid, ua.DataValue(dv.Value, SourceTimestamp=source_ts))
                    continue
            if (point.writable and not overridden) or (name not in values and name not in raw):
                continue  # writable points hold what the client wrote
            try:
                variant = raw_variant(point, raw[name]) if name in raw else to_variant(point, values[name])
            except ValueError as e:  # checked by the control API; an entry set some other way is skipped
                log.warning("raw value not served", extra={"point": name, "error": str(e)})
                variant = to_variant(point, values.get(name, 0))
            status = ua.StatusCode(codes[name]) if name in codes else ua.StatusCode()
            dv = ua.DataValue(variant, StatusCode=status, SourceTimestamp=source_ts)
            if overridden or name in self._retyped:
                self._allow_type_change(nid, variant, name)
            if point.writable:
                await self._write_internal(nid, dv)
            else:
                await self.server.write_attribute_value(nid, dv)

    def _allow_type_change(self, nid: ua.NodeId, variant: ua.Variant, name: str) -> None:
        """asyncua refuses a write of another type than the variable holds (BadTypeMismatch), but a device
        sending the wrong type is one of the faults to show, and putting the right type back must work too:
        an empty value may be overwritten by any type, so empty it first."""
        attval = self.server.iserver.aspace[nid].attributes[ua.AttributeIds.Value]
        held = attval.value.Value if attval.value is not None else None
        if held is not None and held.VariantType != variant.VariantType:
            attval.value = None
        if variant.VariantType == VARIANT_TYPES[self._nodes[name][1].type]:
            self._retyped.discard(name)
        else:
            self._retyped.add(name)

    async def _write_internal(self, nid: ua.NodeId, dv: ua.DataValue) -> None:
        self._internal_write = True
        try:
            await self.server.write_attribute_value(nid, dv)
        finally:
            self._internal_write = False

    async def _update_loop(self) -> None:
        while True:
            try:
                if self.faults.drop and self._gate is not None:
                    self._gate.drop_all()
                await self._write_values()
            except Exception:
                log.exception("OPC UA BMS update failed")
            await asyncio.sleep(UPDATE_PERIOD_S)
