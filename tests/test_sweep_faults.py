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
    start,
    wait_for,
)
from mlflow.tracking import MlflowClient
from test_faults import LONG
from test_workers import group_alive, kill_group, leftovers_of

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
