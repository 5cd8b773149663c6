"""The code's style is checked like its imports: `ruff check` (pyflakes, pycodestyle, import order) and
`ruff format --check` over the tree, with the settings in pyproject.toml, must pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_lint_passes():
    r = ruff("check", "--no-cache", ".")
    assert r.returncode == 0, f"ruff check found problems:\n{r.stdout}{r.stderr}"


def test_ruff_format_is_applied():
    r = ruff("format", "--no-cache", "--check", ".")
    assert r.returncode == 0, f"files not formatted (run `ruff format .`):\n{r.stdout}{r.stderr}"
