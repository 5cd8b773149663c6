"""docs/scada-iec104.md, rendered from the IEC 104 face's address map (controller.scada.iec104_points) and its
config (controller.config.ScadaIec104); `python -m controller.scada.docs --write` writes it with the others."""

from __future__ import annotations

from controller.config import ScadaIec104, ScadaIec104Tls
from controller.scada.iec104_points import COMMANDS, MEASURED, MONITOR, Iec104Point

_TYPE_NAMES = {
    "M_ME_NC_1": "M_ME_NC_1 (13): measured value, short float",
    "M_SP_NA_1": "M_SP_NA_1 (1): single point",
    "C_SE_NC_1": "C_SE_NC_1 (50): set point command, short float",
    "C_SC_NA_1": "C_SC_NA_1 (45): single command",
}


def _monitor_rows(points: list[Iec104Point]) -> list[str]:
    defaults = ScadaIec104()
    rows = ["| IOA | type | name | unit | spontaneous past | meaning |", "|---|---|---|---|---|---|"]
    for p in points:
        if p.type == MEASURED:
            db = f"`{p.deadband}` ({getattr(defaults, p.deadband):g} {p.unit})"
        else:
            db = "any change"
        rows.append(f"| {p.ioa} | {p.type} | `{p.name}` | {p.unit or '–'} | {db} | {p.description} |")
    return rows


def _config_rows() -> list[str]:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, field in ScadaIec104.model_fields.items():
        if name == "tls":
            continue
        default = field.get_default(call_default_factory=True)
        rows.append(f"| `scada.iec104.{name}` | `{default}` | {field.description or ''} |")
    for name, field in ScadaIec104Tls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        rows.append(f"| `scada.iec104.tls.{name}` | `{default}` | {field.description or ''} |")
    return rows


def render_iec104_markdown() -> str:
    """docs/scada-iec104.md."""
    monitored = [p for p in MONITOR if p.type == MEASURED]
    states = [p for p in MONITOR if p.type != MEASURED]
    out = [
        "# Grid-operator face — IEC 60870-5-104 address map",
        "",
        "Generated from `controller/scada/iec104_points.py` (the table the server uses) and `controller/config.py`",
        "by `python -m controller.scada.docs --write`; do not edit by hand (a test fails when it drifts).",
        "",
        "The plant is the **controlled station** (server, c104 on lib60870); the grid operator's system is the",
        "controlling station. Default port 2404 (`scada.iec104.port`; the demo serves 127.0.0.1:2404), one",
        "station with common address `scada.iec104.common_address` (default 1). Information object addresses",
        "(IOAs) are 3 bytes, the cause of transmission 2 bytes (with the originator address), the common address",
        "2 bytes: the standard IEC 104 profile. APCI parameters are lib60870's defaults (k = 12, w = 8,",
        "t0 = 10 s, t1 = 15 s, t2 = 10 s, t3 = 20 s).",
        "",
        "Power is in MW, **positive = discharge = upward** (more power to the grid), negative = charge. Measured",
        "values are IEEE 754 short floats in engineering units: no scaling, no normalisation.",
        "",
        "## Who may connect",
        "",
        "Only the controlling stations in `scada.iec104.allow_clients` (IP addresses or networks): every other",
        "client's connection is refused as it opens (logged once a minute per address). With an empty list only",
        "a face that listens on loopback takes clients (its local ones); a face bound to any other address must",
        "list its controlling station (the site file is refused otherwise). `scada.iec104.read_only: true`",
        "answers every command with a negative confirmation. At most `scada.iec104.max_connections` (default",
        "16) are open at once; c104 closes a client past it.",
        "",
        "TLS (`scada.iec104.tls.enabled`, IEC 62351-3 style): the server presents `tls.cert_file`/`tls.key_file`",
        "(or a self-signed certificate made on first start in `<state-dir>/tls/iec104-cert.pem`), and the",
        "controlling station must present a certificate that is pinned in `tls.client_certs` and/or issued by",
        "`tls.ca_file` (then its chain and validity are checked); one of the two is required. lib60870 prints its",
        "TLS handshake diagnostics on standard output (not through the controller's log).",
        "",
        "## Monitor direction",
        "",
        "Every point is sent on a general interrogation (C_IC_NA_1, cause 20 *interrogated by station*) and",
        "spontaneously (cause 3) when it moves past its deadband, when its quality changes, or (states) on any",
        "change. Values are refreshed from the controller's latest cycle (once per `cycle.period_s`), never",
        "from the devices directly.",
        "",
        "Quality descriptor: **IV** (invalid) while a value is unknown (before the first cycle, a site without",
        "a POI meter, no aFRR setpoint yet); **NT** (not topical) on values measured at the plant while a device",
        "has no fresh readings (the plant is then in its safe state, 0 MW).",
        "",
        f"### Measured values — {_TYPE_NAMES[MEASURED]}",
        "",
    ]
    out += _monitor_rows(monitored)
    out += ["", f"### States — {_TYPE_NAMES['M_SP_NA_1']}", ""]
    out += _monitor_rows(states)
    out += [""] + _control_section()
    out += _config_rows()
    return "\n".join(out) + "\n"


