"""What a pipeline run imports: only what it uses (start-up is part of every run); what a
sweep's job waits for, and that what it no longer waits for still lands in the store."""

import json
import logging
import os
import signal
from pathlib import Path

import pytest
from helpers import (
    all_runs,
    finish,
    free_port,
    parent_and_children,
    python_code,
    run_entry_point,
    start,
    wait_for,
)
from mlflow.tracking import MlflowClient

import pipelines.run as run_module
from pipelines import figures
from pipelines.outage import Store, replay
from pipelines.store import open_store

FIGURES = {"learning_curves.png", "confusion_matrix.png", "first_layer_weights.png"}


def test_a_runs_library_imports_no_pyplot_skops_or_torch():
    # pyplot brings the GUI backend machinery (figures use Figure + Agg); skops walks
    # every scikit-learn module (models are saved with cloudpickle); torch is for
    # device=torch:* only. Each costs seconds of every run's start-up.
    code = (
        "import sys, pipelines.training, pipelines.data, pipelines.tracking, "
        "mlflow.sklearn; "
        "print(sorted({'matplotlib.pyplot', 'skops', 'torch'} & set(sys.modules)))"
    )
    assert python_code(code).strip() == "[]"


# MLflow's map of installed modules to packages (checked before each model is saved):
# printed after preload_package_map; "cached" forbids computing it.
PACKAGE_MAP = """
import json, sys, importlib_metadata
from mlflow.utils import requirements_utils
from pipelines.tracking import preload_package_map
if sys.argv[1] == "cached":
    def computed_again():
        raise AssertionError("the map was computed again")
    importlib_metadata.packages_distributions = computed_again
preload_package_map()
print(json.dumps(requirements_utils._MODULES_TO_PACKAGES))
"""


def package_map(how, env):
    return json.loads(python_code(PACKAGE_MAP, how, env=env))


def test_mlflows_package_map_is_built_once_per_set_of_installed_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "SKMLP_CACHE_DIR": str(tmp_path), "PYTHONPATH": path}
    built = package_map("built", env)
    assert built["sklearn"] == ["scikit-learn"]
    assert built["mlflow.gateway"] == ["mlflow[gateway]"]  # MLflow's own additions
    assert package_map("cached", env) == built
    # A package installed since: the map is built again, with it.
    info = site / "newpkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: newpkg\nVersion: 1.0\n"
    )
    (info / "top_level.txt").write_text("newpkg\n")
    assert package_map("built", env) == {**built, "newpkg": ["newpkg"]}


# ----------------------------------------------------------------------------------
# A sweep's per-job cost (issue 20, item 1): what each job no longer waits for, and
# that nothing is lost by it.


def plot_in(marker_dir, label):
    """A figure that records which process drew it (module level: a worker can
    unpickle it)."""
    from matplotlib.figure import Figure

    Path(marker_dir, label).write_text(str(os.getpid()))
    figure = Figure(figsize=(1, 1))
    figure.subplots().plot([0, 1])
    return figure


@pytest.fixture
def deferred():
    """Figures deferred to the worker, as a basic-launcher sweep's callback sets it;
    afterwards, every pending figure logged and the worker ended."""
    figures.defer()
    yield
    figures.close()
    figures.defer(False)


def test_deferred_figures_are_drawn_by_another_process_and_logged(
    store, tmp_path, deferred
):
    uri, _ = store
    open_store(uri)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("figures")).info.run_id
    client.set_terminated(
        run_id, "FINISHED"
    )  # as a sweep's job ends before its figures
    wanted = [figures.Figure(f"{n}.png", plot_in, (tmp_path, n)) for n in "ab"]
    figures.log_figures(destination(client, run_id, tmp_path), wanted)
    figures.settle()
    drawn_by = {int((tmp_path / n).read_text()) for n in "ab"}
    assert os.getpid() not in drawn_by, "drawn in the run's own process"
    logged = {a.path for a in client.list_artifacts(run_id)}
    assert logged == {"a.png", "b.png"}


def destination(client, run_id, tmp_path, wait_s=300):
    """Where ``run_id``'s figures go: its store through ``client``, each write
    waiting up to ``wait_s``, else a spool under ``tmp_path``."""
    store = Store(client.tracking_uri, wait_s)
    return figures.Destination(client, run_id, store, tmp_path / "spool")


