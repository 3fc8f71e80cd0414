"""A sweep on Slurm that fails loudly and cleans up (``hydra/launcher=slurm``).

Hydra's submitit launcher submits a sweep as one job array and waits for every job's
result file; without accounting (slurmdbd) it cannot tell a job that died from one
that waits, and it leaves the array queued when the driver is interrupted. The
launcher of ``hydra_plugins.skmlp_slurm`` submits as it does, then waits here:

- before anything is submitted, :func:`check_request` compares what each job asks of
  a node with the partition's largest node (``sinfo``): a request no node can satisfy
  stops the sweep before any job or run exists (``pipelines/sweep_check.py``);
- while jobs wait, their PENDING reasons are logged every ``REPORT_EVERY_S``
  (``squeue``);
- a job that left the queue without a result (it died on its node) is reported at
  once with the end of its error output, and the sweep fails when the others end;
- an interrupt (Ctrl-C, SIGTERM) cancels the sweep's jobs (``scancel``) first, so
  their runs end KILLED as a local sweep's do.
"""

import getpass
import logging
import math
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass

from pipelines.lifecycle import on_interrupt

log = logging.getLogger(__name__)

POLL_S = 3
REPORT_EVERY_S = 60
# A job that ended may take this long to show its result file on a network file system.
RESULT_GRACE_S = 15
# How long an interrupted sweep waits for Slurm to end its cancelled jobs (their
# processes get SIGTERM, then SIGKILL after the cluster's KillWait, 30 s by default).
CANCEL_WAIT_S = 45
# Job states in which Slurm may still run the job (the rest: it ended).
ACTIVE = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED",
}  # fmt: skip
NO_ENVIRONMENT = "Could not figure out which environment"


class SlurmError(RuntimeError):
    """Slurm cannot run the sweep as asked, or its jobs died."""


