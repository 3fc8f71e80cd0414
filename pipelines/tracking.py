"""MLflow runs as the pipelines make them: the experiment, runs started by id, their context.

Runs are created through the client and addressed by id, never through MLflow's
per-thread "active run", so that a task can hold several open at once (a grid's
members, set up before one joint fit and finished after it).
"""

import functools
import hashlib
import subprocess

from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.lifecycle import process_tags
from pipelines.store import PROJECT_ROOT, sqlite_path
from pipelines.ui import EXPERIMENT_TAGS, log_training_input, training_dataset

PARENT_RUN_ENV = "SKMLP_PARENT_RUN_ID"


def setup_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name`` in the (opened) store ``uri``, created if new.

    Artifacts of a sqlite store go beside the database, under ``artifacts/``.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location, path = None, sqlite_path(uri)
    if path is not None:
        store_dir = path.resolve().parent
        store_dir.mkdir(parents=True, exist_ok=True)
        location = (store_dir / "artifacts" / name).as_uri()
    try:
        return client.create_experiment(
            name, artifact_location=location, tags=EXPERIMENT_TAGS
        )
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


def start_run(client, experiment_id, name, parent_id=None, tags=None) -> str:
    """Create a RUNNING run (a child of ``parent_id`` if given), tagged with its
    process and ``tags``; return its id."""
    tags = {**process_tags(), **(tags or {})}
    if parent_id is not None:
        tags["mlflow.parentRunId"] = parent_id
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


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


@functools.cache
def git_commit():
    """The project's current commit (with ``-dirty`` if modified), or ``unknown``;
    asked of git once per process (a sweep's jobs share it)."""
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


def log_run_context(client, run_id, cfg, data, tags=None, commit=None):
    """Tag run ``run_id`` (git commit, data set and its checksum, ``tags``), log the
    whole resolved config as flattened parameters and the training data as its input.

    ``commit`` (default: asked of git) saves a task with many runs asking each time.
    """
    tags = {
        "skmlp.git_commit": commit or git_commit(),
        "skmlp.dataset": cfg.data.name,
        "skmlp.dataset_checksum": dataset_checksum(data.checksums),
        **(tags or {}),
    }
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    client.log_batch(
        run_id,
        params=[Param(key, str(value)) for key, value in params.items()],
        tags=[RunTag(key, str(value)) for key, value in tags.items()],
    )
    dataset = training_dataset(data.X_train, data.y_train, cfg.data.name)
    log_training_input(client, run_id, dataset)
