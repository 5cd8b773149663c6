"""What every probe mode hands the engineer: the drafted profile written to --out (never over an existing file
unless --force) or printed after the table, and the draft's summary (lacking points, checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.probe.draft import Draft


def deliver(draft: Draft, path: Path | None, force: bool, doc: dict[str, Any], as_json: bool) -> str | None:
    """Write the draft to `path` (or print it after the table); returns an error text, None when done."""
    if path is None:
        if not as_json:
            print(f"--- draft {draft.role} profile ---\n{draft.text}", end="")
        return None
    if path.exists() and not force:
        return f"{path} exists (say --force to overwrite it)"
    path.write_text(draft.text)
    doc["profile_file"] = str(path)
    if not as_json:
        print(f"draft {draft.role} profile written to {path}")
    return None


def print_draft_summary(draft: Draft) -> None:
    print(f"role {draft.role}: {len(draft.found)} points drafted")
    for name, why in draft.lacking.items():
        print(f"  LACKING {name}: {why}")
    for c in draft.checks:
        print(f"  CHECK {c}")
