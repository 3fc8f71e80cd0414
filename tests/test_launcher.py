"""The ``together`` Hydra launcher, run as a user runs it (a subprocess), read back
from a temporary MLflow store: joint fits that leave every job as it would be alone."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipelines import together
from pipelines.together import GROUP_TAG, ParkedFit, SweptJob

# A few float64 epochs on the digits (the engine's joint fits equal separate ones to 1e-9).
QUICK = [
    "data=digits",
    "model.max_iter=4",
    "model.tol=0",
    "model.dtype=float64",
    "tracking.log_model=false",
]
FINAL = ["final_train_log_loss", "final_test_log_loss", "final_test_accuracy"]


def sweep(env, cwd, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.train", *args, *QUICK],  # flags first
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def children(uri, experiment):
    """The sweep's parent and its children, by their swept parameters."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    key = ("model.hidden_layer_sizes", "model.learning_rate_init", "model.alpha")
    key += ("model.random_state",)
    return client, parents[0], {tuple(r.data.params[k] for k in key): r for r in kids}


def test_together_sweep_equals_the_basic_launchers(store, tmp_path):
    uri, env = store
    grid = ["model.learning_rate_init=0.02,0.1", "model.alpha=0.0001,0.01"]
    sweep(
        env,
        tmp_path,
        "-m",
        "hydra/launcher=together",
        *grid,
        "tracking.experiment_name=t",
    )
    sweep(env, tmp_path, "-m", *grid, "tracking.experiment_name=basic")
    client, parent, together = children(uri, "t")
    _, _, alone = children(uri, "basic")
    assert parent.info.status == "FINISHED"
    assert len(together) == 4 and together.keys() == alone.keys()
    for key, run in together.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[GROUP_TAG] == "4"  # one fit_together call for all
        assert GROUP_TAG not in alone[key].data.tags
        assert run.data.metrics["n_epochs"] == 4
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
    # Every job kept its own Hydra job dir: .hydra files and its own log file.
    job_dirs = sorted((tmp_path / "multirun" / "train").glob("*/*/[0-9]"))
    assert len(job_dirs) == 8  # 4 together + 4 basic
    for job_dir in job_dirs:
        assert (job_dir / ".hydra" / "overrides.yaml").is_file()
    logs = [p.read_text() for d in job_dirs for p in d.glob("*.log")]
    assert sum("fitted in a group of 4 networks" in text for text in logs) == 4


def test_mixed_shapes_fit_in_one_group_per_shape(store, tmp_path):
    uri, env = store
    sweep(
        env,
        tmp_path,
        "-m",
        "hydra/launcher=together",
        "model.hidden_layer_sizes=[8],[16]",
        "model.learning_rate_init=0.02,0.1",
        "tracking.experiment_name=mixed",
    )
    _, _, runs = children(uri, "mixed")
    assert len(runs) == 4
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert {run.data.tags[GROUP_TAG] for run in runs.values()} == {"2"}
    assert {key[0] for key in runs} == {"[8]", "[16]"}


@pytest.mark.parametrize("launcher", ["together", "basic"])
def test_a_failing_job_fails_alone(store, tmp_path, launcher):
    """A callback that raises in one job only (it stops on a score that does not
    exist): that job is FAILED, the other FINISHED, the sweep exits non-zero."""
    uri, env = store
    result = sweep(
        env,
        tmp_path,
        "-m",
        f"hydra/launcher={launcher}",
        "+callbacks.stop_at._target_=pipelines.callbacks.StopAt",
        "+callbacks.stop_at.threshold=2",
        "+callbacks.stop_at.metric=train_accuracy,no_such_score",
        "tracking.experiment_name=failing",
        check=False,
    )
    assert result.returncode != 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("failing")
    runs = client.search_runs([experiment.experiment_id])
    jobs = {
        r.data.params["callbacks.stop_at.metric"]: r
        for r in runs
        if "mlflow.parentRunId" in r.data.tags
    }
    assert jobs["train_accuracy"].info.status == "FINISHED"
    assert jobs["no_such_score"].info.status == "FAILED"
    assert "no_such_score" in jobs["no_such_score"].data.tags["skmlp.end_reason"]


