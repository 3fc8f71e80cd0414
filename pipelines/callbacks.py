"""sklearn callbacks for a pipeline's training run, one job each.

``EpochScoring`` scores the model after every epoch and keeps the only record of those
scores; the others read that record: ``MLflowEpochLogger`` logs it, ``EpochLog`` writes
one log line per epoch, ``StopAt`` ends training once a score reaches a threshold. They
follow the ``sklearn.callback`` protocol, so the estimator knows nothing of MLflow.
"""

import logging
import time
from dataclasses import dataclass, field

import mlflow
from mlflow.entities import Metric

from pipelines.device import accuracy

log = logging.getLogger(__name__)


@dataclass
class EpochScores:
    """What ``EpochScoring`` measured after one epoch.

    ``metrics`` maps names to values: ``loss``, ``seconds`` (the epoch's training
    time), ``early_stopping_score`` (with early stopping) and ``<set>_accuracy`` for
    each evaluation set.
    """

    epoch: int
    metrics: dict = field(default_factory=dict)


class _EpochCallback:
    """No-op hooks of the ``sklearn.callback`` protocol; subclasses override some."""

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context):
        pass

    def on_fit_task_end(self, estimator, context):
        return False


class EpochScoring(_EpochCallback):
    """Accuracy on each evaluation set after each epoch, with the epoch's loss and time.

    Parameters
    ----------
    eval_sets : dict of name -> (X, y)
        Inputs as the classifier sees them (already preprocessed) and their labels.

    Attributes
    ----------
    history : list of EpochScores
        One entry per completed epoch of the current fit; an epoch that diverged and
        was undone by the estimator leaves no entry.
    """

    def __init__(self, eval_sets):
        self.eval_sets = eval_sets
        self.history = []
        self._start = None

    def setup(self, estimator, context):
        self.history = []

    def on_fit_task_begin(self, estimator, context):
        if context.task_name == "epoch":
            self._start = time.perf_counter()

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None):
        if context.task_name != "epoch" or fitted_estimator is None:
            return False
        seconds = time.perf_counter() - self._start
        epoch = len(fitted_estimator.loss_curve_)  # n_iter_ restarts per warm fit
        if epoch == 0 or (self.history and self.history[-1].epoch == epoch):
            return False  # a diverged epoch was undone: nothing new
        metrics = {"loss": float(fitted_estimator.loss_curve_[-1]), "seconds": seconds}
        if fitted_estimator.validation_scores_:
            metrics["early_stopping_score"] = float(
                fitted_estimator.validation_scores_[-1]
            )
        for name, (X, y) in self.eval_sets.items():
            predicted = fitted_estimator.predict(X)
            metrics[f"{name}_accuracy"] = accuracy(predicted, y)  # on the device
        self.history.append(EpochScores(epoch, metrics))
        return False


class _ReadsScores(_EpochCallback):
    """A callback acting on the newest entry of an ``EpochScoring``'s history, once."""

    def __init__(self, scoring):
        self.scoring = scoring
        self._seen = 0

    def setup(self, estimator, context):
        self._seen = 0

    def on_fit_task_end(self, estimator, context):
        history = self.scoring.history
        if context.task_name != "epoch" or not history:
            return False
        if history[-1].epoch == self._seen:
            return False
        self._seen = history[-1].epoch
        return bool(self.on_new_scores(estimator, history[-1]))

    def on_new_scores(self, estimator, scores):
        raise NotImplementedError


class MLflowEpochLogger(_ReadsScores):
    """Logs each epoch's scores at step ``epoch`` to run ``run_id`` (default: the run
    active when the logger is made).

    The run is addressed by id: a joint fit calls the callbacks of several runs from
    one thread. Epochs are written in batches, one every ``flush_seconds`` at most, and
    the rest when the fit ends, well or not (``teardown``): a write is one database
    transaction, which can take longer than a GPU epoch. A process killed outright
    loses at most ``flush_seconds`` of curves. The store is ``tracking_uri`` (default:
    MLflow's tracking URI when the logger is made), kept with the logger, so that a
    fit in a worker process (joblib, on another node) logs to the same store.
    """

    def __init__(self, scoring, run_id=None, flush_seconds=2.0, tracking_uri=None):
        super().__init__(scoring)
        run = mlflow.active_run()
        self.run_id = run_id or (None if run is None else run.info.run_id)
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.flush_seconds = flush_seconds
        self._pending, self._flushed = [], time.monotonic()

    def on_new_scores(self, estimator, scores):
        timestamp = int(time.time() * 1000)
        self._pending += [
            Metric(name, float(value), timestamp, scores.epoch)
            for name, value in scores.metrics.items()
        ]
        if time.monotonic() - self._flushed >= self.flush_seconds:
            self.flush()

    def teardown(self, estimator, context):
        self.flush()

    def flush(self):
        """Write the epochs not written yet (to the run active now if none was
        active when this logger was made)."""
        self._flushed = time.monotonic()
        if not self._pending:
            return
        run = mlflow.active_run()
        run_id = self.run_id or (run and run.info.run_id)
        if run_id is None:
            raise RuntimeError(
                "MLflowEpochLogger has no MLflow run to log to: create it inside "
                "mlflow.start_run(), or start a run before the fit ends."
            )
        pending, self._pending = self._pending, []
        mlflow.MlflowClient(tracking_uri=self.tracking_uri).log_batch(
            run_id, metrics=pending
        )


class EpochLog(_ReadsScores):
    """One line per epoch through :mod:`logging` (logger ``pipelines.callbacks``),
    named ``[run_name]`` where given: a joint fit's networks, or a parallel sweep's
    jobs, write their lines in turn.

    Parameters
    ----------
    scoring : EpochScoring
        Where the scores come from.
    run_name : str, default=None
        The run's name (its MLflow run name, e.g. ``lr=0.1``).
    """

    def __init__(self, scoring, run_name=None):
        super().__init__(scoring)
        self.run_name = run_name

    def on_new_scores(self, estimator, scores):
        accuracies = ", ".join(
            f"{name} {value:.4f}"
            for name, value in scores.metrics.items()
            if name.endswith("_accuracy")
        )
        log.info(
            "%sepoch %d/%d: loss %.4f, %s (%.2f s)",
            f"[{self.run_name}] " if self.run_name else "",
            scores.epoch,
            estimator.max_iter,
            scores.metrics["loss"],
            accuracies,
            scores.metrics["seconds"],
        )


class StopAt(_ReadsScores):
    """Stops training once the score ``metric`` reaches ``threshold``.

    Parameters
    ----------
    scoring : EpochScoring
        Where the scores come from.
    metric : str
        A key of ``EpochScores.metrics``, e.g. ``"train_accuracy"``.
    threshold : float
        Training stops after the first epoch with ``metric >= threshold``.
    """

    def __init__(self, scoring, metric, threshold):
        super().__init__(scoring)
        self.metric = metric
        self.threshold = threshold

    def on_new_scores(self, estimator, scores):
        if self.metric not in scores.metrics:
            raise ValueError(
                f"StopAt: no metric {self.metric!r} to stop on; the scores are "
                f"{sorted(scores.metrics)}."
            )
        return scores.metrics[self.metric] >= self.threshold
