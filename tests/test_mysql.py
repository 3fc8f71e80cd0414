"""MySQL (MariaDB) as the MLflow store (issue 18, item 4: any database store), against
a real private server (``tests/mariadb.py``)."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT
from mariadb import mariadb  # noqa: F401 - the fixture
from mlflow.tracking import MlflowClient
from test_postgres import FIRST_RUN


@pytest.mark.slow
def test_three_first_runs_from_three_hosts_on_a_fresh_database(mariadb, tmp_path):  # noqa: F811
    """As for PostgreSQL: hosts share no temporary directory. With the file lock, 2 in
    3 such runs failed on the migration race (``ALTER TABLE metrics ADD COLUMN step``)."""
    uri = mariadb.createdb("fresh")
    root = tmp_path / "shared-artifacts"
    processes = []
    for host in range(3):
        (tmp_path / f"tmp{host}").mkdir()
        env = {**os.environ, "TMPDIR": str(tmp_path / f"tmp{host}")}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", FIRST_RUN, uri, str(root)],
                env=env,
                cwd=ROOT,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    errors = [process.communicate(timeout=600)[1] for process in processes]
    codes = [process.returncode for process in processes]
    assert codes == [0, 0, 0], [error[-1500:] for error in errors]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hosts")
    assert len(client.search_runs([experiment.experiment_id])) == 3


def test_a_missing_mysql_driver_names_the_store_and_what_to_do():
    """``mysql://`` asks for mysqlclient (not installed here): the message names the
    store, password hidden, and the extra's driver."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom pipelines.store import StoreError, "
            "check_store\ntry: check_store(sys.argv[1])\nexcept StoreError as e: print(e)",
            "mysql://me:secret@db.example/mlflow",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "me:***@db.example/mlflow" in result.stdout, result.stdout + result.stderr
    assert "secret" not in result.stdout
    assert "pip install -e '.[mysql]'" in result.stdout
    assert "mysql+pymysql://" in result.stdout