def _control_section() -> list[str]:
    """The control direction: the two commands and what they do."""
    setpoint, switch = COMMANDS
    return [
        "## Control direction",
        "",
        "| IOA | type | name | value | return information |",
        "|---|---|---|---|---|",
        f"| {setpoint.ioa} | {_TYPE_NAMES[setpoint.type]} | `{setpoint.name}` | MW, + up (discharge) | "
        "IOA 1010 (`afrr_setpoint_mw`), 2004 (`afrr_clamped`), 2002 (`afrr_following`) |",
        f"| {switch.ioa} | {_TYPE_NAMES[switch.type]} | `{switch.name}` | 1 on, 0 off | IOA 2001 (`fcr_on`) |",
        "",
        "Commands are direct execute (no select-before-operate), cause 6 *activation*; the station answers",
        "cause 7 *activation confirmation*, positive or negative (P/N bit). A positive confirmation means the",
        "command was taken for execution; what the plant does then shows in the return information, sent",
        "spontaneously at the next cycle. Negative: a value that is not a finite number, a read-only face, or a",
        "controller that is stopping.",
        "",
        "**aFRR setpoint** (IOA 3001). The operator's aFRR activation, sent about every 4 s. The plant adds it to",
        "its target (schedule + FCR + aFRR, `controller/services/stack.py`) and the sum passes every limit",
        "(SoC, temperature, BMS, ramp, grid) like any target. A setpoint beyond the offered band",
        "(`afrr_up_mw` upward, `afrr_down_mw` downward) is **clamped** to it and confirmed positively: IOA 1010",
        "reports the value taken and IOA 2004 goes to 1 until a setpoint inside the band comes. The aFRR part",
        "(IOA 1011) ramps toward the setpoint at `afrr_ramp_mw_per_min` (default: the larger band in 5 minutes,",
        "the product's full activation time). No setpoint for longer than `afrr_timeout_s`: the part ramps back",
        "to 0, IOA 2003 goes to 1 and the alarm `services:afrr_setpoint_timeout` is raised; the next setpoint",
        "clears both. IOA 1012/1013 report the aFRR the plant can give now: the offered band cut to the room the",
        "limits leave around the schedule (and the FCR band while FCR is on).",
        "",
        "**FCR switch** (IOA 3002). 1 switches FCR on, 0 off, as the operator API does (`services.fcr`). The",
        "controller refuses to switch it on without a POI meter or an FCR band in the site file; the state is",
        "always the one IOA 2001 reports. Each switch is recorded in the audit log and passes the SCADA faces'",
        "shared write rate limit.",
        "",
        "**Clock synchronisation** (C_CS_NA_1) is confirmed and ignored: the controller keeps the host's (NTP)",
        "time. Read commands (C_RD_NA_1) return the point's current value (cause 5 *request*).",
        "",
        "The same aFRR figures are in the status (`GET /api/bess-status` and `/ws`: `afrr {setpoint_mw, active_mw,",
        "band_up_mw, band_down_mw, following, timed_out, clamped, received}`, null without this face), the MQTT",
        "telemetry, and the metrics `bess_afrr_setpoint_mw`, `bess_afrr_active_mw`, `bess_afrr_setpoint_timeout`.",
        "The aFRR state is not kept across a restart: the plant starts with no aFRR part until the next setpoint.",
        "",
        "## Configuration (`scada.iec104`)",
        "",
    ]
