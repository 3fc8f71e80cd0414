"""Progress of a run: one log line per epoch, kept in Hydra's log file; and quiet."""

import pytest
from helpers import run_entry_point

ARGS = ["data=digits", "model.max_iter=3", "model.tol=0", "tracking.log_model=false"]


def _train(store, tmp_path, *extra):
    result = run_entry_point("pipelines.train", [*ARGS, *extra], store[1], tmp_path)
    return result.stdout + result.stderr


def test_each_epoch_is_a_log_line_in_the_console_and_the_log_file(store, tmp_path):
    console = _train(store, tmp_path)
    (log_file,) = (tmp_path / "outputs" / "train").glob("*/*/train.log")
    logged = log_file.read_text()
    for text in (console, logged):
        for epoch in (1, 2, 3):
            assert f"epoch {epoch}/3: loss " in text
        assert "test_accuracy 0." in text and "test accuracy" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "quiet",
    [["~callbacks.log_epoch"], ["hydra/job_logging=disabled"], ["console=quiet"]],
)
def test_progress_can_be_silenced(store, tmp_path, quiet):
    console = _train(store, tmp_path, *quiet)
    assert "epoch 1/3" not in console