def test_deferred_figures_wait_for_their_store_then_go_to_the_spool(
    store, tmp_path, deferred, caplog
):
    """Deferred figures are logged after their job has ended: with nothing answering
    at their store they wait tracking.outage_wait_s (once for all the runs of that
    store), then go to the spool, from which skmlp-replay logs them to their run."""
    uri, _ = store
    open_store(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("figures")
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(2)]
    gone = MlflowClient(f"http://127.0.0.1:{free_port()}")
    for run_id in run_ids:
        client.set_terminated(run_id, "FINISHED")
        wanted = [figures.Figure(f"{n}.png", plot_in, (tmp_path, n)) for n in "ab"]
        figures.log_figures(destination(gone, run_id, tmp_path, wait_s=2), wanted)
    with caplog.at_level(logging.WARNING):
        figures.settle()
    assert caplog.text.count("not answering") == 1, caplog.text
    for run_id in run_ids:
        folder = tmp_path / "spool" / run_id
        assert f"skmlp-replay {folder}" in caplog.text
        replay(folder, uri)
        logged = {a.path for a in client.list_artifacts(run_id)}
        assert logged == {"a.png", "b.png"}
        assert client.get_run(run_id).info.status == "FINISHED"


def test_a_process_checks_and_reaps_a_store_once(store, monkeypatch):
    # A basic launcher's sweep runs every job in one process; each job used to check
    # the store and search it for dead runs again.
    uri, _ = store
    calls = []
    check = run_module.check_store
    monkeypatch.setattr(
        run_module, "check_store", lambda u: calls.append(u) or check(u)
    )
    monkeypatch.setattr(run_module, "_CHECKED", set())
    for _ in range(3):
        run_module.open_checked(uri)
    assert calls == [uri]


@pytest.mark.parametrize(
    "launcher",
    [[], pytest.param(["hydra/launcher=parallel"], marks=pytest.mark.slow)],
    ids=["basic", "parallel"],
)
def test_a_sweep_returns_with_every_runs_figures_and_model(store, tmp_path, launcher):
    """The basic launcher's figures drawn by a worker while the next job runs; the
    parallel launcher's jobs in workers forked from the fork server."""
    uri, env = store
    args = ["-m", "data=digits", "model.max_iter=3", "model.learning_rate_init=0.1,0.2"]
    run_entry_point("pipelines.train", [*args, *launcher], env, tmp_path)
    client = MlflowClient(uri)
    _, children = parent_and_children(all_runs(uri))
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        logged = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert FIGURES <= logged, logged
        models = client.search_logged_models(
            [child.info.experiment_id],
            filter_string=f"source_run_id = '{child.info.run_id}'",
        )
        assert len(models) == 1


@pytest.mark.slow
def test_an_interrupted_basic_sweep_keeps_finished_runs_figures(store, tmp_path):
    """The first job finishes (its figures left to the worker), the second trains
    until Ctrl-C: it and the parent end KILLED, the first keeps all its figures."""
    uri, env = store
    args = ["-m", "data=digits", "model.n_iter_no_change=100000"]
    args += ["model.max_iter=3,100000", "tracking.log_model=false"]
    process = start(args, env, tmp_path)

    def second_job_training():
        runs = all_runs(uri)
        return any(r.info.status == "FINISHED" for r in runs) and len(runs) == 3

    wait_for(second_job_training, "the second job's run", process)
    os.killpg(process.pid, signal.SIGINT)
    output = finish(process, timeout=120)
    client = MlflowClient(uri)
    (parent,), children = parent_and_children(all_runs(uri))
    statuses = sorted(c.info.status for c in children)
    assert (parent.info.status, statuses) == ("KILLED", ["FINISHED", "KILLED"]), output
    (done,) = [c for c in children if c.info.status == "FINISHED"]
    logged = {a.path for a in client.list_artifacts(done.info.run_id)}
    assert FIGURES <= logged, output[-3000:]


# --- a job's config composed fewer times (pipelines.sweep_check.reuse_compositions) --


