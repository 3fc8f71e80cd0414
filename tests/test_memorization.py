"""The memorization experiment, end to end through Hydra into a temporary MLflow store."""

import numpy as np
import pandas as pd
import pytest
from helpers import parent_and_children, run_entry_point, runs_of
from omegaconf import OmegaConf
from sklearn.utils import Bunch

from pipelines.memorization import corrupt_inputs, corrupt_labels, time_to_fit
from pipelines.training import GROUP_TAG


def test_time_to_fit_is_the_first_epoch_over_the_threshold():
    curves = pd.DataFrame(
        {"epoch": [1, 2, 3, 4], "train_accuracy": [0.5, 0.99, 0.98, 1]}
    )
    assert time_to_fit(curves, 0.99) == 2
    assert np.isnan(time_to_fit(curves, 1.01))


@pytest.mark.parametrize(
    "kind, changes",
    [
        ("shuffle", "labels"),
        ("corrupt", "labels"),
        ("shuffled_pixels", "inputs"),
        ("random_pixels", "inputs"),
        ("gaussian", "inputs"),
        ("none", None),
    ],
)
def test_corruption_touches_training_data_only(rng, kind, changes):
    data = Bunch(
        X_train=rng.random((100, 8)),
        y_train=np.arange(100) % 10,
        X_test=rng.random((10, 8)),
        y_test=np.arange(10),
    )
    shared = corrupt_inputs(data, kind, seed=0)
    result = corrupt_labels(shared, OmegaConf.create({"kind": kind, "p": 1.0}), seed=0)
    assert result.X_test is data.X_test and result.y_test is data.y_test
    assert result.X_train is shared.X_train  # the members share their inputs
    inputs = not np.array_equal(result.X_train, data.X_train)
    labels = not np.array_equal(result.y_train, data.y_train)
    assert (inputs, labels) == (changes == "inputs", changes == "labels")


def test_unknown_corruption_is_refused(rng):
    data = Bunch(X_train=rng.random((10, 2)), y_train=np.arange(10))
    with pytest.raises(ValueError, match="Unknown corruption.kind 'blur'"):
        corrupt_inputs(data, "blur", seed=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "together", [[], ["together=false"]], ids=["together", "alone"]
)
def test_quick_configuration_end_to_end(store, tmp_path, mnist, together):  # noqa: ARG001
    """The quick configuration, smaller still: 500 images, p in {0, 1}, two networks,
    one task; by default the four members are fitted with one fit_together call, with
    together=false one after another."""
    uri, env = store
    args = [
        "scale=quick",
        "data.n_train=500",
        "model.max_iter=40",
        "grid.corruption.p=[0.0,1.0]",
        "grid.model.hidden_layer_sizes=[[16,16],[512]]",
        *together,
    ]
    result = run_entry_point("pipelines.memorization", args, env, tmp_path, timeout=900)
    # the console gives the answer: train and test accuracy per network and level p
    output = result.stdout + result.stderr
    shown = output.split("Memorization, per network and corruption level p:\n")[1]
    header, *rows = shown.splitlines()[:5]
    assert header.split() == [
        "hidden_layer_sizes",
        "p",
        "final_train_accuracy",
        "final_test_accuracy",
        "epochs",
        "time_to_fit",
    ]
    assert len(rows) == 4
    client, runs = runs_of(uri, "memorization")
    (parent,), children = parent_and_children(runs)
    assert len(children) == 4 and parent.info.status == "FINISHED"
    groups = [child.data.tags.get(GROUP_TAG) for child in children]
    assert groups == (["4"] * 4 if not together else [None] * 4)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    (csv,) = (tmp_path / "outputs" / "memorization").glob("*/*/summary.csv")
    assert {
        "summary.csv",
        "a_learning_curves.png",
        "b_time_to_fit.png",
        "c_test_accuracy.png",
        "capacity.png",
    } <= artifacts

    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "summary.csv"))
    assert len(table) == 4 and table.equals(pd.read_csv(csv))
    wide_random = table[(table.p == 1.0) & (table.hidden_layer_sizes == "[512]")].iloc[
        0
    ]
    assert wide_random.final_train_accuracy > 0.5  # far above chance (0.1)
    assert wide_random.final_test_accuracy < 0.2  # near chance on the true labels
    wide_true = table[(table.p == 0.0) & (table.hidden_layer_sizes == "[512]")].iloc[0]
    assert wide_true.final_test_accuracy > 0.75
    history = client.get_metric_history(wide_random.run_id, "train_accuracy")
    assert len(history) == wide_random.epochs


@pytest.mark.parametrize(
    "regularization, expected",
    [("l2", "alpha: 0.01"), ("early_stopping", "early_stopping: true")],
)
def test_regularization_contrasts_compose(tmp_path, regularization, expected):
    args = [f"regularization={regularization}", "--cfg", "job", "--resolve"]
    result = run_entry_point("pipelines.memorization", args, None, tmp_path, 120)
    assert expected in result.stdout
    assert f"regularization: {regularization}" in result.stdout
    assert "batch_size: 128" in result.stdout  # Zhang's optimiser underneath
