"""The pipelines' ``device`` setting: resolution, clear errors, data moved once, and
torch end to end on the CPU (``device=torch:cpu``: the GPU's code path on any machine)."""

import os
import pickle
import sys

import numpy as np
import pytest
from helpers import ROOT, parent_and_children, run, run_entry_point, runs_of
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.device import DeviceError, accuracy, resolve_device, to_numpy
from skmlp import SGDMLPClassifier

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()


def _cupy_gpu():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver: no CuPy GPU
        return False


HAS_CUPY_GPU = _cupy_gpu()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch)")
needs_cupy = pytest.mark.skipif(not HAS_CUPY_GPU, reason="needs CuPy and a GPU")
QUICK = ["data=digits", "model.max_iter=3", "tracking.log_model=false"]


@pytest.mark.parametrize(
    "setting, name, library",
    [
        ("cpu", "cpu", "numpy"),
        (" CPU ", "cpu", "numpy"),
        ("torch:cpu", "torch:cpu", "torch"),
    ],
)
def test_known_settings_resolve(setting, name, library):
    device = resolve_device(setting)
    assert (device.name, device.library) == (name, library)
    assert device.tags()["skmlp.device"] == name


def test_auto_picks_a_gpu_only_where_there_is_one():
    expected = "cuda:" if HAS_CUDA else ("cupy:" if HAS_CUPY_GPU else "cpu")
    assert resolve_device("auto").name.startswith(expected)


