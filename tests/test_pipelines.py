"""The real entry points, run as a user runs them (a subprocess), read back from MLflow."""

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import (
    QUICK,
    free_port,
    parent_and_children,
    run_entry_point,
    runs_of,
    wait_until_healthy,
)
from mlflow.tracking import MlflowClient


def test_train_logs_params_curves_metrics_artifacts_and_model(store, tmp_path):
    uri, env = store
    run_entry_point(
        "pipelines.train",
        [
            "data=digits",
            "model.max_iter=4",
            "model.tol=0",
            "tracking.experiment_name=one-run",
        ],
        env,
        tmp_path,
    )
    client, runs = runs_of(uri, "one-run")
    (run,) = runs
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.hidden_layer_sizes"] == "[16, 16]"
    assert params["model.activation"] == "relu" and params["data.name"] == "digits"
    for key in ("loss", "train_accuracy", "test_accuracy", "seconds"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3, 4], key
    metrics = run.data.metrics
    assert 0.5 < metrics["final_test_accuracy"] <= 1.0
    assert {
        "final_train_accuracy",
        "final_test_log_loss",
        "noise_confidence",
        "test_confidence",
    } <= set(metrics)
    assert run.data.tags["skmlp.dataset"] == "digits"
    assert len(run.data.tags["skmlp.git_commit"]) >= 7
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "config.yaml",
        "learning_curves.png",
        "confusion_matrix.png",
        "first_layer_weights.png",
    } <= artifacts

    import mlflow

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    from skmlp.datasets import load_digits_split

    X_test = load_digits_split().X_test
    assert model.predict(X_test[:20]).shape == (20,)


def test_cfg_job_shows_the_resolved_config(store, tmp_path):
    _, env = store
    result = run_entry_point(
        "pipelines.train",
        ["experiment=3b1b", "model.alpha=0.5", "--cfg", "job"],
        env,
        tmp_path,
    )
    assert "loss: squared_error" in result.stdout
    assert "activation: logistic" in result.stdout
    assert "alpha: 0.5" in result.stdout


