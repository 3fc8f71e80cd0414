"""The MLflow store: where it is, created and migrated by one process at a time, checked
before any work.

MLflow creates and migrates a database store on its first use in each process. Two
processes doing that at once race on alembic's migrations, and SQLite runs them without
a transaction, so the loser can leave the schema half-migrated for good. ``open_store``
serialises that first use: with a lock held in the database for PostgreSQL and MySQL
or MariaDB (processes on any number of hosts), else with a file lock (one host); and
it recovers a SQLite store left half-made (by an older version of this code, or a
process killed while migrating) where no data is lost.
"""

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

import sqlalchemy
from filelock import FileLock, Timeout
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from pipelines.redact import has_password, redact, redact_uri

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Creating a fresh store runs every migration of MLflow's schema: allow for a loaded machine.
LOCK_TIMEOUT_S = 300
# A migration in progress moves on within this time; a half-made store stays still.
MIGRATION_QUIET_S = 2
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# The key of the PostgreSQL advisory lock that serialises the first open of a store.
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.md5(b"skmlp-mlflow-store").digest()[:8], signed=True
)


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message says why and what to do.

    The message never shows a password: every URI in it is redacted.
    """

    def __init__(self, message: str):
        super().__init__(redact(message))


def tracking_uri(configured: str | None = None) -> str:
    """The store every process of a run or sweep writes to.

    ``MLFLOW_TRACKING_URI`` wins, then the configured URI, then a sqlite database in
    the project's ``mlruns/``. A sqlite path is made absolute (relative paths are
    relative to the working directory), so jobs in any working directory agree.
    """
    uri = (
        os.environ.get("MLFLOW_TRACKING_URI")
        or configured
        or f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    )
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


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

    MLflow caches the store it builds per URI, so later clients of ``uri`` in this
    process skip the migration. Raises StoreError if the store cannot be made usable.
    """
    if _scheme(uri) in DATABASE_SCHEMES and _scheme(uri) != "sqlite":
        check_driver(uri)
    if _scheme(uri) in LOCK_STATEMENTS:
        with advisory_lock(uri):
            MlflowClient(uri).search_experiments(max_results=1)
        return
    lock = lock_path(uri)
    if lock is None:
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock, timeout=LOCK_TIMEOUT_S):
            path = sqlite_path(uri)
            with _damage_named(uri, path):
                if path is not None and path.exists():
                    check_sqlite_file(uri, path)
                    recover_half_made(path)
                MlflowClient(uri).search_experiments(max_results=1)
    except Timeout as exc:
        raise StoreError(
            f"Another process has held the lock {lock} of the MLflow store {uri} for "
            f"over {LOCK_TIMEOUT_S} s. Wait for it to finish; a lock whose holder "
            "died is released by the system."
        ) from exc


# What SQLite answers for a file that is not a database, or one damaged or cut short.
DAMAGE_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def check_sqlite_file(uri: str, path: Path) -> None:
    """Fail if the file of a SQLite store is not a database: a directory, another
    kind of file, a damaged or truncated copy (StoreError naming ``uri``, or SQLite's
    own error, which :func:`open_store` turns into one).

    Read only: nothing of the file changes. SQLite itself finds the damage (a header
    that is not its own, pages that the header counts and the file lacks).
    """
    if path.is_dir():
        reason = "it is a directory, not a database file"
        raise StoreError(_damaged_message(uri, path, reason))
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA page_count").fetchone()
        db.execute("SELECT name FROM sqlite_master").fetchall()


@contextmanager
def _damage_named(uri: str, path: Path | None):
    """Turn SQLite's report of a damaged store file into a StoreError naming ``uri``
    and what to do (other errors pass: busy, locked, a journal to roll back)."""
    try:
        yield
    except Exception as exc:
        if path is None or not _damaged(exc):
            raise
        reason = (
            f"SQLite says {str(exc).splitlines()[0][:200]!r}: the file is damaged, "
            "cut short or not a database"
        )
        raise StoreError(_damaged_message(uri, path, reason)) from None


def _damaged(exc: BaseException | None) -> bool:
    """Whether SQLite reported a damaged database anywhere in ``exc``'s chain."""
    while exc is not None:
        for error in (exc, getattr(exc, "orig", None)):  # SQLAlchemy wraps it
            if getattr(error, "sqlite_errorname", None) in DAMAGE_CODES:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def _damaged_message(uri: str, path: Path, reason: str) -> str:
    return (
        f"The MLflow store {uri} cannot be opened: {reason}. Nothing was changed. "
        f"Move it aside (mv {path} {path}.damaged) to start a new store there, "
        "restore it from a backup, or point tracking.uri (or MLFLOW_TRACKING_URI) "
        "at another store."
    )


def _scheme(uri: str) -> str:
    """``postgresql`` of ``postgresql+psycopg://...``."""
    return uri.split(":", 1)[0].split("+")[0]


# What to do when a database URI's driver is missing: (scheme, module) -> advice.
EXTRAS = {
    (
        "postgresql",
        "psycopg",
    ): "install the postgres extra (pip install -e '.[postgres]' "
    "in the project: psycopg 3)",
    ("mysql", "MySQLdb"): "install the mysql extra (pip install -e '.[mysql]' in the "
    "project: PyMySQL) and write the URI as mysql+pymysql://...",
    ("mysql", "pymysql"): "install the mysql extra (pip install -e '.[mysql]' in the "
    "project: PyMySQL)",
}


