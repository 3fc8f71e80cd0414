"""Ray and Dask through joblib (issue 18, item 5): ``parallel=ray|dask`` runs the grid
search's candidates and the joint fit's parts on a real cluster started on 127.0.0.1
(tests/clusters.py); every run and its per-epoch points land in the task's store under
its parent, never in the node's own store; a bad setting fails before any run."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from clusters import LOOPBACK, dask_cluster, ray_cluster  # noqa: F401 (fixtures)
from helpers import QUICK, free_port, parent_and_children, run, runs_of
from joblib import Parallel, delayed
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.callbacks import EpochScoring, MLflowEpochLogger
from pipelines.checks import ConfigError, check_config
from pipelines.parallel import parallel_backend
from skmlp import SGDMLPClassifier, fit_together

EXTRA_MODULES = {"ray": ["ray"], "dask": ["dask", "distributed"]}
GRID = ["+grid.model.learning_rate_init=[0.01,0.1]", "tracking.experiment_name=joint"]


def entry_point(module, args, env, cwd, hidden=(), check=True, timeout=300):
    """``python -m <module> <args>`` with the modules ``hidden`` not importable (as
    where an extra is not installed: Python's own ``sys.modules[name] = None``)."""
    code = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({list(hidden)!r}))\n"
        f"sys.argv = [{module!r}, *sys.argv[1:]]\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
    argv = [sys.executable, "-c", code, *args]
    return run(argv, cwd, env, timeout=timeout, check=check)


def cluster_of(request, backend, env):
    """The running cluster of ``backend`` (its fixture, started once per module), and
    ``env`` for a driver on this machine (Ray's driver, as its head, on loopback)."""
    return request.getfixturevalue(f"{backend}_cluster"), {**env, **LOOPBACK}


def work_done(cluster) -> int:
    """How much joblib work the cluster has run, as its own records show: Ray's pool
    actors (their log files), Dask's tasks (the scheduler's counts)."""
    if cluster.backend == "ray":
        logs = Path(cluster.directory, "ray", "session_latest", "logs")
        return sum(
            ":actor_name:PoolActor" in path.read_text(errors="replace")
            for path in logs.glob("worker-*.out")
        )
    from distributed import Client

    def finished(dask_scheduler):
        return sum(
            prefix.state_counts.get("memory", 0)
            + prefix.state_counts.get("released", 0)
            for prefix in dask_scheduler.task_prefixes.values()
        )

    with Client(cluster.address, timeout="30s") as client:
        return client.run_on_scheduler(finished)


# ----------------------------------------------------------------------------------
# Settings that cannot work fail before any run: no cluster needed


@pytest.mark.slow  # a subprocess that imports the pipeline (over the 9 s mark)
@pytest.mark.parametrize("backend", ["ray", "dask"])
def test_a_missing_extra_fails_naming_the_setting_and_the_extra(
    store, tmp_path, backend
):
    uri, env = store
    args = [*QUICK, f"parallel={backend}"]
    hidden = EXTRA_MODULES[backend]
    result = entry_point("pipelines.train", args, env, tmp_path, hidden, check=False)
    assert result.returncode != 0
    assert f"parallel.backend={backend}" in result.stderr
    assert f'pip install -e ".[{backend}]"' in result.stderr
    assert not Path(uri.removeprefix("sqlite:///")).exists()  # no store, no run


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "dask"])
def test_an_address_where_nothing_answers_fails_before_any_run(
    store, tmp_path, backend
):
    """At once (not after Ray's minutes of retries), naming the setting."""
    uri, env = store
    if any(importlib.util.find_spec(m) is None for m in EXTRA_MODULES[backend]):
        pytest.skip(
            f"the {backend} extra is not installed"
        )  # not imported: see clusters
    address = f"127.0.0.1:{free_port()}"
    args = [*QUICK, f"parallel={backend}", f"parallel.address={address}"]
    result = entry_point("pipelines.train", args, env, tmp_path, check=False)
    assert result.returncode != 0
    assert f"parallel.address={address}: nothing answers there" in result.stderr
    assert runs_of(uri, "skmlp")[1] == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"backend": "spark"},
            "parallel.backend=spark: must be one of loky, ray, dask",
        ),
        (
            {"address": "10.0.0.1:6379"},
            "loky runs on this machine and takes no address",
        ),
        ({"backend": "dask", "address": "scheduler"}, "must be host:port"),
        ({"n_jobs": 0}, "parallel.n_jobs=0: must be null"),
    ],
)
def test_a_bad_parallel_setting_is_refused_naming_it(settings, message):
    settings = {"backend": "loky", "address": None, "n_jobs": None, **settings}
    if settings["backend"] == "dask":
        pytest.importorskip("distributed")
    with pytest.raises(ConfigError, match="parallel"):
        try:
            check_config(OmegaConf.create({"parallel": settings}))
        except ConfigError as exc:
            assert message in str(exc)
            raise