@pytest.mark.slow
def test_multirun_is_one_parent_with_a_child_per_job(store, tmp_path):
    uri, env = store
    run_entry_point(
        "pipelines.train",
        [
            "-m",
            *QUICK,
            "model.hidden_layer_sizes=[16,16],[64]",
            "model.activation=relu,logistic",
            "tracking.experiment_name=grid",
        ],
        env,
        tmp_path,
    )
    _, runs = runs_of(uri, "grid")
    parents, children = parent_and_children(runs)
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {
        parents[0].info.run_id
    }
    assert {
        (r.data.params["model.hidden_layer_sizes"], r.data.params["model.activation"])
        for r in children
    } == {
        ("[16, 16]", "relu"),
        ("[16, 16]", "logistic"),
        ("[64]", "relu"),
        ("[64]", "logistic"),
    }
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_at_once(store, tmp_path):
    uri, env = store
    run_entry_point(
        "pipelines.train",
        [
            "-m",
            "hydra/launcher=parallel",
            *QUICK,
            "model.max_iter=40",
            "model.tol=0",
            "model.hidden_layer_sizes=[128]",
            "model.activation=relu,tanh",
            "tracking.experiment_name=parallel",
        ],
        env,
        tmp_path,
    )
    _, runs = runs_of(uri, "parallel")
    _, children = parent_and_children(runs)
    assert len(children) == 2
    first, second = sorted(children, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time  # they overlapped
    assert {r.data.params["blas_threads"] for r in children} == {"auto"}


@pytest.mark.slow
def test_sweep_preset_runs_without_dash_m(store, tmp_path):
    uri, env = store
    run_entry_point(
        "pipelines.train",
        ["sweep=sizes", *QUICK, "tracking.experiment_name=preset"],
        env,
        tmp_path,
    )
    _, runs = runs_of(uri, "preset")
    assert len(parent_and_children(runs)[1]) == 8


@pytest.mark.slow
def test_optuna_sweeper(store, tmp_path):
    uri, env = store
    run_entry_point(
        "pipelines.train",
        [
            "sweep=optuna",
            *QUICK,
            "hydra.sweeper.n_trials=3",
            "tracking.experiment_name=optuna",
        ],
        env,
        tmp_path,
    )
    _, runs = runs_of(uri, "optuna")
    _, children = parent_and_children(runs)
    assert len(children) == 3
    assert len({r.data.params["model.learning_rate_init"] for r in children}) == 3


@pytest.mark.slow
def test_submitit_local_launcher(store, tmp_path):
    """The cluster path (submitit), exercised with its local executor."""
    uri, env = store
    run_entry_point(
        "pipelines.train",
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            *QUICK,
            "model.activation=relu,tanh",
            "tracking.experiment_name=submitit",
        ],
        env,
        tmp_path,
    )
    _, runs = runs_of(uri, "submitit")
    _, children = parent_and_children(runs)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_grid_search_logs_a_child_per_candidate(store, tmp_path):
    uri, env = store
    result = run_entry_point(
        "pipelines.grid_search",
        [
            "data=digits",
            "model.max_iter=3",
            "search.cv=2",
            "tracking.experiment_name=gs",
        ],
        env,
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert output.count("[CV] END ") == 16  # progress: a line per candidate and fold
    assert "The sweep's 8 runs, best first:" in output
    client, runs = runs_of(uri, "gs")
    parents, children = parent_and_children(runs)
    assert len(parents) == 1 and len(children) == 8
    assert "best_cv_accuracy" in parents[0].data.metrics
    assert "final_test_accuracy" in parents[0].data.metrics
    assert all("mean_cv_accuracy" in r.data.metrics for r in children)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_ends_killed_not_running(store, tmp_path, sig):
    uri, env = store
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.train",
            "data=digits",
            "model.max_iter=100000",
            "model.tol=0",
            "model.n_iter_no_change=1000000",
            "model.batch_size=8",
            "tracking.experiment_name=interrupted",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        client = MlflowClient(uri)
        deadline = time.monotonic() + 120
        run = None
        while time.monotonic() < deadline:  # wait for a few epochs to be logged
            experiment = _experiment_or_none(client, "interrupted")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if (
                runs
                and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 3
            ):
                run = runs[0]
                break
            time.sleep(0.5)
        assert run is not None, "training never started"
        process.send_signal(sig)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def _experiment_or_none(client, name):
    try:
        return client.get_experiment_by_name(name)
    except Exception:  # the store's tables may not exist yet
        return None


@pytest.mark.slow
def test_mlflow_server_serves_the_runs(store, tmp_path):
    uri, env = store
    run_entry_point(
        "pipelines.train", [*QUICK, "tracking.experiment_name=served"], env, tmp_path
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, server)
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served",
            timeout=10,
        ) as response:
            experiment_id = json.load(response)["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.load(response)["runs"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(runs) == 1
    metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
    assert metrics["final_test_accuracy"] > 0.5


@pytest.mark.slow
def test_missing_data_files_fail_the_run_before_it_starts(store, tmp_path):
    """The data are read in a thread while MLflow is imported: a missing file still
    fails the command with the loader's message, and no run is left behind."""
    uri, env = store
    empty = tmp_path / "no-mnist-here"
    empty.mkdir()
    env = {
        **env,
        "SKMLP_MNIST_DIR": str(empty),
        "SKMLP_CACHE_DIR": str(tmp_path / "cache"),
    }
    result = run_entry_point(
        "pipelines.train",
        [
            "data=mnist",
            "+data.loader.mirrors=[http://127.0.0.1:9/]",  # nothing listens there
            "model.max_iter=1",
        ],
        env,
        tmp_path,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train-images-idx3-ubyte.gz not found" in output, output[-3000:]
    assert str(empty) in output and "SKMLP_MNIST_DIR" in output
    assert "data.loader.data_dir=/that/directory" in output  # the Hydra override
    assert "InstantiationException" not in output  # the loader's own error
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []


# ---- issue 21, item 6: data, evaluation and tracking settings checked before loading

BAD_SETTINGS = {  # the cases of issue 21 (more in tests/test_data_faults.py)
    "eval.train_accuracy_samples=-1": "must be null (score the whole training set",
    "tracking.experiment_name=''": "must be a non-empty name",
    "data.name=foo": "data.name names the data set in runs and tags",
    "data.n_train=0": "must be null (the whole set) or a positive integer",
    "data.n_train=-5": "must be null (the whole set) or a positive integer",
    "data.validation_size=2.0": "must be 0 (no validation set), a fraction",
}


@pytest.mark.parametrize("override", BAD_SETTINGS)
def test_a_bad_data_or_eval_setting_fails_before_loading_or_any_run(
    store, tmp_path, override
):
    """MNIST (the default data set) is never read: each fails in resolve_run, before
    the data, with the override named, and the store is never opened."""
    _, env = store
    env = {**env, "SKMLP_MNIST_DIR": str(tmp_path / "never-read")}
    (tmp_path / "never-read").mkdir()  # empty: loading would fail differently
    args = ["model.max_iter=1", "tracking.log_model=false", override]
    result = run_entry_point("pipelines.train", args, env, tmp_path, 120, check=False)
    assert result.returncode != 0
    message = f"ConfigError: {override}: {BAD_SETTINGS[override]}"
    assert message in result.stderr, result.stderr[-3000:]
    assert "not found" not in result.stderr  # no data loaded
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # no store, no run


def test_a_data_name_other_than_the_chosen_data_set_says_how_to_choose(store, tmp_path):
    _, env = store
    args = [*QUICK, "data.name=mnist"]
    result = run_entry_point("pipelines.train", args, env, tmp_path, 120, check=False)
    assert result.returncode != 0
    assert "This task loads data=digits, whose name is digits" in result.stderr
    assert "data=<one of: digits, fashion_mnist, mnist>" in result.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_a_data_dir_that_does_not_exist_fails_before_loading(store, tmp_path):
    _, env = store
    args = ["model.max_iter=1", f"data.loader.data_dir={tmp_path / 'typo'}"]
    result = run_entry_point("pipelines.train", args, env, tmp_path, 120, check=False)
    assert result.returncode != 0
    assert f"data.loader.data_dir={tmp_path / 'typo'}: is not a directory" in (
        result.stderr
    )
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("grid.corruption.p=[0.5,1.5]", "grid.corruption.p=1.5: must be a number"),
        ("corruption.kind=foo", "corruption.kind=foo: must be one of: none, corrupt"),
    ],
)
def test_a_bad_memorization_setting_fails_before_loading(
    store, tmp_path, override, message
):
    _, env = store
    args = ["model.max_iter=1", override]
    result = run_entry_point(
        "pipelines.memorization", args, env, tmp_path, 120, check=False
    )
    assert result.returncode != 0
    assert f"ConfigError: {message}" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_a_subset_smaller_than_the_classes_names_the_override(store, tmp_path):
    """What only the data can tell is named after loading, still before any run."""
    uri, env = store
    args = [*QUICK, "data.n_train=5"]
    result = run_entry_point("pipelines.train", args, env, tmp_path, 120, check=False)
    assert result.returncode != 0
    assert "data.n_train=5 cannot be used with digits's 1347 rows" in result.stderr
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []
