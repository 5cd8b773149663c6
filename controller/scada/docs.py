"""The SCADA face's documents: docs/scada-modbus.md and docs/scada-opcua.md rendered from the point tables
(controller.scada.points) and the OPC UA server's names (controller.scada.opcua). Living apart from both, it
breaks the cycle the rendering used to make between them. `python -m controller.scada.docs --write`.
"""

from __future__ import annotations

import math

from controller.scada.iec104_docs import render_iec104_markdown
from controller.scada.opcua import _VT, APP_URI, NAMESPACE, ROLES
from controller.scada.points import (
    ALARM_BITS,
    BINDING_CODES,
    CONTROL,
    LAYOUT,
    MAX_UNITS,
    MODE_CODES,
    POI,
    RANGE,
    STATUS,
    UNIT_BASE,
    UNIT_POINTS,
    UNIT_STRIDE,
    ScadaPoint,
    unit_points,
)


def _eng_range(p: ScadaPoint) -> str:
    """What a point can carry: its configured write range, else the range its register type encodes."""
    if p.min is not None:
        return f"{p.min:g} – {p.max:g}"
    if p.writable:
        return "± configured p_charge/p_discharge max"
    lo, hi = RANGE[p.type]
    if p.type in ("u16", "u32"):
        hi -= 1  # the top value is the "not available" marker
    else:
        lo += 1  # and so is the most negative one
    digits = max(0, -math.floor(math.log10(p.scale) + 1e-9))
    return f"{lo * p.scale:.{digits}f} – {hi * p.scale:.{digits}f}"


def _register_rows(points: list[ScadaPoint]) -> list[str]:
    rows = [
        "| address | words | name | type | scale | unit | range | writable | meaning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        rows.append(
            f"| {p.address} | {p.words} | `{p.name}` | {p.type} | {p.scale:g} | {p.unit or '–'} | "
            f"{_eng_range(p)} | {'yes' if p.writable else 'no'} | {p.description} |"
        )
    return rows


def _code_tables() -> list[str]:
    out = ["## Mode codes", "", "| code | mode |", "|---|---|"]
    out += [f"| {i} | `{m}` |" for m, i in MODE_CODES.items()]
    out += ["", "## Binding limit codes", "", "| code | limit |", "|---|---|"]
    out += [f"| {i} | `{b}` |" for b, i in BINDING_CODES.items()]
    out += ["", "## Alarm bits", "", "| bit | meaning |", "|---|---|"]
    out += [f"| {b} | {m} |" for b, m in ALARM_BITS.items()]
    return out


