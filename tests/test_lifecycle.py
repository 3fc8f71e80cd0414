"""``blas_threads=auto``: the rule, the CPUs a job may use, the CPUs idle now."""

import os

import pytest

from pipelines.lifecycle import (
    THREADED_MIN_WIDTH,
    auto_threads,
    idle_cpus,
    job_threads,
    usable_cpus,
)

WIDE, NARROW = 512, 16  # experiment=wide, experiment=3b1b


@pytest.mark.parametrize(
    ("cpus", "n_jobs", "width", "idle", "expected"),
    [
        (2, 2, WIDE, 2.0, 1),  # a parallel sweep: each job its share
        (8, 2, NARROW, 8.0, 4),
        (8, -1, WIDE, 8.0, 1),  # as many jobs as CPUs
        (2, None, NARROW, 2.0, 1),  # narrow: threads gain little, lose much when busy
        (2, 1, NARROW, 2.0, 1),
        (2, None, WIDE, 2.0, 2),  # wide, quiet: every CPU
        (2, None, WIDE, 1.2, 1),  # wide, one CPU busy elsewhere: one thread
        (8, None, WIDE, 5.6, 6),
        (4, None, WIDE, None, 4),  # idleness unknown
        (2, None, None, 2.0, 2),  # width unknown
        (2, None, THREADED_MIN_WIDTH, 2.0, 2),
    ],
)
def test_auto_rule(cpus, n_jobs, width, idle, expected):
    assert auto_threads(cpus, n_jobs, width, lambda: idle) == expected


def test_usable_cpus_are_the_affinity_and_slurms_share(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert usable_cpus() == affinity
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert usable_cpus() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(affinity + 8))
    assert usable_cpus() == affinity  # Slurm's share cannot add CPUs
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("SLURM_JOB_CPUS_PER_NODE", "1(x3)")  # no --cpus-per-task
    assert usable_cpus() == 1


def test_a_slurm_job_uses_every_cpu_it_was_given(monkeypatch):
    """Outside Slurm, a wide network on a busy machine gets one thread; a Slurm job
    counts its allocation, busy or not."""
    affinity = len(os.sched_getaffinity(0))
    if affinity < 2:
        pytest.skip("needs 2 CPUs")
    for name in ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    busy = lambda: 0.0  # noqa: E731
    assert job_threads(None, WIDE, busy) == 1
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert job_threads(None, WIDE, busy) == 2
    assert job_threads(None, NARROW, busy) == 1  # narrow: as anywhere
    assert job_threads(2, WIDE, busy) == 1  # a joblib sweep inside the job


def test_idle_cpus_reads_the_machine():
    idle = idle_cpus(0.05)
    assert idle is not None and 0 <= idle <= os.cpu_count()
