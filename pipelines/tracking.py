"""MLflow runs as the pipelines make them: the experiment, runs started by id, their context.

Runs are created through the client and addressed by id, never through MLflow's
per-thread "active run", so that a task can hold several open at once (a grid's
members, set up before one joint fit and finished after it).
"""

import functools
import hashlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, read_write

from pipelines.lifecycle import process_tags
from pipelines.redact import redact_config, redact_uri
from pipelines.store import (
    DATABASE_SCHEMES,
    PROJECT_ROOT,
    StoreError,
    sqlite_path,
    tracking_uri,
)
from pipelines.ui import EXPERIMENT_TAGS, log_training_input, training_dataset
from skmlp.datasets import cache_dir

# The Hydra job number of a sweep's child run: how the sweep's end finds jobs whose
# runs are missing (pipelines.sweep_callback).
SWEEP_JOB_TAG = "skmlp.sweep_job"


# ----------------------------------------------------------------------------------
# A multirun's store and parent, handed over in each job's config


def hand_over(config, uri: str, parent_id: str) -> None:
    """Make every job of the multirun ``config`` log to store ``uri`` under run
    ``parent_id``, whatever environment it runs in.

    Hydra composes each job's config again from ``hydra.overrides.hydra`` and the job's
    own overrides, on whichever node runs it: the resolved URI, the artifact root and
    the parent's id go there as overrides (``tracking.uri``, ``tracking.artifact_root``,
    ``tracking.parent_run_id``), and so into the job's config and its
    ``.hydra/overrides.yaml``. Call it before the sweeper is made (``on_multirun_start``).
    """
    values = {"uri": uri, "parent_run_id": parent_id}
    root = config.tracking.get("artifact_root")
    if root:
        values["artifact_root"] = artifact_root_uri(root)
    with read_write(config.hydra):
        config.hydra.overrides.hydra.extend(
            [f"++tracking.{key}={_quoted(value)}" for key, value in values.items()]
        )


def _quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value (any character kept)."""
    return "'" + value.replace("'", "\\'") + "'"


def handed_over(cfg) -> tuple[str, str | None]:
    """The store and the parent run (None outside a multirun) of a task of ``cfg``.

    A multirun's job logs to the store its config names (:func:`hand_over`), whatever
    its environment says; it never falls back to a store of its own. Other tasks
    resolve their store with :func:`pipelines.store.tracking_uri`.
    """
    parent_id = cfg.tracking.get("parent_run_id")
    if not parent_id:
        return tracking_uri(cfg.tracking.uri), None
    uri = cfg.tracking.uri
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise StoreError(_unreachable(uri, parent_id, f"{path} does not exist here"))
    return uri, parent_id


def check_parent(client: MlflowClient, uri: str, parent_id: str) -> None:
    """Fail, naming the store, unless run ``parent_id`` is in store ``uri``."""
    try:
        client.get_run(parent_id)
    except MlflowException as exc:
        raise StoreError(_unreachable(uri, parent_id, exc.message)) from exc


def _unreachable(uri, parent_id, reason):
    return (
        f"This job belongs to the multirun whose parent run {parent_id} is in the "
        f"MLflow store {redact_uri(uri)}, which it cannot use here: {reason}. Every job of a "
        "sweep logs to its parent's store, never to one of its own: give every node "
        "that runs jobs the same path (a shared file system), or use a database or an "
        "MLflow server that every node can reach (README: Past one machine)."
    )


def sweep_job_tags() -> dict:
    """``{SWEEP_JOB_TAG: n}`` in the job number ``n`` of a Hydra multirun, else ``{}``."""
    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or hydra.job.get("num") is None:
        return {}
    return {SWEEP_JOB_TAG: str(hydra.job.num)}


# ----------------------------------------------------------------------------------
# Experiments and runs


def artifact_root_uri(root: str) -> str:
    """``tracking.artifact_root`` as a URI: an object store's (``s3://...``) as given,
    a path made absolute."""
    if "://" in root:
        return root.rstrip("/")
    return Path(root).expanduser().resolve().as_uri()


def artifact_location(uri: str, name: str, artifact_root: str | None) -> str | None:
    """Where experiment ``name`` of store ``uri`` keeps its artifacts.

    ``artifact_root`` (``tracking.artifact_root``) if given; else beside a sqlite
    database, under ``artifacts/``; else, for a database server, the project's
    ``mlruns/artifacts`` (never the working directory's); else (an MLflow server) the
    server's choice.
    """
    if artifact_root:
        return f"{artifact_root_uri(artifact_root)}/{name}"
    path = sqlite_path(uri)
    if path is not None:
        return (path.resolve().parent / "artifacts" / name).as_uri()
    if uri.split(":", 1)[0].split("+")[0] in DATABASE_SCHEMES:
        return (PROJECT_ROOT / "mlruns" / "artifacts" / name).as_uri()
    return None


def setup_experiment(
    client: MlflowClient, uri: str, name: str, artifact_root: str | None = None
) -> str:
    """The id of experiment ``name`` in the (opened) store ``uri``, created if new,
    its artifacts at :func:`artifact_location`."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=artifact_location(uri, name, artifact_root),
            tags=EXPERIMENT_TAGS,
        )
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


