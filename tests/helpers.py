"""What the pipeline tests share: the entry points run as a user runs them (a
subprocess, into the temporary store of conftest's ``store`` fixture), and their runs
read back from MLflow."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.store import open_store

ROOT = Path(__file__).resolve().parents[1]
# A few epochs on the digits (no download); no model logging unless a test wants it.
QUICK = ["data=digits", "model.max_iter=3", "tracking.log_model=false"]


def run(argv, cwd, env=None, timeout=600, check=True):
    """Run ``argv`` to its end; with ``check``, fail with its output unless it
    succeeded."""
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def python_code(code, *args, env=None, timeout=120):
    """The output of ``python -c code args`` run in the project's folder, which must
    exit 0 (else the test fails with its error output)."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def run_entry_point(module, args, env, cwd, timeout=600, check=True):
    """``python -m <module> <args>``, as :func:`run` runs it."""
    argv = [sys.executable, "-m", module, *args]
    return run(argv, cwd, env, timeout=timeout, check=check)


def start(args, env, cwd, module="pipelines.train"):
    """Start an entry point in its own process group (so the group can be signalled).

    Its output goes to a file (``process.log``), not a pipe: an unread pipe fills up
    and blocks the process, which would hide whether it really runs.
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


def output_of(process):
    """What a :func:`start`-ed process has written so far."""
    return process.log.read_text(errors="replace")


def wait_for(condition, what, process=None, timeout=180):
    """Poll ``condition()`` until it is true; fail (with the output) after ``timeout``
    or when ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"ended before {what}: {output_of(process)[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {what} after {timeout} s")


def finish(process, timeout=120):
    """Wait for ``process``; kill it (and fail) if it does not end in time. Returns
    its output."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"still running {timeout} s later")
    return output_of(process)


def all_runs(uri):
    """Every run of the store (opened under its lock, as the pipelines open it)."""
    open_store(uri)
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def parent_and_children(runs):
    """Split a sweep's runs into its parents and its children."""
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def runs_of(uri, experiment):
    """A client of ``uri`` and the runs of ``experiment``."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client, client.search_runs([found.experiment_id])


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(base, server, timeout=90):
    """Wait for the MLflow server process ``server`` to answer at ``base`` (the
    product's own wait, as ``skmlp-ui`` uses it)."""
    from pipelines.ui_server import wait_until_answering

    wait_until_answering(base, server, timeout)


def unavailable(reason: str, tests: str):
    """Skip a test that needs what is missing; fail it under CI (CI=true), where
    ``.ci/run`` installs what the ``tests`` (e.g. "PostgreSQL") need."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the {tests} tests: see .ci/run)")
    pytest.skip(reason)
