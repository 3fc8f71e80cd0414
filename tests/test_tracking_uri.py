"""MLflow store URIs as users write them: relative sqlite paths included."""

from helpers import run_entry_point
from mlflow.tracking import MlflowClient

from pipelines.store import tracking_uri


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def test_a_run_with_a_relative_sqlite_uri(store, tmp_path):
    """The README's form, ``sqlite:///mlruns/mlflow.db``, from the working directory."""
    env = {**store[1], "MLFLOW_TRACKING_URI": "sqlite:///mlruns/mlflow.db"}
    args = [
        "data=digits",
        "model.max_iter=2",
        "tracking.log_model=false",
        "tracking.experiment_name=relative",
    ]
    run_entry_point("pipelines.train", args, env, tmp_path, timeout=300)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("relative")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    assert (tmp_path / "mlruns" / "artifacts" / "relative").is_dir()