@dataclass(frozen=True)
class Node:
    """What one node offers: CPUs, memory (MiB), GPUs."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int

    def text(self) -> str:
        return f"{self.cpus} CPUs, {self.memory_mb / 1024:.1f} GB, {self.gpus} GPUs"


def register_launcher() -> None:
    """Make Hydra know the launcher of ``hydra_plugins.skmlp_slurm`` (Hydra's own scan
    of ``hydra_plugins`` misses it in an editable install run from elsewhere than the
    project's folder). Call it before Hydra starts the launcher: the sweep's check
    does (``pipelines/sweep_check.py``, in the sweep callback's first step)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.skmlp_slurm import SlurmLauncher

    Plugins.instance().register(SlurmLauncher)


def slurm_command(*argv: str) -> str:
    """The output of a Slurm command; a clear error when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        raise SlurmError(
            f"Slurm's {argv[0]} is not on PATH: run the sweep on a machine of the "
            "cluster (a login node), or choose another launcher."
        )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def partition_nodes(partition: str | None) -> tuple[str, list[Node]]:
    """The partition (given, else the cluster's default) and its nodes (``sinfo``)."""
    lines = slurm_command("sinfo", "-h", "-N", "-o", "%P|%n|%c|%m|%G").splitlines()
    rows = [line.split("|") for line in lines if line.count("|") == 4]
    if partition is None:
        defaults = {row[0].rstrip("*") for row in rows if row[0].endswith("*")}
        if not defaults:
            raise SlurmError(
                "The cluster has no default partition: set hydra.launcher.partition."
            )
        partition = defaults.pop()
    nodes = [
        Node(row[1], int(row[2].rstrip("+")), int(row[3].rstrip("+")), _gpus(row[4]))
        for row in rows
        if row[0].rstrip("*") == partition
    ]
    if not nodes:
        known = sorted({row[0].rstrip("*") for row in rows})
        raise SlurmError(
            f"Slurm has no partition {partition!r} (sinfo lists {', '.join(known)}): "
            "set hydra.launcher.partition to one of them."
        )
    return partition, nodes


def _gpus(gres: str) -> int:
    """GPUs in a ``sinfo`` GRES field (``gpu:2``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    count = 0
    for entry in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = entry.split(":")
        if parts[0] == "gpu":
            count += int(parts[-1]) if parts[-1].isdigit() else 1
    return count


def requested(launcher) -> Node:
    """What each job of the sweep asks of one node (``hydra.launcher``)."""
    tasks = launcher.get("tasks_per_node") or 1
    cpus = (launcher.get("cpus_per_task") or 1) * tasks
    memory_mb = math.ceil((launcher.get("mem_gb") or 0) * 1024)
    gpus = launcher.get("gpus_per_node") or (launcher.get("gpus_per_task") or 0) * tasks
    return Node("request", cpus, memory_mb, gpus)


def check_request(launcher, device: str = "cpu") -> None:
    """Raise :class:`SlurmError` unless ``nodes`` nodes of the partition can each give
    a job what it asks; naming what was asked and what the largest node has."""
    ask = requested(launcher)
    partition, nodes = partition_nodes(launcher.get("partition"))
    fits = [
        node
        for node in nodes
        if node.cpus >= ask.cpus
        and node.memory_mb >= ask.memory_mb
        and node.gpus >= ask.gpus
    ]
    wanted = launcher.get("nodes") or 1
    if len(fits) < wanted:
        largest = Node(
            "largest",
            max(n.cpus for n in nodes),
            max(n.memory_mb for n in nodes),
            max(n.gpus for n in nodes),
        )
        raise SlurmError(
            f"no node of Slurm partition {partition!r} can run these jobs: each asks "
            f"{wanted} node(s) for {ask.text()} (cpus_per_task x tasks_per_node, "
            f"mem_gb, gpus_per_node); {len(fits)} of its {len(nodes)} nodes can, its "
            f"largest has {largest.text()} (sinfo). Lower hydra.launcher.cpus_per_task, "
            "mem_gb or gpus_per_node, or choose a partition with larger nodes "
            "(hydra.launcher.partition=...)."
        )
    if device.startswith(("cuda", "cupy")) and ask.gpus == 0:
        raise SlurmError(
            f"device={device} but the Slurm jobs ask for no GPU: use "
            "hydra/launcher=slurm_gpu (or set hydra.launcher.gpus_per_node)."
        )


def queue_states(job_ids) -> dict:
    """``{job id: (state, reason)}`` of those of ``job_ids`` Slurm still knows
    (``squeue``: pending, running, and recently ended jobs); None if it cannot say."""
    try:
        out = slurm_command(
            "squeue", "-h", "-r", "--states=all", "-u", getpass.getuser(),
            "-o", "%i|%T|%r",
        )  # fmt: skip
    except (SlurmError, subprocess.TimeoutExpired) as exc:
        log.warning("Could not read Slurm's queue (will try again): %s", exc)
        return None
    wanted, states = set(job_ids), {}
    for line in out.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        if job_id in wanted:
            states[job_id] = (state, reason)
    return states


def cancel(job_ids) -> None:
    """Cancel the job arrays of ``job_ids`` (``scancel``), whatever their state, and
    wait (at most ``CANCEL_WAIT_S``) until Slurm has ended them: their runs end
    KILLED by their own hand, before the sweep's parent looks at them."""
    arrays = sorted({str(job_id).split("_")[0] for job_id in job_ids})
    if not arrays or shutil.which("scancel") is None:
        return
    states = queue_states(job_ids)
    if states is not None and not any(s in ACTIVE for s, _ in states.values()):
        return  # all ended already: nothing to cancel
    subprocess.run(["scancel", *arrays], capture_output=True, timeout=60)
    log.info("Cancelled the sweep's Slurm jobs (scancel %s)", " ".join(arrays))
    deadline = time.monotonic() + CANCEL_WAIT_S
    while time.monotonic() < deadline:
        states = queue_states(job_ids)
        if states is not None and not any(s in ACTIVE for s, _ in states.values()):
            return
        time.sleep(1)
    log.warning(
        "Slurm jobs %s still not ended %d s after scancel", arrays, CANCEL_WAIT_S
    )


@contextmanager
def cancelled_on_interrupt(job_ids):
    """Cancel ``job_ids`` when the block ends by an exception or a signal (Ctrl-C,
    SIGTERM: first thing, before the sweep's parent waits for its children)."""
    cancelled = []

    def stop():
        if not cancelled:  # once: the signal's hook, or the exception it raised
            cancelled.append(True)
            cancel(job_ids)

    remove = on_interrupt(stop)
    try:
        yield
    except BaseException:
        stop()
        raise
    finally:
        remove()


def wait(jobs, labels) -> None:
    """Wait until every submitit job of ``jobs`` has its result file, logging PENDING
    reasons every ``REPORT_EVERY_S``; a job that ends without one is reported at once
    and, once no job can still run, raises :class:`SlurmError` naming them all.
    ``labels``: ``{job id: its number and overrides}``."""
    ended_at, dead, last_report = {}, {}, -math.inf
    while True:
        left = [job for job in jobs if not job.paths.result_pickle.exists()]
        states = queue_states([job.job_id for job in left])
        if states is not None:
            now = time.monotonic()
            for job in left:
                state = states.get(job.job_id, ("ENDED", "no longer in squeue"))
                if state[0] in ACTIVE or job.job_id in dead:
                    continue
                if now - ended_at.setdefault(job.job_id, now) > RESULT_GRACE_S:
                    dead[job.job_id] = _death(job, labels[job.job_id], state)
                    log.error("%s", dead[job.job_id])
            if now - last_report >= REPORT_EVERY_S and _report_pending(states):
                last_report = now
        if all(job.job_id in dead for job in left):
            break
        time.sleep(POLL_S)
    if dead:
        raise SlurmError(
            f"{len(dead)} of the sweep's {len(jobs)} Slurm jobs ended without a "
            "result:\n" + "\n".join(dead.values())
        )


def _report_pending(states: dict) -> bool:
    """Log the pending jobs by reason; whether there were any."""
    reasons = {}
    for job_id, (state, reason) in states.items():
        if state == "PENDING" and reason != "None":  # None: not yet scheduled
            reasons.setdefault(reason, []).append(job_id)
    if reasons:
        running = sum(state == "RUNNING" for state, _ in states.values())
        waiting = "; ".join(f"{r}: {', '.join(ids)}" for r, ids in reasons.items())
        pending = sum(map(len, reasons.values()))
        log.info("Slurm: %d job(s) PENDING (%s), %d running", pending, waiting, running)
    return bool(reasons)


def _death(job, label: str, state: tuple) -> str:
    """What to say of a job that ended without a result: its state, the end of its
    error output, and what to do."""
    text = f"Slurm job {job.job_id} ({label}) ended {state[0]} ({state[1]})"
    errors = job.paths.stderr
    tail = errors.read_text(errors="replace")[-1500:] if errors.exists() else ""
    text += f"; its error output {errors} ends:\n{tail}" if tail else f"; see {errors}"
    if NO_ENVIRONMENT in tail:
        text += (
            "\nThe job did not see the environment it was submitted from (sbatch "
            "--export, SBATCH_EXPORT): submitit's job step needs SUBMITIT_EXECUTOR. "
            "Unset SBATCH_EXPORT, or list it there (e.g. "
            "SBATCH_EXPORT=PATH,HOME,SUBMITIT_EXECUTOR)."
        )
    return text