def render_markdown() -> str:
    """docs/scada-modbus.md, generated from the point tables (`python -m controller.scada.docs --write`)."""
    out = [
        "# SCADA face — Modbus TCP register map",
        "",
        "Generated from `controller/scada/points.py` (the table the server uses) by",
        "`python -m controller.scada.docs --write`; do not edit by hand (a test fails when it drifts).",
        "",
        "Default port 5020 (502 in production), unit id 1 (`scada.modbus.port`, `scada.modbus.unit_id`).",
        "Addresses are 0-based on the wire. Multi-register values are big-endian (high word first).",
        "Engineering value = raw × scale; a value beyond the range is clamped to it. Unknown values read as the",
        'type\'s "not available" marker: 0xFFFF (u16), 0x8000 (i16), 0xFFFFFFFF (u32), 0x80000000 (i32).',
        "Power is in MW, positive = discharge (export), negative = charge.",
        "",
        "The status table is refreshed from the controller's latest cycle, never from the devices: read it as",
        "often as you like. `heartbeat` changes every control cycle; if it stops, the controller has stopped.",
        "",
        "## Status — input registers (function 04), read-only",
        "",
    ]
    out += _register_rows(STATUS)
    out += [
        "",
        "## Plant layout, POI meter and units — input registers (function 04), read-only",
        "",
        "After the status table come where the unit blocks are, the POI meter's values (not available on a",
        "site without a meter, or while the meter is lost) and one block per unit of the site file. Unit k",
        f"(0-based, in the order of `units:` in the site file) starts at {UNIT_BASE} + k × {UNIT_STRIDE};",
        "its points are at the offsets below. A site file without `units:` is one unit (`u1`): one block.",
        "The units are read from the site file at start, so the map is fixed for a site (at most",
        f"{MAX_UNITS} units). Registers between the tables read 0.",
        "",
    ]
    out += _register_rows(LAYOUT + POI)
    out += ["", f"### One unit's block (offsets from {UNIT_BASE} + k × {UNIT_STRIDE})", ""]
    out += _register_rows(UNIT_POINTS)
    out += ["", "For example, the second unit (k = 1) of a two-unit plant:", ""]
    out += _register_rows(unit_points(1))
    out += [
        "",
        "## Controls — holding registers (function 03 read, 06/16 write)",
        "",
        "Only these addresses can be written; any other address is refused with exception 02 (illegal data",
        "address), a value out of range with exception 03 (illegal data value), and a write that covers only",
        "part of a two-register point with exception 02. Coils and discrete inputs do not exist (exception 02).",
        "With `scada.modbus.read_only: true` every write is refused with exception 02.",
        "",
        "Who may write. `scada.modbus.allow_clients` lists the SCADA masters (IP addresses or networks, e.g.",
        "`[10.0.0.5, 10.0.1.0/24]`): they may read and write, every other client is disconnected on connect.",
        "With an empty list (the default), writes are denied by default: a face that listens on loopback only",
        "(`127.0.0.1`, `::1`, `localhost`) takes writes from its local clients, and a face bound to any other",
        "address (e.g. `0.0.0.0` or a LAN address) serves reads to everyone but answers every write function",
        "(05, 06, 15, 16, 22, 23) with exception 01 (illegal function) and logs why. List the master to write.",
        "",
        "Connections. At most `scada.modbus.max_connections` (default 16) are open at once; a client past it,",
        "like one off the allow-list, is closed as it connects, and the refusals are logged once and then as a",
        "count at most every 10 s. The face listens with a queue of 16: a connect flood can neither take the",
        "descriptors the device links need nor hold up the control cycle.",
        "",
        "Write rate. Writes of `mode` and `manual_setpoint_mw` (over this face and the OPC UA face together)",
        "pass a token bucket: `scada.write_burst` (default 5) back to back, then `scada.write_rate_per_s`",
        "(default 1) per second; one past it is refused with exception 06 (server device busy; retry later)",
        "and changes nothing. Each accepted change wakes the control cycle, so a write storm cannot make the",
        "controller cycle flat out. A write that repeats the current mode and setpoint renews the expiry",
        "without waking the cycle.",
        "",
        "A manual setpoint still passes every limit (SoC, temperature, BMS, ramp, grid) and expires",
        "`manual_expires_s` seconds after the last write of `manual_setpoint_mw` (each write renews it); then",
        "the controller returns to `auto`. Writing `mode` = 1 starts manual mode with the last written setpoint.",
        "Every accepted write is recorded in the audit log.",
        "",
    ]
    out += _register_rows(CONTROL)
    out += [""] + _code_tables()
    return "\n".join(out) + "\n"


def _opcua_type(p: ScadaPoint) -> str:
    """The variable's OPC UA data type: scaled points are Double in engineering units."""
    return "Double" if p.scale != 1 else _VT[p.type].name


def render_opcua_markdown() -> str:
    """docs/scada-opcua.md: the same tables as OPC UA variables, and how the server's security works."""
    out = _opcua_read_only_sections() + _opcua_controls_section() + _opcua_security_section() + _code_tables()
    return "\n".join(out) + "\n"


def _opcua_read_only_sections() -> list[str]:
    """The endpoint and namespace, then the Status, POI and Units folders."""
    out = [
        "# SCADA face — OPC UA server",
        "",
        "Generated from `controller/scada/points.py` and `controller/scada/opcua.py` by",
        "`python -m controller.scada.docs --write`; do not edit by hand (a test fails when it drifts).",
        "",
        "Endpoint `opc.tcp://<scada.opcua.host>:<scada.opcua.port>/bess-edge/scada` (default port 4840),",
        f"application URI `{APP_URI}`, namespace URI `{NAMESPACE}`. Node ids are strings in that namespace:",
        "`ns=<index of the namespace>;s=Status.<name>` and `ns=<index>;s=Controls.<name>`, under the object",
        "`Objects/BESS`. Scaled points are `Double` in engineering units (no raw scale); every variable has a",
        "`Description` and, where it has a unit, an `EngineeringUnits` property (UNECE namespace).",
        "A status value that is not known yet reads with status `BadWaitingForInitialData`.",
        "",
        "## Status folder (read-only, refreshed every control cycle)",
        "",
        "| node id | data type | unit | meaning |",
        "|---|---|---|---|",
    ]
    out += [f"| `Status.{p.name}` | {_opcua_type(p)} | {p.unit or '–'} | {p.description} |" for p in STATUS]
    out += [
        "",
        "## POI folder (read-only): the POI meter",
        "",
        "Not available (`BadWaitingForInitialData`) on a site without a meter, or while the meter is lost.",
        "",
        "| node id | data type | unit | meaning |",
        "|---|---|---|---|",
    ]
    out += [f"| `POI.{p.name}` | {_opcua_type(p)} | {p.unit or '–'} | {p.description} |" for p in POI]
    out += [
        "",
        "## Units folder (read-only): a folder per unit",
        "",
        "`Objects/BESS/Units/<unit>` for every unit of the site file (`units:`; a file without it has one",
        "unit, `u1`), fixed at start. The node ids are `Units.<unit>.<name>`, e.g. `Units.u2.soc_pct`.",
        "",
        "| node id | data type | unit | meaning |",
        "|---|---|---|---|",
    ]
    out += [f"| `Units.<unit>.{p.name}` | {_opcua_type(p)} | {p.unit or '–'} | {p.description} |" for p in UNIT_POINTS]
    return out


