"""``callbacks=progress``: scikit-learn's progress bar beside the per-epoch log lines,
in the setting where it is most likely to break: no terminal (captured output) and
Hydra's joblib launcher (each job in a worker process, with its own log file)."""

from pathlib import Path

import pytest
from helpers import run_entry_point, runs_of

BAR = "SGDMLPClassifier - fit"


@pytest.mark.slow
def test_progress_bar_in_a_parallel_sweep_without_a_terminal(store, tmp_path):
    uri, env = store
    result = run_entry_point(
        "pipelines.train",
        [
            "-m",
            "hydra/launcher=parallel",
            "callbacks=progress",
            "data=digits",
            "model.max_iter=2",
            "model.tol=0",
            "tracking.log_model=false",
            "tracking.experiment_name=progress",
            "model.activation=relu,tanh",
        ],
        env,
        tmp_path,
    )
    bars = [line for line in result.stdout.splitlines() if BAR in line]
    assert len(bars) == 2 and all("100%" in bar for bar in bars), result.stdout
    logs = sorted(Path(tmp_path, "multirun").glob("train/*/*/[01]/train.log"))
    assert len(logs) == 2
    for log in logs:  # Hydra's log file holds the epoch lines, not the bar
        text = log.read_text()
        assert "epoch 1/2" in text and "epoch 2/2" in text
        assert BAR not in text
    _, runs = runs_of(uri, "progress")
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert sorted(run.info.status for run in children) == ["FINISHED"] * 2
