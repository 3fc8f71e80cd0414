"""PostgreSQL as the MLflow store (issue 18, item 4), against a real private cluster
(``tests/postgres.py``) and a real ``mlflow server`` on it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICK, ROOT, free_port, python_code, run, wait_until_healthy
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient
from postgres import postgres  # noqa: F401 - the fixture
from sqlalchemy import create_engine, text

# A "first run" of a host: it opens the store (creating and migrating it if new), then
# makes its experiment and a run, as pipelines.run.resolve_run does.
FIRST_RUN = (
    "import sys; from mlflow.tracking import MlflowClient; "
    "from pipelines.store import check_store; "
    "from pipelines.tracking import setup_experiment, start_run; "
    "uri, root = sys.argv[1:]; check_store(uri); client = MlflowClient(uri); "
    "experiment = setup_experiment(client, uri, 'hosts', root); "
    "start_run(client, experiment, 'first')"
)


def first_runs_from_hosts(uri, root, tmp_path, hosts=3):
    """Start ``FIRST_RUN`` on the fresh database ``uri`` from ``hosts`` processes at
    once, each with a temporary directory of its own (as separate hosts have); assert
    that all succeed and made their run; return their experiment."""
    processes = []
    for host in range(hosts):
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
    assert codes == [0] * hosts, [error[-1500:] for error in errors]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hosts")
    assert len(client.search_runs([experiment.experiment_id])) == hosts
    return experiment


@pytest.mark.slow
def test_three_first_runs_from_three_hosts_on_a_fresh_database(postgres, tmp_path):  # noqa: F811
    """Hosts share no temporary directory (a file lock serialises one host only): with
    one, 2 in 3 such runs failed on the migration race (pg_type_typname_nsp_index)."""
    uri = postgres.createdb("fresh")
    root = tmp_path / "shared-artifacts"
    experiment = first_runs_from_hosts(uri, root, tmp_path)
    assert experiment.artifact_location == f"{root.as_uri()}/hosts"
    engine = create_engine(uri)
    with engine.connect() as db:
        revision = db.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert revision == _get_latest_schema_revision()


def test_a_missing_driver_names_the_store_and_the_extra():
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; without it, the message says
    which extra to install (not a bare ModuleNotFoundError)."""
    code = (
        "import sys; sys.modules['psycopg'] = None  # psycopg not installed\n"
        "from pipelines.store import StoreError, check_store\n"
        "try: check_store('postgresql://me:secret@db.example:5432/mlflow')\n"
        "except StoreError as exc: print(exc)\n"
    )
    printed = python_code(code)
    assert "postgresql://me:***@db.example:5432/mlflow" in printed
    assert "pip install -e '.[postgres]'" in printed
    assert "secret" not in printed


def readme_recipe() -> list[str]:
    """The commands of the README's "Past one machine" section before its
    subsections (Slurm, Ray and Dask have their own tests), comments left out."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Past one machine\n")[1].split("\n## ")[0]
    section = section.split("\n### ")[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    return [
        line
        for block in blocks
        for line in block.splitlines()
        if line and not line.startswith("#")
    ]


def recipe_env(postgres, tmp_path):  # noqa: F811
    """The README's shell variables for this machine, the venv's programs first."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env | {
        "DB": f"postgres@127.0.0.1:{postgres.port}/mlflow",
        "SERVER": "127.0.0.1",
        "PORT": str(free_port()),
        "ARTIFACTS": str(tmp_path / "served"),
    }


def start_shell(command, env, cwd):
    """``command`` in bash, in the background, its output in a file."""
    with open(Path(cwd) / f"{free_port()}.log", "wb") as log:
        return subprocess.Popen(
            ["bash", "-c", f"exec {command}"], env=env, cwd=cwd, stdout=log, stderr=log
        )


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_the_readme_recipe_for_a_shared_server(postgres, tmp_path):  # noqa: F811
    """The README's commands, with this machine's values and the digits: a server on
    PostgreSQL, a sweep through it, a run on the database directly, a UI on it."""
    export, server_command, sweep, direct, ui = readme_recipe()
    assert export.startswith("export DB=") and server_command.startswith(
        "mlflow server"
    )
    postgres.createdb("mlflow")
    env = recipe_env(postgres, tmp_path)
    shared = tmp_path / "shared-artifacts"
    direct = direct.replace("/shared/mlflow-artifacts", str(shared))
    ui_port = free_port()
    ui = ui.replace("--port 5001", f"--port {ui_port}")
    quick = " ".join(QUICK)
    server = start_shell(server_command, env, tmp_path)
    try:
        base = f"http://127.0.0.1:{env['PORT']}"
        wait_until_healthy(base, server, timeout=180)
        run(["bash", "-c", f"{sweep} {quick}"], tmp_path, env)
        run(
            ["bash", "-c", f"{direct} {quick} tracking.experiment_name=direct"],
            tmp_path,
            env,
        )
        viewer = start_shell(ui, env, tmp_path)
        try:
            wait_until_healthy(f"http://127.0.0.1:{ui_port}", viewer, timeout=180)
        finally:
            stop(viewer)
        client = MlflowClient(base)
        sweep_runs = client.search_runs(
            [client.get_experiment_by_name("skmlp").experiment_id]
        )
    finally:
        stop(server)
    assert sorted(r.info.status for r in sweep_runs) == ["FINISHED"] * 3
    assert any(path.is_file() for path in (tmp_path / "served").rglob("*"))
    direct_client = MlflowClient(postgres.uri("mlflow"))
    experiment = direct_client.get_experiment_by_name("direct")
    assert experiment.artifact_location == f"{shared.as_uri()}/direct"
    assert any(path.name == "learning_curves.json" for path in shared.rglob("*"))
    assert (
        not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
    )
