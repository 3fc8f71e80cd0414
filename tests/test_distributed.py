"""Jobs and workers that run elsewhere (issue 18, items 1 and 2): a multirun's store and
parent travel in each job's config, a job that cannot reach them fails, and a sweep with
a job's run missing ends FAILED. Real sweeps and workers, read back with MlflowClient."""

import os

import mlflow
import pytest
from helpers import QUICK, all_runs, parent_and_children, run_entry_point
from joblib import Parallel, delayed
from mlflow.tracking import MlflowClient

from pipelines.callbacks import EpochScores, MLflowEpochLogger
from pipelines.lifecycle import REASON_TAG
from pipelines.tracking import SWEEP_JOB_TAG


def stripped_env():
    """The driver's environment without any tracking URI (the store is configured)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.slow
def test_a_sweeps_jobs_log_under_their_parent_whatever_their_environment(tmp_path):
    """Each job runs in its own working directory, in parallel workers, with an
    environment that names another store (as a node's own profile may): every child
    still lands under the parent in the configured store, and nothing elsewhere."""
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    node_store = tmp_path / "node" / "mlflow.db"
    args = [
        "-m",
        "hydra/launcher=parallel",
        "hydra.job.chdir=true",
        f"+hydra.job.env_set.MLFLOW_TRACKING_URI=sqlite:///{node_store}",
        f"tracking.uri={uri}",
        *QUICK,
        "seed=0,1",
    ]
    run_entry_point("pipelines.train", args, stripped_env(), tmp_path)
    (parent,), children = parent_and_children(all_runs(uri))
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags[SWEEP_JOB_TAG] for c in children) == ["0", "1"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert not node_store.exists()


@pytest.mark.slow
@pytest.mark.parametrize("store_exists", [False, True], ids=["no-store", "no-parent"])
def test_a_job_that_cannot_reach_its_parents_store_fails(tmp_path, store_exists):
    """A job handed a store and parent (as a multirun hands them) that it cannot find
    there fails, naming both; it never makes a store or run of its own."""
    path = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{path}"
    if store_exists:
        MlflowClient(uri).search_experiments()
    args = [f"tracking.uri={uri}", "tracking.parent_run_id=0123abcd", *QUICK]
    result = run_entry_point(
        "pipelines.train", args, stripped_env(), tmp_path, check=False
    )
    assert result.returncode != 0
    assert "parent run 0123abcd" in result.stderr and uri in result.stderr
    assert path.exists() == store_exists
    if store_exists:
        assert all_runs(uri) == []


@pytest.mark.slow
def test_a_sweep_whose_job_logs_elsewhere_ends_failed_naming_it(tmp_path):
    """Job 1 logs to another experiment (out of the parent's view): the command exits
    non-zero and the parent ends FAILED, naming the job; job 0 is kept."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    # The parent is made in the configured experiment (skmlp), before any job.
    args = ["-m", f"tracking.uri={uri}", *QUICK, "tracking.experiment_name=skmlp,b"]
    result = run_entry_point(
        "pipelines.train", args, stripped_env(), tmp_path, check=False
    )
    assert result.returncode != 0
    assert "job 1 (" in result.stderr and "tracking.experiment_name=b" in result.stderr
    client = MlflowClient(uri)
    sweep = client.get_experiment_by_name("skmlp").experiment_id
    (parent,), (child,) = parent_and_children(client.search_runs([sweep]))
    assert parent.info.status == "FAILED"
    assert "job 1 (" in parent.data.tags[REASON_TAG]
    assert child.data.tags[SWEEP_JOB_TAG] == "0"


def _flush_elsewhere(logger, directory):
    """In a worker: no tracking URI in the environment, another working directory."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(directory)
    logger.on_new_scores(None, EpochScores(1, {"loss": 0.5}))
    logger.flush()


@pytest.mark.slow  # the workers import MLflow
def test_the_epoch_logger_keeps_its_store_in_a_worker(tmp_path):
    """A fit in a joblib worker (fit_together, a grid search) logs its epochs to the
    store the logger was made for, not to the worker's default store."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("workers")).info.run_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        logger = MLflowEpochLogger(scoring=None, run_id=run_id)
    finally:
        mlflow.set_tracking_uri(previous)
    workdir = tmp_path / "worker"
    workdir.mkdir()
    Parallel(n_jobs=2)(delayed(_flush_elsewhere)(logger, workdir) for _ in range(2))
    history = client.get_metric_history(run_id, "loss")
    assert [m.value for m in history] == [0.5, 0.5]
    assert not (workdir / "mlflow.db").exists()
