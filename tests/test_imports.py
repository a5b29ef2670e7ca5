"""Layering rules, read from the source with ``ast`` (nothing is imported):

* ``fsfm/`` is the ground floor: none of its modules imports ``training``, ``service``, ``benchmarks`` or
  ``fsfm_cli``, not even inside a function.
* ``service/`` runs without torch and never imports ``training``.
* No import cycle among the project's modules, counting the imports that run when a module is loaded
  (module level, class bodies, ``try``/``if`` blocks; not function bodies).

Imports under ``if TYPE_CHECKING:`` never run and are ignored. ``from package import name`` counts as an
import of ``package.name`` when that is a module of ours, else of ``package``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fsfm", "fsfm_cli", "training", "service", "benchmarks")
GENERATED = ("service/proto_gen",)  # protoc output, git-ignored


@dataclass(frozen=True)
class Import:
    target: str  # the project module imported
    line: int
    at_load: bool  # runs when the importing module is loaded (not inside a function)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT)
            if any(relative.as_posix().startswith(prefix) for prefix in GENERATED):
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node`` with whether it sits in a function, skipping the body (not the
    ``else``) of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.orelse:
                yield from _import_nodes(ast.Module(body=[statement], type_ignores=[]), in_function)
        else:
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _import_nodes(child, nested)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The project modules ``module`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node, in_function in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = _absolute(node, module, path.name == "__init__.py")
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.append(Import(name, node.lineno, not in_function))
    return found


def import_graph() -> dict[str, list[Import]]:
    modules = module_files()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            successor = next(stack[-1], None)
            if successor is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(successor) == 1:
                return [*path[path.index(successor) :], successor]
            elif not state.get(successor):
                state[successor] = 1
                path.append(successor)
                stack.append(iter(sorted(edges.get(successor, ()))))
    return None


def _violations(graph: dict[str, list[Import]], importer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module}:{imp.line} imports {imp.target}"
        for module, imports in graph.items()
        if module.split(".")[0] == importer
        for imp in imports
        if imp.target.split(".")[0] in forbidden
    ]


def test_the_graph_covers_every_package() -> None:
    graph = import_graph()
    assert {module.split(".")[0] for module in graph} == set(PACKAGES)
    assert any(imp.target == "training.pretrain" for imp in graph["training.commands"])  # function-level seen


def test_fsfm_imports_nothing_above_it() -> None:
    found = _violations(import_graph(), "fsfm", ("training", "service", "benchmarks", "fsfm_cli"))
    assert not found, "fsfm/ is the ground floor:\n" + "\n".join(found)


def test_service_never_imports_training() -> None:
    found = _violations(import_graph(), "service", ("training",))
    assert not found, "the service runs without training code:\n" + "\n".join(found)


def test_no_import_cycle() -> None:
    graph = import_graph()
    edges = {
        module: {imp.target for imp in imports if imp.at_load and imp.target in graph}
        for module, imports in graph.items()
    }
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_reports_the_path() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
