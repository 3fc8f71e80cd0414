"""MLflow plumbing shared by the entry points: store, experiments, runs, callbacks."""

import atexit
import hashlib
import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np
from hydra.experimental.callback import Callback
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.lifecycle import handle_signals, interrupted, process_tags, stop_children
from pipelines.store import check_store, open_store

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARENT_RUN_ENV = "SKMLP_PARENT_RUN_ID"


def tracking_uri(configured=None):
    """The store every process of a run or sweep writes to.

    ``MLFLOW_TRACKING_URI`` wins, then the configured URI, then a sqlite database in
    the project's ``mlruns/`` (absolute, so jobs in any working directory agree).
    """
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or configured
        or f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    )


def setup_experiment(uri, name):
    """Point MLflow at ``uri`` and return the id of experiment ``name``, creating it.

    Artifacts of a sqlite store go beside the database, under ``artifacts/``.
    """
    open_store(uri)  # first, so that parallel processes never migrate it at once
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        store_dir = Path(uri.removeprefix("sqlite:///")).parent
        store_dir.mkdir(parents=True, exist_ok=True)
        location = (store_dir / "artifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


def flatten(config, prefix=""):
    """``{"model": {"alpha": 1}}`` -> ``{"model.alpha": 1}`` (lists kept as values)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _git(*args):
    return subprocess.run(
        ["git", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


def git_commit():
    """The project's current commit (with ``-dirty`` if modified), or ``unknown``."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def dataset_checksum(checksums):
    """One md5 that identifies a data set from the checksums of its files."""
    joined = ";".join(f"{name}={md5}" for name, md5 in sorted(checksums.items()))
    return hashlib.md5(joined.encode()).hexdigest()


def log_run_context(cfg, data, tags=None):
    """Tag the active run (git commit, data set and its checksum, ``tags``) and log
    the whole resolved config as flattened parameters."""
    mlflow.set_tags(
        {
            "skmlp.git_commit": git_commit(),
            "skmlp.dataset": cfg.data.name,
            "skmlp.dataset_checksum": dataset_checksum(data.checksums),
            **(tags or {}),
        }
    )
    mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))


class MLflowEpochLogger:
    """sklearn callback: logs each epoch of an SGDMLPClassifier to the active run.

    It follows the ``sklearn.callback`` protocol, so the estimator needs nothing
    MLflow-specific. Per epoch it logs ``loss``, ``seconds``, ``learning_rate`` and
    the accuracy on each evaluation set given (``train_accuracy`` on a fixed sample of
    the training set, ``val_accuracy``, ``test_accuracy``).

    Parameters
    ----------
    eval_sets : dict of name -> (X, y)
        Raw inputs (before preprocessing) and labels to score after each epoch.
    preprocess : callable
        Maps raw inputs to what the classifier sees (the fitted preprocessing
        steps of the Pipeline); called once per set, on the first epoch.
    stop_at : tuple (metric, threshold) or None, default=None
        Stop training once a logged metric reaches the threshold, e.g.
        ``("train_accuracy", 0.999)``.
    """

    def __init__(self, eval_sets, preprocess, stop_at=None):
        self.eval_sets = eval_sets
        self.preprocess = preprocess
        self.stop_at = stop_at
        self._transformed = None
        self._last_epoch = 0
        self.records = []  # the metrics of every epoch, for the learning-curve figure

    def setup(self, estimator, context):
        self._transformed = None
        self._last_epoch = 0

    def teardown(self, estimator, context):
        self._transformed = None

    def on_fit_task_begin(self, estimator, context):
        pass

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None):
        if context.task_name != "epoch" or fitted_estimator is None:
            return False
        if self._transformed is None:
            self._transformed = {
                name: (self.preprocess(X), y) for name, (X, y) in self.eval_sets.items()
            }
        history = fitted_estimator.history_
        if history.empty or history["epoch"].iloc[-1] == self._last_epoch:
            return False  # a diverged epoch was undone: nothing new to log
        record = history.iloc[-1]
        self._last_epoch = int(record["epoch"])
        metrics = {k: float(record[k]) for k in ("loss", "seconds", "learning_rate")}
        if "validation_score" in record:
            metrics["early_stopping_score"] = float(record["validation_score"])
        for name, (X, y) in self._transformed.items():
            metrics[f"{name}_accuracy"] = float(
                np.mean(fitted_estimator.predict(X) == y)
            )
        mlflow.log_metrics(metrics, step=self._last_epoch)
        self.records.append({"epoch": self._last_epoch, **metrics})
        if self.stop_at is not None:
            metric, threshold = self.stop_at
            return metrics[metric] >= threshold
        return False


class MLflowSweepCallback(Callback):
    """Hydra callback: one parent MLflow run per multirun, its jobs as children.

    ``on_multirun_start`` creates the experiment (once, before any worker starts) and
    the parent run, and hands its id to the jobs through ``SKMLP_PARENT_RUN_ID``.
    The parent ends FINISHED in ``on_multirun_end``; if the sweep dies first (a failed
    job, Ctrl-C, SIGTERM), an exit handler ends it FAILED or KILLED, never RUNNING.
    """

    def __init__(self):
        self._parent = None
        self._uri = None

    def on_multirun_start(self, config, **kwargs):
        uri = tracking_uri(config.tracking.uri)
        check_store(uri)
        experiment_id = setup_experiment(uri, config.tracking.experiment_name)
        sweep_dir = config.hydra.sweep.dir
        run = MlflowClient(uri).create_run(
            experiment_id,
            run_name=f"sweep-{Path(sweep_dir).name}",
            tags={
                "skmlp.sweep_dir": str(sweep_dir),
                "skmlp.git_commit": git_commit(),
                **process_tags(),
            },
        )
        self._parent, self._uri = run.info.run_id, uri
        os.environ[PARENT_RUN_ENV] = self._parent
        atexit.register(self._end, "FAILED")
        # On Ctrl-C or SIGTERM, the children end their runs KILLED before joblib
        # kills its workers.
        handle_signals(
            before_raise=lambda: stop_children(MlflowClient(uri), run.info.run_id)
        )

    def on_multirun_end(self, config, **kwargs):
        self._end("FINISHED")

    def _end(self, status):
        if self._parent is None:
            return
        client = MlflowClient(self._uri)
        if client.get_run(self._parent).info.status == "RUNNING":
            stop_children(client, self._parent)
            children = client.search_runs(
                [client.get_run(self._parent).info.experiment_id],
                f"tags.mlflow.parentRunId = '{self._parent}'",
            )
            if status != "FINISHED" and (
                interrupted() or any(c.info.status == "KILLED" for c in children)
            ):
                status = "KILLED"
            client.set_terminated(self._parent, status)
        os.environ.pop(PARENT_RUN_ENV, None)
        self._parent = None
