"""What a user sees of a sweep in MLflow: short names, the winner on the parent run,
the data set as an input, the experiment's kind, the command that opens the UI."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import (
    QUICK,
    parent_and_children,
    run_entry_point,
    runs_of,
)

from pipelines.summary import short_name, swept_keys
from pipelines.ui import PROJECT_STORE, runs_url, training_dataset, ui_command

SWEEP_2X2 = ["model.learning_rate_init=0.01,0.5", "model.activation=relu,tanh"]
UI_WIDTH = 18  # characters of a run name that the MLflow runs table shows


@pytest.mark.parametrize(
    "overrides, preset, expected",
    [
        (["data=digits", "model.alpha=0.1,1", "model.activation=relu,tanh"], None,
         ["model.alpha", "model.activation"]),
        (["model.hidden_layer_sizes=[16,16],[64]"], None, ["model.hidden_layer_sizes"]),
        (["seed=range(3)"], None, ["seed"]),
        (["data=digits,mnist"], None, ["data"]),
        (["seed=1"], {"corruption.p": "0,1", "seed": "0,1"}, ["corruption.p"]),
        (["model.alpha=0.1,1"], {"model.alpha": "0,1"}, ["model.alpha"]),
        (["data=digits"], None, []),
    ],
)  # fmt: skip
def test_swept_keys_are_what_the_multirun_varies(overrides, preset, expected):
    assert swept_keys(overrides, preset) == expected


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"model.learning_rate_init": 0.1, "model.activation": "relu"}, "lr=0.1 relu"),
        ({"model__learning_rate_init": 0.01}, "lr=0.01"),
        ({"model.hidden_layer_sizes": [512, 512], "corruption.p": 0.2}, "512-512 p=0.2"),
        ({"model.alpha": 1e-4, "data": "digits"}, "alpha=0.0001 digits"),
        ({"seed": 3}, "seed=3"),
        ({}, ""),
    ],
)  # fmt: skip
def test_short_name_says_what_differs(values, expected):
    assert short_name(values) == expected


def test_training_dataset_digest_follows_the_data(digits):
    X, y = digits
    same = training_dataset(X.copy(), y.copy(), "digits")
    assert same.digest == training_dataset(X, y, "digits").digest
    shuffled = np.random.default_rng(0).permutation(y)
    assert training_dataset(X, shuffled, "digits").digest != same.digest
    assert training_dataset(X[:-1], y[:-1], "digits").digest != same.digest
    assert training_dataset(1 - X, y, "digits").digest != same.digest
    assert same.name == "digits" and same.features.shape == X.shape


def test_ui_command_and_runs_url(tmp_path):
    assert ui_command(f"sqlite:///{tmp_path}/m.db") == (
        f"skmlp-ui --uri sqlite:///{tmp_path}/m.db"
    )
    assert ui_command(PROJECT_STORE) == "skmlp-ui"
    assert ui_command("http://host:5000") is None
    url = runs_url("http://host:5000/", "7", "skmlp-runs")
    assert url == (
        "http://host:5000/#/experiments/7/runs"
        "?workflowType=machine_learning&viewStateShareKey=skmlp-runs"
    )
    assert runs_url(f"sqlite:///{tmp_path}/m.db", "7").startswith(
        "http://127.0.0.1:5000/#/experiments/7/runs?"
    )


def _view(client, experiment_id, view_id):
    """A saved runs-table view as the MLflow web app reads it back."""
    tag = client.get_experiment(experiment_id).tags[f"mlflow.sharedViewState.{view_id}"]
    envelope = json.loads(tag)
    return envelope["name"], json.loads(envelope["state"])


@pytest.fixture
def sweep_2x2(store, tmp_path):
    """A real 2x2 train sweep on the digits: (client, parent, children, stdout)."""
    uri, env = store
    result = run_entry_point(
        "pipelines.train",
        ["-m", *QUICK, *SWEEP_2X2, "tracking.experiment_name=ui"],
        env,
        tmp_path,
    )
    client, runs = runs_of(uri, "ui")
    (parent,), children = parent_and_children(runs)
    return client, parent, children, result.stdout


@pytest.mark.slow
def test_sweep_parent_carries_the_summary(sweep_2x2):
    client, parent, children, _ = sweep_2x2
    objective = "final_test_accuracy"
    best = max(children, key=lambda run: run.data.metrics[objective])
    assert parent.data.metrics[objective] == best.data.metrics[objective]
    assert parent.data.tags["skmlp.best_run"] == best.info.run_name
    assert parent.data.tags["skmlp.best_run_id"] == best.info.run_id
    assert parent.data.tags["skmlp.objective"] == objective
    for key in ("model.learning_rate_init", "model.activation"):
        assert parent.data.params[key] == best.data.params[key]
    assert best.info.run_name in parent.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.json", "objective.png"} <= artifacts
    table = _table(client, parent.info.run_id, "sweep_summary.json")
    assert sorted(table["run_id"]) == sorted(c.info.run_id for c in children)
    assert table[objective].is_monotonic_decreasing
    assert table["run"].iloc[0] == best.info.run_name


@pytest.mark.slow
def test_sweep_runs_have_short_distinct_names_and_the_dataset(sweep_2x2):
    client, parent, children, _ = sweep_2x2
    names = {run.info.run_name for run in children}
    assert names == {"lr=0.01 relu", "lr=0.01 tanh", "lr=0.5 relu", "lr=0.5 tanh"}
    assert all(len(name) <= UI_WIDTH for name in names)
    assert json.loads(parent.data.tags["skmlp.swept_params"]) == [
        "model.learning_rate_init",
        "model.activation",
    ]
    for run in [*children, parent]:  # the parent: its best run's
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.name == "digits"
        assert len(dataset_input.dataset.digest) == 8
        context = {t.key: t.value for t in dataset_input.tags}
        assert context["mlflow.data.context"] == "training"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_sweep_ends_by_printing_how_to_open_its_view(sweep_2x2, store):
    uri, _ = store
    client, parent, _, output = sweep_2x2
    assert f"skmlp-ui --uri {uri}" in output
    view_id = f"skmlp-sweep-{parent.info.run_id[:8]}"
    url = runs_url(uri, parent.info.experiment_id, view_id)
    assert output.count(url) == 1  # once, at the end of the sweep, not per job
    compare = runs_url(uri, parent.info.experiment_id, view_id, charts=True)
    assert output.rstrip().endswith(f"{url}\n  compare them: {compare}")
    name, state = _view(client, parent.info.experiment_id, view_id)
    assert name == parent.info.run_name
    assert state["selectedColumns"] == [
        "metrics.`final_test_accuracy`",
        "params.`model.learning_rate_init`",
        "params.`model.activation`",
    ]
    assert state["orderByKey"] == "metrics.`final_test_accuracy`"
    assert state["orderByAsc"] is False


def test_single_run_keeps_a_readable_name_and_prints_the_ui(store, tmp_path):
    uri, env = store
    result = run_entry_point(
        "pipelines.train", [*QUICK, "tracking.experiment_name=single"], env, tmp_path
    )
    client, (run,) = runs_of(uri, "single")
    assert run.info.run_name == "digits-16-16-relu-lr0.05"
    url = runs_url(uri, run.info.experiment_id, "skmlp-runs")
    compare = runs_url(uri, run.info.experiment_id, "skmlp-runs", charts=True)
    assert f"skmlp-ui --uri {uri}" in result.stdout
    assert result.stdout.rstrip().endswith(f"{url}\n  compare them: {compare}")
    _, state = _view(client, run.info.experiment_id, "skmlp-runs")
    assert "metrics.`final_test_accuracy`" in state["selectedColumns"]
    assert "params.`model.activation`" in state["selectedColumns"]


def test_grid_search_parent_carries_the_summary(store, tmp_path):
    uri, env = store
    run_entry_point(
        "pipelines.grid_search",
        [
            "data=digits",
            "model.max_iter=3",
            "search.cv=2",
            "search.n_jobs=1",
            "search.param_grid.model__hidden_layer_sizes=[[16]]",
            "tracking.experiment_name=gs-ui",
        ],
        env,
        tmp_path,
    )
    client, runs = runs_of(uri, "gs-ui")
    (parent,), children = parent_and_children(runs)
    assert {run.info.run_name for run in children} == {
        "relu lr=0.01", "logistic lr=0.01", "relu lr=0.1", "logistic lr=0.1"
    }  # fmt: skip
    best = max(children, key=lambda run: run.data.metrics["mean_cv_accuracy"])
    assert parent.data.tags["skmlp.best_run"] == best.info.run_name
    assert (
        parent.data.metrics["mean_cv_accuracy"]
        == (best.data.metrics["mean_cv_accuracy"])
    )
    assert (
        parent.data.params["model__activation"]
        == (best.data.params["model__activation"])
    )
    assert "model__hidden_layer_sizes" not in parent.data.params  # not swept
    assert all(len(run.inputs.dataset_inputs) == 1 for run in runs)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.json", "objective.png"} <= artifacts


@pytest.mark.slow
def test_memorization_parent_carries_the_summary(store, tmp_path):
    uri, env = store
    run_entry_point(
        "pipelines.memorization",
        [
            *QUICK,
            "grid.corruption.p=[0.0,1.0]",
            "grid.model.hidden_layer_sizes=[[16]]",
            "model.batch_size=32",
            "tracking.experiment_name=mem-ui",
        ],
        env,
        tmp_path,
    )
    client, runs = runs_of(uri, "mem-ui")
    (parent,), children = parent_and_children(runs)
    assert {run.info.run_name for run in children} == {"p=0.0", "p=1.0"}
    best = max(children, key=lambda run: run.data.metrics["final_train_accuracy"])
    assert parent.data.tags["skmlp.best_run"] == best.info.run_name
    assert parent.data.params["corruption.p"] == best.data.params["corruption.p"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.json", "objective.png", "summary.csv"} <= artifacts


def _table(client, run_id, path):
    with open(client.download_artifacts(run_id, path)) as file:
        table = json.load(file)
    return pd.DataFrame(table["data"], columns=table["columns"])
