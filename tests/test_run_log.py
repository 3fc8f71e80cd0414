"""Progress of a run: one log line per epoch, kept in Hydra's log file; and quiet."""

import os
import subprocess
import sys

import pytest

ARGS = ["data=digits", "model.max_iter=3", "model.tol=0", "tracking.log_model=false"]


def _train(tmp_path, *extra):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    env.pop("SKMLP_PARENT_RUN_ID", None)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.train", *ARGS, *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_each_epoch_is_a_log_line_in_the_console_and_the_log_file(tmp_path):
    console = _train(tmp_path)
    (log_file,) = (tmp_path / "outputs" / "train").glob("*/*/train.log")
    logged = log_file.read_text()
    for text in (console, logged):
        for epoch in (1, 2, 3):
            assert f"epoch {epoch}/3: loss " in text
        assert "test_accuracy 0." in text and "test accuracy" in text


@pytest.mark.parametrize(
    "quiet", [["~callbacks.log_epoch"], ["hydra/job_logging=disabled"]]
)
def test_progress_can_be_silenced(tmp_path, quiet):
    console = _train(tmp_path, *quiet)
    assert "epoch 1/3" not in console