def _opcua_controls_section() -> list[str]:
    out = [
        "",
        "## Controls folder (writable by the `operator` role)",
        "",
        "The Controls variables hold what a client last wrote; the live mode and setpoint are in the Status",
        "folder. The same checks as the Modbus face apply: a value out of range is refused with",
        "`BadOutOfRange`, a non-number with `BadTypeMismatch`; every accepted write is audited. With",
        "`scada.opcua.read_only: true` the Controls variables are not writable.",
        "",
        "Writes of `mode` and `manual_setpoint_mw` (over this face and the Modbus face together) pass a token",
        "bucket: `scada.write_burst` (default 5) back to back, then `scada.write_rate_per_s` (default 1) per",
        "second; one past it is refused with `BadServerTooBusy` and changes nothing (retry later). Each",
        "accepted change wakes the control cycle, so a write storm cannot make the controller cycle flat out.",
        "",
        "| node id | data type | unit | range | meaning |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| `Controls.{p.name}` | {_opcua_type(p)} | {p.unit or '–'} | {_eng_range(p)} | {p.description} |"
        for p in CONTROL
    ]
    return out


def _opcua_security_section() -> list[str]:
    """What the server sets explicitly, since asyncua's defaults are open."""
    return [
        "",
        "## Security",
        "",
        "asyncua's defaults are open (a None endpoint, every certificate trusted), so the server sets",
        "everything explicitly:",
        "",
        "- **Security policies**: Aes256_Sha256_RsaPss and Basic256Sha256, each with Sign and SignAndEncrypt.",
        "  The None policy is offered only with `scada.opcua.allow_none_security: true` (a lab setting;",
        "  logged as a warning). A login over a None channel is refused unless that setting is on.",
        "- **Server certificate**: self-signed, generated on first start into",
        "  `<state-dir>/scada-opcua/server-cert.der` (key `server-key.pem`), for the host name and the",
        "  application URI above.",
        "- **Client certificates**: trusted only when their certificate (DER or PEM) is in",
        "  `<state-dir>/scada-opcua/trusted/` (read at start: restart after adding one). The store starts",
        "  empty, so every secure client is refused until an engineer adds its certificate.",
        "- **Connections**: at most `scada.opcua.max_connections` (default 16) open at once; a client past",
        "  it is closed as it connects (logged once, then as a count at most every 10 s), and the face listens",
        "  with a queue of 16, so a connect flood can neither take the device links' descriptors nor hold up",
        "  the control cycle.",
        "- **Users**: no anonymous login; user name and password only, from `scada.opcua.users_file`:",
        "",
        "  ```yaml",
        "  users:",
        '    scada-ro: {password: "scrypt$<salt hex>$<hash hex>", role: viewer}',
        '    scada-op: {password: "scrypt$<salt hex>$<hash hex>", role: operator}',
        "  ```",
        "",
        "  Hash a password with `python -c 'from controller.scada.opcua import hash_password;",
        '  print(hash_password("..."))\'`. `bess-edge demo` has the users `viewer` and `operator`, password',
        "  `demo`; outside `mode: demo` a users file is required.",
        "- **Roles** (a custom permission ruleset): " + ", ".join(f"`{r}`" for r in ROLES) + ".",
        "  `viewer` may browse, read and subscribe; `operator` may also write (only the Controls variables",
        "  are writable at all). Nobody may add or delete nodes or references, register servers or call",
        "  methods.",
        "",
    ]


DOCS = {
    "docs/scada-modbus.md": render_markdown,
    "docs/scada-opcua.md": render_opcua_markdown,
    "docs/scada-iec104.md": render_iec104_markdown,
}


def main(argv: list[str] | None = None) -> int:
    """`--modbus` (default), `--opcua` or `--iec104` prints one document; `--write` regenerates all under docs/."""
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    if "--write" in args:
        root = Path(__file__).resolve().parents[2]
        for rel, render in DOCS.items():
            (root / rel).write_text(render(), encoding="utf-8")
            print(rel)
        return 0
    render = render_markdown
    if "--opcua" in args:
        render = render_opcua_markdown
    elif "--iec104" in args:
        render = render_iec104_markdown
    print(render(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
