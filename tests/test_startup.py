"""What a pipeline run imports: only what it uses (start-up is part of every run)."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_runs_library_imports_no_pyplot_skops_or_torch():
    # pyplot brings the GUI backend machinery (figures use Figure + Agg); skops walks
    # every scikit-learn module (models are saved with cloudpickle); torch is for
    # device=torch:* only. Each costs seconds of every run's start-up.
    code = (
        "import sys, pipelines.training, pipelines.data, pipelines.tracking, "
        "mlflow.sklearn; "
        "print(sorted({'matplotlib.pyplot', 'skops', 'torch'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


ENTRY_POINTS = {"train", "memorization", "grid_search"}


def _imports(path):
    """The ``pipelines`` modules ``path`` imports: at its top, and inside functions."""
    tree = ast.parse(path.read_text())
    top, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found = {name for name in names if name.startswith("pipelines.")}
        found = {
            name
            for name in found
            if (ROOT / Path(*name.split("."))).with_suffix(".py").exists()
        }
        (top if node in tree.body else inner).update(found)
    return top, inner


def test_the_pipelines_import_no_circle_and_hide_none_in_functions():
    """Imports inside functions only in the entry points (their start-up), and the
    graph of all imports between the pipelines' modules has no cycle."""
    graph = {}
    for path in sorted((ROOT / "pipelines").glob("*.py")):
        top, inner = _imports(path)
        if path.stem not in ENTRY_POINTS:
            assert not inner, f"{path.name} imports {sorted(inner)} inside a function"
        graph[f"pipelines.{path.stem}"] = top | inner
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises on a cycle
    assert "pipelines.store" in order
