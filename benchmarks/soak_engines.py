"""Soak across engines (issue 18, item 7): one sweep of 8 jobs on a Slurm cluster into
an ``mlflow server`` on PostgreSQL, the server killed mid-sweep and back 10 s later.

    python benchmarks/soak_engines.py                # 8 jobs x 2000 epochs, 10 s down
    python benchmarks/soak_engines.py --outage 20 --epochs 60 --keep

Starts a private single-node Slurm cluster (``tests/slurm.py``: munged, slurmctld,
slurmd on 127.0.0.1) and a private PostgreSQL cluster (``tests/postgres.py``), an
``mlflow server`` on a fresh database of it with served artifacts (the README's
recipe, ``soak_store.Server``), then the sweep (``hydra/launcher=slurm``, one CPU and
1 GB a job, so that the 2-CPU box runs two at a time; 2000 epochs of the digits, about
10 s of training a job, so that the outage lands while jobs train). Once ``--after``
jobs have stored epochs, the server is SIGKILLed and started again on the same port
``--outage`` seconds later (``soak_store.outage``). At the end it checks and prints:
the command's exit code; every run FINISHED, or FAILED with an ``skmlp.end_reason``;
every FINISHED child has one point per epoch (its ``n_epochs``) of each per-epoch
metric; the parent has its 8 children and ``sweep_summary.json``; no ``mlflow.db``,
``mlruns`` or ``mlartifacts`` made in the jobs' or the sweep's folders (nor a change
of the project's ``mlruns/``); the artifacts are in the server's destination;
``squeue`` is empty. Exits non-zero unless all holds. Every daemon, cluster and
temporary folder goes on every way out, Ctrl-C and SIGTERM included (``--keep``
keeps the folder of logs). Needs root, slurm-wlm, munge, PostgreSQL and the
``postgres`` extra. Not part of the test suite: it takes minutes.
"""

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from soak_store import (
    EPOCH_METRICS,
    JOBS,
    N_JOBS,
    QUICK,
    Server,
    children_with_epochs,
    outage,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the private clusters of the tests

import postgres  # noqa: E402
import slurm  # noqa: E402

# One CPU and 1 GB a job: two jobs at a time on a 2-CPU node.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1"]
SLURM += ["hydra.launcher.mem_gb=1"]
STRAY = ("mlflow.db", "mlruns", "mlartifacts")


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--outage", type=float, default=10, help="seconds down")
    parser.add_argument(
        "--after", type=int, default=2, help="jobs with epochs before the outage"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="sweep limit, s")
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder")
    return parser.parse_args()


def interrupted(signum, frame):
    """SIGTERM as Ctrl-C: the ``with`` blocks tear everything down."""
    raise KeyboardInterrupt(f"signal {signum}")


def start_sweep(args, workdir, env):
    """The sweep's driver, in ``workdir/submit``; its output in ``sweep.log``."""
    command = [sys.executable, "-m", "pipelines.train", "-m", *SLURM, *QUICK, *JOBS]
    command += [f"model.max_iter={args.epochs}", f"hydra.sweep.dir={workdir}/sweep"]
    (workdir / "submit").mkdir()
    with open(workdir / "sweep.log", "wb") as log:
        return subprocess.Popen(
            command, env=env, cwd=workdir / "submit", stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop(process, timeout=120):
    """SIGTERM ``process`` (a driver cancels its jobs), SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_server(server):
    if server.process is not None and server.process.poll() is None:
        server.kill()


def outage_when_ready(server, driver, args):
    """``soak_store.outage`` once ``args.after`` children have epochs; None (and no
    outage) if the driver ends first."""
    while children_with_epochs(server.base) < args.after:
        if driver.poll() is not None:
            return None
        time.sleep(0.5)
    return outage(server, args.after, args.outage)


def sweep_runs(uri):
    """(parents, children) of the store's ``skmlp`` experiment."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("skmlp")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def ended_clearly(runs):
    """Failures: runs neither FINISHED nor FAILED with their reason."""
    return [
        f"run {r.info.run_name} is {r.info.status}"
        + (" with no skmlp.end_reason" if r.info.status == "FAILED" else "")
        for r in runs
        if r.info.status != "FINISHED"
        and not (r.info.status == "FAILED" and "skmlp.end_reason" in r.data.tags)
    ]


def points(client, run):
    """(present, expected) epoch points of a FINISHED child; one per epoch and
    metric, none repeated."""
    epochs = int(run.data.metrics.get("n_epochs", 0))
    present = 0
    for key in EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        present += len(set(steps)) if len(set(steps)) == len(steps) else 0
    return present, epochs * len(EPOCH_METRICS)


def check_parent(client, parents, children):
    """Failures: not one parent with every job a child of it and its summary."""
    if len(parents) != 1:
        return [f"{len(parents)} parent runs, not 1"]
    parent = parents[0].info.run_id
    own = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent]
    failures = [] if len(own) == N_JOBS else [f"{len(own)} children of {N_JOBS}"]
    artifacts = [a.path for a in client.list_artifacts(parent)]
    if "sweep_summary.json" not in artifacts:
        failures.append(f"the parent has no sweep_summary.json: {artifacts}")
    return failures


def strays(workdir, project_before):
    """Stores or artifact folders made where none should be."""
    found = [str(p) for name in STRAY for p in (workdir / "submit").rglob(name)]
    found += [str(p) for name in STRAY for p in (workdir / "sweep").rglob(name)]
    if sorted((ROOT / "mlruns").rglob("*")) != project_before:
        found.append(f"{ROOT / 'mlruns'} changed")
    return found


def queue_empty(cluster, wait_s=30):
    """Whether ``squeue`` is empty, given ``wait_s`` for completing jobs to leave."""
    deadline = time.monotonic() + wait_s
    while cluster.queue() and time.monotonic() < deadline:
        time.sleep(1)
    return cluster.queue() == []


def check(server, cluster, workdir, project_before):
    """Print what holds; return the failures."""
    client = MlflowClient(server.base)
    parents, children = sweep_runs(server.base)
    finished = [c for c in children if c.info.status == "FINISHED"]
    present = expected = 0
    for run in finished:
        got, wanted = points(client, run)
        present, expected = present + got, expected + wanted
    print(f"runs: {len(parents)} parent(s), {len(children)} children")
    print(f"FINISHED: {sum(r.info.status == 'FINISHED' for r in parents + children)}")
    print(f"metric points of FINISHED children: {present} of {expected}")
    for run in parents + children:
        if run.info.status != "FINISHED":
            reason = run.data.tags.get("skmlp.end_reason", "no skmlp.end_reason")
            print(f"  {run.info.run_name}: {run.info.status} ({reason[:200]})")
    failures = ended_clearly(parents + children)
    failures += check_parent(client, parents, children)
    if present != expected or not finished:
        failures.append(f"metric points: {present} of {expected}")
    failures += [f"stray store: {path}" for path in strays(workdir, project_before)]
    if not any(path.is_file() for path in (workdir / "artifacts").rglob("*")):
        failures.append("no artifact in the server's destination")
    if not queue_empty(cluster):
        failures.append(f"squeue not empty: {cluster.queue()}")
    return failures


def soak(args, stack, workdir):
    """Start everything (torn down by ``stack``), run the sweep; return failures."""
    cluster = stack.enter_context(slurm.running())
    database = stack.enter_context(postgres.running())
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SLURM_CONF": cluster.env["SLURM_CONF"],
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    server = Server(database.createdb("mlflow"), workdir, env)
    stack.callback(stop_server, server)
    server.start()
    env["MLFLOW_TRACKING_URI"] = server.base
    project_before = sorted((ROOT / "mlruns").rglob("*"))
    start = time.monotonic()
    driver = start_sweep(args, workdir, env)
    stack.callback(stop, driver)
    down = outage_when_ready(server, driver, args)
    code = driver.wait(timeout=args.timeout)
    print(f"{N_JOBS} jobs x {args.epochs} epochs on Slurm ({cluster.cpus} CPUs) into")
    print(f"mlflow server on PostgreSQL: {time.monotonic() - start:.0f} s, exit {code}")
    if down is None:
        print("the sweep ended before the outage")
    else:
        print(f"server killed {down[0] - start:.0f} s in, back {down[1]:.1f} s later")
    failures = [] if code == 0 else [f"the sweep exited {code}"]
    failures += [] if down else ["no outage"]
    return failures + check(server, cluster, workdir, project_before)


def main():
    args = parse()
    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="skmlp-soak-engines-"))
    failures = ["interrupted"]
    try:
        with contextlib.ExitStack() as stack:
            failures = soak(args, stack, workdir)
    except (slurm.StartError, postgres.StartError) as error:
        failures = [f"cannot start: {error}"]
    except KeyboardInterrupt:
        failures = ["interrupted (everything stopped)"]
    finally:
        if failures and (workdir / "sweep.log").exists():
            print((workdir / "sweep.log").read_text(errors="replace")[-3000:])
        for failure in failures:
            print(f"FAILED: {failure}")
        if args.keep:
            print(f"logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("all holds" if not failures else f"{len(failures)} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
