"""A private single-node Slurm cluster for the tests that need one (tests/test_slurm.py
runs sweeps on it through ``hydra/launcher=slurm``).

``munged`` with its own key and socket, then ``slurmctld -D`` and ``slurmd -D`` from
Debian's ``slurm-wlm``, all on 127.0.0.1 with private ports, and their pid, spool and
state files in a temporary directory. The ``slurm.conf`` is minimal: no accounting
(no slurmdbd), one node of this machine's CPUs and half its memory, one partition.
Every command reaches it through ``SLURM_CONF`` (``Cluster.env``). The daemons run as
root, as Slurm's do; without root, or without the packages, the tests skip, except
under CI (CI=true), where ``.ci/run`` installs them and a missing one must fail the
run, as the PostgreSQL and torch tests do. Everything is stopped after the module.
Outside pytest (benchmarks/soak_engines.py), ``running()`` is the same cluster as a
context manager.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import helpers
import pytest
from helpers import free_port

START_TIMEOUT_S = 30
PARTITION = "skmlp"


# Skip (fail under CI) a test that needs what is missing.
unavailable = partial(helpers.unavailable, tests="Slurm")


@dataclass
class Cluster:
    """A running private cluster: ``env`` points Slurm's commands at it."""

    directory: Path
    cpus: int
    memory_mb: int

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.directory / "slurm.conf")}

    def command(self, *argv) -> str:
        """The output of a Slurm command (``squeue``, ...) run against this cluster."""
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def queue(self) -> list[str]:
        """The ids of the jobs the cluster still holds (pending or running)."""
        return self.command("squeue", "-h", "-r", "-o", "%i").split()


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return total_kb // 1024 // 2


def _config(directory: Path, cpus: int, memory_mb: int) -> str:
    node = socket.gethostname().split(".")[0]
    settings = {
        "ClusterName": "skmlp-test",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmctldPort": free_port(),
        "SlurmdPort": free_port(),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={directory / 'munge.socket'}",
        "StateSaveLocation": directory / "state",
        "SlurmdSpoolDir": directory / "spool",
        "SlurmctldPidFile": directory / "slurmctld.pid",
        "SlurmdPidFile": directory / "slurmd.pid",
        "SlurmctldLogFile": directory / "slurmctld.log",
        "SlurmdLogFile": directory / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "JobCompType": "jobcomp/none",
        "MpiDefault": "none",
        "ReturnToService": 2,
        "SchedulerParameters": "sched_interval=1",
        "KillWait": 10,
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines += [
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} "
        "State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _start_munge(directory: Path) -> subprocess.Popen:
    key = directory / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    argv = [
        "munged",
        "-F",
        "--force",
        f"--key-file={key}",
        f"--socket={directory / 'munge.socket'}",
        f"--pid-file={directory / 'munged.pid'}",
        f"--log-file={directory / 'munged.log'}",
        f"--seed-file={directory / 'munged.seed'}",
    ]
    return _start_daemon(argv, os.environ)


class StartError(RuntimeError):
    """The cluster could not be had or did not start (the message says why)."""


def missing() -> str | None:
    """Why no cluster can be started here, or None if one can."""
    absent = [
        name for name in ("munged", "slurmctld", "slurmd") if not shutil.which(name)
    ]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test's Slurm daemons run as root (as Slurm's do)"
    return None


def _wait_ready(cluster: Cluster, daemons: list):
    """Wait until the node is idle in ``sinfo``; raise with the logs otherwise."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], env=cluster.env, capture_output=True, text=True
        )
        if done.returncode == 0 and done.stdout.strip() == "idle":
            return
        if any(daemon.poll() is not None for daemon in daemons):
            break
        time.sleep(0.2)
    logs = [
        (cluster.directory / name).read_text(errors="replace")[-1500:]
        for name in ("munged.log", "slurmctld.log", "slurmd.log")
        if (cluster.directory / name).exists()
    ]
    raise StartError("The private Slurm cluster did not start:\n" + "\n".join(logs))


def _stop(daemons: list):
    for daemon in reversed(daemons):  # slurmd, slurmctld, then munged
        daemon.terminate()
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def _start_daemon(argv: list, env: dict) -> subprocess.Popen:
    # In a session of its own: a Ctrl-C meant for the caller does not stop the cluster
    # under its jobs; the caller stops it (``running``).
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@contextmanager
def running(cpus: int | None = None):
    """A private single-node Slurm cluster of ``cpus`` CPUs (this machine's by
    default), its jobs cancelled, daemons stopped and files removed on leaving,
    whatever the way out (an exception, Ctrl-C). Raises StartError if it cannot
    start."""
    reason = missing()
    if reason:
        raise StartError(reason)
    # Not under pytest's tmp_path: munged's Unix socket path must stay short (at most
    # 107 bytes), and pytest's temporary paths can be long.
    directory = Path(tempfile.mkdtemp(prefix="skmlp-slurm-"))
    cluster = Cluster(directory, cpus or os.cpu_count() or 1, _memory_mb())
    daemons = []
    try:
        for name in ("state", "spool"):
            (directory / name).mkdir()
        (directory / "slurm.conf").write_text(
            _config(directory, cluster.cpus, cluster.memory_mb)
        )
        daemons.append(_start_munge(directory))
        for argv in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            time.sleep(0.3)  # munged's socket, then slurmctld's port
            daemons.append(_start_daemon(argv, cluster.env))
        _wait_ready(cluster, daemons)
        yield cluster
    finally:
        if len(daemons) > 1 and daemons[1].poll() is None:
            subprocess.run(["scancel", "--full", "-u", "root"], env=cluster.env)
        _stop(daemons)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    """A private single-node Slurm cluster, stopped and removed after the module."""
    reason = missing()
    if reason:
        unavailable(reason)
    try:
        with running() as cluster:
            yield cluster
    except StartError as error:
        pytest.fail(str(error))
