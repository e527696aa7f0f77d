"""The package layers: no import cycle between packages, no import from a lower layer to a higher one.

Layers, lowest first (a module may import its own layer and the ones below):

0. shared building blocks: ``benchmark.features``, ``benchmark.data``, ``benchmark.models`` and the small
   utility modules (``atomic``, ``safepath``, ``manifest``, ``device``, ``yamlfile``, ``precision``, ``plugins``)
1. stages: ``attacks``, ``benchmark.embed``, ``benchmark.search``, ``benchmark.defences``
2. report rendering: ``benchmark.report`` (reads stage outputs, renders tables, plots and pages)
3. workflows: ``benchmark.workflows`` (run, demo, defend, transfer, verify, mask-detector training, LFW check)
4. the command line: ``benchmark.cli`` and every ``cli.py`` / ``*_cli.py`` module (argparse wrappers), and
   the package facade ``benchmark/__init__.py`` (``benchmark.evaluate``)

Every import counts: module level and inside functions, absolute and relative.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "attacks")
LAYERS: dict[str, int] = {
    "benchmark.features": 0,
    "benchmark.data": 0,
    "benchmark.models": 0,
    "benchmark.atomic": 0,
    "benchmark.safepath": 0,
    "benchmark.manifest": 0,
    "benchmark.device": 0,
    "benchmark.yamlfile": 0,
    "benchmark.precision": 0,
    "benchmark.plugins": 0,
    "attacks": 1,
    "benchmark.embed": 1,
    "benchmark.search": 1,
    "benchmark.defences": 1,
    "benchmark.report": 2,
    "benchmark.workflows": 3,
    "cli": 4,
    "benchmark": 4,  # the package facade: benchmark.evaluate (nothing imports the bare package)
}


def module_name(path: Path) -> str:
    """Dotted module name of a source file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """The layer unit of a module: ``cli`` for command-line modules (and ``__main__``), else its sub-package (or root module)."""
    last = module.rsplit(".", 1)[-1]
    if last in ("cli", "__main__") or last.endswith("_cli"):
        return "cli"
    parts = module.split(".")
    if parts[0] == "attacks":
        return "attacks"
    return ".".join(parts[:2])


def imports_of(path: Path) -> set[str]:
    """Every ``benchmark``/``attacks`` module imported anywhere in ``path`` (relative imports resolved)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from benchmark.search import engine`` imports the module benchmark.search.engine
            names = [f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """Module → the modules it imports, for every source file of the packages."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): imports_of(p) for p in sorted(files)}


def layer(module: str) -> int:
    u = unit(module)
    if u not in LAYERS:
        pytest.fail(f"{module}: package {u} has no layer in tests/test_layering.py; add it to LAYERS")
    return LAYERS[u]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` (as a closed path), or None."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if colour.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(edges):
        if colour.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "benchmark.workflows.run" in graph
    # ``from ..report.build import build_report`` inside run_pipeline
    assert "benchmark.report.build" in graph["benchmark.workflows.run"]
    # ``from benchmark.search import distributed, engine, identity`` names modules, not attributes
    assert "benchmark.search.engine" in graph["benchmark.search.run"]


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = []
    for module, targets in import_graph().items():
        for target in sorted(targets):
            if layer(target) > layer(module):
                bad.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert not bad, "imports that go up the layers:\n  " + "\n  ".join(bad)


def test_no_import_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        for target in targets:
            if unit(target) != unit(module):
                edges.setdefault(unit(module), set()).add(unit(target))
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle between packages: " + " → ".join(cycle)


def test_every_internal_import_names_an_existing_module():
    """A moved module leaves no import behind that points at its old place (function-level ones included)."""
    missing = []
    for module, targets in import_graph().items():
        for target in sorted(targets):
            if not _is_module(target):
                missing.append(f"{module} imports {target}")
    assert not missing, "imports of modules that do not exist:\n  " + "\n  ".join(missing)


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
