"""Faults of a parallel sweep (issue 21, items 2-4), reproduced with real processes,
signals and servers: its workers end with its parent; a worker that dies ends its
runs FAILED with the cause; a sweep that cannot reach its store, or has a bad value,
stops once, before any job.
"""

import os
import signal
import sys
import time

import pytest
from helpers import (
    all_runs,
    finish,
    output_of,
    parent_and_children,
    run_entry_point,
    start,
    wait_for,
)
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from test_faults import LONG, QUICK, server_that_holds_connections
from test_workers import group_alive, kill_group, leftovers_of

from pipelines.sweep_check import BASIC_SWEEPER, job_overrides

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc and /dev/shm"
)


@pytest.fixture
def store(store):
    """conftest's temporary store, with one BLAS thread per pipeline process."""
    uri, env = store
    return uri, {**env, "OMP_NUM_THREADS": "1"}


def running_children(uri, n):
    _, children = parent_and_children(all_runs(uri))
    running = [c for c in children if c.info.status == "RUNNING"]
    return running if len(running) == n else None


PARALLEL = ["-m", "hydra/launcher=parallel"]


@pytest.mark.slow
def test_kill_9_of_a_parallel_sweeps_parent_leaves_no_worker(store, tmp_path):
    """Four jobs, two workers: the parent killed with -9 while two train. Ten seconds
    later no process of the sweep is alive, nothing of it is in /dev/shm, no third
    job ever started, and every run has ended, saying why."""
    uri, env = store
    rates = "model.learning_rate_init=0.1,0.2,0.3,0.4"
    process = start([*PARALLEL, rates, *LONG], env, tmp_path)
    try:
        wait_for(lambda: running_children(uri, 2), "two running jobs", process)
        process.kill()
        process.wait(timeout=30)
        time.sleep(10)
        alive = group_alive(process.pid)
        assert alive == [], output_of(process)[-3000:]
        assert leftovers_of(process.pid) == []
        parents, children = parent_and_children(all_runs(uri))
        assert len(parents) == 1 and len(children) == 2, output_of(process)[-3000:]
        for child in children:  # each ended by its own process, saying why
            assert child.info.status == "KILLED"
            assert "parent process died" in child.data.tags["skmlp.end_reason"]
        (parent,) = parents  # reaped by the dying workers
        assert parent.info.status == "FAILED"
        assert f"process {process.pid}" in parent.data.tags["skmlp.end_reason"]
    finally:
        kill_group(process)


@pytest.mark.slow
def test_a_killed_worker_fails_its_runs_with_the_cause(store, tmp_path):
    """kill -9 of one worker of a parallel sweep: within 5 s its run is FAILED with
    the signal; the sweep ends without waiting out the grace for its dead children,
    every run FAILED and saying why."""
    uri, env = store
    rates = "model.learning_rate_init=0.1,0.2"
    process = start([*PARALLEL, rates, *LONG], env, tmp_path)
    try:
        first, _ = wait_for(lambda: running_children(uri, 2), "two jobs", process)
        os.kill(int(first.data.tags["skmlp.pid"]), signal.SIGKILL)
        client = MlflowClient(uri)
        wait_for(
            lambda: client.get_run(first.info.run_id).info.status == "FAILED",
            "the killed worker's run FAILED",
            timeout=5,
        )
        output = finish(process, timeout=60)
        parents, children = parent_and_children(all_runs(uri))
        assert {r.info.status for r in parents + children} == {"FAILED"}, output[-3000:]
        reasons = {c.info.run_id: c.data.tags["skmlp.end_reason"] for c in children}
        pid = first.data.tags["skmlp.pid"]
        assert f"process {pid}" in reasons[first.info.run_id]
        assert "killed by signal 9 (SIGKILL)" in reasons[first.info.run_id]
        (parent,) = parents
        assert parent.data.tags["skmlp.end_reason"].startswith("2 job(s) failed: ")
        assert f"process {pid}" in parent.data.tags["skmlp.end_reason"]
    finally:
        kill_group(process)


@pytest.mark.slow
def test_a_hanging_server_stops_a_six_job_sweep_once(store, tmp_path):
    """A server that accepts and never answers: the six-job sweep waits once (the
    store check: one request, where each job used to wait again) and stops, naming
    the server, with no job started. (How long it takes is not asserted here: the
    suite does not time things.)"""
    _, env = store
    rates = "model.learning_rate_init=0.1,0.2,0.3,0.4,0.5,0.6"
    held = []
    with server_that_holds_connections(held) as port:
        uri = f"http://127.0.0.1:{port}"
        env = {**env, "MLFLOW_TRACKING_URI": uri}
        result = run_entry_point(
            "pipelines.train", ["-m", rates, *QUICK], env, tmp_path, 120, check=False
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count(f"The MLflow tracking server {uri} cannot be used") == 1
    assert "The sweep was stopped before any job started" in output
    assert "#0 : " not in output  # no job launched
    assert len(held) == 1  # one request: the check (no retry), no job's


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["model.activation=relu,foo"], "Got 'foo' instead"),
        (["hydra/launcher=parallel", "model.hidden_layer_sizes=[16],[0]"], "[0]"),
        (["data.n_train=100,0"], "data.n_train=0"),
    ],
    ids=["activation", "parallel-sizes", "data-setting"],
)
@pytest.mark.slow
def test_a_bad_value_in_a_sweep_fails_before_any_run(store, tmp_path, overrides, named):
    uri, env = store
    args = ["-m", *overrides, *QUICK]
    result = run_entry_point("pipelines.train", args, env, tmp_path, 120, check=False)
    assert result.returncode != 0
    message = result.stderr
    assert "The sweep was stopped before any job started: job #1" in message
    assert named in message
    assert "#0 : " not in result.stdout + result.stderr  # no job launched
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # store never opened


def test_a_sweep_is_expanded_as_the_basic_sweeper_expands_it():
    """The preset's ``hydra.sweeper.params`` first, the command line's after (it
    wins for the same key), one list of overrides per job."""
    config = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"_target_": BASIC_SWEEPER, "params": {"seed": "0,1"}},
                "overrides": {"task": ["model.activation=relu,foo", "data=digits"]},
            }
        }
    )
    assert job_overrides(config) == [
        ["seed=0", "model.activation=relu", "data=digits"],
        ["seed=0", "model.activation=foo", "data=digits"],
        ["seed=1", "model.activation=relu", "data=digits"],
        ["seed=1", "model.activation=foo", "data=digits"],
    ]
    config.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.X"
    assert job_overrides(config) == []  # chosen as it goes: each job checks its own
