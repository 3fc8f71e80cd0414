"""A run's figures, drawn where they do not hold up a sweep's next job.

Drawing and saving a run's figures (learning curves, confusion matrix, first-layer
weights) costs more than a small job's whole training. Where a sweep runs its jobs one
after another in one process (Hydra's basic launcher), its callback calls
:func:`defer`: from then on each run's figures are drawn by one worker process, started
once, while the next job runs, and :func:`settle` logs them to their run as they come
(at each later run's finish, and with ``wait=True`` before the sweep ends, on an
interrupt too). Elsewhere, a run draws its figures itself before it ends.

A deferred run's figures reach the store as its other artifacts do
(``pipelines.outage``): each write waits for a store that does not answer, up to the
run's ``tracking.outage_wait_s``; past that, they go to the spool, for
``skmlp-replay``.
"""

import atexit
import functools
import logging
import multiprocessing
import shutil
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipelines.outage import (
    REPLAY_COMMAND,
    SPOOL_FILE,
    Spooled,
    Store,
    StoreUnavailable,
    write_spool,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    """One figure of a run: ``plot(*args)`` returns it; it is saved as ``file_name``.

    ``plot`` is a module-level function (``skmlp.plots``) and ``args`` plain data, so
    that the figure can be drawn in another process.
    """

    file_name: str
    plot: object
    args: tuple


@dataclass(frozen=True)
class Destination:
    """Where a run's figures go.

    Attributes
    ----------
    client : MlflowClient
        The client of the run's store.
    run_id : str
        The run.
    store : Store
        How long each write waits for the store (``tracking.outage_wait_s``).
    spool : Path
        Where they go when the wait runs out (``tracking.spool_dir``).
    """

    client: object
    run_id: str
    store: Store
    spool: Path


@dataclass(frozen=True)
class _Pending:
    to: Destination
    directory: str
    figures: tuple
    future: object


_state = {"deferring": False, "executor": None, "pending": []}


def defer(on=True) -> None:
    """Draw the figures of this process's later runs in a worker process (``on``),
    or in the run's own process again."""
    _state["deferring"] = on


def deferring() -> bool:
    """Whether runs leave their figures to the worker (:func:`defer`)."""
    return _state["deferring"]


def draw(figures, directory) -> None:
    """Draw each of ``figures`` and save it in ``directory`` (PNG, as MLflow's
    ``log_figure`` saves a Matplotlib figure)."""
    for figure in figures:
        figure.plot(*figure.args).savefig(Path(directory) / figure.file_name)


def log_figures(to: Destination, figures) -> None:
    """Log ``figures`` (a sequence of :class:`Figure`) to run ``to.run_id``: drawn
    and logged now (the caller waits for the store), or, after :func:`defer`, drawn
    by the worker and logged by :func:`settle`. A run's figures are handed to the
    worker once, however often its caller tries again."""
    figures = tuple(figures)
    if not _state["deferring"]:
        directory = tempfile.mkdtemp(prefix="skmlp-figures-")
        try:
            draw(figures, directory)
            to.client.log_artifacts(to.run_id, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    if any(p.to.run_id == to.run_id for p in _state["pending"]):
        return
    directory = tempfile.mkdtemp(prefix="skmlp-figures-")
    future = _executor().submit(draw, figures, directory)
    _state["pending"].append(_Pending(to, directory, figures, future))


def settle(wait=True) -> None:
    """Log the figures the worker has drawn (``wait``: all of them, waiting for
    those still being drawn). A figure the worker could not draw is drawn here.

    Each run's figures wait for its store as :class:`~pipelines.outage.Store`
    allows; once one run's wait has run out, the others of that store are tried
    once, then spooled too (one wait, not one per run)."""
    down = set()
    for pending in list(_state["pending"]):
        if not (wait or pending.future.done()):
            continue
        _state["pending"].remove(pending)
        try:
            pending.future.result()
        except Exception as exc:  # a dead worker: draw them here, lose nothing
            log.warning("figures of run %s drawn again: %r", pending.to.run_id, exc)
            draw(pending.figures, pending.directory)
        try:
            _log_drawn(pending, down)
        finally:
            shutil.rmtree(pending.directory, ignore_errors=True)


def _log_drawn(pending, down):
    """Log ``pending``'s drawn figures, waiting as its store allows (not at all for
    a store in ``down``), else spool them; a spooled run already holds them."""
    to = pending.to
    if (to.spool / to.run_id / SPOOL_FILE).exists():
        return  # the run itself was spooled, its figures drawn there
    store = Store(to.store.uri, 0) if to.store.uri in down else to.store
    try:
        store.call(to.client.log_artifacts, to.run_id, pending.directory)
    except StoreUnavailable as exc:
        down.add(to.store.uri)
        folder = write_spool(
            to.spool,
            Spooled(to.store.uri, to.run_id, "FINISHED"),
            functools.partial(_copy_figures, pending.directory),
        )
        log.warning(
            "%s. The figures of run %s are saved in %s; once the store answers, "
            "log them with: %s %s",
            exc,
            to.run_id,
            folder,
            REPLAY_COMMAND,
            folder,
        )


def _copy_figures(directory, target):
    shutil.copytree(directory, target, dirs_exist_ok=True)


def _executor():
    """The worker process (one, started at the first deferred run). It ignores
    Ctrl-C and SIGTERM, so that an interrupted sweep still gets the figures of the
    runs it finished (:func:`settle` waits for them).

    Forked where the system can: a spawned worker imported Matplotlib, scikit-learn
    and pandas again, which cost more CPU than it saved on a busy 2-core machine
    (benchmarks/README.md). The process holds one thread when the worker forks (the
    data's reader is done by then) and the worker touches no database connection.
    """
    if _state["executor"] is None:
        methods = multiprocessing.get_all_start_methods()
        _state["executor"] = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context(
                "fork" if "fork" in methods else "spawn"
            ),
            initializer=_ignore_signals,
        )
        atexit.register(close)
    return _state["executor"]


def _ignore_signals():
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def close() -> None:
    """Log every pending figure and end the worker (at exit, or sooner)."""
    settle(wait=True)
    executor, _state["executor"] = _state["executor"], None
    if executor is not None:
        executor.shutdown()
