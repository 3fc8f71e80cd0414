"""The MLflow store: created and migrated by one process at a time, checked before work.

MLflow creates and migrates a database store on its first use in each process. Two
processes doing that at once race on alembic's migrations, and SQLite runs them without
a transaction, so the loser can leave the schema half-migrated for good. ``open_store``
serialises that first use with a file lock, and recovers a store left half-made (by an
older version of this code, or a process killed while migrating) where no data is lost.
"""

import hashlib
import logging
import sqlite3
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Creating a fresh store runs ~70 migrations: seconds, longer on a loaded machine.
LOCK_TIMEOUT_S = 300
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message says why and what to do."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def lock_path(uri: str) -> Path | None:
    """The lock file that serialises the first open of a database store.

    Beside the file for SQLite (so every process that can reach the store sees it);
    in the temporary directory, keyed by the URI, for a database server; None for
    stores that migrate themselves (an MLflow server).
    """
    path = sqlite_path(uri)
    if path is not None:
        return path.with_name(path.name + ".lock")
    if uri.split(":", 1)[0].split("+")[0] in DATABASE_SCHEMES:
        digest = hashlib.md5(uri.encode(), usedforsecurity=False).hexdigest()
        return Path(tempfile.gettempdir()) / f"skmlp-store-{digest}.lock"
    return None


def open_store(uri: str) -> None:
    """Create, migrate or simply open the store at ``uri``, one process at a time.

    The store MLflow builds is cached per process, so later clients of ``uri`` in this
    process skip the migration. Raises StoreError if the store cannot be made usable.
    """
    lock = lock_path(uri)
    if lock is None:
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock, timeout=LOCK_TIMEOUT_S):
            path = sqlite_path(uri)
            if path is not None and path.exists():
                recover_half_made(path)
            MlflowClient(uri).search_experiments(max_results=1)
    except Timeout as exc:
        raise StoreError(
            f"Another process has held the lock {lock} of the MLflow store {uri} for "
            f"over {LOCK_TIMEOUT_S} s. Wait for it to finish; a lock whose holder "
            "died is released by the system."
        ) from exc


def schema_state(path: Path) -> tuple[bool, str | None, list[str], int]:
    """Of the SQLite store at ``path``: whether it has any table, its alembic
    revision, its leftover ``_alembic_tmp_*`` tables and how many runs and
    non-default experiments it holds."""
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        revision = None
        if "alembic_version" in tables:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        n_records = 0
        if "runs" in tables:
            n_records += db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        if "experiments" in tables:
            query = "SELECT COUNT(*) FROM experiments WHERE experiment_id != 0"
            n_records += db.execute(query).fetchone()[0]
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    return bool(tables), revision, leftovers, n_records


def recover_half_made(path: Path) -> None:
    """Set aside a store whose schema was left half-migrated, if it holds no data.

    A store at MLflow's latest revision, or one with no tables yet, is left alone
    (MLflow creates the tables). A half-made store that holds runs or experiments is
    left untouched too, and StoreError says what to do. Call it holding the lock.
    """
    has_tables, revision, leftovers, n_records = schema_state(path)
    head = _get_latest_schema_revision()
    if not has_tables or revision == head:
        return
    if n_records:
        raise StoreError(
            f"The MLflow store {path} is at schema revision {revision}, not {head}"
            + (f", with leftover tables {leftovers}" if leftovers else "")
            + f", and holds {n_records} runs or experiments. If MLflow was upgraded, "
            f"back the file up and run `mlflow db upgrade sqlite:///{path}`. If a "
            "process died while migrating it, restore it from a backup, or move it "
            "aside to start a new store."
        )
    aside = path.with_name(f"{path.name}.half-made-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    log.warning(
        "The MLflow store %s was left half-migrated (revision %s, leftover tables %s) "
        "and held no runs: moved it to %s and created a new one.",
        path,
        revision,
        leftovers,
        aside,
    )