# ----------------------------------------------------------------------------------
# What callbacks record in a worker comes back (any backend: loky's processes here)


@pytest.mark.slow  # worker processes that import MLflow (over the 9 s mark)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_joint_fit_in_workers_brings_back_what_its_callbacks_recorded(
    digits, tmp_path
):
    """``fit_together(n_jobs=2)`` trains each network in a worker process, with copies
    of its callbacks: each network's epoch scores come back to its ``EpochScoring``,
    and the points that its logger could not write there (no store answers within
    its wait: spooled) are known to the caller's logger, for the run's end."""
    X, y = digits
    nowhere = f"http://127.0.0.1:{free_port()}"
    networks, scorings, loggers = [], [], []
    for rate in (0.01, 0.1):
        scoring = EpochScoring({"train": (X, y)})
        logger = MLflowEpochLogger(
            scoring,
            run_id="0" * 32,
            tracking_uri=nowhere,
            outage_wait_s=0.5,
            spool_dir=tmp_path / "spool",
        )
        network = SGDMLPClassifier((8,), learning_rate_init=rate, max_iter=3)
        networks.append(
            network.set_params(random_state=0).set_callbacks(scoring, logger)
        )
        scorings.append(scoring)
        loggers.append(logger)
    fit_together(networks, X, y, n_jobs=2)
    for scoring, logger in zip(scorings, loggers, strict=True):
        assert [scores.epoch for scores in scoring.history] == [1, 2, 3]
        points = [point.step for point in logger.pending]
        points += [point[3] for point in logger.spooled_points()]
        assert sorted(set(points)) == [1, 2, 3]


# ----------------------------------------------------------------------------------
# On real clusters


@pytest.mark.slow
def test_ray_workers_get_the_tasks_store(ray_cluster, tmp_path):  # noqa: F811
    """Ray's workers run with the node's environment (which names the node's store):
    the task gives them its own store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = OmegaConf.create(
        {"parallel": {"backend": "ray", "address": ray_cluster.address}}
    )
    with parallel_backend(cfg, uri):
        # os.getenv itself: the workers cannot import this test module
        seen = Parallel(n_jobs=2)(
            delayed(os.getenv)("MLFLOW_TRACKING_URI") for _ in "1234"
        )
    assert seen == [uri] * 4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "dask"])
def test_a_grid_search_runs_on_the_cluster(request, store, tmp_path, backend):
    uri, env = store
    cluster, env = cluster_of(request, backend, env)
    before = work_done(cluster)
    args = ["data=digits", "model.max_iter=3", "search.cv=2"]
    args += ["~search.param_grid.model__hidden_layer_sizes"]
    args += ["~search.param_grid.model__activation", "tracking.experiment_name=gs"]
    args += [f"parallel={backend}", f"parallel.address={cluster.address}"]
    entry_point("pipelines.grid_search", args, env, tmp_path)
    assert work_done(cluster) > before
    _, runs = runs_of(uri, "gs")
    (parent,), children = parent_and_children(runs)
    assert parent.info.status == "FINISHED"
    assert len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all("mean_cv_accuracy" in c.data.metrics for c in children)
    assert not cluster.store.exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "dask"])
def test_a_joint_fit_runs_on_the_cluster(request, store, tmp_path, backend):
    """``fit_together(n_jobs=-1)``: the two networks train in two cluster workers;
    each worker's epoch logger writes its run's per-epoch points to the task's
    store, and each run's learning curves come back with its network."""
    uri, env = store
    cluster, env = cluster_of(request, backend, env)
    before = work_done(cluster)
    args = [*QUICK, *GRID, f"parallel={backend}", f"parallel.address={cluster.address}"]
    entry_point("pipelines.train", args, env, tmp_path)
    assert work_done(cluster) > before
    client, runs = runs_of(uri, "joint")
    (parent,), children = parent_and_children(runs)
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    for child in children:
        history = client.get_metric_history(child.info.run_id, "train_accuracy")
        assert sorted(point.step for point in history) == [1, 2, 3]
        assert _curve_epochs(client, child.info.run_id, tmp_path) == [1, 2, 3]
    assert not cluster.store.exists()
    assert not (cluster.directory / "mlruns").exists()
    assert not (tmp_path / "mlflow.db").exists()  # Ray's workers start here


def _curve_epochs(client: MlflowClient, run_id, tmp_path) -> list:
    """The epochs of run ``run_id``'s learning-curves table that have scores."""
    path = client.download_artifacts(run_id, "learning_curves.json", str(tmp_path))
    table = json.loads(Path(path).read_text())
    epoch, accuracy = (table["columns"].index(k) for k in ("epoch", "train_accuracy"))
    return [row[epoch] for row in table["data"] if row[accuracy] is not None]
