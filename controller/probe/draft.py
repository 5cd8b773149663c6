"""Draft profiles from what a probe found, as YAML text in the schema of config/profiles/*.yaml (validated by
drivers.profile before it is handed out), each point marked with what the controller does with it and the value
the device showed, and the points the controller needs but the device lacks listed at the top."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from controller.probe.catalogue import (
    INFO,
    METER_MODELS,
    NEEDED,
    PCS,
    PCS_MODELS,
    RATING_REFS,
    REVERSION,
    USED,
    Want,
    meter_wants,
)
from controller.probe.sunspec_scan import UnitScan
from drivers.profile import Point, Profile
from drivers.sunspec import model_definition

_MARK = {NEEDED: "needed", USED: "used", REVERSION: "needed (reversion)", INFO: ""}


@dataclass
class Draft:
    """A drafted profile: its YAML, the role, which wanted points were found and which are lacking."""

    role: str
    text: str
    found: dict[str, str] = field(default_factory=dict)  # point name -> where (ref or node id)
    lacking: dict[str, str] = field(default_factory=dict)  # point name -> why
    checks: list[str] = field(default_factory=list)  # what the engineer must look at

    @property
    def profile(self) -> Profile:
        return Profile.model_validate(yaml.safe_load(self.text))

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "found": self.found,
            "lacking": self.lacking,
            "checks": self.checks,
            "yaml": self.text,
        }


def flow(d: dict[str, Any]) -> str:
    """One mapping on one line, quoted where YAML needs it."""
    return yaml.safe_dump(d, default_flow_style=True, sort_keys=False, width=10_000, allow_unicode=True).strip()


def scalar(v: Any) -> str:
    """One YAML scalar, quoted where YAML needs it."""
    return flow([v])[1:-1]


def slug(*parts: str) -> str:
    s = "-".join(p for p in parts if p)
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "device"


def fmt(value: Any, unit: str = "") -> str:
    if isinstance(value, float):
        value = f"{value:.6g}"
    return f"{value} {unit}".strip() if value is not None else "?"


# --- SunSpec: PCS and meter -----------------------------------------------------------------------------------


def sunspec_role(scan: UnitScan) -> str | None:
    ids = {m.id for m in scan.models}
    if ids & set(PCS_MODELS):
        return "pcs"
    if ids & set(METER_MODELS):
        return "meter"
    return None


def _bits(ref: str) -> dict[int, str] | None:
    model_s, _, name = ref.partition(".")
    for p in model_definition(int(model_s))["group"]["points"]:
        if p["name"] == name and p.get("symbols"):
            return {int(s["value"]): s["name"].lower() for s in p["symbols"]}
    return None


def _rating_w(scan: UnitScan) -> float | None:
    for ref in RATING_REFS:
        pv = scan.point(ref)
        if pv is not None and pv.status == "ok" and isinstance(pv.value, (int, float)) and pv.value > 0:
            return float(pv.value)
    return None


def _pick(scan: UnitScan, want: Want) -> tuple[str | None, str]:
    """The first of the want's refs the device implements, or (None, why not)."""
    why = []
    for ref in want.refs:
        model_s = ref.partition(".")[0]
        pv = scan.point(ref)
        if scan.model(int(model_s)) is None:
            why.append(f"no model {model_s}")
        elif pv is None:
            why.append(f"{ref} not in the device's model length")
        elif pv.status != "ok":
            why.append(f"{ref} {pv.status}")
        elif want.writable and not pv.writable:
            why.append(f"{ref} read-only")
        else:
            return ref, ""
    return None, "; ".join(dict.fromkeys(why))


def _sunspec_point(want: Want, ref: str, rating_w: float | None) -> tuple[dict[str, Any], str | None]:
    entry: dict[str, Any] = {"sunspec": ref}
    if want.unit:
        entry["unit"] = want.unit
    check = None
    if want.writable:
        entry["writable"] = True
        if want.limits == "rating":
            if rating_w:
                r = int(rating_w) if float(rating_w).is_integer() else rating_w
                entry["min"], entry["max"] = -r, r
            else:
                check = f"{want.name}: the device's rating was not found: set min/max (W)"
        elif isinstance(want.limits, tuple):
            entry["min"], entry["max"] = want.limits
    if want.sign != 1 and "sign" in Point.model_fields:
        entry["sign"] = want.sign
    if want.plausible:
        entry["plausible"] = list(want.plausible)
    if want.bits_from_symbols:
        bits = _bits(ref)
        if bits:
            entry["bits"] = bits
    entry["description"] = want.description
    return entry, check


