"""The house style is checked, not hoped for: ruff, no import circle, short modules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("skmlp", "pipelines")
MAX_LINES = 500
# May import project modules inside functions: their --help and --cfg job start fast.
ENTRY_POINTS = {"pipelines.train", "pipelines.memorization", "pipelines.grid_search"}


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _modules():
    """``{dotted name: path}`` of every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _imported(tree, modules, nodes=None):
    """The project modules a module imports, anywhere in it (a function's body
    included: an import hidden there still closes a circle), or in ``nodes``."""
    found = set()
    for node in ast.walk(tree) if nodes is None else nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in modules else node.module for n in names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph():
    modules = _modules()
    return {
        name: _imported(ast.parse(path.read_text()), modules) - {name}
        for name, path in modules.items()
    }


def find_circle(graph):
    """One circle of imports as a list of modules (first == last), or None."""
    state = {}  # module -> "open" while on the path, "done" after

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return path[path.index(imported) :] + [imported]
            if imported not in state:
                circle = visit(imported, [*path, imported])
                if circle:
                    return circle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module, [module])
            if circle:
                return circle
    return None


def test_no_import_circle():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_project_modules_are_imported_at_the_top_but_by_entry_points():
    """An import inside a function hides a dependency (and once hid a circle);
    only the entry points defer theirs, for their start-up."""
    modules, hidden = _modules(), {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        inner = [node for node in ast.walk(tree) if node not in tree.body]
        found = _imported(tree, modules, inner)
        if found and name not in ENTRY_POINTS:
            hidden[name] = sorted(found)
    assert not hidden, f"project modules imported inside functions: {hidden}"


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_500_lines():
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
