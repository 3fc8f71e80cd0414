"""What a pipeline run imports: only what it uses (start-up is part of every run); what a
sweep's job waits for, and that what it no longer waits for still lands in the store."""

import subprocess
import sys
from pathlib import Path

import pipelines.run as run_module

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


# ----------------------------------------------------------------------------------
# A sweep's per-job cost (issue 20, item 1): what each job no longer waits for, and
# that nothing is lost by it.


def test_a_process_checks_and_reaps_a_store_once(store, monkeypatch):
    # A basic launcher's sweep runs every job in one process; each job used to check
    # the store and search it for dead runs again.
    uri, _ = store
    calls = []
    check = run_module.check_store
    monkeypatch.setattr(
        run_module, "check_store", lambda u: calls.append(u) or check(u)
    )
    monkeypatch.setattr(run_module, "_CHECKED", set())
    for _ in range(3):
        run_module.open_checked(uri)
    assert calls == [uri]