def test_learning_rates_preset_is_one_joint_fit(store, tmp_path):
    uri, env = store
    sweep(env, tmp_path, "sweep=learning_rates", "tracking.experiment_name=preset")
    _, parent, runs = children(uri, "preset")
    assert parent.info.status == "FINISHED" and len(runs) == 8
    assert {run.data.tags[GROUP_TAG] for run in runs.values()} == {"8"}
    assert {run.data.params["model.random_state"] for run in runs.values()} == {
        "0",
        "1",
    }


def test_group_fits_by_shape_and_equal_inputs(digits):
    """Equal arrays (a copy included) share a fit; another shape or other X do not;
    each member ends as its own fit would leave it."""
    import sklearn

    from pipelines.together import ParkedFit, fit_group, group_fits
    from skmlp import SGDMLPClassifier

    X, y = digits
    X = X[:300]
    y = y[:300]

    def parked(sizes, lr, data):
        est = SGDMLPClassifier(sizes, learning_rate_init=lr, max_iter=3, random_state=0)
        return ParkedFit(est, data, y, sklearn.get_config(), ".")

    fits = [
        parked((8,), 0.01, X),
        parked((8,), 0.1, X.copy()),
        parked((16,), 0.1, X),
        parked((8,), 0.1, X + 1),
    ]
    groups = group_fits(fits)
    assert [len(group) for group in groups] == [2, 1, 1]
    for group in groups:
        fit_group(group)
    assert [fit.group_size for fit in fits] == [2, 2, 1, 1]
    assert all(fit.error is None for fit in fits)
    alone = SGDMLPClassifier((8,), learning_rate_init=0.1, max_iter=3, random_state=0)
    alone.fit(X, y)
    for got, expected in zip(fits[1].estimator.coefs_, alone.coefs_, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert not hasattr(fits[2].estimator, "coefs_")  # a group of one: its job fits it


class FakeJob:
    """A job's ``run`` for ``SweptJob``: runs ``setup_s`` up to its fit, parks, and
    after its turn raises the interrupt it was given (as ``fit_estimator`` does)."""

    def __init__(self, name, running, setup_s=0.0):
        self.name, self.running, self.setup_s = name, running, setup_s
        self.overlaps = []

    def __call__(self):
        self.enter()
        time.sleep(self.setup_s)
        fit = ParkedFit(None, None, None, {}, os.getcwd())
        self.running.discard(self.name)
        together._current.job.park(fit)
        self.enter()
        try:
            if fit.interrupt is not None:
                raise fit.interrupt
            return self.name
        finally:
            self.running.discard(self.name)

    def enter(self):
        if self.running:
            self.overlaps.append(set(self.running))
        self.running.add(self.name)


def test_after_an_interrupt_jobs_end_one_at_a_time(monkeypatch):
    """A job still on its way to its fit gets there before the parked one resumes;
    then each ends with the interrupt raised at its fit."""
    monkeypatch.setattr(SweptJob, "_restore", lambda job: None)
    running = set()
    fakes = [FakeJob("parked", running), FakeJob("setting up", running, setup_s=0.5)]
    jobs = [SweptJob(fake.name, fake) for fake in fakes]
    jobs[0].step()  # parks at once
    jobs[1].step(timeout=0)  # still setting up: the interrupt lands here
    interrupt = KeyboardInterrupt("test")
    together._end_jobs(jobs, interrupt)
    assert [fake.overlaps for fake in fakes] == [[], []]
    assert [job.error for job in jobs] == [interrupt, interrupt]


def test_a_job_that_cannot_be_resumed_does_not_strand_the_others(monkeypatch, caplog):
    def restore(job):
        if job.config == "gone":
            raise FileNotFoundError("its working directory is gone")

    monkeypatch.setattr(SweptJob, "_restore", restore)
    running = set()
    jobs = [SweptJob(name, FakeJob(name, running)) for name in ("gone", "fine")]
    for job in jobs:
        job.step()
    interrupt = KeyboardInterrupt("test")
    together._end_jobs(jobs, interrupt)
    assert "could not resume a job to end it" in caplog.text
    assert "its working directory is gone" in caplog.text
    assert jobs[0].parked is not None  # left parked (its run is the parent's to end)
    assert jobs[1].error is interrupt
