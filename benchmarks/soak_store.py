"""Soak check of the MLflow store (issues 11 and 21): sweeps started together into one
store, which may go away for a while in the middle.

    python benchmarks/soak_store.py                # 3 sweeps x 8 jobs, 2 of them parallel
    python benchmarks/soak_store.py --sweeps 5
    python benchmarks/soak_store.py --outage 15    # into an MLflow server, killed
                                                   # mid-way and back 15 s later

Starts the sweeps at the same moment into one fresh store (a sqlite file in a temporary
directory, or with ``--outage`` an ``mlflow server`` over one), waits for them, then
counts: runs (parents + children), runs FINISHED, and metric points present against
those expected (one per epoch for each per-epoch metric). With ``--outage``, the server
is killed (SIGKILL to its process group) once a third of the jobs have stored epochs,
and started again on the same port and store ``--outage`` seconds later. Prints what it
checks and exits non-zero unless everything is there. Not part of the test suite: it
takes minutes.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
JOBS = ["model.activation=relu,tanh", "model.learning_rate_init=0.01,0.05", "seed=0,1"]
N_JOBS = 8
QUICK = ["data=digits", "model.tol=0", "tracking.log_model=false"]
EPOCH_METRICS = ("loss", "train_accuracy", "test_accuracy", "seconds")


def start_sweeps(args, workdir, env):
    processes = []
    for i in range(args.sweeps):
        launcher = ["hydra/launcher=parallel"] if i < args.parallel else []
        command = [
            *(sys.executable, "-m", "pipelines.train", "-m", *launcher, *QUICK, *JOBS),
            f"model.max_iter={args.epochs}",
            f"hydra.sweep.dir={workdir}/sweep{i}",
        ]
        log = open(workdir / f"sweep{i}.log", "w")  # closed in main()
        processes.append(
            (
                subprocess.Popen(
                    command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    return processes


class Server:
    """``mlflow server`` over the sqlite store ``uri``, on a fixed port, that can be
    killed and started again."""

    def __init__(self, uri, workdir, env):
        self.uri, self.workdir, self.env = uri, workdir, env
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base, self.process = f"http://127.0.0.1:{self.port}", None

    def start(self):
        argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri"]
        argv += [self.uri, "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--workers", "2", "--artifacts-destination"]
        argv += [str(self.workdir / "artifacts")]
        with open(self.workdir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                argv, env=self.env, cwd=self.workdir, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"mlflow server did not start: see {self.workdir}/server.log")

    def kill(self):
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def children_with_epochs(uri):
    """How many child runs of the store have stored at least one epoch."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("skmlp")
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], max_results=10000)
    return sum(
        "mlflow.parentRunId" in run.data.tags and "loss" in run.data.metrics
        for run in runs
    )


def outage(server, n_children, seconds):
    """Kill ``server`` once ``n_children`` children have stored epochs; start it
    again ``seconds`` later. Returns when the outage began and how long the server
    did not answer."""
    while children_with_epochs(server.base) < n_children:
        time.sleep(0.5)
    began = time.monotonic()
    server.kill()
    time.sleep(seconds)
    server.start()
    return began, time.monotonic() - began


def count(uri, epochs):
    """(runs, FINISHED runs, metric points present, metric points expected)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("skmlp")
    runs = client.search_runs([experiment.experiment_id], max_results=10000)
    finished = sum(r.info.status == "FINISHED" for r in runs)
    present = expected = 0
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags:
            continue
        expected += len(EPOCH_METRICS) * epochs
        for key in EPOCH_METRICS:
            present += len(client.get_metric_history(run.info.run_id, key))
    return len(runs), finished, present, expected


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="3; 40 with --outage")
    parser.add_argument(
        "--outage", type=float, default=0, help="seconds the server is down (0: none)"
    )
    args = parser.parse_args()
    args.epochs = args.epochs or (40 if args.outage else 3)
    workdir = Path(tempfile.mkdtemp(prefix="skmlp-soak-"))
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = None
    try:
        if args.outage:
            (workdir / "mlruns").mkdir()
            server = Server(uri, workdir, env)
            server.start()
            uri = server.base
        run_and_report(args, uri, workdir, env, server)
    finally:  # report() exits: the server (restarted or not) must not outlive us
        if server is not None and server.process.poll() is None:
            server.kill()


def run_and_report(args, uri, workdir, env, server):
    env["MLFLOW_TRACKING_URI"] = uri
    start = time.perf_counter()
    processes = start_sweeps(args, workdir, env)
    down = None
    if server is not None:
        began, down = outage(server, args.sweeps * N_JOBS // 3, args.outage)
        down = (began - start, down)
    codes = []
    for process, log in processes:
        codes.append(process.wait(timeout=3600))
        log.close()
    seconds = time.perf_counter() - start
    report(args, uri, workdir, codes, seconds, down)


def report(args, uri, workdir, codes, seconds, down):
    """Print what was checked; exit non-zero unless everything is there."""
    n_runs, finished, present, expected = count(uri, args.epochs)
    wanted = args.sweeps * (N_JOBS + 1)
    print(f"store: {uri} (logs in {workdir})")
    print(
        f"{args.sweeps} sweeps x {N_JOBS} jobs x {args.epochs} epochs "
        f"({args.parallel} parallel) in {seconds:.0f} s"
    )
    if down is not None:
        print(
            f"server killed {down[0]:.0f} s in, answering again {down[1]:.1f} s later"
        )
    print(f"exit codes: {codes}")
    print(f"runs: {n_runs} (expected {wanted}), FINISHED: {finished}")
    print(f"metric points: {present} of {expected}")
    ok = codes == [0] * args.sweeps and n_runs == finished == wanted
    sys.exit(0 if ok and present == expected else 1)


if __name__ == "__main__":
    main()
