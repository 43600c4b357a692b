"""The package's module-level imports form no cycle (imports inside functions and ``if TYPE_CHECKING:`` blocks are
the sanctioned ways to reach upward lazily). Walked with ``ast``, without importing anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import certify

ROOT = Path(certify.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            found += _module_level(node.body) + _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            found += _module_level(node.body) + [i for h in node.handlers for i in _module_level(h.body)]
    return found


def imported(name: str, path: Path, modules: set[str]) -> set[str]:
    """The certify modules ``name`` imports at module level (``from a import b`` counts ``a.b`` when it is a
    module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _module_level(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        out |= {t for t in targets if t in modules and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imported(name, path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path a -> b -> ... -> a, or [] when there is none."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_walker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import certify.plugin\n"
                      "def f():\n    import certify.cli\nimport certify.errors\n", encoding="utf-8")
    assert imported("certify.m", module, {"certify.plugin", "certify.cli", "certify.errors"}) == {"certify.errors"}


@pytest.mark.parametrize(("module", "allowed"), [
    ("certify.plan.types", {"certify.errors", "certify.policy"}),  # the frozen plan types, below everything
    ("certify.verdict", {"certify.policy"}),
    ("certify.records", set()),
    ("certify.frameworks", set()),
    ("certify.gates.registry", {"certify.errors"}),  # gate modules are named, imported when a gate first runs
    ("certify.measure.worker", {"certify.errors", "certify.measure.memory", "certify.measure.batching",
                                "certify.measure.logprobs", "certify.measure.arrays",
                                "certify.plan.types"}),  # never a gate module
    ("certify.measure.arrays", set()),  # unpickled by workers on boards: a leaf
    ("certify.measure.batching", {"certify.errors", "certify.plan.types"}),  # the layout's one implementation
])
def test_the_bottom_layers_import_nothing_above_them(module: str, allowed: set[str]) -> None:
    assert import_graph()[module] <= allowed, import_graph()[module] - allowed
