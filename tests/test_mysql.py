"""MySQL (MariaDB) as the MLflow store (issue 18, item 4: any database store), against
a real private server (``tests/mariadb.py``)."""

import subprocess
import sys

import pytest
from helpers import ROOT
from mariadb import mariadb  # noqa: F401 - the fixture
from test_postgres import first_runs_from_hosts


@pytest.mark.slow
def test_three_first_runs_from_three_hosts_on_a_fresh_database(mariadb, tmp_path):  # noqa: F811
    """As for PostgreSQL: hosts share no temporary directory. With the file lock, 2 in
    3 such runs failed on the migration race (``ALTER TABLE metrics ADD COLUMN step``)."""
    uri = mariadb.createdb("fresh")
    experiment = first_runs_from_hosts(uri, tmp_path / "shared-artifacts", tmp_path)
    assert experiment.artifact_location.endswith("shared-artifacts/hosts")


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
