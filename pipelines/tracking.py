"""MLflow plumbing shared by the entry points: store, experiments, runs, callbacks."""

import atexit
import hashlib
import json
import os
import subprocess
from pathlib import Path

import mlflow
from hydra.experimental.callback import Callback
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.device import resolve_device
from pipelines.lifecycle import handle_signals, interrupted, process_tags, stop_children
from pipelines.store import check_store, open_store
from pipelines.summary import SWEPT_TAG, log_sweep_summary, swept_keys
from pipelines.ui import (
    EXPERIMENT_TAGS,
    announce,
    log_training_input,
    training_dataset,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARENT_RUN_ENV = "SKMLP_PARENT_RUN_ID"


def tracking_uri(configured=None):
    """The store every process of a run or sweep writes to.

    ``MLFLOW_TRACKING_URI`` wins, then the configured URI, then a sqlite database in
    the project's ``mlruns/``. A sqlite path is made absolute (relative paths are
    relative to the working directory), so jobs in any working directory agree.
    """
    uri = (
        os.environ.get("MLFLOW_TRACKING_URI")
        or configured
        or f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    )
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        # sqlite:///relative/path.db is relative to the working directory: make it
        # absolute, so that it names one store wherever the jobs and the UI run.
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


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
        store_dir = Path(uri.removeprefix("sqlite:///")).resolve().parent
        store_dir.mkdir(parents=True, exist_ok=True)
        location = (store_dir / "artifacts" / name).as_uri()
    try:
        return client.create_experiment(
            name, artifact_location=location, tags=EXPERIMENT_TAGS
        )
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
    dataset = training_dataset(data.X_train, data.y_train, cfg.data.name)
    log_training_input(dataset)


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
        self._swept = []

    def on_multirun_start(self, config, **kwargs):
        # First, so that a signal from here on ends the parent and its children
        # KILLED; on Ctrl-C or SIGTERM the children end their runs before joblib
        # kills its workers.
        handle_signals(before_raise=self._stop_children)
        resolve_device(config.get("device", "cpu"))  # a missing GPU: no parent, no job
        uri = tracking_uri(config.tracking.uri)
        check_store(uri)
        experiment_id = setup_experiment(uri, config.tracking.experiment_name)
        sweep_dir = config.hydra.sweep.dir
        self._swept = swept_keys(
            config.hydra.overrides.task, config.hydra.sweeper.get("params")
        )
        run = MlflowClient(uri).create_run(
            experiment_id,
            run_name=f"sweep-{Path(sweep_dir).name}",
            tags={
                "skmlp.sweep_dir": str(sweep_dir),
                "skmlp.git_commit": git_commit(),
                SWEPT_TAG: json.dumps(self._swept),
                **process_tags(),
            },
        )
        self._parent, self._uri = run.info.run_id, uri
        os.environ[PARENT_RUN_ENV] = self._parent
        atexit.register(self._end, "FAILED")

    def _stop_children(self):
        if self._parent is not None:
            stop_children(MlflowClient(self._uri), self._parent)

    def on_multirun_end(self, config, **kwargs):
        if self._parent is not None:
            client = MlflowClient(self._uri)
            view_id = log_sweep_summary(client, self._parent, self._swept)
            experiment_id = client.get_run(self._parent).info.experiment_id
            announce(self._uri, experiment_id, view_id)
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
