"""OPC UA for the probe: the address space under Objects browsed (bounded in nodes and depth) through a session
opened by drivers.opcua (the settings the control cycle would use), its variables matched by name to the BMS
points the controller needs, and an OPC UA profile drafted from them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua

from controller.probe.catalogue import BMS, INFO, NEEDED, USED, Want
from controller.probe.draft import Draft, flow, fmt, header, scalar
from drivers.opcua import OpcUaDriver
from drivers.profile import Profile

MAX_NODES = 5000
MAX_DEPTH = 8
_TYPES = {
    ua.VariantType.Float: "f32",
    ua.VariantType.Double: "f32",
    ua.VariantType.UInt16: "u16",
    ua.VariantType.Int16: "i16",
    ua.VariantType.UInt32: "u32",
    ua.VariantType.Int32: "i32",
    ua.VariantType.UInt64: "u64",
    ua.VariantType.Int64: "i64",
    ua.VariantType.Byte: "u16",
    ua.VariantType.SByte: "i16",
    ua.VariantType.Boolean: "u16",
    ua.VariantType.String: "string",
}
_POWER_UNITS = ("W", "kW", "MW")


@dataclass
class Variable:
    node_id: str
    path: str
    namespace: str
    type: str | None  # the profile type, None for a data type a profile cannot carry
    value: Any
    unit: str
    writable: bool
    description: str = ""

    def as_json(self) -> dict:
        v = self.value if isinstance(self.value, (int, float, str, bool)) or self.value is None else repr(self.value)
        return {
            "node_id": self.node_id,
            "path": self.path,
            "namespace": self.namespace,
            "type": self.type,
            "value": v,
            "unit": self.unit,
            "writable": self.writable,
            "description": self.description,
        }


@dataclass
class Browse:
    endpoint: str
    variables: list[Variable] = field(default_factory=list)
    truncated: bool = False


def norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def probe_driver(endpoint: str, timeout_s: float) -> OpcUaDriver:
    return OpcUaDriver(
        "probe",
        Profile(name="probe", protocol="opcua", points={}),
        endpoint,
        timeout_s=timeout_s,
        subscribe=False,
        backoff_max_s=timeout_s,
    )


async def browse(driver: OpcUaDriver) -> Browse:
    """Every variable outside namespace 0 under Objects (connect errors are the driver's typed errors)."""
    await driver.connect()
    client = driver.session
    assert client is not None
    namespaces = await client.get_namespace_array()
    out = Browse(driver.endpoint)
    queue: list[tuple[Any, str, int]] = [(client.nodes.objects, "", 0)]
    seen = 0
    while queue:
        node, path, depth = queue.pop(0)
        for rd in await node.get_children_descriptions():
            nid = rd.NodeId
            if nid.NamespaceIndex == 0:
                continue  # the server's own nodes (Server, Aliases ...)
            seen += 1
            if seen > MAX_NODES:
                out.truncated = True
                return out
            child = client.get_node(nid)
            child_path = f"{path}/{rd.BrowseName.Name}"
            if rd.NodeClass == ua.NodeClass.Variable and rd.BrowseName.Name != "EngineeringUnits":
                out.variables.append(await _variable(child, child_path, namespaces))
            if depth + 1 < MAX_DEPTH and rd.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable):
                queue.append((child, child_path, depth + 1))
    return out


async def _variable(node, path: str, namespaces: list[str]) -> Variable:
    nid = node.nodeid
    dv = await node.read_data_value(raise_on_bad_status=False)
    value = dv.Value.Value if dv.Value is not None else None
    vt = dv.Value.VariantType if dv.Value is not None else None
    access = await node.get_access_level()
    unit = ""
    for prop in await node.get_properties():
        if (await prop.read_browse_name()).Name == "EngineeringUnits":
            eu = await prop.read_value()
            unit = getattr(getattr(eu, "DisplayName", None), "Text", "") or ""
    desc = await node.read_description()
    return Variable(
        nid.to_string(),
        path,
        namespaces[nid.NamespaceIndex] if nid.NamespaceIndex < len(namespaces) else "",
        _TYPES.get(vt),
        value,
        unit,
        ua.AccessLevel.CurrentWrite in access,
        (desc.Text or "") if desc else "",
    )


def _matches(want: Want, var: Variable) -> bool:
    if var.type is None:
        return False
    name = norm(var.path.rsplit("/", 1)[-1].rsplit(".", 1)[-1])
    if name not in want.refs:
        return False
    if want.name.endswith("_bits") and var.type in ("f32", "string"):
        return False  # a bit field is a whole number
    return not (want.writable and not var.writable)


def draft_opcua(found: Browse, site_line: str) -> Draft | None:
    """An OPC UA BMS profile from the variables whose names match the controller's BMS points; None when none do."""
    draft = Draft("bms", "")
    used: set[str] = set()
    picked: list[tuple[Want, Variable]] = []
    for want in BMS:
        var = next((v for v in found.variables if v.node_id not in used and _matches(want, v)), None)
        if var is None:
            if want.need != INFO:
                draft.lacking[want.name] = "no variable of a matching name (" + ", ".join(want.refs[:3]) + " ...)"
            continue
        used.add(var.node_id)
        picked.append((want, var))
    if not picked:
        return None
    namespaces = [v.namespace for _, v in picked]
    namespace = max(set(namespaces), key=namespaces.count)
    lines = [_line(want, var, draft) for want, var in picked if var.namespace == namespace]
    others = [v for v in found.variables if v.node_id not in used]
    draft.text = _text(found, draft, namespace, lines, others, site_line)
    draft.profile  # noqa: B018 - validates
    return draft


def _line(want: Want, var: Variable, draft: Draft) -> str:
    entry: dict[str, Any] = {"node_id": var.node_id, "type": var.type}
    unit = var.unit
    if not unit and want.unit:
        unit = want.unit
        draft.checks.append(f"{want.name}: {var.node_id} has no EngineeringUnits; assumed {unit}")
    if want.name.endswith("_mw") and unit not in _POWER_UNITS:
        draft.checks.append(f"{want.name}: unit {unit!r} is not a power unit (W, kW, MW)")
    if unit:
        entry["unit"] = unit
    if want.writable:
        entry["writable"] = True
        entry["min"], entry["max"] = want.limits  # type: ignore[misc]
    if want.plausible:
        entry["plausible"] = list(want.plausible)
    entry["description"] = var.description or want.description
    draft.found[want.name] = var.node_id
    mark = {NEEDED: "needed", USED: "used"}.get(want.need, "")
    note = "; ".join(x for x in (mark, f"{var.path} now {fmt(var.value, var.unit)}") if x)
    return f"  {want.name}: {flow(entry)}   # {note}"


def _text(found: Browse, draft: Draft, namespace: str, lines: list[str], others: list[Variable], site: str) -> str:
    head = header(
        f"OPC UA: {len(found.variables)} variables browsed under Objects"
        + (" (stopped at the node limit)" if found.truncated else "")
        + "; matched by name.",
        found.endpoint,
        draft,
        site,
    )
    if others:
        head.append("# Variables not matched to a controller point (name them here if the controller needs them):")
        head += [f"#   {v.node_id}  {v.type or '?'}  {fmt(v.value, v.unit)}" for v in others[:200]]
    body = [
        "name: draft-opcua-bms",
        "vendor: unknown",
        "protocol: opcua",
        f"namespace: {scalar(namespace)}",
        "publishing_interval_s: 0.2",
        f"description: {scalar('BMS over OPC UA at ' + found.endpoint)}",
    ]
    return "\n".join(head + body + ["points:"] + lines) + "\n"
