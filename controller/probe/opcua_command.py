"""`bess-edge probe --opcua`: browse the server (as the site file's OPC UA device connects, with --config), print
the variables, draft a BMS profile and read it back through the driver."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from controller.probe.draft import flow, fmt
from controller.probe.opcua_browse import Browse, browse, draft_opcua, probe_driver
from controller.probe.output import deliver, print_draft_summary
from drivers.errors import DeviceError
from drivers.opcua import OpcUaDriver

FOUND, NOTHING, BAD_ARGS = 0, 1, 2


def _site_device(args: argparse.Namespace) -> tuple[str, float]:
    """(device name, timeout) of the site file's OPC UA device at the probed endpoint (or its only one)."""
    from controller.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise ValueError(f"--config: {args.config} is not valid: " + "; ".join(e.errors[:3])) from None
    u = urlparse(args.opcua)
    devices = {n: d for n, d in cfg.devices.items() if d.protocol == "opcua"}
    at = [n for n, d in devices.items() if (d.host, d.port) == (u.hostname, u.port)]
    if not at and len(devices) != 1:
        raise ValueError(f"--config: no OPC UA device at {u.hostname}:{u.port} in {args.config}")
    name = at[0] if at else next(iter(devices))
    return name, devices[name].timeout_s


async def run_opcua(args: argparse.Namespace) -> int:
    timeout_s, device = args.timeout_s, None
    if args.config:
        try:
            device, timeout_s = _site_device(args)
        except ValueError as e:
            print(f"bess-edge probe: {e}", file=sys.stderr)
            return BAD_ARGS
    driver = probe_driver(args.opcua, timeout_s)
    try:
        found = await browse(driver)
    except DeviceError as e:
        print(f"bess-edge probe: {args.opcua}: {e.message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"endpoint": args.opcua, "status": "no_answer", "error": e.message}))
        return NOTHING
    finally:
        await driver.close()
    u = urlparse(args.opcua)
    path = u.path if u.path not in ("", "/") else ""
    site = flow(
        {
            "role": "bms",
            "protocol": "opcua",
            "host": u.hostname,
            "port": u.port,
            **({"endpoint_path": path} if path else {}),
            "profile": "THIS-FILE.yaml",
        }
    )
    draft = draft_opcua(found, f"{device or 'bms'}: {site}")
    doc: dict[str, Any] = {
        "endpoint": args.opcua,
        "status": "found" if found.variables else "not_found",
        "security": "None (as drivers/opcua.py connects" + (f" for device {device})" if device else ")"),
        "variables": [v.as_json() for v in found.variables],
        "truncated": found.truncated,
        "draft": draft.as_json() if draft else None,
    }
    if not args.json:
        print_browse(found, doc["security"])
    if draft is None:
        print(f"bess-edge probe: {args.opcua}: no variable matches a BMS point the controller needs", file=sys.stderr)
    else:
        if not args.json:
            print_draft_summary(draft)
        await _read_back(draft, args.opcua, timeout_s, doc, args.json)
        err = deliver(draft, Path(args.out) if args.out else None, args.force, doc, args.json)
        if err:
            print(f"bess-edge probe: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    return FOUND if draft is not None else NOTHING


async def _read_back(draft, endpoint: str, timeout_s: float, doc: dict[str, Any], as_json: bool) -> None:
    """Read the draft through the control cycle's driver: every point should come back known."""
    driver = OpcUaDriver("probe", draft.profile, endpoint, timeout_s=timeout_s, subscribe=False)
    try:
        readings = await driver.read()
    except DeviceError as e:
        doc["read_back"] = {"error": e.message}
        print(f"bess-edge probe: reading the draft back failed: {e.message}", file=sys.stderr)
        return
    finally:
        await driver.close()
    unknown = {n: r.invalid for n, r in readings.items() if r.invalid is not None}
    doc["read_back"] = {"points": len(readings), "unknown": unknown}
    if not as_json:
        print(
            f"draft read back through the driver: {len(readings)} points, "
            + ("all known" if not unknown else f"unknown: {unknown}")
        )


def print_browse(found: Browse, security: str) -> None:
    print(
        f"{found.endpoint}: {len(found.variables)} variables (security: {security})"
        + (" - stopped at the node limit" if found.truncated else "")
    )
    print(f"  {'node id':<34} {'type':<7} {'value':<18} {'unit':<6} access")
    for v in found.variables:
        print(f"  {v.node_id:<34} {v.type or '?':<7} {fmt(v.value):<18} {v.unit:<6} {'RW' if v.writable else 'R'}")
    print()
