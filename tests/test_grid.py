"""Grids: many networks of one task, each its own MLflow run, fitted with one
``skmlp.fit_together`` call; run as a user runs them and read back from the store."""

import numpy as np
import pytest
from helpers import parent_and_children, run_entry_point, runs_of
from omegaconf import OmegaConf

from pipelines.run import grid_members
from pipelines.training import GROUP_TAG

# A few float64 epochs on the digits (joint fits equal separate ones to 1e-9 there).
QUICK = [
    "data=digits",
    "model.max_iter=4",
    "model.tol=0",
    "model.dtype=float64",
    "tracking.log_model=false",
]
FINAL = ["final_train_log_loss", "final_test_log_loss", "final_test_accuracy"]
KEY = ("model.hidden_layer_sizes", "model.learning_rate_init", "model.random_state")


def train(env, cwd, *args, check=True):
    args = [*args, *QUICK]  # flags first
    return run_entry_point("pipelines.train", args, env, cwd, check=check)


def members(uri, experiment):
    """The client, the parent run and the children by their varied parameters."""
    client, runs = runs_of(uri, experiment)
    (parent,), children = parent_and_children(runs)
    return client, parent, {tuple(r.data.params[k] for k in KEY): r for r in children}


@pytest.mark.slow
def test_a_grid_ends_with_its_runs_ranked_on_the_console(store, tmp_path):
    uri, env = store
    result = train(
        env,
        tmp_path,
        "+grid.model.learning_rate_init=[0.001,0.1,0.02]",
        "tracking.experiment_name=ranked",
    )
    output = result.stdout + result.stderr
    table = output.split("The sweep's 3 runs, best first:\n", 1)[1].splitlines()
    header, rows = table[0].split(), [line.split() for line in table[1:4]]
    assert header == [
        "run",
        "model.learning_rate_init",
        "final_test_accuracy",
        "status",
    ]
    accuracies = [float(row[2]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(len(row[2].split(".")[1]) == 4 for row in rows)  # 4 decimals
    _, runs = runs_of(uri, "ranked")
    best = max(runs, key=lambda r: r.data.metrics.get("final_test_accuracy", -1))
    assert rows[0][0] == best.info.run_name
    assert "See the runs in the MLflow UI" in output.split("best first:")[1]


@pytest.mark.slow
def test_a_grid_equals_separate_runs(store, tmp_path):
    """Two shapes x two learning rates in one fit_together call: each member its own
    child run, with the curves and final metrics of a run of its own (a multirun)."""
    uri, env = store
    train(
        env,
        tmp_path,
        "+grid.model.hidden_layer_sizes=[[8],[16]]",
        "+grid.model.learning_rate_init=[0.02,0.1]",
        "tracking.experiment_name=grid",
    )
    train(
        env,
        tmp_path,
        "-m",
        "model.hidden_layer_sizes=[8],[16]",
        "model.learning_rate_init=0.02,0.1",
        "tracking.experiment_name=alone",
    )
    client, parent, grid = members(uri, "grid")
    _, _, alone = members(uri, "alone")
    assert parent.info.status == "FINISHED"
    assert len(grid) == 4 and grid.keys() == alone.keys()
    assert {run.info.run_name for run in grid.values()} == {
        "8 lr=0.02", "8 lr=0.1", "16 lr=0.02", "16 lr=0.1"
    }  # fmt: skip
    for key, run in grid.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags[GROUP_TAG] == "4"  # one fit_together call for all
        assert GROUP_TAG not in alone[key].data.tags
        for curve in ("loss", "train_accuracy", "test_accuracy", "learning_rate"):
            history = client.get_metric_history(run.info.run_id, curve)
            assert sorted(m.step for m in history) == [1, 2, 3, 4], curve
        losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
        expected = client.get_metric_history(alone[key].info.run_id, "loss")
        np.testing.assert_allclose(losses, [m.value for m in expected], rtol=1e-9)
        for name in FINAL:
            np.testing.assert_allclose(
                run.data.metrics[name], alone[key].data.metrics[name], rtol=1e-9
            )
    assert parent.data.tags["skmlp.best_run"] in {
        r.info.run_name for r in grid.values()
    }
    (log,) = (tmp_path / "outputs" / "train").glob("*/*/train.log")
    assert "fitting 4 networks with one fit_together call" in log.read_text()


def test_a_failing_member_fails_the_grid_naming_why(store, tmp_path):
    """A callback that raises in one member (it stops on a score that does not exist)
    fails the joint fit: every run ends FAILED with the reason, the task exits non-zero."""
    uri, env = store
    result = train(
        env,
        tmp_path,
        "+callbacks.stop_at._target_=pipelines.callbacks.StopAt",
        "+callbacks.stop_at.threshold=2",
        "+callbacks.stop_at.metric=train_accuracy",
        "+grid.callbacks.stop_at.metric=[train_accuracy,no_such_score]",
        "tracking.experiment_name=failing",
        check=False,
    )
    assert result.returncode != 0
    _, runs = runs_of(uri, "failing")
    assert len(runs) == 3
    assert {run.info.status for run in runs} == {"FAILED"}
    assert all("no_such_score" in r.data.tags["skmlp.end_reason"] for r in runs)


def test_a_failing_job_of_a_multirun_fails_alone(store, tmp_path):
    uri, env = store
    result = train(
        env,
        tmp_path,
        "-m",
        "+callbacks.stop_at._target_=pipelines.callbacks.StopAt",
        "+callbacks.stop_at.threshold=2",
        "+callbacks.stop_at.metric=train_accuracy,no_such_score",
        "tracking.experiment_name=failing",
        check=False,
    )
    assert result.returncode != 0
    _, runs = runs_of(uri, "failing")
    jobs = {
        r.data.params["callbacks.stop_at.metric"]: r
        for r in parent_and_children(runs)[1]
    }
    assert jobs["train_accuracy"].info.status == "FINISHED"
    assert jobs["no_such_score"].info.status == "FAILED"
    assert "no_such_score" in jobs["no_such_score"].data.tags["skmlp.end_reason"]
    ((parent,), _) = parent_and_children(runs)  # the sweep's parent says why too
    assert parent.info.status == "FAILED"
    assert parent.data.tags["skmlp.end_reason"] == "1 job(s) failed"


@pytest.mark.slow
def test_learning_rates_preset_is_one_joint_fit(store, tmp_path):
    uri, env = store
    train(env, tmp_path, "sweep=learning_rates", "tracking.experiment_name=preset")
    _, parent, runs = members(uri, "preset")
    assert parent.info.status == "FINISHED" and len(runs) == 8
    assert {run.data.tags[GROUP_TAG] for run in runs.values()} == {"8"}
    assert {key[2] for key in runs} == {"0", "1"}


def config(**grid):
    return OmegaConf.create(
        {
            "data": {"name": "digits"},
            "seed": 0,
            "model": {
                "_target_": "skmlp.SGDMLPClassifier",
                "hidden_layer_sizes": [16],
                "learning_rate_init": 0.1,
                "activation": "relu",
            },
            "grid": grid,
        }
    )


def test_grid_members_are_the_product_in_the_grids_order():
    grid = {
        "model": {"hidden_layer_sizes": [8, [16, 16]], "learning_rate_init": [1, 2]}
    }
    found = grid_members(config(**grid))
    assert [m.values for m in found] == [
        {"model.hidden_layer_sizes": 8, "model.learning_rate_init": 1},
        {"model.hidden_layer_sizes": 8, "model.learning_rate_init": 2},
        {"model.hidden_layer_sizes": [16, 16], "model.learning_rate_init": 1},
        {"model.hidden_layer_sizes": [16, 16], "model.learning_rate_init": 2},
    ]
    assert [m.estimator.hidden_layer_sizes for m in found] == [
        [8],
        [8],
        [16, 16],
        [16, 16],
    ]
    assert [m.cfg.model.learning_rate_init for m in found] == [1, 2, 1, 2]
    assert all("grid" not in m.cfg for m in found)


def test_no_grid_is_one_member():
    (member,) = grid_members(config())
    assert member.values == {} and member.estimator.hidden_layer_sizes == [16]


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"data": {"name": ["digits", "mnist"]}}, "use a Hydra multirun"),
        ({"seed": [0, 1]}, "use a Hydra multirun"),
        ({"model": {"no_such_key": [1, 2]}}, "not a key of the task's config"),
        ({"model": {"activation": ["relu", "foo"]}}, "'activation' parameter"),
        ({"model": {"hidden_layer_sizes": [[16], [0]]}}, "must contain positive"),
    ],
)
def test_a_bad_grid_is_refused_before_any_work(grid, message):
    with pytest.raises(ValueError, match=message):
        grid_members(config(**grid))
