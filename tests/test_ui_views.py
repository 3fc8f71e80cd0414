"""The saved runs views and ``skmlp-ui``'s choice of address, on a real (temporary
sqlite) MLflow store."""

import itertools
import json
import shutil
import socket

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipelines.store import open_store
from pipelines.summary import OBJECTIVE_TAG, log_sweep_summary, sweep_view_id
from pipelines.ui import (
    PRIMARY_METRIC_TAG,
    SINGLE_RUNS_VIEW,
    VIEW_TAG_PREFIX,
    runs_link,
    save_runs_view,
)
from pipelines.ui_server import UIError, latest_links, serve, store_uri

SWEPT = ["model.learning_rate_init", "model.activation"]
_START_TIMES = itertools.count(1_800_000_000_000, 1000)  # ms; one run a second


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    """A new store's database, made once: MLflow's migrations take seconds."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    open_store(f"sqlite:///{path}")
    return path


@pytest.fixture
def client(migrated, tmp_path):
    """A client of a new store of this test's own (a copy of ``migrated``)."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(migrated, path)
    return MlflowClient(f"sqlite:///{path}")


def _state(client, experiment_id, view_id):
    tag = client.get_experiment(experiment_id).tags[VIEW_TAG_PREFIX + view_id]
    return json.loads(json.loads(tag)["state"])


def _run(client, experiment_id, name, parent_id=None):
    """A run started after every run made before, a child of ``parent_id`` if
    given; its id."""
    tags = {"mlflow.parentRunId": parent_id} if parent_id else {}
    start = next(_START_TIMES)
    run = client.create_run(experiment_id, start, tags, run_name=name)
    return run.info.run_id


def _child(client, experiment_id, parent_id, lr, activation, accuracies):
    """A sweep's child as the train pipeline logs it: swept parameters, objective,
    and per-epoch curves at steps 1, 2, ..."""
    run_id = _run(client, experiment_id, f"lr={lr} {activation}", parent_id)
    curves = [
        Metric(key, value, 0, epoch)
        for epoch, accuracy in enumerate(accuracies, 1)
        for key, value in (("test_accuracy", accuracy), ("loss", 1 - accuracy))
    ]
    client.log_batch(
        run_id,
        metrics=[*curves, Metric("final_test_accuracy", accuracies[-1], 0, 0)],
        params=[Param(SWEPT[0], str(lr)), Param(SWEPT[1], activation)],
        tags=[RunTag(OBJECTIVE_TAG, "final_test_accuracy")],
    )
    client.set_terminated(run_id)
    return run_id


@pytest.fixture
def sweep(client):
    """A 2-run sweep beside an unrelated run of the same experiment:
    (client, experiment id, parent id, child ids, unrelated run id)."""
    experiment_id = client.create_experiment("views")
    other = _run(client, experiment_id, "digits-16-16-relu-lr0.05")
    client.log_metric(other, "final_test_accuracy", 0.99)
    parent = _run(client, experiment_id, "sweep-12-00-00")
    children = [
        _child(client, experiment_id, parent, 0.1, "relu", [0.95, 0.9768]),
        _child(client, experiment_id, parent, 0.5, "tanh", [0.96, 0.9755]),
    ]
    return client, experiment_id, parent, children, other


def test_a_sweeps_view_lists_its_children_only(sweep):
    client, experiment_id, parent, children, _ = sweep
    view_id = log_sweep_summary(client, parent, SWEPT)
    assert view_id == sweep_view_id(parent)
    state = _state(client, experiment_id, view_id)
    shown = client.search_runs([experiment_id], state["searchFilter"])
    assert sorted(run.info.run_id for run in shown) == sorted(children)
    assert state["orderByKey"] == "metrics.`final_test_accuracy`"
    assert state["runsHiddenMode"] == "SHOW_ALL"  # MLflow charts 10 runs otherwise


def test_a_sweeps_charts_show_the_objective_to_its_precision_and_the_curves(sweep):
    client, experiment_id, parent, _, _ = sweep
    state = _state(client, experiment_id, log_sweep_summary(client, parent, SWEPT))
    charts = state["compareRunCharts"]
    assert "BAR" not in {chart["type"] for chart in charts}  # bars start at 0
    scatters = [chart for chart in charts if chart["type"] == "SCATTER"]
    assert [(c["xaxis"], c["yaxis"]) for c in scatters] == [
        (
            {"key": key, "type": "PARAM"},
            {"key": "final_test_accuracy", "type": "METRIC"},
        )
        for key in SWEPT
    ]
    lines = {c["metricKey"]: c for c in charts if c["type"] == "LINE"}
    assert list(lines) == ["test_accuracy", "loss"]
    assert all(
        line["xAxisKey"] == "step" and not line["range"] for line in lines.values()
    )
    (parallel,) = (chart for chart in charts if chart["type"] == "PARALLEL")
    assert parallel["selectedParams"] == SWEPT
    sections = {section["uuid"] for section in state["compareRunSections"]}
    assert {chart["metricSectionId"] for chart in charts} == sections
    assert all(chart["runsCountToCompare"] >= 1000 for chart in charts)


def test_a_view_makes_its_first_metric_the_experiments_primary_metric(client):
    experiment_id = client.create_experiment("views")
    metrics = ["final_train_accuracy", "final_test_accuracy"]
    save_runs_view(client, experiment_id, "v1", "sweep", metrics, [])
    assert client.get_experiment(experiment_id).tags[PRIMARY_METRIC_TAG] == metrics[0]
    state = _state(client, experiment_id, "v1")
    assert state["searchFilter"] == ""  # every run of the experiment
    # Nothing swept as a parameter to plot against: bars, one per metric.
    bars = [chart["metricKey"] for chart in state["compareRunCharts"]]
    assert bars == metrics


def test_skmlp_ui_opens_the_latest_sweep_or_run(client):
    assert latest_links(client) is None
    experiment_id = client.create_experiment("latest")
    single = _run(client, experiment_id, "single")
    client.log_metric(single, "final_test_accuracy", 0.9)
    assert latest_links(client) == (
        runs_link(experiment_id),
        runs_link(experiment_id, charts=True),
    )
    save_runs_view(client, experiment_id, SINGLE_RUNS_VIEW, "runs", ["a"], [])
    assert latest_links(client)[0] == runs_link(experiment_id, SINGLE_RUNS_VIEW)
    parent = _run(client, experiment_id, "sweep-12-00-00")
    _child(client, experiment_id, parent, 0.1, "relu", [0.9])
    view_id = log_sweep_summary(client, parent, SWEPT)
    assert latest_links(client) == (
        runs_link(experiment_id, view_id),
        runs_link(experiment_id, view_id, charts=True),
    )


def test_skmlp_ui_serves_the_store_the_pipelines_use(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert store_uri() == f"sqlite:///{tmp_path}/env.db"
    monkeypatch.chdir(tmp_path)
    assert store_uri("sqlite:///own.db") == f"sqlite:///{tmp_path / 'own.db'}"


def test_skmlp_ui_says_when_its_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UIError, match=f"skmlp-ui --port {port + 1}"):
            with serve(f"sqlite:///{tmp_path}/mlflow.db", port):
                pass