@pytest.fixture
def hydra_loader():
    """Hydra's config loader on the project's configs, with a master sweep config
    that has the hand-over's overrides, and a counter of real compositions."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipelines import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = compose("train", ["data=digits"], return_hydra_config=True)
        composed = []
        compose_sweep = loader.load_sweep_config

        def counted(master_config, sweep_overrides):
            composed.append(tuple(sweep_overrides))
            return compose_sweep(master_config, sweep_overrides)

        loader.load_sweep_config = counted
        yield loader, master, composed


def _validate(loader, master, batch):
    """Hydra's sweepers' own check of a batch."""
    from types import SimpleNamespace

    from hydra.plugins.sweeper import Sweeper

    context = SimpleNamespace(config_loader=loader)
    Sweeper.validate_batch_is_legal(
        SimpleNamespace(hydra_context=context, config=master), batch
    )


def test_a_checked_job_is_not_composed_again_to_be_validated(hydra_loader):
    from omegaconf import OmegaConf

    from pipelines.sweep_check import ComposedOnce, reuse_compositions

    loader, master, composed = hydra_loader
    jobs = [["model.learning_rate_init=0.1"], ["model.learning_rate_init=0.2"]]
    checked = {
        ("train", tuple(job)): loader.load_sweep_config(master, job) for job in jobs
    }
    fresh = OmegaConf.to_container(loader.load_sweep_config(master, jobs[1]))
    composed.clear()
    reuse_compositions(checked, keep=False, loader=loader)
    _validate(loader, master, jobs)
    assert composed == []
    assert not isinstance(loader.load_sweep_config, ComposedOnce)  # as it was
    # The checked ones used, the launcher (elsewhere) composes as Hydra does.
    launched = loader.load_sweep_config(master, jobs[1])
    assert composed == [tuple(jobs[1])]
    assert OmegaConf.to_container(launched) == fresh


def test_a_validated_job_is_handed_to_the_basic_launcher_once(hydra_loader):
    from omegaconf import OmegaConf, open_dict

    from pipelines.sweep_check import reuse_compositions

    loader, master, composed = hydra_loader
    job = ["model.activation=tanh"]
    fresh = OmegaConf.to_container(loader.load_sweep_config(master, job))
    composed.clear()
    reuse_compositions({}, keep=True, loader=loader)  # another sweeper: none checked
    _validate(loader, master, [job, job])  # a job listed twice: two kept
    assert composed == [tuple(job)] * 2
    first = loader.load_sweep_config(master, job)
    with open_dict(first):
        first.hydra.job.num = 0  # as the launcher does
    second = loader.load_sweep_config(master, job)
    assert composed == [tuple(job)] * 2  # both from the validation
    assert second is not first and OmegaConf.is_missing(second.hydra.job, "num")
    assert OmegaConf.to_container(second) == fresh
    loader.load_sweep_config(master, job)  # none left: composed
    assert composed == [tuple(job)] * 3


# --- the end of a pipeline's process (pipelines.lifecycle.exit_without_collecting) ---


def test_a_pipeline_process_exits_with_its_objects_frozen_after_its_exit_handlers():
    code = (
        "import atexit, gc\n"
        "from pipelines.lifecycle import exit_without_collecting\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "exit_without_collecting(); exit_without_collecting()\n"
        "atexit.register(lambda: print('handler ran, frozen', gc.get_freeze_count() > 0))\n"
    )
    lines = python_code(code).split("\n")
    # Handlers run last-registered first: the later one before the freeze.
    assert lines[:2] == ["handler ran, frozen False", "frozen True"]


# --- a parallel sweep's workers forked from a fork server (pipelines.warm) -----------

FORKED_WORKERS = """
import json, os, sys
from joblib import Parallel, delayed, parallel_config, register_parallel_backend
from pipelines.warm import warm_workers
from skmlp._workers import WatchedLokyBackend

def look():
    return [os.getppid(), "mlflow.sklearn" in sys.modules, os.environ.get("SET_LATE")]

register_parallel_backend("loky", WatchedLokyBackend)
print(json.dumps([warm_workers(), os.getpid()]))
os.environ["SET_LATE"] = "yes"  # after the fork server started
with parallel_config("loky", n_jobs=2):
    print(json.dumps(Parallel()(delayed(look)() for _ in range(2))))
"""


def test_parallel_sweep_workers_come_from_the_fork_server_with_the_callers_environment():
    lines = python_code(FORKED_WORKERS).splitlines()
    (started, caller), looks = json.loads(lines[0]), json.loads(lines[1])
    assert started is True
    for parent, imported, late in looks:
        # Forked by the fork server, which imported a job's modules; the
        # environment is the caller's when the workers started.
        assert (parent != caller, imported, late) == (True, True, "yes")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["-m", "hydra/launcher=parallel", "model.activation=relu,tanh"], True),
        (["--multirun", "hydra/launcher=parallel"], True),
        (["hydra/launcher=parallel"], False),  # a single run: no workers
        (["-m", "model.activation=relu,tanh"], False),  # the basic launcher
        (["-m", "hydra/launcher=parallel", "--cfg", "job"], False),  # prints only
    ],
)
def test_the_fork_server_starts_early_only_for_a_parallel_sweep(argv, expected):
    code = (
        "import sys, json, multiprocessing.forkserver as fs\n"
        "from pipelines.warm import start_early\n"
        "started = start_early(sys.argv[1:])\n"
        "print(json.dumps([started, fs._forkserver._forkserver_pid is not None]))\n"
    )
    assert json.loads(python_code(code, *argv)) == [expected, expected]
