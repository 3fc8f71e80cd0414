"""The life of a pipeline's runs, owned once for every entry point.

``task_wrapper`` (after lightning-hydra-template's) wraps each Hydra task: it
validates the model's parameters and checks the store before any data or training,
marks this host's runs whose process died as FAILED, tags every run with its host and
pid, turns SIGTERM and SIGINT into KeyboardInterrupt, limits BLAS threads, and ends
the runs a failure leaves open KILLED (interrupt) or FAILED (error), never RUNNING.
A sweep's parent stops its children through ``stop_children`` before it ends itself.
"""

import functools
import json
import logging
import os
import signal
import socket
import threading
import time

import hydra

# MLflow, the store and skmlp are imported where used: importing an entry point (for
# --cfg job or --help) stays at Hydra alone.

log = logging.getLogger(__name__)

# How long a sweep's parent waits for its children to end their runs themselves.
CHILDREN_GRACE_S = 20
_interrupted = threading.Event()
DATABASE_CODE = tuple(
    f"{os.sep}{name}{os.sep}" for name in ("sqlalchemy", "alembic", "sqlite3")
)


def process_tags() -> dict:
    """Where this run's process lives, so that a dead one can be found later."""
    from pipelines.store import HOST_TAG, PID_TAG

    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def interrupted() -> bool:
    """Whether this process received SIGTERM or SIGINT."""
    return _interrupted.is_set()


def handle_signals(before_raise=None) -> None:
    """Turn the first SIGTERM or SIGINT into KeyboardInterrupt; ignore later ones.

    Later signals (a group signal, then the one a sweep's parent forwards) would
    otherwise interrupt the closing of the runs. The interrupt waits until the main
    thread is out of the database driver: raised inside a write, it would leave a
    transaction open and the store locked. ``before_raise()`` runs first (a sweep's
    parent stops its children there, before joblib kills its workers).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    raised = threading.Event()

    def handler(signum, frame):
        if signum == signal.SIGALRM and not _interrupted.is_set():
            return  # an alarm of someone else's, not our retry
        if raised.is_set() or (_interrupted.is_set() and signum != signal.SIGALRM):
            return  # already raised, or a retry is pending
        _interrupted.set()
        if _in_database_call(frame):
            signal.setitimer(signal.ITIMER_REAL, 0.05)  # try again in 50 ms
            return
        raised.set()
        if before_raise is not None:
            before_raise()
        raise KeyboardInterrupt(f"interrupted by signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(signum, handler)


def _in_database_call(frame) -> bool:
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in DATABASE_CODE):
            return True
        frame = frame.f_back
    return False


def blas_threads(setting):
    """BLAS threads for this job: an int, None (no limit), or "auto".

    "auto" shares the cores among the jobs a parallel launcher runs at once (the
    joblib launcher's ``n_jobs``), so that a sweep does not oversubscribe them.
    """
    from hydra.core.hydra_config import HydraConfig

    if setting != "auto":
        return setting
    launcher = HydraConfig.get().launcher
    n_jobs = (
        launcher.get("n_jobs") if "joblib" in launcher.get("_target_", "") else None
    )
    if not n_jobs or n_jobs == 1:
        return None
    n_jobs = os.cpu_count() if n_jobs < 0 else n_jobs
    return max(1, (os.cpu_count() or 1) // n_jobs)


def check_model(cfg) -> None:
    """Instantiate the configured steps and validate their parameters as fit would,
    so that a bad override fails before any data is loaded or run created.

    ``model.hidden_layer_sizes=16`` becomes ``[16]``, as the estimator reads it.
    """
    from skmlp import SGDMLPClassifier
    from skmlp._data import layer_sizes

    if isinstance(cfg.model.get("hidden_layer_sizes"), int):
        cfg.model.hidden_layer_sizes = [cfg.model.hidden_layer_sizes]
    steps = [*(cfg.preprocessing.steps if "preprocessing" in cfg else []), cfg.model]
    for step in steps:
        estimator = hydra.utils.instantiate(step, _convert_="all")
        if hasattr(estimator, "_validate_params"):
            estimator._validate_params()  # scikit-learn's _parameter_constraints
        if isinstance(estimator, SGDMLPClassifier):
            layer_sizes(estimator.hidden_layer_sizes)  # positive integers


def task_wrapper(task):
    """The run lifecycle around a task ``task(cfg) -> dict of metrics``."""

    @functools.wraps(task)
    def wrapped(cfg):
        from threadpoolctl import threadpool_limits

        from pipelines.device import resolve_device
        from pipelines.store import check_store, reap_dead_runs
        from pipelines.tracking import tracking_uri

        # First: a signal while the store is created or migrated waits for the
        # database call to return, instead of killing the process inside it.
        handle_signals()
        resolve_device(cfg.get("device", "cpu"))  # a missing GPU: no store, no run
        check_model(cfg)
        uri = tracking_uri(cfg.tracking.uri)
        check_store(uri)
        reap_dead_runs(uri)
        # MLflow adds these tags to every run this process starts (nested ones too).
        context = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT") or "{}")
        os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({**context, **process_tags()})
        try:
            with threadpool_limits(blas_threads(cfg.blas_threads)):
                return task(cfg)
        except KeyboardInterrupt:
            _end_open_runs("KILLED", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except Exception as exc:
            log.exception("%s failed", task.__name__)
            _end_open_runs("FAILED", f"{type(exc).__name__}: {exc}"[:500])
            raise

    return wrapped


def _end_open_runs(status, reason):
    import mlflow

    from pipelines.store import REASON_TAG

    while mlflow.active_run() is not None:
        mlflow.set_tag(REASON_TAG, reason)
        mlflow.end_run(status)


def stop_children(client, parent_id: str) -> None:
    """SIGTERM the RUNNING children of a sweep on this host and wait (at most
    ``CHILDREN_GRACE_S``) for them to end their runs; mark those left KILLED.

    A pid is signalled only if its process started before its run (a pid reused
    after a ``kill -9`` belongs to someone else)."""
    from pipelines.store import HOST_TAG, PID_TAG, REASON_TAG, process_alive

    deadline = time.monotonic() + CHILDREN_GRACE_S
    for child in running_children(client, parent_id):
        pid = int(child.data.tags.get(PID_TAG, 0))
        on_this_host = child.data.tags.get(HOST_TAG) == socket.gethostname()
        ours = on_this_host and pid > 1 and pid != os.getpid()
        if ours and process_alive(pid, child.info.start_time):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass  # gone already
    # Jobs run in this process (the together launcher's threads) cannot end while
    # it waits here: only other processes are waited for.
    while time.monotonic() < deadline and any(
        int(child.data.tags.get(PID_TAG, 0)) != os.getpid()
        for child in running_children(client, parent_id)
    ):
        time.sleep(0.5)
    for child in running_children(client, parent_id):
        client.set_tag(child.info.run_id, REASON_TAG, "its sweep was interrupted")
        client.set_terminated(child.info.run_id, "KILLED")


def running_children(client, parent_id: str) -> list:
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'",
    )
