"""No function (or method, or nested function) in the shipped packages is longer than 80 lines, counted from
its `def` line to its last line (ast lineno..end_lineno): a long function is a seam not yet found (issue 12).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("controller", "drivers", "simulators", "web")
MAX_LINES = 80


def _long_functions() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        out.append(f"{path.relative_to(ROOT)}:{node.name}:{lines}")
    return out


def test_the_packages_are_there():
    # a wrong ROOT would walk nothing and pass: make sure the walk sees the code
    assert all((ROOT / package / "__init__.py").is_file() for package in PACKAGES)


def test_no_function_is_over_80_lines():
    long = _long_functions()
    assert not long, f"functions over {MAX_LINES} lines (file:function:lines): " + ", ".join(long)
