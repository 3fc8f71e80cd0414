"""A parallel sweep's workers that start warm.

Hydra's joblib launcher runs a sweep's jobs in loky's worker processes, each a fresh
Python that imports scikit-learn, MLflow, Hydra, pandas and Matplotlib again (the
import floor) before its first job. Here they are forked instead from
multiprocessing's fork server, which imports those modules once
(:data:`JOB_MODULES`). An entry point started as a parallel sweep starts the fork
server first thing (:func:`start_early`), so that it imports while the sweep's own
process does, on another core; the sweep's callback makes loky use it
(:func:`warm_workers`). Nothing heavy is imported here (the standard library, and
``pipelines.redact`` for the flags that only print, which an entry point has imported
already with Hydra), so that the fork server starts before anything heavy.
"""

import multiprocessing
import sys

from pipelines.redact import PRINTING_FLAGS

# What a job imports, the project's modules with their libraries. Not the entry
# points: multiprocessing runs the main module again in each worker (as __mp_main__),
# and warns where it was imported already.
JOB_MODULES = (
    "pipelines.run",
    "pipelines.members",
    "pipelines.training",
    "pipelines.data",
    "pipelines.sweep_callback",
    "hydra_plugins.hydra_joblib_launcher._core",
    "mlflow.sklearn",
    "mlflow.store.tracking.sqlalchemy_store",
    "matplotlib.backends.backend_agg",
    "skmlp.plots",
    "pipelines.forkserver_setup",  # last: signals, and what was imported frozen
)
PARALLEL_LAUNCHER = "hydra/launcher=parallel"
MULTIRUN_FLAGS = {"-m", "--multirun"}


def start_forkserver() -> bool:
    """Start multiprocessing's fork server importing :data:`JOB_MODULES` (in its own
    process: this one goes on at once); False where the system has none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    multiprocessing.set_forkserver_preload(list(JOB_MODULES))
    forkserver.ensure_running()
    return True


def start_early(argv=None) -> bool:
    """Start the fork server now if the command line (``argv``, by default this
    process's) asks for a sweep on the parallel launcher; whether it was started.

    A launcher chosen elsewhere (a config file) is served by :func:`warm_workers`
    alone: the fork server then imports once the sweep starts its workers.
    """
    argv = sys.argv[1:] if argv is None else argv
    if MULTIRUN_FLAGS.isdisjoint(argv) or PARALLEL_LAUNCHER not in argv:
        return False
    flags = {arg.split("=", 1)[0] for arg in argv}
    if not flags.isdisjoint(PRINTING_FLAGS):  # --cfg, --help, --info: no job runs
        return False
    if _a_worker():  # which runs the entry point's module again (and its argv)
        return False
    return start_forkserver()


def _a_worker() -> bool:
    """Whether this process is one that multiprocessing started (or is starting)."""
    process = multiprocessing.current_process()
    return multiprocessing.parent_process() is not None or getattr(
        process, "_inheriting", False
    )


def warm_workers() -> bool:
    """Make this process's later loky workers (joblib's, and so Hydra's joblib
    launcher's) processes of the fork server, started here if it is not running yet;
    False where the system has none (loky's own start then).

    The workers get the environment this process has when they start
    (``skmlp._workers.WatchedLokyBackend``), and end with the fork server, which
    ends with this process.
    """
    if not start_forkserver():
        return False
    # Imported here: this module is imported before anything heavy.
    from joblib.externals.loky.backend.context import set_start_method

    set_start_method("forkserver", force=True)
    return True
