"""The pipeline's sklearn callbacks on a real SGDMLPClassifier fit (digits, few epochs)."""

import logging
import warnings

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sklearn.exceptions import ConvergenceWarning

from pipelines.callbacks import (
    EpochLog,
    EpochScoring,
    MLflowEpochLogger,
    StopAt,
    _EpochCallback,
)
from skmlp import SGDMLPClassifier


def _fit(digits, *callbacks, max_iter=5, **params):
    X, y = digits
    model = SGDMLPClassifier(
        hidden_layer_sizes=(16,), max_iter=max_iter, tol=0, random_state=0, **params
    )
    model.set_callbacks(*callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached
        return model.fit(X, y)


def test_scoring_records_each_epoch_once(digits):
    X, y = digits
    scoring = EpochScoring({"train": (X, y)})
    model = _fit(digits, scoring, max_iter=4)
    assert [s.epoch for s in scoring.history] == [1, 2, 3, 4]
    assert [s.metrics["loss"] for s in scoring.history] == model.loss_curve_
    final = scoring.history[-1].metrics["train_accuracy"]
    assert final == pytest.approx(model.score(X, y))


def test_stop_at_ends_training_at_the_threshold(digits):
    X, y = digits
    scoring = EpochScoring({"train": (X, y)})
    model = _fit(digits, scoring, StopAt(scoring, "train_accuracy", 0.8), max_iter=200)
    accuracies = [s.metrics["train_accuracy"] for s in scoring.history]
    assert accuracies[-1] >= 0.8 > max(accuracies[:-1])
    assert model.n_iter_ == len(accuracies) < 200


def test_stop_at_names_a_missing_metric(digits):
    scoring = EpochScoring({})
    with pytest.raises(ValueError, match="no metric 'val_accuracy'"):
        _fit(digits, scoring, StopAt(scoring, "val_accuracy", 0.5), max_iter=2)


def test_mlflow_logger_logs_what_scoring_recorded(digits, tmp_path):
    X, y = digits
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    scoring = EpochScoring({"test": (X[:100], y[:100])})
    with mlflow.start_run() as run:
        _fit(digits, scoring, MLflowEpochLogger(scoring), max_iter=3)
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (s.epoch, s.metrics["test_accuracy"]) for s in scoring.history
    ]


def test_mlflow_loggers_of_two_runs_log_to_their_own_runs(digits, tmp_path):
    """Loggers given a run id each (a grid's members, none of them MLflow's active
    run) write each their own scores to their own run."""
    X, y = digits
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(client.tracking_uri)
    experiment_id = client.create_experiment("two")
    runs = [client.create_run(experiment_id).info.run_id for _ in range(2)]
    for run_id, rows in zip(runs, (slice(0, 50), slice(50, 150)), strict=True):
        scoring = EpochScoring({"test": (X[rows], y[rows])})
        _fit(digits, scoring, MLflowEpochLogger(scoring, run_id=run_id), max_iter=2)
        history = client.get_metric_history(run_id, "test_accuracy")
        assert [(m.step, m.value) for m in history] == [
            (s.epoch, s.metrics["test_accuracy"]) for s in scoring.history
        ]
    assert mlflow.active_run() is None


class InterruptAt(_EpochCallback):
    """Ctrl-C at the end of epoch ``epoch`` (after the callbacks before it ran)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_fit_task_end(self, estimator, context, **kwargs):
        if context.task_name == "epoch" and context.task_id == self.epoch - 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize("flush_seconds", [0.0, 3600.0])
def test_mlflow_logger_writes_every_epoch_before_an_interruption(
    digits, tmp_path, flush_seconds
):
    """Batched or not, the epochs scored before Ctrl-C are in the store."""
    X, y = digits
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    scoring = EpochScoring({"test": (X[:100], y[:100])})
    logger = MLflowEpochLogger(scoring, flush_seconds=flush_seconds)
    with mlflow.start_run() as run, pytest.raises(KeyboardInterrupt):
        _fit(digits, scoring, logger, InterruptAt(4), max_iter=10)
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "loss")
    assert (
        [m.step for m in history] == [1, 2, 3, 4] == [s.epoch for s in scoring.history]
    )


class StoreWatcher(_EpochCallback):
    """Records, at the end of each epoch, how many epochs of ``loss`` the store has."""

    def __init__(self, client, run_id):
        self.client, self.run_id, self.seen = client, run_id, []

    def on_fit_task_end(self, estimator, context, **kwargs):
        if context.task_name == "epoch":
            history = self.client.get_metric_history(self.run_id, "loss")
            self.seen.append(len(history))
        return False


@pytest.mark.parametrize(("flush_seconds", "live"), [(0.0, True), (3600.0, False)])
def test_mlflow_logger_writes_at_most_flush_seconds_late(
    digits, tmp_path, flush_seconds, live
):
    X, y = digits
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    scoring = EpochScoring({"test": (X[:100], y[:100])})
    logger = MLflowEpochLogger(scoring, flush_seconds=flush_seconds)
    with mlflow.start_run() as run:
        watcher = StoreWatcher(MlflowClient(uri), run.info.run_id)
        _fit(digits, scoring, logger, watcher, max_iter=3)
    assert watcher.seen == ([1, 2, 3] if live else [0, 0, 0])
    assert len(watcher.client.get_metric_history(run.info.run_id, "loss")) == 3


def test_mlflow_logger_without_a_run_says_so(digits, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    scoring = EpochScoring({})
    with pytest.raises(RuntimeError, match="no MLflow run to log to"):
        _fit(digits, scoring, MLflowEpochLogger(scoring), max_iter=2)
    assert mlflow.active_run() is None


def test_epoch_log_writes_one_line_per_epoch(digits, caplog):
    X, y = digits
    scoring = EpochScoring({"test": (X, y)})
    with caplog.at_level(logging.INFO, logger="pipelines.callbacks"):
        _fit(digits, scoring, EpochLog(scoring), max_iter=3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[2].startswith("epoch 3/3: loss ") and "test_accuracy 0." in lines[2]