def draft_sunspec(scan: UnitScan, role: str | None = None) -> Draft | None:
    """The draft for a found SunSpec unit in `role` (default: recognised from its models), None for no role."""
    role = role or sunspec_role(scan)
    if role is None:
        return None
    if role == "meter":
        meter = next((m.id for m in scan.models if m.id in METER_MODELS), METER_MODELS[2])
        wants = meter_wants(meter)
    else:
        wants = PCS
    rating_w = _rating_w(scan) if role == "pcs" else None
    draft = Draft(role, "")
    lines: list[str] = []
    for want in wants:
        ref, why = _pick(scan, want)
        if ref is None:
            if want.need != INFO:
                draft.lacking[want.name] = why
            continue
        entry, check = _sunspec_point(want, ref, rating_w)
        if check:
            draft.checks.append(check)
        draft.found[want.name] = ref
        pv = scan.point(ref)
        note = "; ".join(x for x in (_MARK[want.need], f"now {fmt(pv.value, pv.units)}") if x)
        lines.append(f"  {want.name}: {flow(entry)}   # {note}")
    if "wset_rvrt_tms" in draft.found or "heartbeat" in draft.found:
        draft.lacking.pop("wset_rvrt_tms", None)
        draft.lacking.pop("heartbeat", None)
    _role_checks(scan, draft)
    draft.text = _sunspec_text(scan, role, draft, lines, rating_w)
    draft.profile  # noqa: B018 - validates: a draft that would not load is a bug here, not the engineer's
    return draft


def _role_checks(scan: UnitScan, draft: Draft) -> None:
    if draft.role == "meter" and "power_mw" in draft.found:
        draft.checks.append(
            "power_mw: a SunSpec meter's W is + for import at most sites, ours + for export "
            "(hence sign: -1); check it with a known export (the PCS discharging): it must read > 0"
        )
    mod = scan.point("704.WSetMod")
    if draft.role == "pcs" and mod is not None and mod.value == 0:
        draft.checks.append(
            "704.WSetMod reads 0 (percent of WMax): the controller writes watts; set WSetMod to 1 on the device"
        )


def header(what: str, where: str, draft: Draft, site_line: str) -> list[str]:
    """The draft's leading comment: where it came from, what to check, what is lacking, the site-file line."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [
        f"# Draft {draft.role} profile written by `bess-edge probe` on {when} from {where}.",
        f"# {what}",
        "# Check every point against the device's manual, then `bess-edge check-config SITE`.",
        "# Marks: needed = the controller cannot run the device without it; used = read or written when present.",
    ]
    if draft.lacking:
        out.append("# The controller's points this device lacks:")
        out += [f"#   {name}: {why}" for name, why in draft.lacking.items()]
    else:
        out.append("# The device has every point the controller needs.")
    out += [f"# CHECK: {c}" for c in draft.checks]
    out += ["# In the site file:", f"#   {site_line}"]
    return out


def _sunspec_text(scan: UnitScan, role: str, draft: Draft, lines: list[str], rating_w: float | None) -> str:
    t = scan.target
    ids = [m.id for m in scan.models]
    mn, md, sn = (scan.point(r) for r in ("1.Mn", "1.Md", "1.SN"))
    vendor = str(mn.value) if mn is not None and mn.value else "unknown"
    model = str(md.value) if md is not None and md.value else ""
    site = flow(
        {
            "role": role,
            "protocol": "sunspec",
            "host": t.host,
            "port": t.port,
            "unit_id": t.unit_id,
            "profile": "THIS-FILE.yaml",
        }
    )
    head = header(
        f"SunSpec 'SunS' at {scan.base_address}, models {', '.join(map(str, ids))}.", t.where, draft, f"{role}: {site}"
    )
    serial = f"serial {sn.value}" if sn is not None and sn.value else ""
    body = [
        f"name: {scalar(slug(role, vendor, model))}",
        f"vendor: {scalar(vendor)}",
        "protocol: sunspec",
        f"description: {scalar(' '.join(x for x in (vendor, model, serial) if x))}",
        "sunspec:",
        f"  base_address: {scan.base_address}",
        f"  models: {flow(ids)}",
    ]
    if rating_w:
        body.append(f"rated_power_mw: {rating_w / 1e6:.6g}   # from the device's rating")
    return "\n".join(head + body + ["points:"] + lines) + "\n"
