"""A private PostgreSQL cluster for the tests that need one (tests/test_postgres.py starts
the README's own `mlflow server` command on it).

The cluster is made by ``initdb`` in a temporary directory and listens on 127.0.0.1 on
a free port (trust authentication, fsync off: test data only). PostgreSQL refuses to
run as root, so as root it runs as the ``postgres`` user. Where PostgreSQL or the
``postgres`` extra (psycopg) cannot be had, the tests skip, except under CI (CI=true),
where ``.ci/run`` installs both and a missing one must fail the run, as the torch and
MNIST tests do. Outside pytest (benchmarks/soak_engines.py), ``running()`` is the same
cluster as a context manager.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import helpers
import pytest
from helpers import free_port

START_TIMEOUT_S = 60


# Skip (fail under CI) a test that needs what is missing.
unavailable = partial(helpers.unavailable, tests="PostgreSQL")


class StartError(RuntimeError):
    """The cluster could not be had or did not start (the message says why)."""


def binary(name: str) -> str:
    """A PostgreSQL program: on PATH, else in Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name) or max(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None
    )
    if found is None:
        raise StartError(
            f"PostgreSQL's {name} is not installed (apt-get install postgresql)"
        )
    return found


def missing() -> str | None:
    """Why no cluster can be started here, or None if one can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        binary("initdb"), binary("postgres")
    except StartError as error:
        return str(error)
    return None


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
                raise StartError(f"PostgreSQL did not start: {log[-2000:]}") from None
            time.sleep(0.2)


def _start_server(cluster: Cluster, data: Path) -> subprocess.Popen:
    """``postgres`` on ``data``, on 127.0.0.1 and its port, in a session of its own (a
    Ctrl-C meant for the caller does not stop it under its users: ``running`` does)."""
    settings = ["-c", "fsync=off", "-c", "listen_addresses=127.0.0.1"]
    argv = [binary("postgres"), "-D", str(data), "-p", str(cluster.port)]
    argv += ["-k", str(cluster.directory), *settings]
    with open(cluster.directory / "server.log", "wb") as log:
        return subprocess.Popen(
            _as_server_user(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(server: subprocess.Popen):
    server.terminate()  # SIGTERM: PostgreSQL's "smart" shutdown
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@contextmanager
def running():
    """A private PostgreSQL cluster, stopped and its files removed on leaving, whatever
    the way out (an exception, Ctrl-C). Raises StartError if it cannot start."""
    reason = missing()
    if reason:
        raise StartError(reason)
    # Not under pytest's tmp_path: its parents are private to root.
    directory = Path(tempfile.mkdtemp(prefix="skmlp-pg-"))
    server = None
    try:
        data = directory / "data"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
        initdb = [binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run(_as_server_user(initdb), check=True, capture_output=True)
        cluster = Cluster(free_port(), directory)
        server = _start_server(cluster, data)
        _wait_ready(cluster, server)
        yield cluster
    finally:
        if server is not None:
            _stop(server)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster, stopped and removed after the module's tests."""
    reason = missing()
    if reason:
        unavailable(reason)
    try:
        with running() as cluster:
            yield cluster
    except StartError as error:
        pytest.fail(str(error))
