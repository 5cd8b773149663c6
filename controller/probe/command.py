"""`bess-edge probe`: arguments, the scan they ask for, the table (or --json) on stdout, the draft profiles
written (or printed), errors on stderr naming host, port, unit id and what did not answer.
Exit codes: 0 something found (a draft for it), 1 nothing found or unreachable, 2 bad arguments."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from controller.probe.arguments import AUTO_UNIT_IDS
from controller.probe.draft import Draft, draft_sunspec, fmt
from controller.probe.modbus_link import ModbusLink, NoAnswer, ProbeTarget
from controller.probe.output import deliver, print_draft_summary
from controller.probe.registers import draft_registers, parse_ranges, scan_registers
from controller.probe.sunspec_scan import UnitScan, scan_units
from drivers.errors import DeviceError

FOUND, NOTHING, BAD_ARGS = 0, 1, 2


@dataclass
class Plan:
    args: argparse.Namespace
    unit_ids: list[int] = field(default_factory=list)
    auto: bool = False
    ranges: list[tuple[str, int, int]] = field(default_factory=list)


def _plan(args: argparse.Namespace) -> Plan:
    """The arguments checked; ValueError says what is wrong (exit 2)."""
    plan = Plan(args)
    if not 0 < args.timeout_s <= 60:
        raise ValueError(f"--timeout-s: must be > 0 and <= 60 (got {args.timeout_s:g})")
    if not 0 <= args.retries <= 5:
        raise ValueError(f"--retries: must be 0..5 (got {args.retries})")
    if args.out and Path(args.out).exists() and not args.force:
        raise ValueError(f"--out: {args.out} exists (say --force to overwrite it)")
    if args.opcua:
        u = urlparse(args.opcua)
        if u.scheme != "opc.tcp" or not u.hostname:
            raise ValueError(f"--opcua: expected opc.tcp://HOST:PORT (got {args.opcua!r})")
        if args.host or args.registers or args.unit_id:
            raise ValueError("--opcua: not with --host, --registers or --unit-id")
        return plan
    if args.config:
        raise ValueError("--config: only with --opcua")
    if not args.host:
        raise ValueError("--host is required (or --opcua URL)")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port: must be 1..65535 (got {args.port})")
    for item in args.unit_id or ["1"]:
        for part in item.split(","):
            if part.strip() == "auto":
                plan.auto = True
                plan.unit_ids += [u for u in AUTO_UNIT_IDS if u not in plan.unit_ids]
            elif part.strip().isdigit() and 0 <= int(part) <= 255:
                if int(part) not in plan.unit_ids:
                    plan.unit_ids.append(int(part))
            else:
                raise ValueError(f"--unit-id: {part!r} is not a unit id 0..255 or auto")
    if args.registers:
        plan.ranges = parse_ranges(args.registers)
        if plan.auto:
            raise ValueError("--unit-id auto: only for SunSpec discovery; name the unit id with --registers")
    return plan


def main_probe(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
    except ValueError as e:
        print(f"bess-edge probe: {e}", file=sys.stderr)
        return BAD_ARGS
    if args.opcua:
        # imported here: asyncua is heavy and only this mode needs it
        from controller.probe.opcua_command import run_opcua

        return asyncio.run(run_opcua(args))
    if plan.ranges:
        return asyncio.run(_run_registers(plan))
    return asyncio.run(_run_sunspec(plan))


def _targets(plan: Plan) -> list[ProbeTarget]:
    a = plan.args
    return [ProbeTarget(a.host, a.port, u, a.timeout_s, a.retries) for u in plan.unit_ids]


def out_path(out: str, unit_id: int, several: bool) -> Path:
    p = Path(out)
    return p.with_name(f"{p.stem}-unit{unit_id}{p.suffix or '.yaml'}") if several else p


# --- SunSpec --------------------------------------------------------------------------------------------------


async def _run_sunspec(plan: Plan) -> int:
    a = plan.args
    scans = await scan_units(_targets(plan), stop_at_first=plan.auto)
    found = [s for s in scans if s.status == "found"]
    several = len(plan.unit_ids) > 1 and not plan.auto  # file names follow the question, not what answered
    docs = []
    for scan in scans:
        doc: dict[str, Any] = {
            "unit_id": scan.target.unit_id,
            "status": scan.status,
            "error": scan.error,
            "base_address": scan.base_address,
            "models": [m.as_json() for m in scan.models],
        }
        docs.append(doc)
        if scan.status != "found":
            print(f"bess-edge probe: {scan.error}", file=sys.stderr)
            continue
        if not a.json:
            print_sunspec(scan)
        draft = draft_sunspec(scan, a.role)
        if draft is None:
            doc["draft"] = None
            if not a.json:
                print("no role recognised (no PCS model 701/704/802, no meter model 201-204): no draft\n")
            continue
        doc["draft"] = draft.as_json()
        if not a.json:
            print_draft_summary(draft)
        doc["read_back"] = await read_back_sunspec(draft, scan.target, a.json)
        path = out_path(a.out, scan.target.unit_id, several) if a.out else None
        err = deliver(draft, path, a.force, doc, a.json)
        if err:
            print(f"bess-edge probe: {err}", file=sys.stderr)
    if a.json:
        print(json.dumps({"host": a.host, "port": a.port, "units": docs}, indent=1, default=str))
    else:
        print_summary(a.host, a.port, scans)
    return FOUND if found else NOTHING


async def read_back_sunspec(draft: Draft, target: ProbeTarget, as_json: bool) -> dict[str, Any]:
    """Read the draft through the control cycle's driver: every point should come back known."""
    from drivers.sunspec import SunSpecDriver

    driver = SunSpecDriver(
        "probe", draft.profile, target.host, target.port, unit_id=target.unit_id, timeout_s=target.timeout_s
    )
    try:
        readings = await driver.read()
    except DeviceError as e:
        print(f"bess-edge probe: {target.where}: reading the draft back failed: {e.message}", file=sys.stderr)
        return {"error": e.message}
    finally:
        await driver.close()
    unknown = {n: r.invalid for n, r in readings.items() if r.invalid is not None}
    if not as_json:
        print(
            f"draft read back through the driver: {len(readings)} points, "
            + ("all known" if not unknown else f"unknown: {unknown}")
        )
    return {"points": len(readings), "unknown": unknown}


