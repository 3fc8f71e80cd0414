"""Passwords in store URIs kept out of what the pipelines write (issue 21, item 7).

Redaction of URIs and texts, the log records of a real logger, and runs of the real
entry point whose store URI carries a password: into a real MLflow server, and into
one that is not there (the run fails, and its report still hides the password).
"""

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICK, free_port, run_entry_point, wait_until_healthy
from mlflow.tracking import MlflowClient

from pipelines.redact import redact, redact_config, redact_logs, redact_uri

SECRET = "Pw0rd-x9Zq"  # in no file, line or parameter of a run that was given it


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            f"postgresql+psycopg2://mlflow:{SECRET}@db.example:5432/mlflow",
            "postgresql+psycopg2://mlflow:***@db.example:5432/mlflow",
        ),
        (
            f"mysql+pymysql://me:{SECRET}@10.0.0.1/runs?charset=utf8mb4",
            "mysql+pymysql://me:***@10.0.0.1/runs?charset=utf8mb4",
        ),
        (  # SQLAlchemy reads a "/" in a password; "%40" is an encoded "@"
            f"postgresql://me:a/{SECRET}%40@h/db",
            "postgresql://me:***@h/db",
        ),
        (
            f"http://me:{SECRET}@127.0.0.1:5000/#/experiments/1/runs?x=1",
            "http://me:***@127.0.0.1:5000/#/experiments/1/runs?x=1",
        ),
        (f"https://me:{SECRET}@mlflow.example", "https://me:***@mlflow.example"),
    ],
)
def test_a_password_in_a_uri_is_shown_as_stars(uri, shown):
    assert redact_uri(uri) == shown
    assert redact(f"store {uri} opened") == f"store {shown} opened"


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////home/me/mlruns/mlflow.db",
        "postgresql://me@db.example/mlflow",  # a password from ~/.pgpass
        "http://127.0.0.1:5000/a@b",  # an "@" in the path is no password
        "file:///tmp/x",
    ],
)
def test_a_uri_without_a_password_is_left_as_it_is(uri):
    assert redact_uri(uri) == uri
    assert redact(f"'{uri}'") == f"'{uri}'"


def test_hydra_escaped_overrides_are_redacted_keeping_the_rest():
    """How Hydra's launchers log a sweep's jobs, and what its files hold."""
    line = rf"#0 : seed=1 tracking.uri=http\://me\:{SECRET}@127.0.0.1\:5000 data=x"
    assert (
        redact(line)
        == r"#0 : seed=1 tracking.uri=http\://me\:***@127.0.0.1\:5000 data=x"
    )
    dirname = f"seed=1,tracking.uri=postgresql://me:{SECRET}@h/db,x=2"
    assert redact(dirname) == "seed=1,tracking.uri=postgresql://me:***@h/db,x=2"


def test_every_string_of_a_config_is_redacted():
    config = {
        "tracking": {"uri": f"http://me:{SECRET}@h", "n": 3},
        "l": [f"a=http://u:{SECRET}@h"],
    }
    assert redact_config(config) == {
        "tracking": {"uri": "http://me:***@h", "n": 3},
        "l": ["a=http://u:***@h"],
    }


def test_log_records_and_their_tracebacks_are_redacted():
    """Any logger, arguments, exceptions: what a handler writes has no password,
    even a handler added after (Hydra and MLflow replace handlers)."""
    redact_logs()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("test_redact.quiet")
    logger.propagate = False
    logger.addHandler(handler)
    uri = f"postgresql://me:{SECRET}@h/db"
    try:
        raise RuntimeError(f"cannot reach {uri}")
    except RuntimeError:
        logger.exception("store %s failed", uri)
    logger.error("100%% of %s", [uri])
    logger.removeHandler(handler)
    text = out.getvalue()
    assert SECRET not in text
    assert text.count("postgresql://me:***@h/db") == 3
    assert "100% of" in text


