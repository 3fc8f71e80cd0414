"""What every entry point shares: the run's life around its task, and its objective."""

# The run's life is owned by pipelines.lifecycle; the entry points import it from here.
from pipelines.lifecycle import blas_threads, task_wrapper

__all__ = ["blas_threads", "metric_value", "task_wrapper"]


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
