"""A private MariaDB (MySQL) server for the tests that need one (tests/test_mysql.py).

``mariadb-install-db`` makes a data directory in a temporary directory, and ``mariadbd``
serves it on 127.0.0.1 on a free port, with grant tables skipped (any user, no
password: test data only) and no flush at commit. As root it runs as the ``mysql``
user. Where MariaDB or the ``mysql`` extra (PyMySQL) cannot be had, the tests skip,
except under CI (CI=true), where ``.ci/run`` installs both and a missing one must fail
the run, as the PostgreSQL tests do.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import helpers
import pytest
from helpers import free_port

START_TIMEOUT_S = 60


# Skip (fail under CI) a test that needs what is missing.
unavailable = partial(helpers.unavailable, tests="MySQL")


@dataclass
class Server:
    """A running private server: ``createdb(name)`` gives a fresh database's URI."""

    port: int
    directory: Path

    def connect(self, **kwargs):
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", **kwargs)

    def createdb(self, name: str) -> str:
        """Create the empty database ``name``; return its URI for MLflow."""
        with self.connect() as db:
            db.cursor().execute(f"CREATE DATABASE `{name}`")
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{name}"


def _wait_ready(server: Server, process: subprocess.Popen):
    import pymysql

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            server.connect(connect_timeout=2).close()
            return
        except pymysql.err.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                log = (server.directory / "server.log").read_text(errors="replace")
                pytest.fail(f"MariaDB did not start: {log[-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def mariadb():
    """A private MariaDB server, stopped and removed after the module's tests."""
    try:
        import pymysql  # noqa: F401
    except ImportError:
        unavailable("PyMySQL is not installed (pip install -e '.[mysql]')")
    install, server_bin = shutil.which("mariadb-install-db"), shutil.which("mariadbd")
    if not (install and server_bin):
        unavailable("MariaDB is not installed (apt-get install mariadb-server)")
    directory = Path(tempfile.mkdtemp(prefix="skmlp-mariadb-"))
    as_user = []
    if os.geteuid() == 0:  # mariadbd refuses root unless told otherwise
        user = pwd.getpwnam("mysql")
        os.chown(directory, user.pw_uid, user.pw_gid)
        as_user = ["--user=mysql"]
    data = directory / "data"
    subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={data}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
            *as_user,
        ],
        check=True,
        capture_output=True,
    )
    server = Server(free_port(), directory)
    with open(directory / "server.log", "wb") as log:
        process = subprocess.Popen(
            [
                server_bin,
                "--no-defaults",
                f"--datadir={data}",
                f"--port={server.port}",
                "--bind-address=127.0.0.1",
                f"--socket={directory}/socket",
                f"--pid-file={directory}/pid",
                "--skip-grant-tables",
                "--innodb-flush-log-at-trx-commit=0",
                *as_user,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)