def secret_free(paths, texts=()):
    """The files under ``paths`` and the ``texts`` that hold SECRET (none, we hope)."""
    found = [t[:200] for t in texts if SECRET in t]
    for root in paths:
        for path in Path(root).rglob("*"):
            if path.is_file() and SECRET.encode() in path.read_bytes():
                found.append(str(path))
    return found


@pytest.mark.slow
def test_an_unreachable_store_with_a_password_fails_without_showing_it(store, tmp_path):
    """The run fails at the store check; Hydra's files, the log and the console
    (its report of the failed job included) show the URI only with ``***``."""
    port = free_port()  # nothing listens there
    uri = f"http://skmlp:{SECRET}@127.0.0.1:{port}"
    env = {**store[1], "MLFLOW_TRACKING_URI": uri}
    args = [*QUICK, f"tracking.uri={uri}"]
    result = run_entry_point("pipelines.train", args, env, tmp_path, 120, check=False)
    assert result.returncode != 0
    shown = f"http://skmlp:***@127.0.0.1:{port}"
    assert f"The MLflow tracking server {shown} cannot be used" in result.stderr
    assert f"tracking.uri={shown}" in result.stderr  # Hydra's "Error executing job"
    (saved,) = (tmp_path / "outputs").glob("*/*/*/.hydra")
    assert f"tracking.uri={shown}" in (saved / "overrides.yaml").read_text()
    assert f"uri: {shown}" in (saved / "config.yaml").read_text()
    assert secret_free([tmp_path], [result.stdout, result.stderr]) == []


def mlflow_server(store_dir, port, cwd):
    """An MLflow server (no authentication: it ignores the URI's credentials) with
    its database and artifacts under ``store_dir``."""
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1"]
    argv += ["--backend-store-uri", f"sqlite:///{store_dir / 'mlflow.db'}"]
    argv += ["--artifacts-destination", str(store_dir / "artifacts")]
    return subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.mark.slow
def test_a_password_in_the_store_uri_is_in_no_file_line_or_parameter(store, tmp_path):
    """A single run (with its model) and a parallel sweep into a real MLflow server
    whose URI carries a password, given as tracking.uri and as MLFLOW_TRACKING_URI:
    the password is in no file of the store, of outputs/ and multirun/, and in no
    console or log line; the runs finished, with the URI recorded as ``***``."""
    store_dir, port = tmp_path / "server-store", free_port()
    store_dir.mkdir()
    server = mlflow_server(store_dir, port, tmp_path)
    uri = f"http://skmlp:{SECRET}@127.0.0.1:{port}"
    env = {**store[1], "MLFLOW_TRACKING_URI": uri}
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", server)
        single = [*QUICK, "tracking.log_model=true"]  # the URI from the environment
        sweep = ["-m", *QUICK, "seed=0,1", "hydra/launcher=parallel"]
        sweep.append(f"tracking.uri={uri}")  # in Hydra's files and launcher's lines
        results = [
            run_entry_point("pipelines.train", args, env, tmp_path, timeout=400)
            for args in (single, sweep)
        ]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        runs = client.search_runs(
            [client.get_experiment_by_name("skmlp").experiment_id]
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4  # 2 + parent
    shown = f"http://skmlp:***@127.0.0.1:{port}"
    params = sorted(r.data.params.get("tracking.uri", "-") for r in runs)
    assert params == sorted(["-", "None", shown, shown])  # parent, single, sweep
    artifacts = list((store_dir / "artifacts").rglob("config.yaml"))
    assert len(artifacts) == 3
    assert sum(f"uri: {shown}" in a.read_text() for a in artifacts) == 2
    (multirun_yaml,) = (tmp_path / "multirun").rglob("multirun.yaml")
    assert f"uri: {shown}" in multirun_yaml.read_text()
    single_out, sweep_out = (r.stdout + r.stderr for r in results)
    assert f"See the runs in the MLflow UI: {shown}/#" in single_out
    escaped = shown.replace(":", "\\:")  # as Hydra's launcher logs a job
    assert f"tracking.uri={escaped}" in sweep_out
    written = [store_dir, tmp_path / "outputs", tmp_path / "multirun"]
    assert secret_free(written, [single_out, sweep_out]) == []
