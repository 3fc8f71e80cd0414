"""The MLflow store under concurrent first use, and half-made stores (issue 11, item 1).

Real processes opening real SQLite stores in temporary directories, read back with
MlflowClient.
"""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
from alembic import command
from mlflow.entities import Metric
from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase
from mlflow.tracking import MlflowClient

from pipelines.store import StoreError, open_store, schema_state

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["data=digits", "model.max_iter=3", "tracking.log_model=false"]
# A revision in the middle of MLflow's migrations, where a lost race left stores.
MIDWAY_REVISION = "4465047574b1"


def start_together(commands, env, cwd):
    """Start every command at once; return their (returncode, output) when all end."""
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for cmd in commands
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        results.append((proc.returncode, out.decode(errors="replace")))
    return results


def quiet_env(uri):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    return env


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_a_fresh_store_opened_by_four_processes_at_once_works(tmp_path, trial):
    """Unguarded, 2 in 3 such trials crashed a process or left the schema half-made."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    code = (
        "import sys; from mlflow.tracking import MlflowClient; "
        "from pipelines.store import open_store; "
        "from pipelines.tracking import setup_experiment; "
        "uri = sys.argv[1]; open_store(uri); "
        "setup_experiment(MlflowClient(uri), uri, 'race')"
    )
    results = start_together(
        [[sys.executable, "-c", code, uri]] * 4, quiet_env(uri), tmp_path
    )
    for returncode, output in results:
        assert returncode == 0, output[-3000:]
    _, revision, leftovers, _ = schema_state(tmp_path / "mlruns" / "mlflow.db")
    assert revision == _get_latest_schema_revision() and leftovers == []
    client = MlflowClient(uri)
    run = client.create_run(client.get_experiment_by_name("race").experiment_id)
    client.log_metric(run.info.run_id, "x", 1.0)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_four_trainings_into_a_fresh_store_all_finish_with_every_point(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    train = [sys.executable, "-m", "pipelines.train", *QUICK, "model.tol=0"]
    results = start_together(
        [[*train, f"seed={i}"] for i in range(4)], quiet_env(uri), tmp_path
    )
    for returncode, output in results:
        assert returncode == 0, output[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("skmlp").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("loss", "train_accuracy", "test_accuracy", "seconds"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [1, 2, 3], key


def half_made_store(path, experiments=()):
    """A store left where a lost migration race leaves it: midway through MLflow's
    migrations, with a batch operation's temporary table left over."""
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(str(engine.url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, MIDWAY_REVISION)
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE _alembic_tmp_tags (key TEXT)")
        for i, name in enumerate(experiments, start=1):
            db.execute(
                "INSERT INTO experiments (experiment_id, name, lifecycle_stage) "
                "VALUES (?, ?, 'active')",
                (i, name),
            )


def test_a_half_made_store_without_data_is_set_aside_and_made_anew(tmp_path):
    path = tmp_path / "mlflow.db"
    half_made_store(path)
    uri = f"sqlite:///{path}"
    open_store(uri)
    (aside,) = tmp_path.glob("mlflow.db.half-made-*")
    assert schema_state(aside)[1:3] == (MIDWAY_REVISION, ["_alembic_tmp_tags"])
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("after"))
    assert client.get_run(run.info.run_id).info.status == "RUNNING"


def test_a_half_made_store_with_data_is_left_alone_with_what_to_do(tmp_path):
    path = tmp_path / "mlflow.db"
    half_made_store(path, experiments=["precious"])
    before = path.read_bytes()
    with pytest.raises(StoreError) as excinfo:
        open_store(f"sqlite:///{path}")
    message = str(excinfo.value)
    assert str(path) in message and MIDWAY_REVISION in message
    assert "mlflow db upgrade" in message and "_alembic_tmp_tags" in message
    assert path.read_bytes() == before
    assert list(tmp_path.glob("mlflow.db.half-made-*")) == []


# ----------------------------------------------------------------------------------
# Damaged stores (issue 21, item 6): named, with what to do, and left as they are


def store_with_a_run(path):
    """A real store at ``path`` holding an experiment and a run with 300 points."""
    uri = f"sqlite:///{path}"
    open_store(uri)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("precious")).info.run_id
    points = [Metric("loss", 1 / (step + 1), 0, step) for step in range(300)]
    client.log_batch(run_id, metrics=points)
    client.set_terminated(run_id)


def damage(path, how):
    """Leave at ``path`` what a user may find where their store was."""
    if how == "a directory":
        path.mkdir()
        (path / "notes.txt").write_text("not a database")
    elif how == "random bytes":
        path.write_bytes(os.urandom(256 * 1024))
    else:  # a copy cut short: a full disk, an interrupted transfer
        store_with_a_run(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def files_under(root):
    """Every file under ``root`` (but the store's lock) and its bytes."""
    return {
        p.relative_to(root): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.mark.parametrize(
    "how",
    [
        "a directory",
        "random bytes",
        pytest.param("cut short", marks=pytest.mark.slow),  # makes a store first
    ],
)
def test_a_damaged_store_is_named_with_what_to_do_and_left_as_it_is(tmp_path, how):
    """Unchecked, these raised SQLite's own errors (``file is not a database``,
    ``disk I/O error``...) in a chain of SQLAlchemy's, naming no store."""
    path = tmp_path / "mlflow.db"
    damage(path, how)
    before = files_under(tmp_path)
    with pytest.raises(StoreError) as excinfo:
        open_store(f"sqlite:///{path}")
    error = excinfo.value
    message = str(error)
    assert f"The MLflow store sqlite:///{path} cannot be opened" in message
    assert f"mv {path} {path}.damaged" in message and "tracking.uri" in message
    assert "Nothing was changed" in message
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    assert files_under(tmp_path) == before


@pytest.mark.slow
def test_a_run_into_a_damaged_store_fails_first_with_the_store_named(tmp_path):
    """Before any data is loaded (an empty data directory would fail otherwise),
    with the store's message and none of SQLite's or SQLAlchemy's."""
    path = tmp_path / "mlruns" / "mlflow.db"
    path.parent.mkdir()
    damage(path, "random bytes")
    before = path.read_bytes()
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = {**quiet_env(f"sqlite:///{path}"), "SKMLP_MNIST_DIR": str(empty)}
    env["SKMLP_CACHE_DIR"] = str(empty)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.train", "data=mnist", "model.max_iter=1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert f"The MLflow store sqlite:///{path} cannot be opened" in result.stderr
    assert "sqlalchemy" not in result.stderr.lower()
    assert "sqlite3." not in result.stderr and "MNIST" not in result.stderr
    assert path.read_bytes() == before
