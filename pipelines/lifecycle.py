"""The life of a pipeline's runs: signals, the tags that find a run's process, the end of
runs that a failure or an interrupt leaves open, and the reaping of runs whose process died.

Every run is tagged with its host and pid (``process_tags``), so that ``reap_dead_runs``
(at every pipeline start, or ``skmlp-reap``) can mark the runs of a process killed with
``-9`` FAILED. SIGTERM and SIGINT become KeyboardInterrupt (``handle_signals``), and
``end_runs`` ends what they leave open KILLED (interrupt) or FAILED (error), never
RUNNING. A sweep's parent stops its children through ``stop_children`` before it ends;
children whose process died end FAILED with the cause. A parallel sweep's workers end
with its parent (``skmlp._workers``); runs they leave end KILLED, saying so.
"""

import argparse
import atexit
import functools
import gc
import os
import signal
import socket
import threading
import time
from pathlib import Path

import mlflow
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient

from pipelines.redact import redact_uri
from pipelines.store import check_store, tracking_uri
from skmlp._workers import parent_gone, worker_exit

# Tags on every run: where its process lives, and why it ended if not by itself.
HOST_TAG, PID_TAG, REASON_TAG = "skmlp.host", "skmlp.pid", "skmlp.end_reason"
# A training run's last sign of life: Unix time, set about once a minute while it
# trains (pipelines.callbacks.MLflowEpochLogger).
HEARTBEAT_TAG = "skmlp.heartbeat"
# skmlp-reap ends runs, of any host, whose heartbeat is older than this.
STALE_AFTER_S = 600
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"
PARENT_GONE = "interrupted: the sweep's parent process died"
SWEEP_INTERRUPTED = "its sweep was interrupted"
# How long a sweep's parent waits for its children to end their runs themselves.
CHILDREN_GRACE_S = 20
DATABASE_CODE = tuple(
    f"{os.sep}{name}{os.sep}" for name in ("sqlalchemy", "alembic", "sqlite3")
)
_interrupted = threading.Event()
# Run first on an interrupt, before ``before_raise`` (the Slurm launcher's scancel).
_interrupt_hooks = []


# Why this process's sweep failed, noted where it was seen (the Slurm launcher's dead
# jobs) for the parent's end reason (``noted_failure``).
_failures = []


def note_failure(reason: str) -> None:
    """Record why this process's sweep failed, for its parent run's end reason."""
    _failures.append(reason)


def noted_failure() -> str | None:
    """The last reason given to :func:`note_failure`, if any."""
    return _failures[-1] if _failures else None


