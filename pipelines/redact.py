"""Passwords kept out of what the pipelines write: parameters, artifacts, logs and
Hydra's output files.

A store URI may carry a password (``postgresql+psycopg2://user:PASSWORD@host/db``,
``http://user:PASSWORD@host``). The pipelines connect with the URI as given, and
show it everywhere else as ``user:***@host``: :func:`redact_uri` is the one function
that hides a password (it asks :mod:`urllib.parse`, for web addresses, or
SQLAlchemy's ``make_url``, for databases, whether there is one); :func:`redact`
applies it to every URI in a text, :func:`redact_config` to every string of a config.
Better still, keep passwords out of URIs: ``~/.pgpass`` or ``PGPASSWORD`` for
PostgreSQL, ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` or
``~/.netrc`` for an MLflow server.

:func:`redact_logs` redacts every log record of the process (MLflow's, Hydra's and
ours, their tracebacks included); :class:`RedactCallback` rewrites the files Hydra
saves before the task runs (``.hydra/*.yaml``, a sweep's ``multirun.yaml``) and a
failed job's report; :func:`redact_printed_config` redacts what Hydra prints for
``--cfg``, ``--info`` and ``--help``, before any callback exists.
"""

import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

REDACTED = "***"  # what SQLAlchemy's hide_password shows
# A URI in free text: a scheme, "://", then up to a space, a quote or an angle
# bracket. Hydra escapes a sweep's override values (``http\://user\:pw@host``): a
# backslash and the character after it are part of the URI.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\\?://(?:\\.|[^\s'\"<>\\])+")
# What Hydra escapes with a backslash (hydra/_internal/grammar/utils.py).
_HYDRA_SPECIAL = re.compile(r"([\\()\[\]{}:=, \t])")
# Where both parsers read a password: "scheme://user:" PASSWORD "@" (SQLAlchemy's
# grammar: a user without ":" or "/", a password without "@").
_CREDENTIALS = re.compile(r"^([^:/]+://[^:/@]*:)[^@]*@")
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def redact_uri(uri: str) -> str:
    """``uri`` with its password (if any) shown as ``***``; unchanged without one.

    Whether there is a password is asked of :mod:`urllib.parse` (web addresses) or
    SQLAlchemy's ``make_url`` (database URIs); only the password is replaced, the
    rest of the text stays as it was (SQLAlchemy's ``render_as_string`` would
    re-encode what follows, e.g. the other overrides in Hydra's ``override_dirname``).

    Examples
    --------
    >>> redact_uri("postgresql+psycopg2://me:s3cret@db.example/mlflow")
    'postgresql+psycopg2://me:***@db.example/mlflow'
    >>> redact_uri("http://me:s3cret@127.0.0.1:5000/#/experiments/1")
    'http://me:***@127.0.0.1:5000/#/experiments/1'
    """
    if "@" not in uri:
        return uri
    # Here: an entry point run for --cfg job imports this module, and not SQLAlchemy.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        if uri.lower().startswith(("http://", "https://")):
            found = urlsplit(uri).password is not None
        else:
            found = make_url(uri).password is not None
    except (ArgumentError, ValueError):  # unreadable: hide what sits where one would
        found = True
    return _CREDENTIALS.sub(rf"\1{REDACTED}@", uri, count=1) if found else uri


def redact(text: str) -> str:
    """``text`` with the password of every URI in it shown as ``***``."""
    if "://" not in text or "@" not in text:
        return text
    return _URI.sub(lambda match: _redact_escaped(match.group()), text)


def _redact_escaped(uri: str) -> str:
    """:func:`redact_uri` of a URI that may be escaped as Hydra escapes values."""
    if "\\" not in uri:
        return redact_uri(uri)
    plain = re.sub(r"\\(.)", r"\1", uri)
    clean = redact_uri(plain)
    return uri if clean == plain else _HYDRA_SPECIAL.sub(r"\\\1", clean)


