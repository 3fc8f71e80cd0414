"""What every entry point shares: the run's life around its task, and its objective."""

import functools
import logging
import os

from hydra.core.hydra_config import HydraConfig
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)


def task_wrapper(task):
    """The run lifecycle around a task ``task(cfg) -> dict of metrics``.

    The single place that owns a run's life: SIGTERM becomes KeyboardInterrupt, the
    BLAS threads are limited (``cfg.blas_threads``), and an MLflow run left open by a
    failure ends KILLED (interrupt) or FAILED (error), never RUNNING.
    """

    @functools.wraps(task)
    def wrapped(cfg):
        from pipelines.tracking import raise_on_sigterm  # MLflow: only when running

        raise_on_sigterm()
        try:
            with threadpool_limits(blas_threads(cfg.blas_threads)):
                return task(cfg)
        except KeyboardInterrupt:
            _end_open_runs("KILLED")
            raise
        except Exception:
            log.exception("%s failed", task.__name__)
            _end_open_runs("FAILED")
            raise

    return wrapped


def _end_open_runs(status):
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run(status)


def blas_threads(setting):
    """BLAS threads for this job: an int, None (no limit), or "auto".

    "auto" shares the cores among the jobs a parallel launcher runs at once (the
    joblib launcher's ``n_jobs``), so that a sweep does not oversubscribe them.
    """
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


def metric_value(metrics, name):
    """The value a sweeper optimises: ``metrics[name]`` (``cfg.optimized_metric``)."""
    if name is None:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} is not among the run's metrics "
            f"{sorted(metrics)}; set optimized_metric to one of them."
        )
    return metrics[name]
