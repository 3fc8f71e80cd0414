"""The console scripts, installed as a user installs them, run from a foreign directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _script(name):
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable}"
    return str(path)


def _run(command, cwd, env=None, timeout=300):
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_skmlp_train_runs_from_any_directory(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("SKMLP_PARENT_RUN_ID", None)
    args = ["data=digits", "model.max_iter=2", "tracking.log_model=false"]
    _run([_script("skmlp-train"), *args, "tracking.experiment_name=cs"], tmp_path, env)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cs").experiment_id])
    assert run.info.status == "FINISHED"
    assert (tmp_path / "outputs" / "train").is_dir()  # Hydra's outputs land in the cwd


@pytest.mark.parametrize(
    "script, expected",
    [
        ("skmlp-grid-search", "model__hidden_layer_sizes"),
        ("skmlp-memorization", "kind: shuffle"),
    ],
)
def test_other_scripts_find_their_configs(tmp_path, script, expected):
    result = _run([_script(script), "--cfg", "job"], tmp_path)
    assert expected in result.stdout


@pytest.mark.slow
def test_the_wheel_ships_the_configs(tmp_path):
    """A regular (non-editable) install: conf/ travels inside the wheel."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q"]
    _run([*build, "-w", str(wheels)], tmp_path)
    (wheel,) = wheels.glob("skmlp-*.whl")
    _run(
        [*pip, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        tmp_path,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = _run(
        [sys.executable, "-c", "import pipelines; print(pipelines.config_dir())"],
        tmp_path,
        env,
    )
    assert where.stdout.strip() == str(target / "pipelines" / "conf")
    result = _run([str(target / "bin" / "skmlp-train"), "--cfg", "job"], tmp_path, env)
    assert "hidden_layer_sizes" in result.stdout
    # The together launcher is a Hydra plugin, found in the wheel's hydra_plugins.
    code = (
        "import pipelines; from hydra.core.plugins import Plugins; "
        "from hydra.plugins.launcher import Launcher; "
        "found = {c.__name__: c for c in Plugins.instance().discover(Launcher)}; "
        "import sys; print(sys.modules[found['TogetherLauncher'].__module__].__file__)"
    )
    where = _run([sys.executable, "-c", code], tmp_path, env)
    launcher = target / "hydra_plugins" / "skmlp_launcher" / "together_launcher.py"
    assert where.stdout.strip() == str(launcher)


@pytest.mark.parametrize("entry_point", ["train", "memorization", "grid_search"])
def test_importing_an_entry_point_loads_neither_mlflow_nor_scikit_learn(entry_point):
    # `python -m pipelines.<entry_point> --cfg job` (and --help) pay for Hydra alone.
    code = (
        f"import sys, pipelines.{entry_point}; "
        "print(sorted({'mlflow', 'sklearn', 'skmlp'} & set(sys.modules)))"
    )
    result = _run([sys.executable, "-c", code], cwd=ROOT)
    assert result.stdout.strip() == "[]"
