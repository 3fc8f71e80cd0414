"""A PostgreSQL store given a wrong password (issue 21, known gap (e)): the run fails
within seconds, naming the store with its password hidden and what to do, instead
of MLflow's connection retries with growing waits (over 120 s)."""

import os
import time

import pytest
from helpers import QUICK, run_entry_point
from postgres import postgres  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def password_cluster(postgres):  # noqa: F811
    """The private cluster with a role ``skmlp`` that must give its password
    (``right-pw``) over TCP, owning the database ``pw``."""
    import psycopg

    with psycopg.connect(postgres.uri("postgres"), autocommit=True) as db:
        db.execute("CREATE ROLE skmlp LOGIN PASSWORD 'right-pw'")
        db.execute("CREATE DATABASE pw OWNER skmlp")
    hba = postgres.directory / "data" / "pg_hba.conf"
    hba.write_text("host all skmlp 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    with psycopg.connect(postgres.uri("postgres"), autocommit=True) as db:
        db.execute("SELECT pg_reload_conf()")
    return postgres


def test_a_wrong_password_fails_fast_naming_the_store(password_cluster, tmp_path):
    port = password_cluster.port
    uri = f"postgresql://skmlp:wrong-pw@127.0.0.1:{port}/pw"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    result = run_entry_point(
        "pipelines.train", QUICK, env, tmp_path, timeout=400, check=False
    )
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "wrong-pw" not in output
    assert f"postgresql://skmlp:***@127.0.0.1:{port}/pw" in result.stderr, output
    assert "password authentication failed" in result.stderr
    assert "PGPASSWORD" in result.stderr  # what to do
    assert seconds < 60, f"{seconds:.0f} s: MLflow's connection retries?"


def test_a_sweep_with_a_wrong_password_fails_fast(password_cluster, tmp_path):
    port = password_cluster.port
    uri = f"postgresql://skmlp:wrong-pw@127.0.0.1:{port}/pw"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    args = ["-m", *QUICK, "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}"]
    result = run_entry_point(
        "pipelines.train", args, env, tmp_path, timeout=400, check=False
    )
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "wrong-pw" not in output
    assert f"postgresql://skmlp:***@127.0.0.1:{port}/pw" in result.stderr, output
    assert "PGPASSWORD" in result.stderr
    assert seconds < 60, f"{seconds:.0f} s: MLflow's connection retries?"
