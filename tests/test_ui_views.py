"""The saved runs view on a real (temporary sqlite) MLflow store."""

import json

from mlflow.tracking import MlflowClient

from pipelines.ui import PRIMARY_METRIC_TAG, VIEW_TAG_PREFIX, save_runs_view


def test_the_view_makes_its_objective_the_experiments_primary_metric(store):
    uri, _ = store
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("views")
    metrics = ["final_train_accuracy", "final_test_accuracy"]
    save_runs_view(client, experiment_id, "v1", "sweep", metrics, ["seed"])
    tags = client.get_experiment(experiment_id).tags
    assert tags[PRIMARY_METRIC_TAG] == "final_train_accuracy"
    state = json.loads(json.loads(tags[VIEW_TAG_PREFIX + "v1"])["state"])
    assert state["orderByKey"] == "metrics.`final_train_accuracy`"
    parallel, bars = state["compareRunCharts"]
    assert parallel["selectedParams"] == ["seed"]
    assert (
        parallel["selectedMetrics"] == [bars["metricKey"]] == ["final_train_accuracy"]
    )
    (section,) = state["compareRunSections"]
    assert parallel["metricSectionId"] == bars["metricSectionId"] == section["uuid"]
