"""sklearn callbacks for a pipeline's training run, one job each.

``EpochScoring`` scores the model after every epoch and keeps the only record of those
scores; the others read that record: ``MLflowEpochLogger`` logs it, ``EpochLog`` writes
one log line per epoch, ``StopAt`` ends training once a score reaches a threshold. They
follow the ``sklearn.callback`` protocol, so the estimator knows nothing of MLflow.
"""

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import mlflow
from mlflow.entities import Metric

from pipelines.device import accuracy
from pipelines.lifecycle import HEARTBEAT_TAG
from pipelines.outage import (
    BATCH_POINTS,
    DEFAULT_WAIT_S,
    REPLAY_COMMAND,
    SPOOL_FILE,
    Backoff,
    Spooled,
    Store,
    StoreUnavailable,
    is_outage,
    one_try,
    replay,
    spool_dir,
    write_spool,
)
from pipelines.redact import redact_uri

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

    def adopt_copy(self, copy):
        """Take what ``copy``, this callback's copy that ran in a worker process
        (``skmlp.fit_together(n_jobs=...)``), recorded there."""


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

    def adopt_copy(self, copy):
        self.history = list(copy.history)  # the scores of a fit in a worker

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

    def adopt_copy(self, copy):
        self._seen = copy._seen

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

    A store that does not answer does not stop training: the points stay in memory
    (``pending``, at most ``max_points``) and are tried again later, each try once
    (``pipelines.outage``), backing off up to 30 s between tries. A full buffer waits
    for the store (``outage_wait_s``); past that, its points go to ``spool_dir``
    (default ``mlruns/spool`` of the project; later full buffers of the same outage
    go there at once) and training goes on; they are written into the run as soon as
    the store answers again (or by ``skmlp-replay``). Whoever ends the run writes what
    is left with ``flush(store)``, waiting as long as its ``store`` allows. A copy of
    the logger in another process (a ``fit_together(n_jobs=...)`` worker), which
    nobody flushes later, waits for the store itself when the fit ends, and past
    ``outage_wait_s`` spools its points likewise.

    With the points, at most every ``heartbeat_seconds``, the run's tag
    ``skmlp.heartbeat`` gets the time: ``skmlp-reap`` on any host ends a RUNNING
    run whose heartbeat stopped (``pipelines.lifecycle.reap_silent_runs``).
    """

    def __init__(
        self,
        scoring,
        run_id=None,
        flush_seconds=2.0,
        tracking_uri=None,
        max_points=500_000,
        outage_wait_s=DEFAULT_WAIT_S,
        heartbeat_seconds=60.0,
        spool_dir=None,
    ):
        super().__init__(scoring)
        run = mlflow.active_run()
        self.run_id = run_id or (None if run is None else run.info.run_id)
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.flush_seconds = flush_seconds
        self.max_points, self.outage_wait_s = max_points, outage_wait_s
        self.pending, self._flushed = [], time.monotonic()
        self._backoff = Backoff(first=flush_seconds)
        self.heartbeat_seconds, self._beat = heartbeat_seconds, None
        self.spool_dir, self._pid = spool_dir, os.getpid()
        self.spooled, self._gave_up = [], False  # folders of points, for skmlp-replay

    def on_new_scores(self, estimator, scores):
        timestamp = int(time.time() * 1000)
        self.pending += [
            Metric(name, float(value), timestamp, scores.epoch)
            for name, value in scores.metrics.items()
        ]
        if len(self.pending) >= self.max_points:
            self._flush_or_spool()
        elif time.monotonic() - self._flushed >= self.flush_seconds:
            self.try_flush()

    def teardown(self, estimator, context):
        if os.getpid() == self._pid:
            self.try_flush()  # the rest: whoever ends the run, with flush(store)
        else:
            self._flush_or_spool()

    def _flush_or_spool(self):
        """Write the points not written yet, waiting up to ``outage_wait_s`` (not
        again in an outage that outlasted it once); past that, spool them and say so."""
        said, wait_s = self._gave_up, 0 if self._gave_up else self.outage_wait_s
        try:
            self.flush(Store(self.tracking_uri, wait_s))
        except StoreUnavailable as exc:
            self._gave_up = True
            run = mlflow.active_run()
            run_id = self.run_id or run.info.run_id
            points = [[p.key, p.value, p.timestamp, p.step] for p in self.pending]
            spooled = Spooled(self.tracking_uri, run_id, "", metrics=points)
            name = f"{run_id}-points-{points[0][2]}"
            folder = write_spool(spool_dir(self.spool_dir), spooled, None, name)
            self.spooled.append(folder)
            what = (
                f"once the store answers, write them with: {REPLAY_COMMAND} {folder}"
                if os.getpid() != self._pid  # a worker's copy, forgotten after the fit
                else "training goes on, and they are written into the run when the "
                f"store answers (if this process ends first: {REPLAY_COMMAND} "
                f"{folder.parent})"
            )
            log.log(
                logging.DEBUG if said else logging.ERROR,  # once per outage
                "%s. The %d metric points of run %s not written are saved in %s; %s",
                exc, len(points), run_id, folder, what,
            )  # fmt: skip
            self.pending = []

    def spooled_points(self) -> list:
        """The points this logger spooled and has not written yet, as ``[key, value,
        timestamp, step]`` lists (a run's end that spools takes them along)."""
        return [
            point
            for folder in self.spooled
            for point in json.loads((folder / SPOOL_FILE).read_text())["metrics"]
        ]

    def drop_spooled(self) -> None:
        """Remove this logger's spooled points (once spooled again elsewhere)."""
        for folder in self.spooled:
            shutil.rmtree(folder)
        self.spooled = []

    def _replay_spooled(self):
        """(The store answers.) Write the points this logger spooled into the run."""
        while self.spooled:
            with one_try():
                replay(self.spooled[0])
            log.warning("metric points spooled in %s written", self.spooled.pop(0))
        self._gave_up = False

    def adopt_copy(self, copy):
        """What the copy in a worker could not write (its store did not answer within
        ``outage_wait_s``): its points, pending or spooled, wait here for whoever
        ends the run (``flush(store)``, ``spooled_points``)."""
        super().adopt_copy(copy)
        self.pending += copy.pending
        self.spooled += copy.spooled

    def try_flush(self):
        """Write the epochs not written yet, once, if no earlier failure asks to wait;
        a store that does not answer keeps them pending."""
        self._flushed = time.monotonic()
        if not self.pending or not self._backoff.due():
            return
        try:
            with one_try():
                self._write()
        except Exception as exc:
            if not is_outage(exc):
                raise
            if self._backoff.failures == 0:
                log.warning(
                    "store at %s not answering; training goes on, its metrics kept "
                    "in memory (%d points) and tried again later",
                    redact_uri(self.tracking_uri),
                    len(self.pending),
                )
            self._backoff.failed()
            return
        if self._backoff.failures:
            log.warning("store at %s answers again", redact_uri(self.tracking_uri))
        self._backoff.succeeded()
        with contextlib.suppress(Exception):  # kept for the next write, or replay
            self._replay_spooled()

    def flush(self, store=None):
        """Write the epochs not written yet (to the run active now if none was
        active when this logger was made), waiting for the store as ``store``
        (a ``pipelines.outage.Store``) allows; without one, fail at once."""
        self._flushed = time.monotonic()
        if not self.pending:
            return
        if store is None:
            self._write()
        else:
            store.call(self._write)
            store.call(self._replay_spooled)
        self._backoff.succeeded()

    def _write(self):
        """The pending points, in batches; each is dropped only once written."""
        run = mlflow.active_run()
        run_id = self.run_id or (run and run.info.run_id)
        if run_id is None:
            raise RuntimeError(
                "MLflowEpochLogger has no MLflow run to log to: create it inside "
                "mlflow.start_run(), or start a run before the fit ends."
            )
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        now = time.monotonic()  # the heartbeat first: points seen mean it beat
        if self._beat is None or now - self._beat >= self.heartbeat_seconds:
            client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time())))
            self._beat = now
        while self.pending:  # MLflow's largest batch: a failure keeps the rest
            client.log_batch(run_id, metrics=self.pending[:BATCH_POINTS])
            del self.pending[:BATCH_POINTS]


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
