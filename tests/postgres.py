"""A private PostgreSQL cluster for the tests that need one (tests/test_postgres.py starts
the README's own `mlflow server` command on it).

The cluster is made by ``initdb`` in a temporary directory and listens on 127.0.0.1 on
a free port (trust authentication, fsync off: test data only). PostgreSQL refuses to
run as root, so as root it runs as the ``postgres`` user. Where PostgreSQL or the
``postgres`` extra (psycopg) cannot be had, the tests skip, except under CI (CI=true),
where ``.ci/run`` installs both and a missing one must fail the run, as the torch and
MNIST tests do.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port

START_TIMEOUT_S = 60


def unavailable(reason: str):
    """Skip (fail under CI) a test that needs what is missing."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the PostgreSQL tests: see .ci/run)")
    pytest.skip(reason)


def binary(name: str) -> str:
    """A PostgreSQL program: on PATH, else in Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name) or max(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None
    )
    if found is None:
        unavailable(
            f"PostgreSQL's {name} is not installed (apt-get install postgresql)"
        )
    return found


def _as_server_user(argv):
    """``argv`` run as ``postgres`` when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Cluster:
    """A running private cluster: ``uri(database)`` for MLflow, ``createdb(name)``."""

    port: int
    directory: Path

    def uri(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def createdb(self, name: str) -> str:
        """Create the empty database ``name``; return its URI."""
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)


def _wait_ready(cluster: Cluster, server: subprocess.Popen):
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            psycopg.connect(cluster.uri("postgres"), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                log = (cluster.directory / "server.log").read_text(errors="replace")
                pytest.fail(f"PostgreSQL did not start: {log[-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster, stopped and removed after the module's tests."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[postgres]')")
    initdb, server_bin = binary("initdb"), binary("postgres")
    # Not under pytest's tmp_path: its parents are private to root.
    directory = Path(tempfile.mkdtemp(prefix="skmlp-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    subprocess.run(
        _as_server_user([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    cluster = Cluster(free_port(), directory)
    with open(directory / "server.log", "wb") as log:
        settings = ["-c", "fsync=off", "-c", "listen_addresses=127.0.0.1"]
        server = subprocess.Popen(
            _as_server_user(
                [
                    server_bin,
                    "-D",
                    str(data),
                    "-p",
                    str(cluster.port),
                    "-k",
                    str(directory),
                ]
                + settings
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(cluster, server)
        yield cluster
    finally:
        server.terminate()  # SIGTERM: PostgreSQL's "smart" shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(directory, ignore_errors=True)
