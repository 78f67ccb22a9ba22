"""The trainer package has no import cycle: `context` builds, `train`, `eval`
and `export` use it, and none of them imports another one's CLI back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "l2rec_train"


def _graph() -> dict[str, set[str]]:
    graph = {}
    for file in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
        graph[file.stem] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                return path[path.index(dep) :] + [dep]
            if dep not in done:
                found = visit(dep, path + [dep])
                if found:
                    return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [module])
        if found:
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert {"context", "train", "export", "eval"} <= graph.keys()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
