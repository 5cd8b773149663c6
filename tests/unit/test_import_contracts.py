"""The layers import one way: `lint-imports` keeps every contract in pyproject.toml ([tool.importlinter]), and
the import graph of our four packages, read from the source (every import, at any depth), has no cycle."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("controller", "drivers", "simulators", "web")


def test_lint_imports_keeps_every_contract() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    # lint-imports reads pyproject.toml from the working directory and imports nothing of ours: it reads the
    # source, so this takes a second or two
    out = subprocess.run(cmd + ["--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"lint-imports broke a contract:\n{out.stdout}\n{out.stderr}"


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports (a `from package import name` counts as the submodule)."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in map(resolve, targets) if t and t != name)
    return out


def test_the_import_graph_has_no_cycle() -> None:
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    done: set[str] = set()
    path: list[str] = []

    def visit(m: str) -> list[str] | None:  # depth-first; a module met again on the current path is a cycle
        if m in path:
            return path[path.index(m) :] + [m]
        if m in done:
            return None
        path.append(m)
        for t in sorted(graph[m]):
            if (cycle := visit(t)) is not None:
                return cycle
        path.pop()
        done.add(m)
        return None

    for m in sorted(graph):
        cycle = visit(m)
        assert cycle is None, "import cycle: " + " -> ".join(cycle)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 150  # it read the real tree
