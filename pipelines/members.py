"""A task's members, end to end: each set up as its own MLflow run, all fitted at once,
each finished; a grid's parent run gets the summary.

A task without a grid (``cfg.grid`` empty) is one member: one run, a child of the
Hydra sweep's parent when a multirun starts it. A grid (``grid.model.alpha=[...]``,
the memorization task's corruption levels x networks) is one parent run whose children
are its members, fitted with one ``skmlp.fit_together`` call.
"""

import json
import logging
import math
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from pipelines.outage import Store, outage_wait_s
from pipelines.summary import SWEPT_TAG, log_sweep_summary, short_name, sweep_run_name
from pipelines.tracking import start_run
from pipelines.training import finish, fit_members, prepare_inputs, set_up
from pipelines.ui import announce, save_runs_view

log = logging.getLogger(__name__)
# A task's answer, which the quiet console (console=quiet) shows: a single run's result
# and how to load its model.
results = logging.getLogger("pipelines.results")

# The parameters that the runs-table view of single runs shows (pipelines.ui).
SINGLE_RUN_PARAMS = [
    "data.name",
    "model.hidden_layer_sizes",
    "model.activation",
    "model.learning_rate_init",
]


def run_members(
    run, data, name, *, tags=None, member_data=None, extra_metrics=None, summarize=None
) -> dict:
    """Set up, fit and finish the members of ``run`` on ``data``; return the metrics
    of the (best, in a grid) member.

    Parameters
    ----------
    run : pipelines.run.Run
        The resolved run.
    data : Bunch
        The data every member shares (NumPy).
    name : callable
        ``name(member) -> str``: a member's run name where nothing else names it.
    tags : callable, default=None
        ``tags(member) -> dict``: tags of a member's run.
    member_data : callable, default=None
        ``member_data(member, data) -> Bunch``: a member's data, with its own training
        labels; its training inputs must be ``data.X_train`` itself.
    extra_metrics : callable, default=None
        ``extra_metrics(member, curves) -> dict``: metrics from the per-epoch curves.
    summarize : callable, default=None
        ``summarize(client, parent_id)``: more for a grid's parent run, at its end.
    """
    inputs = prepare_inputs(run, data)
    varied = varied_keys(run.members)
    parent_id = start_grid(run, varied) if run.is_grid else run.parent_id
    fittings, labels = [], []
    for member in run.members:
        own = data if member_data is None else member_data(member, data)
        if own.X_train is not data.X_train:
            raise ValueError("a member's training inputs must be the shared ones")
        store = Store(run.uri, outage_wait_s(member.cfg))  # a job's name: its parent's
        label = store.call(member_name, run, member, varied, name)
        fittings.append(
            set_up(run, inputs, member, own, label, parent_id, tags and tags(member))
        )
        labels.append(label)
    seconds = fit_members(run, inputs, fittings)
    # A run alone gives its answer here; a sweep's or a grid's table gives theirs.
    logger = log if run.is_grid or run.parent_id else results
    outcomes = []
    for fitting, label, fit_seconds in zip(fittings, labels, seconds, strict=True):
        extra = None
        if extra_metrics is not None:
            extra = _bind(extra_metrics, fitting.member)
        outcomes.append(finish(run, inputs, fitting, fit_seconds, extra))
        log_result(logger, label, fitting.run_id, outcomes[-1])
    if run.is_grid:
        return end_grid(run, parent_id, varied, outcomes, summarize)
    if run.parent_id is None:  # a sweep's jobs leave it to the sweep's end
        announce_model(run, fittings[0].run_id)
        announce_single_run(run)
    return outcomes[0]


def log_result(logger, label, run_id, metrics):
    """One line with a finished member's test accuracy, named by ``label``."""
    logger.info(
        "[%s] test accuracy %.4f after %d epochs (%.1f s), run %s",
        label,
        metrics["final_test_accuracy"],
        metrics["n_epochs"],
        metrics["fit_seconds"],
        run_id,
    )


def announce_model(run, run_id):
    """Say how to load the run's logged model from any directory: the store's
    absolute URI and a ``runs:/`` URI (none where the model is not logged)."""
    if not run.cfg.tracking.get("log_model"):
        return
    results.info(
        "Load its model, from any directory:\n"
        "  import mlflow; mlflow.set_tracking_uri(%r)\n"
        "  model = mlflow.sklearn.load_model(%r)",
        run.uri,
        f"runs:/{run_id}/model",
    )


def _bind(extra_metrics, member):
    return lambda curves: extra_metrics(member, curves)


def varied_keys(members) -> list[str]:
    """The grid's keys whose values differ between ``members``, in the grid's order."""
    keys = members[0].values
    return [k for k in keys if len({repr(m.values[k]) for m in members}) > 1]


def member_name(run, member, varied, name) -> str:
    """A grid member's values of the varied keys (``lr=0.1 relu``); a multirun job's
    values of its swept keys; else ``name(member)``."""
    if run.is_grid:
        label = short_name({key: member.values[key] for key in varied})
    else:
        label = sweep_run_name(run.client, run.parent_id)
    return label or name(member)


def start_grid(run, varied) -> str:
    """Start the parent run of a grid: ``sweep-<time>``, or in a multirun a child of
    its parent, named by the job's swept values."""
    out_dir = HydraConfig.get().runtime.output_dir
    tags = {"skmlp.sweep_dir": out_dir, "skmlp.git_commit": run.commit}
    tags[SWEPT_TAG] = json.dumps(varied)
    name = sweep_run_name(run.client, run.parent_id) or f"sweep-{Path(out_dir).name}"
    parent_id = start_run(run.client, run.experiment_id, name, run.parent_id, tags)
    run.started.append(parent_id)
    return parent_id


def end_grid(run, parent_id, varied, results, summarize) -> dict:
    """Summarise the grid on its parent run, end it, say how to see it; return the
    best member's metrics (by ``cfg.optimized_metric``)."""
    view_id = log_sweep_summary(run.client, parent_id, varied)
    if summarize is not None:
        summarize(run.client, parent_id)
    run.client.set_terminated(parent_id, "FINISHED")
    run.started.remove(parent_id)
    if run.parent_id is None:
        announce(run.uri, run.experiment_id, view_id)
    objective = run.cfg.get("optimized_metric")
    return max(results, key=lambda metrics: metrics.get(objective, -math.inf))


def announce_single_run(run):
    """Save the experiment's runs-table view of single runs; say how to open it."""
    objective = run.cfg.get("optimized_metric")
    metrics = [objective or "final_test_accuracy", "final_test_accuracy", "fit_seconds"]
    view_id = save_runs_view(
        run.client,
        run.experiment_id,
        "skmlp-runs",
        "skmlp runs",
        list(dict.fromkeys(metrics)),
        SINGLE_RUN_PARAMS,
    )
    announce(run.uri, run.experiment_id, view_id)
