"""What a pipeline run imports: only what it uses (start-up is part of every run)."""

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
