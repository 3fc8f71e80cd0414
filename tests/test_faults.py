"""Faults of issue 11, reproduced with real processes, signals, stores and servers.

Item 2: interrupted sweeps and runs end KILLED, never RUNNING; runs of processes
killed with -9 are found and marked FAILED. Item 3: a store that cannot be reached or
written fails fast, naming the URI. Every wait is bounded.
"""

import os
import signal
import socket
import threading
from contextlib import contextmanager

import pytest
from helpers import (
    all_runs,
    finish,
    free_port,
    output_of,
    run_entry_point,
    runs_of,
    start,
    wait_for,
)
from mlflow.tracking import MlflowClient

from pipelines.lifecycle import INTERRUPTED

QUICK = ["data=digits", "model.max_iter=3", "tracking.log_model=false"]
# Runs until killed (each test that starts one kills it).
LONG = ["data=digits", "model.max_iter=100000", "model.n_iter_no_change=100000"]
JOINT_FIT = "fitting 2 networks with one fit_together call"


@pytest.fixture
def store(store):
    """conftest's temporary store, with one BLAS thread per pipeline process."""
    uri, env = store
    return uri, {**env, "OMP_NUM_THREADS": "1"}


def running_children(uri):
    runs = all_runs(uri)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return len(children) == 2 and all(r.info.status == "RUNNING" for r in children)


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, to_group, sig",
    [
        ("parallel", False, signal.SIGTERM),
        ("parallel", True, signal.SIGTERM),
        ("parallel", True, signal.SIGINT),
        ("grid", False, signal.SIGTERM),  # in the joint fit
        ("grid", True, signal.SIGINT),
    ],
    ids=[
        "TERM-to-parent",
        "TERM-to-group",
        "INT-to-group",
        "grid-TERM",
        "grid-INT-to-group",
    ],
)
def test_an_interrupted_sweep_or_grid_ends_every_run_killed(
    store, tmp_path, how, to_group, sig
):
    """A parallel multirun (a parent, two worker processes) or a grid (one process:
    its parent run and two members in one joint fit): every run ends KILLED."""
    uri, env = store
    if how == "parallel":
        args = ["-m", "hydra/launcher=parallel", "model.learning_rate_init=0.1,0.2"]
    else:
        args = ["+grid.model.learning_rate_init=[0.1,0.2]"]
    process = start([*args, *LONG], env, tmp_path)
    wait_for(lambda: running_children(uri), "two running children", process)
    if how == "grid":  # the signal lands in the joint fit
        wait_for(lambda: JOINT_FIT in output_of(process), JOINT_FIT, process)
    if to_group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    output = finish(process, timeout=60)
    runs = all_runs(uri)
    assert len(runs) == 3
    assert {r.info.status for r in runs} == {"KILLED"}, output[-3000:]
    reasons = {r.data.tags.get("skmlp.end_reason") for r in runs}
    if how == "grid":  # each run ended by the task itself, with the reason
        assert reasons == {INTERRUPTED}, output[-3000:]
    else:  # the parent too says why (the children: their sweep was interrupted)
        assert None not in reasons and INTERRUPTED in reasons, output[-3000:]


def hooked(env, tmp_path, code, marker):
    """``env`` whose Python processes run ``code`` at start-up (a sitecustomize), told
    the path of ``marker`` (``SKMLP_TEST_MARKER``) to touch when it is reached."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]),
        "SKMLP_TEST_MARKER": str(marker),
    }


# Holds a grid's second member in its set-up (after its run has started), so that a
# signal lands there.
SLOW_SECOND_SET_UP = """
import os, pathlib, sys, time

