"""A tracking server that goes away during a run (issue 21, item 1): a real ``mlflow
server`` on a sqlite store, killed with SIGKILL while a run trains and restarted on the
same port and store; the run trains on, waits, and lands whole, or is spooled and
replayed. And the heartbeat that lets ``skmlp-reap`` on any host end a silent run."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from helpers import (
    QUICK,
    all_runs,
    finish,
    free_port,
    parent_and_children,
    run,
    run_entry_point,
    start,
    wait_for,
    wait_until_healthy,
)
from mlflow.tracking import MlflowClient

from pipelines.outage import Spooled, write_spool
from pipelines.store import open_store

# Enough epochs of the digits to train for a while, never stopping early.
LONG_RUN = [
    "data=digits",
    "model.max_iter=1000",
    "model.hidden_layer_sizes=[256,256]",
    "model.tol=0",
    "model.n_iter_no_change=100000",
    "tracking.experiment_name=outage",
]
PER_EPOCH = ("loss", "seconds", "test_accuracy", "train_accuracy", "learning_rate")


class Server:
    """``mlflow server`` on ``port`` over the sqlite store ``uri``, artifacts in
    ``artifacts``; it can be killed and started again on the same port and store."""

    def __init__(self, uri, artifacts, env, cwd):
        self.uri, self.artifacts, self.env, self.cwd = uri, artifacts, env, cwd
        self.port, self.process = free_port(), None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self):
        argv = [sys.executable, "-m", "mlflow", "server"]
        argv += ["--backend-store-uri", self.uri, "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--workers", "1"]
        argv += ["--artifacts-destination", str(self.artifacts)]
        with open(self.cwd / f"server-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_healthy(self.base, self.process, timeout=120)

    def kill(self):
        """SIGKILL to the server and its workers, as a crash would end them."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@contextmanager
def served(tmp_path, env):
    """A started :class:`Server` for the test, killed at its end."""
    uri = f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    (tmp_path / "server").mkdir()
    server = Server(uri, tmp_path / "server" / "artifacts", env, tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill()


def epochs_logged(client, experiment):
    """How many epochs' losses the (first) run of ``experiment`` has in the store."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return runs and len(client.get_metric_history(runs[0].info.run_id, "loss"))


@pytest.mark.slow
def test_a_run_outlives_a_tracking_server_killed_and_restarted(store, tmp_path):
    """Killed a few seconds into training and back 12 s later: the run exits 0,
    FINISHED, with every epoch's point of every metric and its model."""
    _, env = store
    with served(tmp_path, env) as server:
        env = {**env, "MLFLOW_TRACKING_URI": server.base}
        client = MlflowClient(server.base)
        process = start(LONG_RUN, env, tmp_path)
        wait_for(lambda: epochs_logged(client, "outage"), "epochs stored", process)
        server.kill()
        time.sleep(12)
        server.start()
        output = finish(process, timeout=400)
        assert process.returncode == 0, output[-3000:]
        assert "not answering" in output
        experiment = client.get_experiment_by_name("outage").experiment_id
        (found,) = client.search_runs([experiment])
        check_whole(client, found, output, 1000)
        assert client.search_logged_models([experiment]), "no model logged"


@pytest.mark.slow
def test_a_parallel_sweep_outlives_a_tracking_server_killed_and_restarted(
    store, tmp_path
):
    """The server killed while a parallel sweep's two jobs train and back 12 s later:
    the sweep exits 0, both children FINISHED with every epoch's points, the parent
    FINISHED with its summary."""
    _, env = store
    args = ["-m", "hydra/launcher=parallel", *LONG_RUN, "model.max_iter=400"]
    args += ["seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    with served(tmp_path, env) as server:
        env = {**env, "MLFLOW_TRACKING_URI": server.base}
        client = MlflowClient(server.base)
        process = start(args, env, tmp_path)
        wait_for(lambda: children_logging(client, 2), "both jobs' epochs", process)
        server.kill()
        time.sleep(12)
        server.start()
        output = finish(process, timeout=600)
        assert process.returncode == 0, output[-3000:]
        assert "not answering" in output
        experiment = client.get_experiment_by_name("outage").experiment_id
        (parent,), children = parent_and_children(client.search_runs([experiment]))
        assert len(children) == 2
        for child in children:
            check_whole(client, child, output, 400)
        assert parent.info.status == "FINISHED", output[-3000:]
        assert "skmlp.best_run" in parent.data.tags
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert "sweep_summary.json" in artifacts


@pytest.mark.slow
def test_parallel_jobs_that_start_while_the_server_is_down_wait_for_it(store, tmp_path):
    """The server killed as soon as the sweep's parent run exists, before its jobs
    open the store, and back 12 s later: the jobs wait for it, and the sweep ends
    as if nothing happened."""
    _, env = store
    args = ["-m", "hydra/launcher=parallel", *QUICK, "model.max_iter=30", "seed=0,1"]
    args += ["tracking.experiment_name=outage", f"hydra.sweep.dir={tmp_path / 's'}"]
    with served(tmp_path, env) as server:
        env = {**env, "MLFLOW_TRACKING_URI": server.base}
        client = MlflowClient(server.base)
        process = start(args, env, tmp_path)
        deadline = time.monotonic() + 180
        while not runs_in(client, "outage"):  # the parent: kill at once
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        server.kill()
        time.sleep(12)
        server.start()
        output = finish(process, timeout=400)
        assert process.returncode == 0, output[-3000:]
        assert "waiting up to" in output
        (parent,), children = parent_and_children(runs_in(client, "outage"))
        assert len(children) == 2
        for child in children:
            check_whole(client, child, output, 30)
        assert parent.info.status == "FINISHED", output[-3000:]


def runs_in(client, experiment):
    """The runs of ``experiment`` (none before it exists)."""
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def children_logging(client, n_children):
    """Whether ``n_children`` runs of the experiment ``outage`` have epochs stored."""
    found = client.get_experiment_by_name("outage")
    runs = client.search_runs([found.experiment_id]) if found else []
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return len(children) == n_children and all(
        client.get_metric_history(c.info.run_id, "loss") for c in children
    )


def check_whole(client, run, output, n_epochs):
    """Run ``run`` ended FINISHED with every epoch's points and its artifacts, and
    beat while it trained."""
    assert run.info.status == "FINISHED", output[-3000:]
    assert run.info.start_time / 1000 - 1 <= float(run.data.tags["skmlp.heartbeat"])
    assert int(run.data.metrics["n_epochs"]) == n_epochs
    for key in PER_EPOCH:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, n_epochs + 1)), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png"} <= artifacts


