"""The package's layers, read from the source's own imports (ast): each module imports only from its own
layer or those below it, there is no import circle, and imports inside functions are where they keep the
CLI's start-up light or an optional dependency optional (a comment says so)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adderconvert"

# From the ground up; a module may import its own layer and the layers before it.
LAYERS = [
    (
        "adderconvert._libs",
        "adderconvert.nn",
        "adderconvert.data",
        "adderconvert.data_scenes",
        "adderconvert.data_formats",
        "adderconvert.metrics",
    ),
    ("adderconvert.conversion", "adderconvert.quantization"),
    ("adderconvert.architectures",),
    ("adderconvert.checkpoint",),
    ("adderconvert.train",),
    ("adderconvert.deploy",),
    ("adderconvert.app",),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an imported name lives in (``adderconvert.nn.AdderConv2d`` -> ``adderconvert.nn``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported adderconvert module, statement, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.extend((f"{child.module}.{a.name}", child, in_function) for a in child.names)
            visit(child, nested)

    visit(tree, False)
    return [(_resolve(n), stmt, inside) for n, stmt, inside in found if n.split(".")[0] == "adderconvert"]


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_every_module_has_a_layer():
    # The package's own __init__ is the public facade over the layers.
    assert [m for m in MODULES if m != "adderconvert" and _layer(m) is None] == []


@pytest.mark.parametrize("module", [m for m in MODULES if m != "adderconvert"])
def test_imports_point_downward(module):
    upward = [
        f"line {stmt.lineno}: {target}"
        for target, stmt, _ in _imports(MODULES[module])
        if target == "adderconvert" or _layer(target) > _layer(module)
    ]
    assert upward == [], f"{module} imports from a layer above it"


def test_no_import_circle():
    graph = {m: {t for t, _, _ in _imports(p) if t != m} for m, p in MODULES.items()}
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in MODULES:
        visit(module)


def test_imports_inside_functions_say_why():
    """Only the CLI defers imports wholesale (start-up time); elsewhere each deferred import carries a comment."""
    unexplained = []
    for module, path in MODULES.items():
        if module == "adderconvert.app.cli":
            continue
        lines = path.read_text().split("\n")
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for stmt in ast.walk(func):
                if isinstance(stmt, (ast.Import, ast.ImportFrom)) and "#" not in lines[stmt.lineno - 1]:
                    unexplained.append(f"{module} line {stmt.lineno}")
    assert sorted(set(unexplained)) == []


def test_the_cli_module_says_why_it_defers_imports():
    assert "start-up" in (PACKAGE / "app" / "cli.py").read_text()
