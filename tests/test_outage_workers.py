"""A tracking server that goes away while ``fit_together(n_jobs=2)`` trains in joblib
workers (issue 21, item 1), library use: each worker's ``MLflowEpochLogger`` is a
copy that nobody in the calling process flushes later, so its points must reach the
store from the worker, waiting for the store, or be spooled there."""

import sys
import time

import pytest
from helpers import finish, output_of, run, start
from mlflow.tracking import MlflowClient
from test_outage import served

FIT = """
import sys
from sklearn.datasets import load_digits
from mlflow.tracking import MlflowClient
from pipelines.callbacks import EpochScoring, MLflowEpochLogger
from skmlp import SGDMLPClassifier, fit_together

uri, n_epochs, wait_s, spool = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
X, y = load_digits(return_X_y=True)
client = MlflowClient(uri)
experiment = client.create_experiment("workers")
estimators = []
for seed in (0, 1):
    run_id = client.create_run(experiment).info.run_id
    scoring = EpochScoring({})
    logger = MLflowEpochLogger(
        scoring, run_id, tracking_uri=uri, outage_wait_s=wait_s, spool_dir=spool
    )
    estimator = SGDMLPClassifier(
        hidden_layer_sizes=[256, 256], max_iter=n_epochs, tol=0,
        n_iter_no_change=10**6, random_state=seed,
    )
    estimators.append(estimator.set_callbacks(scoring, logger))
fit_together(estimators, X / 16, y, n_jobs=2)
print("fitted", flush=True)
"""


def fit_in_workers(tmp_path, env, uri, wait_s):
    """Start the script above: two networks fitted in two workers, logging to
    ``uri``, each run's epochs stored (waited for) before it returns."""
    (tmp_path / "fit_in_workers.py").write_text(FIT)
    args = [uri, "150", str(wait_s), str(tmp_path / "spool")]
    process = start(args, env, tmp_path, module="fit_in_workers")
    client = MlflowClient(uri)

    def both_logging():
        found = client.get_experiment_by_name("workers")
        runs = client.search_runs([found.experiment_id]) if found else []
        return len(runs) == 2 and all("loss" in r.data.metrics for r in runs)

    deadline = time.monotonic() + 180
    while not both_logging():
        assert process.poll() is None, output_of(process)[-3000:]
        assert time.monotonic() < deadline, "no epochs stored after 180 s"
        time.sleep(0.2)
    return process, client


def wait_for_end_of_training(process, timeout=180):
    """Until the workers wait for the store at the fit's end, or the script ends."""
    deadline = time.monotonic() + timeout
    while "waiting up to" not in output_of(process) and process.poll() is None:
        assert time.monotonic() < deadline, output_of(process)[-3000:]
        time.sleep(0.5)


def check_all_epochs(client, output):
    experiment = client.get_experiment_by_name("workers").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == 2
    for found in runs:
        for key in ("loss", "seconds"):
            history = client.get_metric_history(found.info.run_id, key)
            steps = sorted(m.step for m in history)
            assert steps == list(range(1, 151)), (key, output[-3000:])


@pytest.mark.slow
def test_worker_fits_outlive_a_tracking_server_killed_and_restarted(store, tmp_path):
    """The server killed while the workers train; they finish training during the
    outage and wait; back 12 s later, every epoch's points are in the store."""
    _, env = store
    with served(tmp_path, env) as server:
        process, client = fit_in_workers(tmp_path, env, server.base, wait_s=300)
        server.kill()
        wait_for_end_of_training(process)
        time.sleep(12)
        server.start()
        output = finish(process, timeout=300)
        assert process.returncode == 0, output[-3000:]
        assert "fitted" in output
        check_all_epochs(client, output)


@pytest.mark.slow
def test_worker_fits_spool_their_points_past_the_wait(store, tmp_path):
    """Down past the logger's outage_wait_s: the fit still returns, each worker
    spools its run's points and says how to replay them; replayed once the server
    is back, every epoch's points are in the store and the runs stay RUNNING (their
    owner ends them)."""
    _, env = store
    with served(tmp_path, env) as server:
        process, client = fit_in_workers(tmp_path, env, server.base, wait_s=2)
        server.kill()
        output = finish(process, timeout=300)
        assert process.returncode == 0, output[-3000:]
        spooled = sorted((tmp_path / "spool").iterdir())
        assert len(spooled) == 2
        for folder in spooled:
            assert f"skmlp-replay {folder}" in output
        server.start()
        argv = [sys.executable, "-m", "pipelines.outage", str(tmp_path / "spool")]
        run(argv, tmp_path, env)
        check_all_epochs(client, output)
        assert not any((tmp_path / "spool").iterdir())
        experiment = client.get_experiment_by_name("workers").experiment_id
        assert {r.info.status for r in client.search_runs([experiment])} == {"RUNNING"}
