"""Real Ray and Dask clusters on 127.0.0.1 for tests/test_ray_dask.py.

Each fixture starts a cluster as a user would on a node (``ray start --head``; a
``dask scheduler`` and a ``dask worker``), as separate processes in a session of their
own, in a working directory of their own, with an environment that names another
store (``MLFLOW_TRACKING_URI`` of the node, as a node's own profile may): whatever the
workers log there, or in their working directory, is logged in the wrong place. It is
stopped after the module's tests: every process of its session, by pid (``ray stop``
would end every Ray process of the machine, other users' clusters too).

Where the ``ray`` or ``dask`` extra is missing, the tests skip, except under CI
(CI=true), where ``.ci/run`` installs both and a missing one must fail the run.
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import helpers
import pytest
from helpers import free_port

START_TIMEOUT_S = 120
STOP_GRACE_S = 5
# A Ray head and driver on one machine stay on loopback only with this set (without
# it, Ray advertises and dials the machine's own address).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass
class Cluster:
    """A running cluster: its ``address`` (what ``parallel.address`` takes), the node's
    own ``store`` (a path that must stay absent) and ``directory`` (the workers'
    working directory)."""

    backend: str
    address: str
    store: Path
    directory: Path


# Skip (fail under CI) a test that needs what is missing.
unavailable = partial(helpers.unavailable, tests="Ray and Dask")


def program(name: str, modules: tuple, extra: str) -> str:
    """The venv's console script ``name``, if the extra's ``modules`` are installed."""
    found = Path(sys.executable).with_name(name)
    if any(importlib.util.find_spec(m) is None for m in modules) or not found.exists():
        unavailable(f"{name} is not installed (pip install -e '.[{extra}]')")
    return str(found)


def node(prefix: str):
    """A node's working directory and environment: its own store named there."""
    # Short, not under pytest's tmp_path: Ray's sockets live here (108-byte limit).
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    store = directory / "mlflow.db"
    env = {**os.environ, **LOOPBACK, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    return directory, store, env


def launch(argv, directory, env, log_name) -> subprocess.Popen:
    """``argv`` in a new session (the cluster's processes stay in it), output to a
    log file in ``directory``."""
    with open(directory / log_name, "wb") as log:
        return subprocess.Popen(
            argv,
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_log(process, log: Path, text: str, what: str):
    """Wait until ``text`` is in ``log``; fail with the log if ``process`` ends or
    ``START_TIMEOUT_S`` passes first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(
                f"{what} did not start: {log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.3)


def session_pids(session: int) -> list[int]:
    """The processes of session ``session`` (ours: we started its leader)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    pids.append(int(entry.name))
            except OSError:
                continue  # ended meanwhile
    return pids


def stop_session(*processes):
    """End every process of the sessions that ``processes`` lead: SIGTERM, then, after
    ``STOP_GRACE_S``, SIGKILL for what is left; each by pid."""
    sessions = [p.pid for p in processes]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in (pid for s in sessions for pid in session_pids(s)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            time.sleep(0.2)
        if not any(session_pids(s) for s in sessions):
            break
    for process in processes:
        process.wait(timeout=STOP_GRACE_S)


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head with 2 CPUs on 127.0.0.1, the tests' process set to reach it."""
    ray = program("ray", ("ray",), "ray")
    directory, store, env = node("skmlp-ray-")
    port = free_port()
    ports = {
        f"--{name}-port": str(free_port())
        for name in ("ray-client-server", "dashboard-agent-listen", "metrics-export")
    }
    ports["--dashboard-agent-grpc-port"] = str(free_port())
    ports["--runtime-env-agent-port"] = str(free_port())
    argv = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1"]
    argv += ["--port", str(port), "--num-cpus", "2", "--include-dashboard=false"]
    argv += ["--disable-usage-stats", "--object-store-memory", str(100 * 2**20)]
    argv += ["--temp-dir", str(directory / "ray"), *sum(ports.items(), ())]
    head = launch(argv, directory, env, "ray.log")
    saved = {key: os.environ.get(key) for key in LOOPBACK}
    os.environ.update(LOOPBACK)  # for this process's drivers, as for the head
    if "ray" in sys.modules:  # Ray read it at import: a driver here would hang
        pytest.fail("ray was imported before this fixture; import it in tests only")
    try:
        wait_for_log(head, directory / "ray.log", "Ray runtime started", "Ray")
        yield Cluster("ray", f"127.0.0.1:{port}", store, directory)
    finally:
        stop_session(head)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def dask_cluster():
    """A Dask scheduler and a worker process with 2 single-threaded workers, on
    127.0.0.1."""
    dask = program("dask", ("dask", "distributed"), "dask")
    directory, store, env = node("skmlp-dask-")
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    scheduler = launch(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
        directory,
        env,
        "scheduler.log",
    )
    processes = [scheduler]
    try:
        wait_for_log(scheduler, directory / "scheduler.log", "Scheduler at", "Dask")
        argv = [dask, "worker", address, "--host", "127.0.0.1", "--nworkers", "2"]
        argv += [
            "--nthreads",
            "1",
            "--no-dashboard",
            "--local-directory",
            str(directory),
        ]
        processes.append(launch(argv, directory, env, "worker.log"))
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT_S)
        yield Cluster("dask", address, store, directory)
    finally:
        stop_session(*processes)
        shutil.rmtree(directory, ignore_errors=True)
