"""Faults of issue 11, reproduced with real processes, signals, stores and servers.

Item 2: interrupted sweeps and runs end KILLED, never RUNNING; runs of processes
killed with -9 are found and marked FAILED. Item 3: a store that cannot be reached or
written fails fast, naming the URI. Every wait is bounded.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.store import open_store

QUICK = ["data=digits", "model.max_iter=3", "tracking.log_model=false"]
# Runs until killed (each test that starts one kills it).
LONG = ["data=digits", "model.max_iter=100000", "model.n_iter_no_change=100000"]


@pytest.fixture
def store(store):
    """conftest's temporary store, with one BLAS thread per pipeline process."""
    uri, env = store
    return uri, {**env, "OMP_NUM_THREADS": "1"}


def start(args, env, cwd, module="pipelines.train"):
    """Start an entry point in its own process group (so the group can be signalled).

    Its output goes to a file, not a pipe: an unread pipe fills up and blocks the
    process, which would hide whether it really runs.
    """
    log = Path(cwd) / f"output-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process.log = log
    return process


def all_runs(uri):
    open_store(uri)  # under the lock, as the pipelines do, never racing them
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def wait_for(condition, what, process=None, timeout=180):
    """Poll ``condition()`` until it is true; fail (with the output) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(
                f"ended before {what}: {process.log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.5)
    pytest.fail(f"no {what} after {timeout} s")


def finish(process, timeout=120):
    """Wait for ``process``; kill it (and fail) if it does not end in time."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"still running {timeout} s later")
    return process.log.read_text(errors="replace")


def running_children(uri):
    runs = all_runs(uri)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return len(children) == 2 and all(r.info.status == "RUNNING" for r in children)


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, to_group, sig",
    [
        ("parallel", False, signal.SIGTERM),
        ("parallel", True, signal.SIGTERM),
        ("parallel", True, signal.SIGINT),
        ("together", False, signal.SIGTERM),  # jobs parked, or on their way
        ("together", True, signal.SIGINT),  # in the joint fit, jobs parked
    ],
    ids=[
        "TERM-to-parent",
        "TERM-to-group",
        "INT-to-group",
        "together-TERM-to-parent",
        "together-INT-to-group",
    ],
)
def test_an_interrupted_parallel_sweep_ends_every_run_killed(
    store, tmp_path, launcher, to_group, sig
):
    uri, env = store
    args = [
        "-m",
        f"hydra/launcher={launcher}",
        *LONG,
        "model.learning_rate_init=0.1,0.2",
    ]
    process = start(args, env, tmp_path)
    wait_for(lambda: running_children(uri), "two running children", process)
    if launcher == "together":  # both parked, in their joint fit (a job still setting
        # up when the signal lands: test_sigterm_while_a_together_job_sets_up_...)
        joint = "fitting 2 networks together"
        wait_for(
            lambda: joint in process.log.read_text(errors="replace"), joint, process
        )
    if to_group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    output = finish(process, timeout=60)
    runs = all_runs(uri)
    assert len(runs) == 3
    assert {r.info.status for r in runs} == {"KILLED"}, output[-3000:]
    if launcher == "together":  # the two jobs were parked in one joint fit
        assert "fitting 2 networks together" in output


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


# Holds the together launcher's second job on its way to its fit (after its run has
# started), so that a signal lands while the launcher waits for it.
SLOW_SECOND_JOB = """
import os, pathlib, sys, time

def patch(together):
    fit_estimator, calls = together.fit_estimator, []

    def slow(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            pathlib.Path(os.environ["SKMLP_TEST_MARKER"]).touch()
            time.sleep(5)
        return fit_estimator(*args, **kwargs)

    together.fit_estimator = slow

class Hook:  # patches pipelines.together when the pipeline imports it
    def find_spec(self, name, path, target=None):
        if name != "pipelines.together":
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
def test_sigterm_while_a_together_job_sets_up_ends_every_job_itself(store, tmp_path):
    """SIGTERM to the parent while the launcher waits for a job still on its way to
    its fit: that job reaches its fit, and it and the job parked before it each end
    their own run KILLED (their own lifecycle, not only the parent marking them); the
    sweep exits."""
    uri, env = store
    marker = tmp_path / "second-job-setting-up"
    env = hooked(env, tmp_path, SLOW_SECOND_JOB, marker)
    args = ["-m", "hydra/launcher=together", *LONG, "model.learning_rate_init=0.1,0.2"]
    process = start(args, env, tmp_path)
    wait_for(marker.exists, "the second job on its way to its fit", process)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    runs = all_runs(uri)
    assert len(runs) == 3, output[-3000:]
    assert {r.info.status for r in runs} == {"KILLED"}, output[-3000:]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    reasons = {r.data.tags.get("skmlp.end_reason") for r in children}
    assert reasons == {"interrupted (Ctrl-C or SIGTERM)"}, output[-3000:]


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


def test_the_reap_command_marks_runs_of_killed_processes_failed(store, tmp_path):
    uri, env = store
    run = kill_9_a_running_training(uri, env, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.store"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.info.run_id in result.stdout
    assert_reaped(uri, run)


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
def server_that_holds_connections():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        held, stop = [], threading.Event()

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


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_against(uri, env, cwd):
    env = {**env, "MLFLOW_TRACKING_URI": uri}
    # Unchecked, MLflow retried for minutes: the timeout is what fails that.
    return subprocess.run(
        [sys.executable, "-m", "pipelines.train", *QUICK],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_tracking_uri_with_nothing_listening_fails_fast_naming_it(store, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = train_against(uri, store[1], tmp_path)
    assert result.returncode != 0
    assert f"The MLflow tracking server {uri} cannot be used" in result.stderr
    assert "MLFLOW_TRACKING_URI" in result.stderr


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
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.train", *QUICK, override],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
