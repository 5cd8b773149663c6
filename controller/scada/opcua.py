"""The SCADA face over OPC UA: the status table as typed variables with engineering units, and a `Controls`
folder with the allow-listed writable points (same range checks as Modbus). The Controls variables hold
what a client last wrote; the live mode and setpoint are in the Status folder.

Security is explicit, because asyncua's defaults are open: Basic256Sha256 and Aes256_Sha256_RsaPss with Sign
and SignAndEncrypt, a trust store for client certificates, no anonymous login, users with a read-only
(`viewer`) or an `operator` role, and the None policy only when the config says so for a lab.

Mode/setpoint writes pass the SCADA faces' shared `WriteLimiter` (BadServerTooBusy past it): each one wakes
the control cycle, and a write storm must not make it cycle flat out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets as pysecrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.config import ScadaOpcUa
from controller.scada.connections import RefusalFilter, RefusalLog, shorten_listen_queue
from controller.scada.controls import PendingControls, ScadaPlant, WriteLimiter
from controller.scada.points import (
    CONTROL,
    POI,
    STATUS,
    UNIT_POINTS,
    ScadaPoint,
    control_limits,
    poi_values,
    status_values,
    unit_values,
    units_by_name,
)
from controller.tasks import cancel_and_wait

log = logging.getLogger("bess.scada.opcua")
# asyncua's listener, which warns once per connection it refuses past iserver.max_connections
ASYNCUA_LISTENER = logging.getLogger("asyncua.server.binary_server_asyncio")

NAMESPACE = "urn:phoenyra:bess-edge:scada"
APP_URI = "urn:phoenyra:bess-edge:scada:server"
ROLES = ("viewer", "operator")
RATE_LIMITED = ("mode", "manual_setpoint_mw")  # the writes that wake the control cycle

_WRITE = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
_ADMIN_ONLY = {
    ua.NodeId(i)
    for i in (
        ua.ObjectIds.AddNodesRequest_Encoding_DefaultBinary,
        ua.ObjectIds.DeleteNodesRequest_Encoding_DefaultBinary,
        ua.ObjectIds.AddReferencesRequest_Encoding_DefaultBinary,
        ua.ObjectIds.DeleteReferencesRequest_Encoding_DefaultBinary,
        ua.ObjectIds.RegisterServerRequest_Encoding_DefaultBinary,
        ua.ObjectIds.RegisterServer2Request_Encoding_DefaultBinary,
        ua.ObjectIds.CallRequest_Encoding_DefaultBinary,
    )
}


@dataclass
class ScadaUser(User):
    scada_role: str = "viewer"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """scrypt$<salt hex>$<hash hex>, for the users file."""
    salt = salt or pysecrets.token_bytes(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${h.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_hex, hash_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    h = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), n=2**14, r=8, p=1)
    return hmac.compare_digest(h.hex(), hash_hex)


class PasswordUserManager(UserManager):
    """Users from a YAML file: `users: {name: {password: scrypt$..., role: viewer|operator}}`. No anonymous."""

    def __init__(self, users: dict[str, dict[str, str]], allow_none_security: bool = False):
        for name, u in users.items():
            if u.get("role") not in ROLES:
                raise ValueError(f"scada users: {name}.role must be one of {ROLES} (got {u.get('role')!r})")
        self.users = users
        self.allow_none_security = allow_none_security

    @classmethod
    def from_file(cls, path: str | Path, allow_none_security: bool = False) -> "PasswordUserManager":
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(data.get("users", {}), allow_none_security)

    def get_user(self, iserver, username=None, password=None, certificate=None):
        # For a user name token asyncua passes the secure channel's client certificate, which a None channel
        # lacks (b"" or None). asyncua lets a client that ignores the endpoint list open a None channel even when no None
        # endpoint is offered, and that channel has no permission ruleset at all: refuse the login there.
        if not certificate and not self.allow_none_security:
            log.warning("OPC UA login refused: no security (None policy is off)", extra={"user": username})
            return None
        u = self.users.get(username or "")
        if u is None or password is None or not check_password(password, u.get("password", "")):
            log.warning("OPC UA login refused", extra={"user": username})
            return None
        return ScadaUser(role=UserRole.User, name=username, scada_role=u["role"])


class RoleRuleset(PermissionRuleset):
    """viewer: read, browse, subscribe. operator: also write (the Controls folder only: the nodes' access
    levels make every other variable read-only). Nobody changes the address space or calls methods."""

    def check_validity(self, user, action_type_id, body) -> bool:
        if user is None or getattr(user, "role", UserRole.Anonymous) == UserRole.Anonymous:
            return False
        if action_type_id in _ADMIN_ONLY:
            return False
        if action_type_id == _WRITE:
            return getattr(user, "scada_role", "viewer") == "operator"
        return True


_VT = {
    "u16": ua.VariantType.UInt16,
    "i16": ua.VariantType.Int16,
    "u32": ua.VariantType.UInt32,
    "i32": ua.VariantType.Int32,
}


def _eu(unit: str) -> ua.EUInformation:
    return ua.EUInformation(
        NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )


class ScadaOpcUaServer:
    """asyncua server publishing the status table and accepting allow-listed, range-checked writes."""

    def __init__(
        self,
        plant: ScadaPlant,
        cfg: ScadaOpcUa,
        state_dir: Path,
        demo: bool = False,
        limiter: WriteLimiter | None = None,
    ):
        self.plant = plant
        self.limiter = limiter or WriteLimiter.for_scada(plant.site.scada)
        self.writes_refused = 0
        self.cfg = cfg
        self.dir = Path(state_dir) / "scada-opcua"
        self.demo = demo
        self.server: Server | None = None
        self.nodes: dict[str, Any] = {}
        self.controls: dict[str, Any] = {}
        # node id -> (node, variant type); the units are the site file's, fixed at start like the address space
        self.units = [u.unit for u in plant.site.unit_plan()]
        self.limits = control_limits(plant.site.limits)
        self.unit_nodes: dict[str, dict[str, tuple[Any, Any]]] = {}
        self.poi_nodes: dict[str, tuple[Any, Any]] = {}
        self._task: asyncio.Task | None = None
        self.pending = PendingControls(plant, "scada-opcua")
        self.refusals = RefusalLog(log, "OPC UA SCADA")
        self._refusals_filter: RefusalFilter | None = None

    def _user_manager(self) -> PasswordUserManager:
        if self.cfg.users_file:
            return PasswordUserManager.from_file(self.cfg.users_file, self.cfg.allow_none_security)
        if self.demo:
            # the demo's well-known users, like its API key: refused outside mode: demo
            return PasswordUserManager(
                {
                    "viewer": {"password": hash_password("demo"), "role": "viewer"},
                    "operator": {"password": hash_password("demo"), "role": "operator"},
                },
                self.cfg.allow_none_security,
            )
        raise ValueError("scada.opcua.users_file: required (no anonymous login on the OPC UA face)")

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "trusted").mkdir(exist_ok=True)
        server = Server(user_manager=self._user_manager())
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.cfg.host}:{self.cfg.port}/bess-edge/scada")
        server.set_server_name("bess-edge SCADA face")
        await server.set_application_uri(APP_URI)
        key, cert = self.dir / "server-key.pem", self.dir / "server-cert.der"
        await setup_self_signed_certificate(
            key,
            cert,
            APP_URI,
            socket.gethostname(),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {"commonName": "bess-edge SCADA", "organizationName": "bess-edge"},
        )
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        policies = [
            ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
            ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Basic256Sha256_Sign,
        ]
        if self.cfg.allow_none_security:
            policies.append(ua.SecurityPolicyType.NoSecurity)
            log.warning("OPC UA SCADA face allows the None security policy (lab setting)")
        server.set_security_policy(policies, permission_ruleset=RoleRuleset())
        server.set_identity_tokens([ua.UserNameIdentityToken])
        trusted = self.dir / "trusted"
        trust = TrustStore([trusted], [])
        # cryptography refuses an empty store; with none loaded, every client certificate is untrusted
        if any(re.search(r"\.(der|pem)$", f.name.lower()) for f in trusted.iterdir()):
            await trust.load()
        else:
            log.warning(
                "OPC UA SCADA face trusts no client certificate yet: secure clients are refused until "
                "their certificate is put in the trust store (restart to reload)",
                extra={"trust_dir": str(trusted)},
            )
        server.set_certificate_validator(
            CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, trust
            )
        )
        idx = await server.register_namespace(NAMESPACE)
        root = await server.nodes.objects.add_object(ua.NodeId("BESS", idx), ua.QualifiedName("BESS", idx))
        status = await root.add_folder(ua.NodeId("Status", idx), ua.QualifiedName("Status", idx))
        self.nodes = await self._variables(server, status, "Status", STATUS, idx)
        units = await root.add_folder(ua.NodeId("Units", idx), ua.QualifiedName("Units", idx))
        for name in self.units:
            folder = await units.add_folder(ua.NodeId(f"Units.{name}", idx), ua.QualifiedName(name, idx))
            self.unit_nodes[name] = await self._variables(server, folder, f"Units.{name}", UNIT_POINTS, idx)
        poi = await root.add_folder(ua.NodeId("POI", idx), ua.QualifiedName("POI", idx))
        self.poi_nodes = await self._variables(server, poi, "POI", POI, idx)
        ctl = await root.add_folder(ua.NodeId("Controls", idx), ua.QualifiedName("Controls", idx))
        for p in CONTROL:
            vt = ua.VariantType.Double if p.scale != 1 else _VT[p.type]
            node = await ctl.add_variable(
                ua.NodeId(f"Controls.{p.name}", idx),
                ua.QualifiedName(p.name, idx),
                ua.Variant(0.0 if vt == ua.VariantType.Double else 0, vt),
            )
            await self._describe(server, node, p.description, p.unit, idx)
            if not self.cfg.read_only:
                await node.set_writable(True)
                server.set_attribute_value_setter(node.nodeid, self._setter(p.name))
            self.controls[p.name] = (node, vt)
        await self._serve_bounded(server)
        self.server = server
        self._task = asyncio.create_task(self._update_loop(), name="scada-opcua")
        log.info(
            "OPC UA SCADA face listening",
            extra={
                "endpoint": f"opc.tcp://{self.cfg.host}:{self.cfg.port}/bess-edge/scada",
                "none_policy": self.cfg.allow_none_security,
            },
        )

    async def _serve_bounded(self, server: Server) -> None:
        """Start serving with at most scada.opcua.max_connections open (asyncua closes a client past it at once;
        its per-refusal warning is counted into self.refusals) and a listen queue of 16: asyncua listens with
        asyncio's default backlog (100), the wave a flood gets accepted in one turn of the loop the cycle shares
        (controller/scada/connections.py)."""
        server.iserver.max_connections = self.cfg.max_connections
        self._refusals_filter = RefusalFilter("Refusing connection", self.refusals, "scada.opcua.max_connections open")
        ASYNCUA_LISTENER.addFilter(self._refusals_filter)
        await server.start()
        listener = getattr(server.bserver, "_server", None)
        if listener is not None:
            shorten_listen_queue(listener.sockets)
        else:
            log.warning("OPC UA SCADA face: asyncua's listening socket not found; its listen queue stays at 100")

    async def _variables(
        self, server: Server, folder, prefix: str, points: list[ScadaPoint], idx: int
    ) -> dict[str, tuple[Any, Any]]:
        """Read-only variables `<prefix>.<name>` in `folder`, one per point."""
        out = {}
        for p in points:
            vt = ua.VariantType.Double if p.scale != 1 else _VT[p.type]
            init = 0.0 if vt == ua.VariantType.Double else 0
            node = await folder.add_variable(
                ua.NodeId(f"{prefix}.{p.name}", idx), ua.QualifiedName(p.name, idx), ua.Variant(init, vt)
            )
            await self._describe(server, node, p.description, p.unit, idx)
            out[p.name] = (node, vt)
        return out

    async def _describe(self, server: Server, node, description: str, unit: str, idx: int) -> None:
        await node.write_attribute(
            ua.AttributeIds.Description,
            ua.DataValue(ua.Variant(ua.LocalizedText(description), ua.VariantType.LocalizedText)),
        )
        if unit:
            await node.add_property(
                ua.NodeId(f"{node.nodeid.Identifier}.EngineeringUnits", idx),
                ua.QualifiedName("EngineeringUnits", 0),
                ua.Variant(_eu(unit), ua.VariantType.ExtensionObject),
            )

    def _setter(self, name: str):
        """Validate a client's write before it lands; a refused write answers with a bad status."""

        def setter(node_data, attr, datavalue: ua.DataValue) -> None:
            value = datavalue.Value.Value if datavalue.Value is not None else None
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ua.UaStatusCodeError(ua.StatusCodes.BadTypeMismatch)
            lo, hi = self.limits.get(name, (None, None))
            if lo is not None and not lo <= value <= hi:
                self.writes_refused += 1
                log.warning(
                    "OPC UA write refused: out of range", extra={"point": name, "value": value, "min": lo, "max": hi}
                )
                raise ua.UaStatusCodeError(ua.StatusCodes.BadOutOfRange)
            if name in RATE_LIMITED and not self.limiter.allow():
                self.writes_refused += 1
                self.limiter.log_refusal(
                    log, "OPC UA write refused: mode/setpoint writes over the rate limit (BadServerTooBusy)", point=name
                )
                raise ua.UaStatusCodeError(ua.StatusCodes.BadServerTooBusy)
            try:
                self._apply(name, float(value))
            except ValueError as e:
                self.writes_refused += 1
                log.warning("OPC UA write refused", extra={"point": name, "value": value, "reason": str(e)})
                raise ua.UaStatusCodeError(ua.StatusCodes.BadOutOfRange) from e
            node_data.attributes[attr].value = datavalue

        return setter

    def _apply(self, name: str, value: float) -> None:
        self.pending.apply({name: value})
        self.plant.audit("scada-opcua", f"write {name}", {"value": value})

    async def _update_loop(self) -> None:
        period = max(0.1, self.plant.site.cycle.period_s)
        while True:
            state = self.plant.latest()
            await self._write_values(self.nodes, status_values(state))
            await self._write_values(self.poi_nodes, poi_values(state))
            by_name = units_by_name(state)
            for unit, nodes in self.unit_nodes.items():
                await self._write_values(nodes, unit_values(by_name.get(unit)))
            await asyncio.sleep(period)

    async def _write_values(self, nodes: dict[str, tuple[Any, Any]], values: dict[str, float | None]) -> None:
        for name, (node, vt) in nodes.items():
            v = values.get(name)
            try:
                if v is None:
                    await node.write_value(
                        ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData))
                    )
                elif vt == ua.VariantType.Double:
                    await node.write_value(ua.Variant(float(v), vt))
                else:
                    await node.write_value(ua.Variant(int(v), vt))
            except Exception:
                log.exception("OPC UA status update failed", extra={"point": name, "node": str(node.nodeid)})

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait(self._task)
            self._task = None
        if self.server:
            await self.server.stop()
            self.server = None
        if self._refusals_filter is not None:
            ASYNCUA_LISTENER.removeFilter(self._refusals_filter)
            self._refusals_filter = None
