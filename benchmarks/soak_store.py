"""Soak check of the MLflow store (issue 11): sweeps started together into a new store.

    python benchmarks/soak_store.py            # 3 sweeps x 8 jobs, 2 of them parallel
    python benchmarks/soak_store.py --sweeps 5

Starts the sweeps at the same moment into one fresh sqlite store (in a temporary
directory), waits for them, then counts: runs (parents + children), runs FINISHED, and
metric points present against those expected (one per epoch for each per-epoch
metric). Exits non-zero unless everything is there. Not part of the test suite: it
takes minutes.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
JOBS = ["model.activation=relu,tanh", "model.learning_rate_init=0.01,0.05", "seed=0,1"]
QUICK = ["data=digits", "model.max_iter=3", "model.tol=0", "tracking.log_model=false"]
EPOCH_METRICS = ("loss", "train_accuracy", "test_accuracy", "seconds")


def start_sweeps(n_sweeps, n_parallel, workdir, env):
    processes = []
    for i in range(n_sweeps):
        launcher = ["hydra/launcher=parallel"] if i < n_parallel else []
        command = [
            *(sys.executable, "-m", "pipelines.train", "-m", *launcher, *QUICK, *JOBS),
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


def count(uri):
    """(runs, FINISHED runs, metric points present, metric points expected)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("skmlp")
    runs = client.search_runs([experiment.experiment_id], max_results=10000)
    finished = sum(r.info.status == "FINISHED" for r in runs)
    present = expected = 0
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags:
            continue
        expected += len(EPOCH_METRICS) * 3
        for key in EPOCH_METRICS:
            present += len(client.get_metric_history(run.info.run_id, key))
    return len(runs), finished, present, expected


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="skmlp-soak-"))
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    env.pop("SKMLP_PARENT_RUN_ID", None)
    start = time.perf_counter()
    processes = start_sweeps(args.sweeps, args.parallel, workdir, env)
    codes = []
    for process, log in processes:
        codes.append(process.wait(timeout=3600))
        log.close()
    seconds = time.perf_counter() - start
    n_runs, finished, present, expected = count(uri)
    wanted = args.sweeps * 9
    print(f"store: {uri}")
    print(
        f"{args.sweeps} sweeps x 8 jobs ({args.parallel} parallel) in {seconds:.0f} s"
    )
    print(f"exit codes: {codes}")
    print(f"runs: {n_runs} (expected {wanted}), FINISHED: {finished}")
    print(f"metric points: {present} of {expected}")
    ok = codes == [0] * args.sweeps and n_runs == finished == wanted
    sys.exit(0 if ok and present == expected else 1)


if __name__ == "__main__":
    main()
