"""The console scripts, installed as a user installs them, run from a foreign directory."""

import os
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent


def _script(name):
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable}"
    return str(path)


def test_skmlp_train_runs_from_any_directory(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    args = ["data=digits", "model.max_iter=2", "tracking.log_model=false"]
    run([_script("skmlp-train"), *args, "tracking.experiment_name=cs"], tmp_path, env)
    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("cs").experiment_id])
    assert found.info.status == "FINISHED"
    assert (tmp_path / "outputs" / "train").is_dir()  # Hydra's outputs land in the cwd


@pytest.mark.parametrize(
    "script, expected",
    [
        ("skmlp-grid-search", "model__hidden_layer_sizes"),
        ("skmlp-memorization", "kind: shuffle"),
    ],
)
def test_other_scripts_find_their_configs(tmp_path, script, expected):
    result = run([_script(script), "--cfg", "job"], tmp_path)
    assert expected in result.stdout


@pytest.mark.slow
def test_the_wheel_ships_the_configs(tmp_path):
    """A regular (non-editable) install: conf/ travels inside the wheel."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q"]
    run([*build, "-w", str(wheels)], tmp_path)
    (wheel,) = wheels.glob("skmlp-*.whl")
    run(
        [*pip, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        tmp_path,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = run(
        [sys.executable, "-c", "import pipelines; print(pipelines.config_dir())"],
        tmp_path,
        env,
    )
    assert where.stdout.strip() == str(target / "pipelines" / "conf")
    result = run([str(target / "bin" / "skmlp-train"), "--cfg", "job"], tmp_path, env)
    assert "hidden_layer_sizes" in result.stdout


@pytest.mark.parametrize("entry_point", ["train", "memorization", "grid_search"])
def test_importing_an_entry_point_loads_neither_mlflow_nor_scikit_learn(entry_point):
    # `python -m pipelines.<entry_point> --cfg job` (and --help) pay for Hydra alone.
    code = (
        f"import sys, pipelines.{entry_point}; "
        "print(sorted({'mlflow', 'sklearn', 'skmlp'} & set(sys.modules)))"
    )
    result = run([sys.executable, "-c", code], cwd=ROOT)
    assert result.stdout.strip() == "[]"
