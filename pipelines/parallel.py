"""Where a task's parallel work runs: joblib's own processes here (loky), or a Ray or
Dask cluster, the way scikit-learn users already scale.

The config group ``parallel`` (``conf/parallel/``) chooses: ``parallel=loky|ray|dask``,
``parallel.address`` (the cluster's; null: one started for the task) and
``parallel.n_jobs``. The grid search's ``GridSearchCV`` and the joint fit's
``skmlp.fit_together`` take their ``n_jobs`` from it (:func:`n_jobs`) and run under
:func:`parallel_backend`, which connects to the cluster once per task and makes it
joblib's backend (``joblib.parallel_config``).

What a worker needs to log travels with the task, not with the worker's environment:
the epoch logger keeps its store and run (``pipelines.callbacks``), and Ray's workers,
which on a running cluster do not inherit the driver's environment, get the task's
``MLFLOW_TRACKING_URI`` through Ray's ``runtime_env``.
"""

import contextlib
import importlib.util
import logging
import socket
from numbers import Integral
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# backend -> (the modules it needs, the extra that installs them)
EXTRAS = {"ray": (("ray",), "ray"), "dask": (("dask", "distributed"), "dask")}
BACKENDS = ("loky", *EXTRAS)
CONNECT_TIMEOUT_S = 5  # how long a cluster's address may take to answer


class ParallelError(RuntimeError):
    """A cluster that cannot be used; the message names the setting and what to do."""


# ----------------------------------------------------------------------------------
# Checks without I/O (pipelines.checks runs them with the task's other settings)


def backend_problem(value, cfg) -> str | None:
    """What is wrong with ``parallel.backend`` (None: nothing): a known backend,
    whose extra is installed."""
    if value not in BACKENDS:
        return f"must be one of {', '.join(BACKENDS)} (parallel=<backend>)."
    if value == "loky":
        return None
    modules, extra = EXTRAS[value]
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"needs {' and '.join(missing)}, not installed here: "
            f'pip install -e ".[{extra}]" (or parallel=loky: this machine only).'
        )
    return None


def address_problem(value, cfg) -> str | None:
    """What is wrong with ``parallel.address`` (None: nothing)."""
    if value is None:
        return None
    backend = cfg.parallel.get("backend")
    if backend == "loky":
        return (
            "loky runs on this machine and takes no address: choose the cluster's "
            "kind too (parallel=ray or parallel=dask)."
        )
    if not isinstance(value, str) or (value != "auto" and _host_port(value) is None):
        return (
            "must be host:port (Ray: the head's GCS address that `ray start --head` "
            "prints, or ray://host:port; Dask: the scheduler's tcp://host:port), "
            "auto (Ray: the cluster started on this machine) or null (a local "
            "cluster for this task)."
        )
    return None


def n_jobs_problem(value, cfg) -> str | None:
    """What is wrong with ``parallel.n_jobs`` (None: nothing)."""
    if value is None or (isinstance(value, Integral) and value and value is not True):
        return None
    return (
        "must be null (each call's own default) or a nonzero integer (as scikit-"
        "learn's n_jobs: -1 is every CPU of the cluster)."
    )


CHECKS = {
    "parallel.backend": backend_problem,
    "parallel.address": address_problem,
    "parallel.n_jobs": n_jobs_problem,
}


def _host_port(address: str):
    """``(host, port)`` of ``host:port`` or ``scheme://host:port``, else None."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        return None
    return parts.hostname, port


# ----------------------------------------------------------------------------------
# The task's backend


def n_jobs(cfg, default=None):
    """``parallel.n_jobs`` of the task's config where set, else ``default`` (the
    call's own: the grid search's ``search.n_jobs``, or None for ``fit_together``,
    which then fits in this process)."""
    value = (cfg.get("parallel") or {}).get("n_jobs")
    return default if value is None else value


@contextlib.contextmanager
def parallel_backend(cfg, tracking_uri: str):
    """The task's ``parallel`` backend as joblib's, connected for the ``with`` block.

    loky (or no ``parallel`` settings) changes nothing. Ray and Dask connect to
    ``parallel.address`` (which must answer within ``CONNECT_TIMEOUT_S``), or start a
    local cluster where it is null, and disconnect at the end (a cluster given by
    address keeps running).

    Parameters
    ----------
    cfg : DictConfig
        The task's config.
    tracking_uri : str
        The task's store: what Ray's workers get as ``MLFLOW_TRACKING_URI``.

    Raises
    ------
    ParallelError
        If the address does not answer or the cluster refuses the connection.
    """
    settings = cfg.get("parallel") or {}
    backend, address = settings.get("backend", "loky"), settings.get("address")
    if backend == "loky":
        yield
        return
    from joblib import parallel_config

    if address is not None and address != "auto":
        _check_answers(address)
    connect = _ray if backend == "ray" else _dask
    with connect(address, tracking_uri), parallel_config(backend=backend):
        yield


def _check_answers(address: str):
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ParallelError(
            f"parallel.address={address}: nothing answers there ({exc}). Start the "
            "cluster first and give its address (README: Ray and Dask), or "
            "parallel.address=null for a local cluster of this task's own."
        ) from None


@contextlib.contextmanager
def _ray(address, tracking_uri):
    """Connected to Ray (a local Ray started where ``address`` is None), its workers
    given ``tracking_uri``; disconnected at the end."""
    import ray
    from ray.util.joblib import register_ray

    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}}
    local = {} if address else {"include_dashboard": False}
    try:
        ray.init(
            address=address,
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
            **local,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ParallelError(
            f"parallel.address={address}: Ray could not connect ({exc}). Give the "
            "address that `ray start --head` printed, reachable from here "
            "(README: Ray and Dask)."
        ) from exc
    register_ray()
    log.info("Ray: %s", ray.cluster_resources())
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _dask(address, tracking_uri):
    """A Dask client of the scheduler at ``address`` (a ``LocalCluster`` where None),
    closed at the end. Dask's workers keep their own environment: the callbacks that
    run there carry their store (``pipelines.callbacks``)."""
    from distributed import Client

    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT_S * 2}s")
    except OSError as exc:
        raise ParallelError(
            f"parallel.address={address}: Dask could not connect ({exc}). Give the "
            "scheduler's tcp://host:port, reachable from here (README: Ray and Dask)."
        ) from exc
    log.info("Dask: %s", client)
    with client:
        yield