def print_sunspec(scan: UnitScan) -> None:
    ids = ", ".join(str(m.id) for m in scan.models)
    print(f"{scan.target.where}: SunSpec at {scan.base_address}, models {ids}")
    for m in scan.models:
        print(f"\nmodel {m.id} {m.name} at {m.address}, {m.length} registers" + (f" ({m.note})" if m.note else ""))
        if not m.points:
            continue
        print(f"  {'point':<18} {'address':>7}  {'type':<10} {'value':<24} {'units':<8} access")
        for p in m.points.values():
            value = fmt(p.value) if p.status == "ok" else p.status if p.status != "undecoded" else p.raw
            print(
                f"  {p.name:<18} {p.address:>7}  {p.type:<10} {value!s:<24} {p.units:<8} {'RW' if p.writable else 'R'}"
            )
    print()


def print_summary(host: str, port: int, scans: list[UnitScan]) -> None:
    print(f"summary {host}:{port}")
    for s in scans:
        if s.status == "found":
            print(f"  unit id {s.target.unit_id}: SunSpec, models {', '.join(str(m.id) for m in s.models)}")
        else:
            print(f"  unit id {s.target.unit_id}: {s.status.replace('_', ' ').upper()}: {s.error}")


# --- register ranges ------------------------------------------------------------------------------------------


async def _run_registers(plan: Plan) -> int:
    a = plan.args
    docs, any_found = [], False
    for target in _targets(plan):
        link = ModbusLink(target)
        try:
            scan = await scan_registers(link, plan.ranges)
        except NoAnswer as e:
            print(f"bess-edge probe: {e}", file=sys.stderr)
            docs.append({"unit_id": target.unit_id, "status": "no_answer", "error": str(e)})
            continue
        finally:
            await link.close()
        doc = {"status": "found" if scan.values else "not_found", **scan.as_json()}
        docs.append(doc)
        if not scan.values:
            print(f"bess-edge probe: {target.where}: no register of {a.registers} answered", file=sys.stderr)
            continue
        any_found = True
        draft = draft_registers(scan)
        doc["draft"] = draft.as_json()
        if not a.json:
            print_registers(scan)
        path = out_path(a.out, target.unit_id, len(plan.unit_ids) > 1) if a.out else None
        err = deliver(draft, path, a.force, doc, a.json)
        if err:
            print(f"bess-edge probe: {err}", file=sys.stderr)
    if a.json:
        print(json.dumps({"host": a.host, "port": a.port, "units": docs}, indent=1))
    return FOUND if any_found else NOTHING


def print_registers(scan) -> None:
    print(f"{scan.target.where}: {len(scan.values)} registers answered")
    print(f"  {'function':<9} {'address':>7}  {'hex':>6} {'u16':>6} {'i16':>6}")
    for (fn, a), v in sorted(scan.values.items()):
        print(f"  {fn:<9} {a:>7}  0x{v:04X} {v:>6} {v - 0x10000 if v & 0x8000 else v:>6}")
    for fn, a, b, why in scan.skipped:
        print(f"  skipped {fn} {a}-{b}: {why}")
    print()