def start_run(client, experiment_id, name, parent_id=None, tags=None) -> str:
    """Create a RUNNING run (a child of ``parent_id`` if given), tagged with its
    process and ``tags``; return its id."""
    tags = {**process_tags(), **(tags or {})}
    if parent_id is not None:
        tags.update({**sweep_job_tags(), "mlflow.parentRunId": parent_id})
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


def logged_config(cfg) -> dict:
    """The resolved config as runs record it (parameters, ``config.yaml``): every
    password in a URI shown as ``***``."""
    return redact_config(OmegaConf.to_container(cfg, resolve=True))


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
    params = flatten(logged_config(cfg))
    client.log_batch(
        run_id,
        params=[Param(key, str(value)) for key, value in params.items()],
        tags=[RunTag(key, str(value)) for key, value in tags.items()],
    )
    dataset = training_dataset(data.X_train, data.y_train, cfg.data.name)
    log_training_input(client, run_id, dataset)


# ----------------------------------------------------------------------------------
# MLflow's map of installed modules to packages, kept between processes


def preload_package_map() -> None:
    """Give MLflow its map of installed modules to packages from a file cache.

    Before it saves a model, MLflow checks the model's requirements against the
    installed packages; for that it builds, once per process, a map of every
    installed distribution's modules (``importlib_metadata.packages_distributions``,
    reading every file list in the environment, a large part of every run's and every
    sweep worker's start-up: benchmarks/README.md). MLflow has no setting to skip it:
    this hands MLflow's own map building the result saved by an earlier process with
    the same installed distributions (:func:`installed_key`), and saves it where
    there is none. Where MLflow no longer builds the map this way, it does nothing.
    """
    try:
        from mlflow.utils import requirements_utils as requirements
    except ImportError:
        return
    build = getattr(requirements, "_init_modules_to_packages_map", None)
    metadata = getattr(requirements, "importlib_metadata", None)
    if build is None or metadata is None:
        return
    if getattr(requirements, "_MODULES_TO_PACKAGES", None) is not None:
        return  # built already in this process
    cached = functools.partial(_cached_package_map, metadata.packages_distributions)
    requirements.importlib_metadata = types.SimpleNamespace(
        packages_distributions=cached
    )
    try:
        build()
    finally:
        requirements.importlib_metadata = metadata


def _cached_package_map(compute) -> dict:
    """``compute()``'s map, from the cache if it holds one for the installed
    distributions, else computed and saved there (written whole or not at all)."""
    path = cache_dir("mlflow") / f"packages-{installed_key()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    found = {module: list(packages) for module, packages in compute().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(found))
        partial.replace(path)
    except OSError:
        pass  # a read-only cache: computed each time, as MLflow does
    return found


def installed_key() -> str:
    """What identifies the installed distributions: the interpreter and, in every
    directory on ``sys.path``, the name and modification time of each
    ``*.dist-info`` and ``*.egg-info`` entry (installing, upgrading or removing a
    package changes them)."""
    stamps = [sys.executable]
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as found:
                stamps += sorted(
                    f"{e.path}:{e.stat().st_mtime_ns}"
                    for e in found
                    if e.name.endswith((".dist-info", ".egg-info"))
                )
        except OSError:
            continue
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]
