"""Register-range scan for devices without SunSpec: ranges read in safe chunks (at most 125 registers), a chunk
that answers with a Modbus exception halved down to single registers, and an address that answers with an
exception skipped; the result drafts a skeleton profile of raw registers for the engineer to name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from controller.probe.draft import Draft, flow
from controller.probe.modbus_link import ModbusLink, ProbeTarget, exception_text
from drivers.errors import ModbusError
from drivers.modbus import MAX_REGISTERS

READ_GAP = 8  # drivers.modbus.plan_reads' default max_gap: unused registers a read may span
FUNCTIONS = ("holding", "input", "coil", "discrete")
_RANGE = re.compile(r"^(holding|input|coil|discrete):(\d+)(?:-(\d+))?$")


def parse_ranges(spec: str) -> list[tuple[str, int, int]]:
    """'holding:0-999,input:0-199' -> [(function, first, last)] (inclusive); ValueError names the bad part."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(
                f"--registers: {part!r} is not FUNCTION:FIRST-LAST (function one of {', '.join(FUNCTIONS)})"
            )
        fn, first = m.group(1), int(m.group(2))
        last = int(m.group(3)) if m.group(3) is not None else first
        if not first <= last <= 65535:
            raise ValueError(f"--registers: {part!r}: need FIRST <= LAST <= 65535")
        out.append((fn, first, last))
    return out


@dataclass
class RegisterScan:
    target: ProbeTarget
    values: dict[tuple[str, int], int] = field(default_factory=dict)  # (function, address) -> raw
    skipped: list[tuple[str, int, int, str]] = field(default_factory=list)  # function, first, last, why
    error: str | None = None

    def as_json(self) -> dict:
        return {
            "unit_id": self.target.unit_id,
            "error": self.error,
            "registers": [{"function": f, "address": a, "value": v} for (f, a), v in sorted(self.values.items())],
            "skipped": [{"function": f, "first": a, "last": b, "why": w} for f, a, b, w in self.skipped],
        }


async def scan_registers(link: ModbusLink, ranges: list[tuple[str, int, int]]) -> RegisterScan:
    """Read every range; a NoAnswer (the unit stopped answering) propagates to the caller."""
    scan = RegisterScan(link.target)
    for fn, first, last in ranges:
        address = first
        while address <= last:
            count = min(MAX_REGISTERS, last + 1 - address)
            await _read_chunk(link, scan, fn, address, count)
            address += count
    _merge_skipped(scan)
    return scan


async def _read_chunk(link: ModbusLink, scan: RegisterScan, fn: str, address: int, count: int) -> None:
    try:
        regs = await link.read(fn, address, count)  # type: ignore[arg-type]
    except ModbusError as e:
        if count == 1:
            scan.skipped.append((fn, address, address, exception_text(e.code)))
            return
        half = count // 2
        await _read_chunk(link, scan, fn, address, half)
        await _read_chunk(link, scan, fn, address + half, count - half)
        return
    for i, r in enumerate(regs[:count]):
        scan.values[(fn, address + i)] = r


def _merge_skipped(scan: RegisterScan) -> None:
    """Neighbouring skipped addresses with the same answer become one range."""
    merged: list[tuple[str, int, int, str]] = []
    for fn, a, b, why in sorted(scan.skipped, key=lambda s: (FUNCTIONS.index(s[0]), s[1])):
        if merged and merged[-1][0] == fn and merged[-1][3] == why and merged[-1][2] + 1 == a:
            merged[-1] = (fn, merged[-1][1], b, why)
        else:
            merged.append((fn, a, b, why))
    scan.skipped = merged


def draft_registers(scan: RegisterScan) -> Draft:
    """A skeleton profile: one u16 point per readable register (a bit per coil/discrete), named by function and
    address, its raw value in a comment, for the engineer to name, type, scale and prune."""
    t = scan.target
    draft = Draft("unknown", "")
    lines = []
    for (fn, a), v in sorted(scan.values.items(), key=lambda kv: (FUNCTIONS.index(kv[0][0]), kv[0][1])):
        name = f"{fn}_{a:05d}"
        entry = {"address": a, "function": fn, "type": "u16"}
        if fn in ("holding", "input"):
            entry["invalid_values"] = []
        signed = v - 0x10000 if v & 0x8000 else v
        raw = f"raw {v}" if fn in ("coil", "discrete") else f"raw {v} (0x{v:04X}, signed {signed})"
        lines.append(f"  {name}: {flow(entry)}   # {raw}")
        draft.found[name] = f"{fn} {a}"
    site = flow(
        {
            "role": "ROLE",
            "protocol": "modbus",
            "host": t.host,
            "port": t.port,
            "unit_id": t.unit_id,
            "profile": "THIS-FILE.yaml",
        }
    )
    head = [
        f"# Skeleton profile written by `bess-edge probe --registers` from {t.where}: raw registers, to be",
        "# named (soc_pct, power_mw ...), typed (i16, u32, f32 ...), scaled (scale, unit) and pruned by the engineer.",
        "# invalid_values: [] keeps every raw value; set the device's 'no value' markers when you know them.",
    ]
    head += [f"# skipped {fn} {a}-{b}: {why}" for fn, a, b, why in scan.skipped]
    narrow = [
        f"{fn} {a}-{b}"
        for fn, a, b, _ in scan.skipped
        if b - a + 1 <= READ_GAP and (fn, a - 1) in scan.values and (fn, b + 1) in scan.values
    ]
    if narrow:
        draft.checks.append(
            f"the driver reads across gaps of up to {READ_GAP} registers in one request, and this "
            f"device refuses reads that touch {', '.join(narrow)}: keep points on one side of each"
        )
    head += [f"# CHECK: {c}" for c in draft.checks]
    head += ["# In the site file:", f"#   DEVICE: {site}"]
    body = [
        "name: draft-registers",
        "vendor: unknown",
        "protocol: modbus",
        "word_order: big",
        f"description: {flow(['Raw registers of ' + t.where])[1:-1]}",
        "points:" if lines else "points: {}",
    ]
    draft.text = "\n".join(head + body + lines) + "\n"
    draft.profile  # noqa: B018 - validates the skeleton
    return draft
