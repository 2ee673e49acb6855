"""The package's shape (../shared/DESIGN.md): no import circle, no function-local distil import hiding one, small
files, and every task unit declaring the same sections in the same order."""

from __future__ import annotations

import ast
from pathlib import Path

from distil.tasks import TASKS

SRC = Path(__file__).resolve().parent.parent / "src" / "distil"
SECTIONS = ["# 1. data", "# 2. model", "# 3. teacher signal", "# 4. KD term", "# 5. metric", "# 6. serving"]


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    graph: dict[str, set[str]] = {}
    local: list[str] = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        name = _module(path)
        graph[name] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distil"):
                graph[name].add(node.module)
                graph[name].update(f"{node.module}.{a.name}" for a in node.names)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("distil"):
                        local.append(f"{name}.{node.name}: from {inner.module} import ...")
    return {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}, local


def test_no_import_circle():
    graph, _ = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_function_local_distil_import():
    _, local = _graph()
    assert local == []


def test_files_stay_near_500_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 530}
    assert long == {}


def test_every_task_file_has_the_six_sections_in_order():
    for task in TASKS.values():
        text = Path(__import__(task.__module__, fromlist=["x"]).__file__).read_text(encoding="utf-8")
        positions = [text.find(section) for section in SECTIONS]
        assert -1 not in positions and positions == sorted(positions), task.__module__
