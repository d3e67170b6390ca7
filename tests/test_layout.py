"""The shape of ``utils/`` that issue 24 asked for, kept: a package per stage plus a few shared packages, few flat
modules, no module too long to read top to bottom, and no import cycle at import time."""

from __future__ import annotations

import ast
from pathlib import Path

UTILS = Path(__file__).resolve().parents[1] / "utils"
MAX_FLAT_MODULES = 3  # cross-cutting modules at the top of utils/ besides __init__.py (today: params.py)
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(UTILS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(UTILS.rglob("*.py"))}


def import_time_edges(path: Path, known: set[str]) -> set[str]:
    """The kit's modules that ``path`` imports when it is imported: module-level statements only (an import inside a
    function runs later, which is how a module may lazily use one that imports it), ``if TYPE_CHECKING`` blocks left out."""
    edges: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            names: list[str] = []
            if isinstance(sub, ast.Import):
                names = [a.name for a in sub.names]
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                names = [sub.module] + [f"{sub.module}.{a.name}" for a in sub.names]
            for name in names:
                # importing a.b.c runs a, a.b and a.b.c
                parts = name.split(".")
                edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    edges.discard(module_name(path))
    return edges


def test_utils_top_level_holds_packages_and_few_flat_modules():
    flat = sorted(p.name for p in UTILS.glob("*.py") if p.name != "__init__.py")
    packages = sorted(p.name for p in UTILS.iterdir() if (p / "__init__.py").is_file())
    assert len(flat) <= MAX_FLAT_MODULES, f"utils/ has {len(flat)} flat modules {flat}: put them in a package"
    for stage in ("explore", "sft", "reward", "ppo", "dpo", "rloo", "evaluate"):
        assert stage in packages, f"utils/{stage}/ is missing"
        assert (UTILS / stage / "params.py").is_file() and (UTILS / stage / "stage.py").is_file(), stage


def test_no_module_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycle_at_import_time():
    mods = modules()
    graph = {name: import_time_edges(path, set(mods)) for name, path in mods.items()}
    # every package imports its parent packages' __init__ first: those edges are Python's, not a cycle of ours
    graph = {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert len(state) == len(mods) > 50
