"""`bess-edge trade add` (commissioning): validates, stores once, prints the ack as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from controller.clock import iso
from controller.store import Store

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "trade", "add", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_trade_add_stores_once_and_refuses_bad_fields(tmp_path):
    start = (int(time.time()) // 900 + 2) * 900
    common = ["--state-dir", str(tmp_path)]
    ok = run(
        *common,
        "--trade-id",
        "T-1",
        "--side",
        "sell",
        "--quantity-mw",
        "3",
        "--price-eur-mwh",
        "95.5",
        "--delivery-start",
        iso(start),
        "--delivery-end",
        iso(start + 900),
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"trade_id": "T-1", "accepted": True, "reason": "stored"}
    again = run(
        *common,
        "--trade-id",
        "T-1",
        "--side",
        "sell",
        "--quantity-mw",
        "3",
        "--delivery-start",
        iso(start),
        "--delivery-end",
        iso(start + 900),
    )
    assert again.returncode == 1
    assert json.loads(again.stdout)["accepted"] is False
    bad = run(
        *common,
        "--trade-id",
        "T-2",
        "--side",
        "buy",
        "--quantity-mw",
        "3",
        "--delivery-start",
        iso(start + 60),
        "--delivery-end",
        iso(start + 960),
    )
    assert bad.returncode == 2
    ack = json.loads(bad.stdout)
    assert ack["accepted"] is False and "delivery_start" in ack["reason"]
    not_json = run(*common, "--json", "{nope")
    assert not_json.returncode == 2 and "not JSON" in json.loads(not_json.stdout)["reason"]
    with Store.in_state_dir(tmp_path) as store:
        ids = [t["trade_id"] for t in store.trades()]
    assert ids == ["T-1"]
