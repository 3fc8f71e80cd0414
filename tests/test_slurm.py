"""Sweeps on a real Slurm cluster (tests/slurm.py: slurmctld, slurmd and munged on
127.0.0.1): the runs land under their parent whatever the jobs' environment, and a
request no node can satisfy, a job that dies on its node or an interrupt fails the
sweep loudly, leaving nothing queued and no run RUNNING."""

import signal

import pytest
from helpers import (
    QUICK,
    finish,
    output_of,
    parent_and_children,
    run_entry_point,
    runs_of,
    start,
    wait_for,
)
from mlflow.tracking import MlflowClient
from slurm import slurm  # noqa: F401 (the fixture)

from pipelines.slurm import _gpus, requested

# One CPU and 1 GB a job, so that two jobs share the test's 2-CPU node.
SMALL = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]
LONG = ["data=digits", "model.max_iter=100000", "model.n_iter_no_change=100000"]


@pytest.fixture
def env(slurm, store):  # noqa: F811
    """The store's environment pointed at the test's cluster."""
    uri, environment = store
    return uri, {**environment, "SLURM_CONF": slurm.env["SLURM_CONF"]}


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("(null)", 0), ("gpu:2", 2), ("gpu:a100:4(S:0-1)", 4), ("gpu:1,shard:8", 1)],
)
def test_gpus_are_read_from_sinfos_gres(gres, gpus):
    assert _gpus(gres) == gpus


def test_a_request_counts_every_task_of_a_node():
    launcher = {"cpus_per_task": 3, "tasks_per_node": 2, "mem_gb": 1.5}
    ask = requested(launcher)
    assert (ask.cpus, ask.memory_mb, ask.gpus) == (6, 1536, 0)
    assert requested({"gpus_per_task": 1, "tasks_per_node": 2}).gpus == 2


def sweep(args, env, cwd, check=True, timeout=300):
    return run_entry_point("pipelines.train", ["-m", *args], env, cwd, timeout, check)


def assert_sweep_logged(uri, experiment, jobs):
    """Every job a FINISHED child of one FINISHED parent, which has the summary."""
    client, runs = runs_of(uri, experiment)
    parents, children = parent_and_children(runs)
    assert len(parents) == 1 and len(children) == jobs
    assert all(run.info.status == "FINISHED" for run in runs)
    artifacts = [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    assert "sweep_summary.json" in artifacts


@pytest.mark.slow  # a cluster and Slurm jobs: over 9 s
def test_sweep_logs_its_jobs_under_its_parent(slurm, env, tmp_path):  # noqa: F811
    uri, environment = env
    args = [*SMALL, *QUICK, "model.activation=relu,tanh", "tracking.experiment_name=s"]
    sweep(args, environment, tmp_path)
    assert_sweep_logged(uri, "s", 2)
    assert slurm.queue() == []


@pytest.mark.slow  # a cluster and Slurm jobs: over 9 s
def test_partial_export_still_logs_under_the_parent(slurm, env, tmp_path):  # noqa: F811
    """The jobs see neither MLFLOW_TRACKING_URI nor the rest of the environment: the
    store and the parent travel in their config."""
    uri, environment = env
    environment["SBATCH_EXPORT"] = "PATH,HOME,SUBMITIT_EXECUTOR"
    args = [*SMALL, *QUICK, "seed=0,1", "tracking.experiment_name=partial"]
    sweep(args, environment, tmp_path)
    assert_sweep_logged(uri, "partial", 2)
    stores = [path for path in tmp_path.rglob("*.db")]
    assert stores == [tmp_path / "mlruns" / "mlflow.db"]  # none of a job's own


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=64"], "64 CPUs"),
        (["hydra/launcher=slurm", "hydra.launcher.mem_gb=100000"], "100000.0 GB"),
        (["hydra/launcher=slurm_gpu"], "1 GPUs"),
        (["hydra/launcher=slurm", "device=cuda"], "hydra/launcher=slurm_gpu"),
    ],
)
def test_a_request_no_node_can_satisfy_fails_at_once(
    slurm,  # noqa: F811
    env,
    tmp_path,
    args,
    said,
):
    uri, environment = env
    args = [*args, *QUICK, "seed=0,1"]
    done = sweep(args, environment, tmp_path, check=False, timeout=90)
    assert done.returncode != 0
    message = done.stderr
    assert "before any job started" in message and said in message, message
    if "device=cuda" not in args:
        assert f"{slurm.cpus} CPUs" in message and "sinfo" in message
    assert slurm.queue() == []
    assert not list(tmp_path.rglob(".submitit"))  # nothing submitted
    assert MlflowClient(uri).search_experiments(filter_string="name != 'Default'") == []


@pytest.mark.slow  # a cluster and Slurm jobs: over 9 s
def test_an_interrupt_cancels_the_jobs_and_ends_their_runs_killed(
    slurm,  # noqa: F811
    env,
    tmp_path,
):
    """Three jobs of the node's every CPU: one runs, two wait (their reason logged);
    SIGTERM to the driver leaves nothing queued and every run KILLED."""
    uri, environment = env
    cpus = f"hydra.launcher.cpus_per_task={slurm.cpus}"
    args = [*SMALL, cpus, *LONG, "seed=0,1,2", "tracking.experiment_name=stop"]
    driver = start(["-m", *args], environment, tmp_path)
    wait_for(lambda: "PENDING (Resources" in output_of(driver), "pending", driver)

    def running_child():
        client = MlflowClient(uri)
        found = client.get_experiment_by_name("stop")
        runs = client.search_runs([found.experiment_id]) if found else []
        return parent_and_children(runs)[1]

    wait_for(running_child, "a running job", driver)
    driver.send_signal(signal.SIGTERM)
    finish(driver)
    assert driver.returncode != 0
    assert slurm.queue() == [], output_of(driver)
    _, runs = runs_of(uri, "stop")
    assert runs and all(run.info.status == "KILLED" for run in runs), [
        (run.info.run_name, run.info.status) for run in runs
    ]


@pytest.mark.slow  # a cluster and Slurm jobs: over 9 s
def test_a_job_that_dies_on_its_node_fails_the_sweep(slurm, env, tmp_path):  # noqa: F811
    """``SBATCH_EXPORT=NONE``: submitit's job dies at start; without accounting the
    driver used to wait for it forever."""
    uri, environment = env
    environment["SBATCH_EXPORT"] = "NONE"
    args = [*SMALL, *QUICK, "seed=0,1", "tracking.experiment_name=none"]
    done = sweep(args, environment, tmp_path, check=False, timeout=180)
    assert done.returncode != 0
    assert "ended without a result" in done.stderr, done.stderr[-3000:]
    assert "SBATCH_EXPORT" in done.stderr
    _, runs = runs_of(uri, "none")
    assert [run.info.status for run in runs] == ["FAILED"]  # the parent, no child
    assert "ended without a result" in runs[0].data.tags["skmlp.end_reason"]
    assert slurm.queue() == []