def patch(training):
    set_up, calls = training.set_up, []

    def slow(*args, **kwargs):
        fitting = set_up(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            pathlib.Path(os.environ["SKMLP_TEST_MARKER"]).touch()
            time.sleep(5)
        return fitting

    training.set_up = slow

class Hook:  # patches pipelines.training when the pipeline imports it
    def find_spec(self, name, path, target=None):
        if name != "pipelines.training":
            return None
        finders = [f for f in sys.meta_path if f is not self]
        spec = next(filter(None, (f.find_spec(name, path, target) for f in finders)))
        exec_module = spec.loader.exec_module
        def exec_and_patch(module):
            exec_module(module)
            patch(module)
        spec.loader.exec_module = exec_and_patch
        return spec

sys.meta_path.insert(0, Hook())
"""


@pytest.mark.slow
def test_sigterm_while_a_grid_member_sets_up_ends_every_run_killed(store, tmp_path):
    """SIGTERM while the second member of a grid is set up (before the fit): the
    parent and both members end KILLED, each with the reason, and the task exits."""
    uri, env = store
    marker = tmp_path / "second-member-setting-up"
    env = hooked(env, tmp_path, SLOW_SECOND_SET_UP, marker)
    args = [*LONG, "+grid.model.learning_rate_init=[0.1,0.2]"]
    process = start(args, env, tmp_path)
    wait_for(marker.exists, "the second member in its set-up", process)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    assert process.returncode != 0
    runs = all_runs(uri)
    assert len(runs) == 3, output[-3000:]
    assert {r.info.status for r in runs} == {"KILLED"}, output[-3000:]
    reasons = {r.data.tags.get("skmlp.end_reason") for r in runs}
    assert reasons == {INTERRUPTED}, output[-3000:]
    assert JOINT_FIT not in output


# Makes the real mlflow.sklearn.log_model announce itself and take its time, so that
# the signal lands inside it whatever the machine's speed.
SLOW_LOG_MODEL = """
import os, pathlib, time
import mlflow.sklearn
_log_model = mlflow.sklearn.log_model
def log_model(*args, **kwargs):
    pathlib.Path(os.environ["SKMLP_TEST_MARKER"]).touch()
    time.sleep(60)
    return _log_model(*args, **kwargs)
mlflow.sklearn.log_model = log_model
"""


def test_sigterm_while_logging_the_model_ends_the_run_killed(store, tmp_path):
    uri, env = store
    marker = tmp_path / "logging-the-model"
    env = hooked(env, tmp_path, SLOW_LOG_MODEL, marker)
    process = start([*QUICK, "tracking.log_model=true"], env, tmp_path)
    wait_for(marker.exists, "log_model", process)
    (run,) = all_runs(uri)
    process.send_signal(signal.SIGTERM)
    output = finish(process)
    assert process.returncode != 0, output[-3000:]
    final = MlflowClient(uri).get_run(run.info.run_id)
    assert final.info.status == "KILLED", output[-3000:]
    assert final.data.tags["skmlp.end_reason"].startswith("interrupted")


def kill_9_a_running_training(uri, env, cwd):
    """Start a long training, kill -9 it once it runs; return its run."""
    process = start([*LONG, "tracking.experiment_name=killed"], env, cwd)
    (run,) = wait_for(lambda: all_runs(uri), "a run", process)
    assert run.data.tags["skmlp.pid"] == str(process.pid)
    assert run.data.tags["skmlp.host"] == socket.gethostname()
    process.kill()
    process.wait(timeout=30)
    assert MlflowClient(uri).get_run(run.info.run_id).info.status == "RUNNING"
    return run


def assert_reaped(uri, run):
    reaped = MlflowClient(uri).get_run(run.info.run_id)
    assert reaped.info.status == "FAILED"
    reason = reaped.data.tags["skmlp.end_reason"]
    assert run.data.tags["skmlp.pid"] in reason and "gone" in reason


@pytest.mark.slow
def test_the_reap_command_marks_runs_of_killed_processes_failed(store, tmp_path):
    uri, env = store
    run = kill_9_a_running_training(uri, env, tmp_path)
    result = run_entry_point("pipelines.lifecycle", [], env, tmp_path, timeout=120)
    assert run.info.run_id in result.stdout
    assert_reaped(uri, run)


@pytest.mark.slow
def test_the_next_pipeline_run_reaps_runs_of_killed_processes(store, tmp_path):
    uri, env = store
    run = kill_9_a_running_training(uri, env, tmp_path)
    alive = start([*LONG, "tracking.experiment_name=alive"], env, tmp_path)
    try:
        wait_for(lambda: len(all_runs(uri)) == 2, "a second run", alive)
        output = finish(start(QUICK, env, tmp_path))
        assert_reaped(uri, run)
        statuses = {r.data.tags["skmlp.pid"]: r.info.status for r in all_runs(uri)}
        assert statuses[str(alive.pid)] == "RUNNING", output[-3000:]  # alive: kept
    finally:
        alive.kill()
        alive.wait(timeout=30)


@contextmanager
def server_that_holds_connections(held=None):
    """A TCP server on 127.0.0.1 that accepts connections and never answers; they
    are appended to the list ``held`` (if given)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        held, stop = [] if held is None else held, threading.Event()

        def accept():
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(listener.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            thread.join(timeout=5)
            for connection in held:
                connection.close()


def train_against(uri, env, cwd):
    env = {**env, "MLFLOW_TRACKING_URI": uri}
    # Unchecked, MLflow retried for minutes: the timeout is what fails that.
    return run_entry_point("pipelines.train", QUICK, env, cwd, timeout=60, check=False)


def test_a_tracking_uri_with_nothing_listening_fails_fast_naming_it(store, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = train_against(uri, store[1], tmp_path)
    assert result.returncode != 0
    assert f"The MLflow tracking server {uri} cannot be used" in result.stderr
    assert "MLFLOW_TRACKING_URI" in result.stderr


@pytest.mark.slow
def test_a_tracking_server_that_never_answers_fails_fast_naming_it(store, tmp_path):
    with server_that_holds_connections() as port:
        uri = f"http://127.0.0.1:{port}"
        result = train_against(uri, store[1], tmp_path)
    assert result.returncode != 0
    assert (
        f"The MLflow tracking server {uri} cannot be used: no answer" in result.stderr
    )


def test_an_unwritable_sqlite_store_fails_fast_naming_it(store, tmp_path):
    _, env = store
    result = train_against("sqlite:////proc/skmlp/x.db", env, tmp_path)
    assert result.returncode != 0
    assert "sqlite:////proc/skmlp/x.db is not writable" in result.stderr


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.activation=foo", "'activation' parameter"),
        ("model.hidden_layer_sizes=[0]", "hidden_layer_sizes must contain positive"),
    ],
)
def test_a_bad_model_override_fails_before_any_run_exists(
    store, tmp_path, override, named
):
    uri, env = store
    args = [*QUICK, override]
    result = run_entry_point("pipelines.train", args, env, tmp_path, 120, check=False)
    assert result.returncode != 0
    assert named in result.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # store never opened


def test_an_int_layer_size_and_no_train_sample_run_as_meant(store, tmp_path):
    uri, env = store
    overrides = ["model.hidden_layer_sizes=16", "eval.train_accuracy_samples=0"]
    output = finish(start([*QUICK, *overrides], env, tmp_path))
    (run,) = all_runs(uri)
    assert run.info.status == "FINISHED", output[-3000:]
    assert run.data.params["model.hidden_layer_sizes"] == "[16]"
    assert "-16-" in run.info.run_name
    client = MlflowClient(uri)
    assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == 3
    assert client.get_metric_history(run.info.run_id, "train_accuracy") == []


def test_a_run_that_diverges_before_any_good_epoch_fails_saying_so(store, tmp_path):
    """No model to keep: the run ends FAILED with the reason, the command exits 1."""
    uri, env = store
    args = [
        "data=digits",
        "model.learning_rate_init=1e6",
        "model.max_iter=3",
        "tracking.log_model=false",
        "tracking.experiment_name=diverged",
    ]
    result = run_entry_point("pipelines.train", args, env, tmp_path, check=False)
    assert result.returncode != 0
    assert "diverged in its first epoch" in result.stdout + result.stderr
    _, (run,) = runs_of(uri, "diverged")
    assert run.info.status == "FAILED"
    assert "diverged in its first epoch" in run.data.tags["skmlp.end_reason"]