def redact_config(value):
    """A config container (dicts, lists, scalars) with every string redacted."""
    if isinstance(value, dict):
        return {key: redact_config(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_config(item) for item in value]
    return redact(value) if isinstance(value, str) else value


def has_password(uri: str) -> bool:
    """Whether ``uri`` carries a password (which :func:`redact_uri` hides)."""
    return redact_uri(uri) != uri


# ----------------------------------------------------------------------------------
# Logs


def redact_logs() -> None:
    """Redact every log record made in this process from now on (idempotent).

    A record factory, not a handler filter: Hydra and MLflow replace handlers when
    they configure logging, and records of loggers that do not propagate (MLflow's)
    never reach the root's handlers.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def make_record(*args, **kwargs):
        return _redacted(factory(*args, **kwargs))

    make_record.redacts = True
    logging.setLogRecordFactory(make_record)


def _redacted(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # bad arguments: logging reports them itself
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        if redact(text) != text:
            record.exc_text = redact(text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def redact_exception(exc: BaseException | None) -> None:
    """Redact, in place, the messages of ``exc`` and the exceptions it chains
    (MLflow names the server's address, password included, in its errors)."""
    seen = set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        if isinstance(getattr(exc, "message", None), str):  # MlflowException's
            exc.message = redact(exc.message)
        exc = exc.__cause__ or exc.__context__


# ----------------------------------------------------------------------------------
# Hydra's output files


def redact_file(path: Path) -> None:
    """Rewrite the YAML file ``path`` (if it exists) with every string redacted.

    Atomic (parallel jobs of a sweep rewrite its ``multirun.yaml`` at once); a file
    without a password is left as it is.
    """
    if not path.is_file() or redact(text := path.read_text()) == text:
        return
    container = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    clean = OmegaConf.to_yaml(OmegaConf.create(redact_config(container)))
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as out:
        out.write(clean)
    os.chmod(out.name, path.stat().st_mode)
    os.replace(out.name, path)


class RedactCallback(Callback):
    """Hydra callback: logs redacted from the start, the files Hydra saves before
    the task runs rewritten without passwords, and a failed job's report redacted.

    Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` just before
    ``on_job_start``, and a sweep's ``multirun.yaml`` before its first job starts;
    the task itself gets the config unchanged (the real URI, to connect). After
    ``on_job_end``, Hydra writes a failed job's overrides and exception to stderr.
    """

    def on_run_start(self, config, **kwargs):
        redact_logs()

    def on_multirun_start(self, config, **kwargs):
        redact_logs()

    def on_job_start(self, config, **kwargs):
        redact_logs()
        hydra = config.hydra
        if hydra.output_subdir is not None:
            saved = Path(hydra.runtime.output_dir) / hydra.output_subdir
            for name in HYDRA_FILES:
                redact_file(saved / name)
        if hydra.mode == RunMode.MULTIRUN:
            redact_file(Path(hydra.sweep.dir) / "multirun.yaml")

    def on_job_end(self, config, job_return, **kwargs):
        # Hydra writes a failed job's overrides and exception to stderr after this.
        job_return.overrides = redact_config(job_return.overrides or [])
        redact_exception(getattr(job_return, "_return_value", None))

    def on_multirun_end(self, config, **kwargs):
        redact_file(Path(config.hydra.sweep.dir) / "multirun.yaml")


# ----------------------------------------------------------------------------------
# What Hydra prints before any callback: --cfg, --info, --help

# Hydra's flags that print the composed config (``--cfg job``, ``--info all``,
# ``--help``'s $CONFIG) and exit: with print() and a logging handler of its own, set
# up before any callback is made, so neither RedactCallback nor a hydra.job_logging
# filter sees them.
PRINTING_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h")


class _RedactingStream:
    """A text stream that writes to ``stream`` with every URI's password hidden."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        return self.stream.write(redact(text))

    def __getattr__(self, name):  # flush, isatty, encoding, ...
        return getattr(self.stream, name)


def redact_printed_config(main):
    """Decorate a Hydra entry point (above ``@hydra.main``): run with a flag that
    prints the config, everything it prints to stdout and logs is redacted."""

    @functools.wraps(main)
    def entry_point(*args, **kwargs):
        flags = {arg.split("=", 1)[0] for arg in sys.argv[1:]}
        if flags.isdisjoint(PRINTING_FLAGS):
            return main(*args, **kwargs)
        redact_logs()
        with contextlib.redirect_stdout(_RedactingStream(sys.stdout)):
            return main(*args, **kwargs)

    return entry_point