def process_tags() -> dict:
    """Where this run's process lives, so that a dead one can be found later."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def interrupted() -> bool:
    """Whether this process received SIGTERM or SIGINT."""
    return _interrupted.is_set()


def on_interrupt(hook):
    """Call ``hook()`` first when ``handle_signals`` turns a signal into an interrupt
    (before its ``before_raise``); returns a function that removes it."""
    _interrupt_hooks.append(hook)
    return lambda: _interrupt_hooks.remove(hook) if hook in _interrupt_hooks else None


@functools.cache  # once per process
def exit_without_collecting() -> None:
    """Let this process end without the garbage collector's passes over everything it
    imported.

    The interpreter's finalization collects the whole heap more than once; with
    scikit-learn, SciPy, pandas, MLflow and Matplotlib imported that took longer than
    many a sweep job (benchmarks/README.md). :func:`gc.freeze`, run as an exit handler,
    moves every object into the collector's permanent generation first. Every exit
    handler still runs (in the usual order), streams and logging are flushed and
    closed by their own handlers, and the system frees the memory.
    """
    atexit.register(gc.freeze)


def handle_signals(before_raise=None) -> None:
    """Turn the first SIGTERM or SIGINT into KeyboardInterrupt; ignore later ones.

    Later signals (a group signal, then the one a sweep's parent forwards) would
    otherwise interrupt the closing of the runs. The interrupt waits until the main
    thread is out of the database driver: raised inside a write, it would leave a
    transaction open and the store locked. ``before_raise()`` runs first (a sweep's
    parent stops its children there, before joblib kills its workers).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    raised = threading.Event()

    def handler(signum, frame):
        if signum == signal.SIGALRM and not _interrupted.is_set():
            return  # an alarm of someone else's, not our retry
        if raised.is_set() or (_interrupted.is_set() and signum != signal.SIGALRM):
            return  # already raised, or a retry is pending
        _interrupted.set()
        if _in_database_call(frame):
            signal.setitimer(signal.ITIMER_REAL, 0.05)  # try again in 50 ms
            return
        raised.set()
        for hook in list(_interrupt_hooks):
            hook()
        if before_raise is not None:
            before_raise()
        raise KeyboardInterrupt(f"interrupted by signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(signum, handler)


def _in_database_call(frame) -> bool:
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in DATABASE_CODE):
            return True
        frame = frame.f_back
    return False


# Below this many first-layer units in all, more BLAS threads gain little on a quiet
# machine and lose much on a busy one (benchmarks/README.md, "blas_threads").
THREADED_MIN_WIDTH = 128


def blas_threads(setting, width=None):
    """BLAS threads for this job: an int, None (no limit), or "auto".

    "auto": in a parallel sweep (the joblib launcher's ``n_jobs``), each job's share
    of the CPUs this process may use (its affinity, Slurm's ``SLURM_CPUS_PER_TASK``);
    otherwise 1 for networks narrower than ``THREADED_MIN_WIDTH`` first-layer units
    (``width``: all the task's networks together), else the CPUs idle right now (in
    a Slurm job: all the CPUs it was given).
    """
    if setting != "auto":
        return setting
    launcher = HydraConfig.get().launcher
    n_jobs = (
        launcher.get("n_jobs") if "joblib" in launcher.get("_target_", "") else None
    )
    return job_threads(n_jobs, width)


def job_threads(n_jobs, width, idle=None):
    """``blas_threads("auto")`` for this process. A Slurm job's CPUs are its own,
    busy or idle (other jobs on its node have theirs): it counts them all.
    ``idle()``: the CPUs idle now (default :func:`idle_cpus`)."""
    if os.environ.get("SLURM_JOB_ID"):
        idle = lambda: None  # noqa: E731
    return auto_threads(usable_cpus(), n_jobs, width, idle or idle_cpus)


def auto_threads(cpus, n_jobs, width, idle):
    """The rule of ``blas_threads("auto")``; ``idle()`` gives the idle CPUs (or None)."""
    if n_jobs and n_jobs != 1:
        return max(1, cpus // (cpus if n_jobs < 0 else n_jobs))
    if width is not None and width < THREADED_MIN_WIDTH:
        return 1
    free = idle()
    return cpus if free is None else max(1, min(cpus, int(free + 0.5)))


def usable_cpus():
    """The CPUs this process may run on: its affinity, and Slurm's share."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = cpus or os.cpu_count() or 1
    slurm = slurm_cpus()
    return min(cpus, slurm) if slurm else cpus


def slurm_cpus() -> int | None:
    """The CPUs Slurm gave each task of this job: ``SLURM_CPUS_PER_TASK``, else the
    node's share (``SLURM_JOB_CPUS_PER_NODE``, "4" or "4(x2)") over its tasks; None
    outside a job."""
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        return int(per_task)
    per_node = os.environ.get("SLURM_JOB_CPUS_PER_NODE", "").split("(")[0]
    tasks = os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]
    if per_node.isdigit() and tasks.isdigit() and int(per_node) > 0:
        return max(1, int(per_node) // max(1, int(tasks)))
    return None


def idle_cpus(seconds=0.1):
    """How many CPUs sat idle over the next ``seconds`` (``/proc/stat``; None where
    it cannot be read)."""

    def sample():
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all

    try:
        idle_before, all_before = sample()
        time.sleep(seconds)
        idle_after, all_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    if all_after == all_before:
        return None
    share = (idle_after - idle_before) / (all_after - all_before)
    return share * (os.cpu_count() or 1)


def end_runs(client: MlflowClient, run_ids, status: str, reason: str) -> None:
    """End MLflow's active runs of this thread, then the runs ``run_ids``, with
    ``status`` (KILLED, FAILED) and ``reason`` in the tag ``skmlp.end_reason``.

    A sweep's worker whose parent died says so, and reaps the dead parent's run.
    """
    gone = parent_gone()
    if reason == INTERRUPTED and gone:
        reason = PARENT_GONE
    while mlflow.active_run() is not None:
        mlflow.set_tag(REASON_TAG, reason)
        mlflow.end_run(status)
    for run_id in run_ids:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, REASON_TAG, reason)
            client.set_terminated(run_id, status)
    if gone:
        reap_dead_runs(client.tracking_uri)


def stop_children(client: MlflowClient, parent_id: str) -> list[str]:
    """End the RUNNING children of a sweep: SIGTERM those on this host and wait (at
    most ``CHILDREN_GRACE_S``) for them to end their runs; mark those left KILLED.

    A child whose process on this host is dead (a worker killed, a crash) cannot end
    its run: it is marked FAILED at once, with the cause where this process knows it
    (its worker's signal or exit code), and not waited for. A pid is signalled only
    if its process started before its run (a pid reused after a ``kill -9`` belongs
    to someone else). Children of this process are left to it: they end through its
    own ``end_runs``. Returns what killed those marked FAILED ("process 123 on
    host died: killed by signal 9 (SIGKILL)").
    """
    deadline = time.monotonic() + CHILDREN_GRACE_S
    for child in running_children(client, parent_id):
        pid = _local_pid(child)
        if pid and process_alive(pid, child.info.start_time):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass  # gone already
    crashed = []
    while True:
        waiting = []
        for child in running_children(client, parent_id):
            pid = _local_pid(child)
            if pid and not process_alive(pid, child.info.start_time):
                crashed.append(_end_crashed(client, child, pid))
            elif int(child.data.tags.get(PID_TAG, 0)) != os.getpid():
                waiting.append(child)
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for child in running_children(client, parent_id):
        client.set_tag(child.info.run_id, REASON_TAG, SWEEP_INTERRUPTED)
        client.set_terminated(child.info.run_id, "KILLED")
    return crashed


def _local_pid(child) -> int | None:
    """The pid of a child run's process if it is on this host and not this one."""
    pid = int(child.data.tags.get(PID_TAG, 0))
    on_this_host = child.data.tags.get(HOST_TAG) == socket.gethostname()
    return pid if on_this_host and pid > 1 and pid != os.getpid() else None


def _end_crashed(client: MlflowClient, child, pid: int) -> str:
    """Mark the run of a child whose process died FAILED, with the cause."""
    cause = worker_exit(pid)
    death = f"process {pid} on {socket.gethostname()} died" + (
        f": {cause}" if cause else " (killed?)"
    )
    client.set_tag(child.info.run_id, REASON_TAG, f"its {death}")
    client.set_terminated(child.info.run_id, "FAILED")
    return death


def running_children(client: MlflowClient, parent_id: str) -> list:
    """The RUNNING child runs of run ``parent_id``."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'",
    )


def process_alive(pid: int, since_ms: int) -> bool:
    """Whether process ``pid`` runs and started before ``since_ms`` (so it is not a
    later process that reuses a dead one's pid). Zombies count as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, IndexError):
        return True  # no /proc (macOS): trust the pid
    started = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
    return stat[0] != "Z" and started <= since_ms / 1000 + 1


def reap_dead_runs(uri: str) -> list[str]:
    """Mark this host's RUNNING runs whose process is gone as FAILED, tagged with
    why (``skmlp.end_reason``). Returns their ids."""
    client = MlflowClient(uri)
    host = socket.gethostname()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=50000,
    )
    reaped = []
    for run in runs:
        pid = int(run.data.tags.get(PID_TAG, 0))
        if pid > 0 and not process_alive(pid, run.info.start_time):
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            reason = f"its process {pid} on {host} was gone at {when} (killed?)"
            client.set_tag(run.info.run_id, REASON_TAG, reason)
            client.set_terminated(run.info.run_id, "FAILED")
            reaped.append(run.info.run_id)
    return reaped


def reap_silent_runs(uri: str, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Mark RUNNING runs of any host whose heartbeat (``skmlp.heartbeat``) is older
    than ``stale_after_s`` seconds FAILED, tagged with why. Returns their ids.

    Runs of this host whose process is alive are left alone (a long epoch, a store
    that was down); runs with no heartbeat (a sweep's parent, runs of older
    versions) too. Another host's clock counts: keep the threshold well above any
    skew between the hosts' clocks.
    """
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, "attributes.status = 'RUNNING'", max_results=50000
    )
    reaped, now = [], time.time()
    for run in runs:
        beat = _heartbeat(run)
        if beat is None or now - beat <= stale_after_s or _alive_here(run):
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(beat))
        tags = run.data.tags
        reason = (
            f"its heartbeat stopped at {when} ({now - beat:.0f} s before "
            f"skmlp-reap ran on {socket.gethostname()}): process "
            f"{tags.get(PID_TAG, '?')} on {tags.get(HOST_TAG, '?')} gone?"
        )
        client.set_tag(run.info.run_id, REASON_TAG, reason)
        client.set_terminated(run.info.run_id, "FAILED")
        reaped.append(run.info.run_id)
    return reaped


def _heartbeat(run) -> float | None:
    try:
        return float(run.data.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return None


def _alive_here(run) -> bool:
    """Whether the run's process is on this host and alive."""
    tags = run.data.tags
    if tags.get(HOST_TAG) != socket.gethostname():
        return False
    pid = int(tags.get(PID_TAG, 0) or 0)
    return pid > 0 and process_alive(pid, run.info.start_time)


def reap_main(argv=None) -> None:
    """Console command ``skmlp-reap``: mark as FAILED this host's runs whose process
    died, and any host's runs whose heartbeat stopped."""
    parser = argparse.ArgumentParser(description=reap_main.__doc__)
    parser.add_argument("--uri", help="tracking URI (default: as the pipelines use)")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=STALE_AFTER_S,
        metavar="SECONDS",
        help="end runs of any host whose heartbeat is older than this "
        f"(default {STALE_AFTER_S}; 0: none)",
    )
    args = parser.parse_args(argv)
    uri = tracking_uri(args.uri)
    check_store(uri)
    reaped = reap_dead_runs(uri)
    print(f"{len(reaped)} runs of dead processes marked FAILED in {redact_uri(uri)}")
    silent = reap_silent_runs(uri, args.stale_after) if args.stale_after > 0 else []
    print(
        f"{len(silent)} runs with no heartbeat for {args.stale_after:g} s marked "
        f"FAILED in {redact_uri(uri)}"
    )
    for run_id in reaped + silent:
        print(f"  {run_id}")


if __name__ == "__main__":
    reap_main()