@pytest.mark.slow
def test_a_run_spools_when_the_wait_runs_out_and_replays_later(store, tmp_path):
    """Down past tracking.outage_wait_s: full buffers of points go to the spool as
    training goes on; the run saves what it holds there too, and exits non-zero
    naming skmlp-replay, once, with no traceback; replayed once the server is back,
    the run is whole in the store and the spool is gone."""
    _, env = store
    spool = tmp_path / "spool"
    args = [
        *LONG_RUN,
        "model.max_iter=300",
        "tracking.outage_wait_s=3",
        f"tracking.spool_dir={spool}",
        "+callbacks.mlflow.max_points=50",  # full after 13 epochs
    ]
    with served(tmp_path, env) as server:
        env = {**env, "MLFLOW_TRACKING_URI": server.base}
        client = MlflowClient(server.base)
        process = start(args, env, tmp_path)
        wait_for(lambda: epochs_logged(client, "outage"), "epochs stored", process)
        server.kill()
        output = finish(process, timeout=400)
        assert process.returncode != 0
        (folder,) = spool.iterdir()
        assert output.count(f"skmlp-replay {folder}\n") == 1, output[-3000:]
        assert "Traceback" not in output
        assert "training goes on, and they are written into the run" in output
        server.start()
        result = run(
            [sys.executable, "-m", "pipelines.outage", str(spool)], tmp_path, env
        )
        assert f"run {folder.name} written to" in result.stdout
        assert not folder.exists()
        experiment = client.get_experiment_by_name("outage").experiment_id
        (found,) = client.search_runs([experiment])
        check_whole(client, found, output, 300)
        assert "model/MLmodel" in {
            a.path for a in client.list_artifacts(found.info.run_id, "model")
        }


def test_replay_into_a_store_that_does_not_answer_keeps_the_spool(tmp_path):
    """skmlp-replay with nothing listening: exits non-zero naming the folder and
    the store, and leaves every file of the spool as it was."""
    uri = f"http://127.0.0.1:{free_port()}"
    spooled = Spooled(uri, "0" * 32, "FINISHED", metrics=[["loss", 0.5, 1, 1]])
    folder = write_spool(tmp_path, spooled, lambda path: None)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    result = run(
        [sys.executable, "-m", "pipelines.outage", str(folder)], tmp_path, check=False
    )
    assert result.returncode != 0
    assert f"{folder} not replayed" in result.stderr
    assert f"The MLflow tracking server {uri} cannot be used" in result.stderr
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_reap_ends_runs_of_any_host_whose_heartbeat_stopped(store, tmp_path):
    """skmlp-reap --stale-after: a RUNNING run of another host silent for an hour
    ends FAILED saying so; one that beat just now, and one with no heartbeat (a
    sweep's parent), stay RUNNING."""
    uri, env = store
    open_store(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("beats")
    now = time.time()
    beats = {"silent": now - 3600, "beating": now, "parent": None}
    ids = {}
    for name, beat in beats.items():
        tags = {"skmlp.host": "another-host", "skmlp.pid": "4242"}
        if beat is not None:
            tags["skmlp.heartbeat"] = str(int(beat))
        ids[name] = client.create_run(experiment, run_name=name, tags=tags)
    argv = ["--uri", uri, "--stale-after", "600"]
    result = run_entry_point("pipelines.lifecycle", argv, env, tmp_path)
    assert "1 runs with no heartbeat for 600 s marked FAILED" in result.stdout
    silent = client.get_run(ids["silent"].info.run_id)
    assert silent.info.status == "FAILED"
    assert "its heartbeat stopped" in silent.data.tags["skmlp.end_reason"]
    assert "process 4242 on another-host" in silent.data.tags["skmlp.end_reason"]
    for name in ("beating", "parent"):
        assert client.get_run(ids[name].info.run_id).info.status == "RUNNING"


def test_a_bad_outage_wait_fails_before_any_run_exists(store, tmp_path):
    """tracking.outage_wait_s=abc: refused, naming the key, before a run is made
    (not at the run's end, after the training)."""
    uri, env = store
    args = [*QUICK, "tracking.outage_wait_s=abc"]
    result = run_entry_point("pipelines.train", args, env, tmp_path, check=False)
    assert result.returncode != 0
    assert "tracking.outage_wait_s='abc': must be a number of seconds" in result.stderr
    assert all_runs(uri) == []