@pytest.mark.parametrize("setting", ["gpu", "cuda:x", "tpu:0", "torch:cuda"])
def test_unknown_setting_lists_the_choices(setting):
    with pytest.raises(DeviceError, match=r"Unknown device=.*one of cpu, cuda"):
        resolve_device(setting)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("setting", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_says_so(setting):
    with pytest.raises(DeviceError, match=r"sees no CUDA GPU.*device=torch:cpu"):
        resolve_device(setting)


@pytest.mark.parametrize(
    "setting, module", [("cuda", "torch"), ("torch:cpu", "torch"), ("cupy", "cupy")]
)
def test_a_missing_library_is_named(monkeypatch, setting, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees without it
    with pytest.raises(DeviceError, match=rf"needs the {module} package.*device=cpu"):
        resolve_device(setting)


def test_a_library_that_fails_to_import_is_named(monkeypatch, tmp_path):
    # a package that raises on import, as a CuPy built for another CUDA can
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(
        "raise RuntimeError('CUDA driver version is insufficient')\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    with pytest.raises(DeviceError, match="cupy.*fails to import.*insufficient"):
        resolve_device("cupy")


def test_labels_that_are_not_numbers_are_refused():
    with pytest.raises(DeviceError, match="trains on numbers only.*dtype <U1"):
        resolve_device("torch:cpu").put(np.array(["a", "b"]))


def test_data_moves_once_and_the_fitted_pipeline_comes_back_as_numpy(digits):
    X, y = digits
    device = resolve_device("torch:cpu")
    sets = device.put_sets(
        {"fit": (X, y), "train": (X[:], y[:]), "test": (X[:50], y[:50])}
    )
    assert sets["fit"][0] is sets["train"][0] and sets["fit"][1] is sets["train"][1]
    assert sets["test"][0] is not sets["fit"][0]
    assert sets["test"][0].shape == (50, X.shape[1])
    assert all(isinstance(a, torch.Tensor) for pair in sets.values() for a in pair)
    pipeline = make_pipeline(
        StandardScaler(), SGDMLPClassifier((16,), max_iter=3, random_state=0)
    )
    with pytest.warns(UserWarning), device.dispatch():  # ConvergenceWarning
        pipeline.fit(*sets["fit"])
        on_device = pipeline.predict(sets["fit"][0])
        score = accuracy(on_device, sets["fit"][1])
    assert isinstance(on_device, torch.Tensor)
    back = to_numpy(pipeline)
    assert b"torch" not in pickle.dumps(back)  # no tensor left anywhere inside
    np.testing.assert_array_equal(back.predict(X), on_device.numpy())
    assert score == np.mean(back.predict(X) == y) > 0.6


def test_to_numpy_converts_arrays_and_leaves_classes_and_numpy_alone():
    values = {"tensor": torch.arange(3), "array": np.ones(2), "class": torch.Tensor}
    back = to_numpy(values)
    assert isinstance(back["tensor"], np.ndarray) and back["tensor"].tolist() == [
        0,
        1,
        2,
    ]
    assert isinstance(back["array"], np.ndarray) and back["class"] is torch.Tensor


def test_scipy_imported_without_its_array_api_mode_is_a_clear_error(tmp_path):
    code = (
        "import sklearn.utils\n"  # imports SciPy before pipelines can set the variable
        "from pipelines.device import resolve_device\n"
        "resolve_device('torch:cpu').dispatch()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SCIPY_ARRAY_API"}
    result = run([sys.executable, "-c", code], ROOT, env, check=False)
    assert result.returncode != 0
    assert "set the environment variable SCIPY_ARRAY_API=1" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, tag",
    [
        ("torch:cpu", "torch:cpu"),
        pytest.param("cuda", "cuda:0", marks=needs_cuda),
        pytest.param("cupy", "cupy:0", marks=needs_cupy),
    ],
)
def test_train_end_to_end(store, tmp_path, setting, tag):
    uri, env = store
    args = ["data=digits", "model.max_iter=3", "model.tol=0", "preprocessing=standard"]
    run_entry_point(
        "pipelines.train",
        [*args, f"device={setting}", "tracking.experiment_name=device"],
        env,
        tmp_path,
    )
    client, (run,) = runs_of(uri, "device")
    assert run.info.status == "FINISHED"
    assert run.data.tags["skmlp.device"] == tag
    assert run.data.params["device"] == setting
    for key in ("loss", "train_accuracy", "test_accuracy"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
    assert run.data.metrics["final_test_accuracy"] > 0.8
    import mlflow

    mlflow.set_tracking_uri(uri)  # the logged model is NumPy: it loads without a GPU
    model = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    assert b"torch" not in pickle.dumps(model) and b"cupy" not in pickle.dumps(model)
    from skmlp.datasets import load_digits_split

    X_test = load_digits_split().X_test
    assert isinstance(model.predict(X_test[:20]), np.ndarray)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize(
    "command",
    [["pipelines.train"], ["pipelines.memorization"], ["pipelines.train", "-m"]],
    ids=["train", "memorization", "a multirun's callback"],
)
def test_a_missing_gpu_fails_before_any_run(store, tmp_path, command):
    _, env = store
    module, *flags = command
    args = [*flags, *QUICK, "device=cuda"]
    result = run_entry_point(module, args, env, tmp_path, timeout=300, check=False)
    assert result.returncode != 0
    assert "device=cuda: torch" in result.stderr and "sees no CUDA GPU" in result.stderr
    assert not (tmp_path / "mlruns").exists()  # no store, no run left behind


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, tag",
    [("torch:cpu", "torch:cpu"), pytest.param("cuda", "cuda:0", marks=needs_cuda)],
)
def test_grid_search_on_torch(store, tmp_path, setting, tag):
    uri, env = store
    run_entry_point(
        "pipelines.grid_search",
        [
            *QUICK,
            "search.cv=2",
            "search.param_grid.model__learning_rate_init=[0.1]",
            f"device={setting}",
            "tracking.experiment_name=gs-torch",
        ],
        env,
        tmp_path,
    )
    _, runs = runs_of(uri, "gs-torch")
    (parent,), children = parent_and_children(runs)
    assert len(children) == 4
    assert parent.data.tags["skmlp.device"] == tag
    assert parent.data.metrics["final_test_accuracy"] > 0.5


@pytest.mark.slow
def test_memorization_on_torch(store, tmp_path):
    """The memorization task on the digits, a grid of one."""
    uri, env = store
    run_entry_point(
        "pipelines.memorization",
        [
            *QUICK,
            "data.n_train=300",
            "grid.corruption.p=[1.0]",
            "grid.model.hidden_layer_sizes=[[64]]",
            "device=torch:cpu",
        ],
        env,
        tmp_path,
    )
    client, runs = runs_of(uri, "memorization")
    (parent,), (child,) = parent_and_children(runs)
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.tags["skmlp.device"] == "torch:cpu"
    history = client.get_metric_history(child.info.run_id, "train_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