def check_driver(uri: str) -> None:
    """Fail, naming ``uri`` and what to install, unless its database driver imports.

    SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3 (the ``postgres`` extra);
    ``postgresql+psycopg2://`` asks for psycopg2. ``mysql://`` asks for mysqlclient,
    a C build; the ``mysql`` extra's PyMySQL is ``mysql+pymysql://``.
    """
    try:
        make_url(uri).get_dialect().import_dbapi()
    except ImportError as exc:
        extra = EXTRAS.get(
            (_scheme(uri), exc.name), f"install it (pip install {exc.name})"
        )
        raise StoreError(
            f"The MLflow store {redact_uri(uri)} needs the database driver {exc.name!r}, which is "
            f"not installed: {extra}."
        ) from exc


# Per database: the statements that take and give back the creation lock, held by the
# connection (so it goes with a process that dies). PostgreSQL's raises on timeout;
# MySQL's (MariaDB's) GET_LOCK answers 0.
LOCK_STATEMENTS = {
    "postgresql": (
        f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'",
        "SELECT pg_advisory_lock(:key)",
        "SELECT pg_advisory_unlock(:key)",
    ),
    "mysql": (
        None,
        f"SELECT GET_LOCK(:name, {LOCK_TIMEOUT_S})",
        "SELECT RELEASE_LOCK(:name)",
    ),
}
ADVISORY_LOCK_NAME = "skmlp-mlflow-store"


@contextmanager
def advisory_lock(uri: str):
    """Hold the database's own lock (``LOCK_STATEMENTS``) on the database of ``uri``
    for the duration of a block: one process at a time, on any host, creates or
    migrates the store. The lock goes with the connection if the process dies."""
    setup, take, give_back = LOCK_STATEMENTS[_scheme(uri)]
    keys = {"key": ADVISORY_LOCK_KEY, "name": ADVISORY_LOCK_NAME}
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    try:
        with _connect(engine, uri) as db:
            if setup:
                db.execute(sqlalchemy.text(setup))
            try:
                answer = db.execute(sqlalchemy.text(take), keys).scalar()
            except sqlalchemy.exc.OperationalError as exc:  # PostgreSQL's lock_timeout
                raise _lock_held(uri) from exc
            if answer == 0:  # GET_LOCK timed out
                raise _lock_held(uri)
            db.commit()
            try:
                yield
            finally:
                db.execute(sqlalchemy.text(give_back), keys)
                db.commit()
    finally:
        engine.dispose()


def _lock_held(uri: str) -> StoreError:
    return StoreError(
        f"Another process has held the creation lock of the MLflow store "
        f"{redact_uri(uri)} for over {LOCK_TIMEOUT_S} s. Wait for it to finish; the "
        "lock of a process that died goes with its connection."
    )


# What PostgreSQL says of a wrong user or password (MLflow would retry it for minutes).
AUTH_FAILED = ("password authentication failed", "no password supplied")


def _connect(engine, uri):
    try:
        return engine.connect()
    except sqlalchemy.exc.OperationalError as exc:
        hint = WHAT_TO_DO
        if any(text in str(exc.orig) for text in AUTH_FAILED):
            hint = (
                "Check the user name and password: give the password in ~/.pgpass or "
                "PGPASSWORD (libpq reads both) rather than in the URI."
            )
        raise StoreError(
            f"The MLflow store {redact_uri(uri)} cannot be reached: {exc.orig}. {hint}"
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
    state = schema_state(path)
    has_tables, revision, leftovers, n_records = state
    head = _get_latest_schema_revision()
    if not has_tables or revision == head:
        return
    time.sleep(MIGRATION_QUIET_S)
    if schema_state(path) != state:
        return  # a process outside our lock (mlflow ui, say) is migrating it now
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


# ----------------------------------------------------------------------------------
# Checking the store before any work

CHECK_TIMEOUT_S = 8  # with the imports before it, a failing start ends within seconds
# MLflow's defaults retry an unreachable server 7 times over minutes; bound them
# (a user's own settings win).
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
WHAT_TO_DO = (
    "Set MLFLOW_TRACKING_URI (or tracking.uri) to a store this process can reach and "
    "write, or unset it to use the project's local mlruns/mlflow.db."
)


def check_store(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Fail fast, with a message naming ``uri``, if the store cannot be used.

    A SQLite store's directory must be writable; a server must answer a request
    within ``timeout`` seconds. Then the store is opened (created, migrated).
    """
    bound_http_retries()
    if has_password(uri):  # MLflow would print run addresses with it
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    path = sqlite_path(uri)
    if path is not None:
        _check_writable(uri, path)
    elif uri.startswith(("http://", "https://")):
        _check_answers(uri, timeout)
    open_store(uri)


def bound_http_retries() -> None:
    """Set MLflow's HTTP retries and timeout to ``HTTP_BOUNDS`` where not set."""
    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)


def _check_writable(uri: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(f"{path} is not readable and writable")
    except OSError as exc:
        message = f"The MLflow store {uri} is not writable: {exc}. {WHAT_TO_DO}"
        raise StoreError(message) from exc


def _check_answers(uri: str, timeout: float) -> None:
    """One search request to the server, in a thread we stop waiting for."""
    outcome = {}

    def probe():
        try:
            with environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"):
                MlflowClient(uri).search_experiments(max_results=1)
            outcome["ok"] = True
        except Exception as exc:  # reported below with the URI
            outcome["error"] = exc

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" in outcome:
        return
    cause = outcome.get("error") or TimeoutError(f"no answer within {timeout:g} s")
    raise StoreError(  # the cause says whether it was an outage (pipelines.outage)
        f"The MLflow tracking server {uri} cannot be used: {cause}. Is the server "
        f"running (mlflow server ...)? {WHAT_TO_DO}"
    ) from cause


@contextmanager
def environment(**values):
    """Environment variables set for the duration of a block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
