"""`bess-edge backtest`: a two-day run through the CLI (the exchange simulator's engine and counterparties, the
battery model, the real pre-trade check and limit function, in one process) prints a table and ends with one
JSON line whose figures are consistent, with the optimiser ahead of the naive rule and perfect foresight ahead of
the optimiser; bad arguments are refused naming the argument."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("optimiser", "naive", "perfect")
FIGURES = (
    "pnl_eur",
    "cash_eur",
    "imbalance_eur",
    "degradation_eur",
    "stored_value_eur",
    "throughput_mwh",
    "equivalent_full_cycles",
    "limit_refusals",
    "orders_placed",
    "fills",
)


def backtest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "backtest", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_a_two_day_backtest_ranks_perfect_over_optimiser_over_naive():
    out = backtest("--days", "2", "--seed", "42")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert lines[0].split()[:2] == ["strategy", "PnL"] and any(line.startswith("optimiser") for line in lines)
    assert report["backtest"]["days"] == 2 and report["backtest"]["seed"] == 42
    assert set(report["strategies"]) == set(STRATEGIES)
    cap = report["backtest"]["capacity_mwh"]
    for name in STRATEGIES:
        r = report["strategies"][name]
        assert all(isinstance(r[k], (int, float)) and math.isfinite(r[k]) for k in FIGURES), r
        # the net is its parts; wear is throughput at the configured cost; cycles are throughput over 2 x capacity
        parts = r["cash_eur"] + r["imbalance_eur"] - r["degradation_eur"] + r["stored_value_eur"]
        assert abs(r["pnl_eur"] - parts) < 0.01, r
        assert abs(r["degradation_eur"] - r["throughput_mwh"] * report["backtest"]["degradation_eur_mwh"]) < 0.01
        assert abs(r["equivalent_full_cycles"] - r["throughput_mwh"] / (2 * cap)) < 0.001
        assert 0 <= r["soc_pct_end"] <= 100
    opt, naive, perfect = (report["strategies"][k] for k in STRATEGIES)
    assert opt["fills"] > 0 and opt["throughput_mwh"] > 0, "the optimiser never traded"
    assert opt["pnl_eur"] >= naive["pnl_eur"], (opt["pnl_eur"], naive["pnl_eur"])
    assert perfect["pnl_eur"] >= opt["pnl_eur"], (perfect["pnl_eur"], opt["pnl_eur"])
    assert report["optimiser_beats_naive"] is True
    assert 0 < report["optimiser_to_perfect_ratio"] <= 1
    assert perfect["limit_refusals"] == 0 and perfect["plan_failures"] == 0


def test_bad_arguments_are_refused_naming_them():
    out = backtest("--days", "0", "--counterparties", "0", "--start", "monday", "--plan-degradation-eur-mwh", "-1")
    assert out.returncode == 2
    for name in ("--days", "--counterparties", "--start", "--plan-degradation-eur-mwh"):
        assert name in out.stderr, out.stderr
