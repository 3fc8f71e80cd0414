"""The logged model's format: cloudpickle (skops' import costs more than the whole
logging, see pipelines/training.py), with MLflow's caution about it said once, not once
per run of a sweep."""

import pytest
from helpers import run_entry_point, runs_of

from pipelines.training import PICKLE_CAUTION


@pytest.mark.slow
def test_a_sweep_logs_each_model_and_cautions_once(store, tmp_path):
    uri, env = store
    result = run_entry_point(
        "pipelines.train",
        [
            "-m",
            "data=digits",
            "model.max_iter=1",
            "tracking.log_model=true",
            "tracking.experiment_name=models",
            "model.activation=relu,tanh",
        ],
        env,
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert output.count(PICKLE_CAUTION) == 1, output[-3000:]
    client, runs = runs_of(uri, "models")
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 2
    models = client.search_logged_models([children[0].info.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(
        run.info.run_id for run in children
    )
