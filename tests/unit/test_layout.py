"""The house rules, checked on the source: imports point one way, no import cycle, small functions and
modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("llie", "llie_cli", "flows", "tasks", "deployments", "benchmarks")
# a package may import those listed after it in this order, never those before it
LAYERS = ("llie_cli", "deployments", "flows", "tasks", "llie")
MAX_FUNCTION_LINES, MAX_PARAMETERS, MAX_MODULE_LINES = 60, 6, 600


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module name an import in the file names (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


MODULES = _modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def test_imports_point_one_way():
    wrong = []
    for name, imported in IMPORTS.items():
        top = name.split(".")[0]
        if top not in LAYERS:
            continue
        above = set(LAYERS[: LAYERS.index(top)]) | ({"prefect", "prefect_dask"} if top == "llie" else set())
        wrong += [f"{name} imports {i}" for i in sorted(imported) if i.split(".")[0] in above]
    assert not wrong, wrong


def test_no_import_cycle():
    graph = {name: {i for i in imported if i in MODULES and i != name} for name, imported in IMPORTS.items()}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            # a package's __init__ that gathers its modules is not a cycle of theirs
            if len(component) > 1 and not any(MODULES[m].name == "__init__.py" for m in component):
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def _is_click_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    def named(d: ast.expr) -> str:
        d = d.func if isinstance(d, ast.Call) else d
        return d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", "")

    return any(named(d) in ("command", "group", "option", "argument") for d in node.decorator_list)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_functions_and_modules_stay_small(name):
    source = MODULES[name].read_text()
    too_big = []
    if len(source.splitlines()) > MAX_MODULE_LINES:
        too_big.append(f"{len(source.splitlines())} lines in the module")
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or _is_click_command(node):
            continue
        args = node.args
        parameters = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
        count = len(parameters) + bool(args.vararg) + bool(args.kwarg)
        length = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
        if length > MAX_FUNCTION_LINES or count > MAX_PARAMETERS:
            too_big.append(f"{node.name} (line {node.lineno}): {length} lines, {count} parameters")
    assert not too_big, too_big
