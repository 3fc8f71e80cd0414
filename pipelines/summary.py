"""What the MLflow UI shows of a sweep: short run names, the winner on the parent run.

A sweep's parent run records which keys the sweep varies (tag ``skmlp.swept_params``);
each child is named by its values of those keys (``lr=0.1 relu``) and tags the metric
it maximises (``skmlp.objective``). When the sweep ends, ``log_sweep_summary`` gives
the parent the best objective, the best run's name and parameters, a table of all
children and a figure of the objective against each swept parameter.
"""

import functools
import json
import logging
import time
import warnings

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipelines.ui import run_link, runs_link, save_runs_view
from skmlp.plots import plot_objective

log = logging.getLogger(__name__)

SWEPT_TAG = "skmlp.swept_params"
OBJECTIVE_TAG = "skmlp.objective"
BEST_RUN_TAG = "skmlp.best_run"
# A column of the sweep's runs-table view beside the objective, where runs log it.
TEST_ACCURACY = "final_test_accuracy"
# Per-epoch metrics (logged at step = epoch) that the sweep's chart view draws as curves.
EPOCH_CURVES = ("test_accuracy", "train_accuracy", "loss")
# Short labels for the keys that sweeps vary most; a key not here shows its last part.
ABBREVIATIONS = {
    "learning_rate_init": "lr",
    "batch_size": "batch",
    "momentum": "mom",
    "max_iter": "epochs",
    "n_train": "n",
    "validation_size": "val",
    "corruption.p": "p",
}


def swept_keys(overrides, sweeper_params=None):
    """The keys a Hydra multirun varies, in command-line order.

    Parameters
    ----------
    overrides : list of str
        The multirun's command-line overrides (``hydra.overrides.task``).
    sweeper_params : dict of str -> str or None
        ``hydra.sweeper.params`` (a sweep preset's search space).

    Returns
    -------
    keys : list of str
        Keys with a sweep on the command line, then the preset's keys that the
        command line does not pin to a single value.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    pinned = {o.key_or_group for o in parsed if not o.is_sweep_override()}
    keys += [k for k in (sweeper_params or {}) if k not in pinned and k not in keys]
    return keys


def short_name(values):
    """A run name that says only what differs within its sweep.

    ``{"model.learning_rate_init": 0.1, "model.activation": "relu"}`` -> ``lr=0.1 relu``:
    words (activation, a data set) and layer sizes (``16-16``) speak for themselves,
    numbers get their key's short label.
    """
    parts = []
    for key, value in values.items():
        if isinstance(value, list | tuple):
            parts.append("-".join(str(v) for v in value) or "none")
        elif isinstance(value, str) and not _is_number(value):
            parts.append(value)
        else:
            label = ABBREVIATIONS.get(key) or ABBREVIATIONS.get(_last_part(key))
            parts.append(f"{label or _last_part(key)}={value}")
    return " ".join(parts)


def _last_part(key):
    return key.replace("__", ".").rsplit(".", 1)[-1]


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def sweep_run_name(client, parent_id):
    """This Hydra job's short name within the sweep of run ``parent_id`` (None: no
    sweep, or nothing swept)."""
    if not parent_id or not HydraConfig.initialized():
        return None
    keys = json.loads(client.get_run(parent_id).data.tags.get(SWEPT_TAG, "[]"))
    job = OverridesParser.create().parse_overrides(
        list(HydraConfig.get().overrides.task)
    )
    values = {o.key_or_group: o.value() for o in job if o.key_or_group in keys}
    return short_name({k: values[k] for k in keys if k in values}) or None


def children_table(children, swept, objective):
    """One row per child run: its name, swept parameters, objective and id; best first."""
    rows = [
        {
            "run": child.info.run_name,
            **{key: child.data.params.get(key) for key in swept},
            objective: child.data.metrics.get(objective),
            "status": child.info.status,
            "run_id": child.info.run_id,
        }
        for child in children
    ]
    table = pd.DataFrame(rows, columns=["run", *swept, objective, "status", "run_id"])
    table[objective] = table[objective].astype(float)
    return table.sort_values(objective, ascending=False, na_position="last")


def ranked(table, children):
    """``children_table`` as console text: the test accuracy beside the objective
    where runs log it, numbers to 4 decimals, no run ids."""
    table = table.drop(columns="run_id")
    tested = {c.info.run_name: c.data.metrics.get(TEST_ACCURACY) for c in children}
    if TEST_ACCURACY not in table and any(v is not None for v in tested.values()):
        table.insert(len(table.columns) - 1, TEST_ACCURACY, table["run"].map(tested))
    return table.to_string(index=False, float_format=lambda value: f"{value:.4f}")


def log_sweep_summary(client: MlflowClient, parent_id: str, swept) -> str | None:
    """Give a sweep's parent run the summary of its children.

    The parent gets the best objective under the children's metric name, the best
    run's values of the swept parameters under their own keys (so the parent's row
    in the runs table reads as the winning configuration), tags naming the best run,
    a note, ``sweep_summary.json`` (all children) and ``objective.png``. The
    experiment gets a saved runs-table view of the sweep (its children only; objective
    and swept parameters as columns, best first; charts of the objective and of the
    per-epoch curves), whose id is returned (None: no objective).
    """
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], children_filter(parent_id)
    )
    objectives = {c.data.tags.get(OBJECTIVE_TAG) for c in children} - {None}
    if len(objectives) != 1:
        return None  # no finished child, or children that optimise different things
    (objective,) = objectives
    table = children_table(children, swept, objective).reset_index(drop=True)
    log.info(
        "The sweep's %d runs, best first:\n%s", len(table), ranked(table, children)
    )
    client.log_table(parent_id, table, "sweep_summary.json")
    # A swept config group (data=digits,mnist) is no run parameter: only in the names.
    params = [key for key in swept if table[key].notna().any()]
    scored = table.dropna(subset=[objective])
    if not scored.empty:
        _log_best(client, parent, scored, params, objective, len(table))
        _log_best_inputs(client, parent_id, children, scored.iloc[0]["run_id"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # layout of a tiny figure
            figure = plot_objective(scored, objective, params)
        client.log_figure(parent_id, figure, "objective.png")
    has_test = any(TEST_ACCURACY in child.data.metrics for child in children)
    metrics = list(dict.fromkeys([objective, *([TEST_ACCURACY] if has_test else [])]))
    logged = {key for child in children for key in child.data.metrics}
    return save_runs_view(
        client,
        parent.info.experiment_id,
        sweep_view_id(parent_id),
        parent.info.run_name,
        metrics,
        params,
        search_filter=children_filter(parent_id),
        curves=[key for key in EPOCH_CURVES if key in logged],
        # No Dataset column: room for the objective beside MLflow's fixed columns and
        # its assistant panel (a sweep's runs share their data, or their names say it).
        dataset=False,
    )


def children_filter(parent_id):
    """MLflow's search filter for the children of run ``parent_id`` (not itself)."""
    return f"tags.mlflow.parentRunId = '{parent_id}'"


def sweep_view_id(parent_id):
    """Id of the saved runs view of the sweep whose parent run is ``parent_id``."""
    return f"skmlp-sweep-{parent_id[:8]}"


def _log_best(client, parent, scored, swept, objective, n_runs):
    """The best run's objective, swept parameters and tags, and a note linking to the
    scored runs, best first (links that keep the UI in its model-training view)."""
    parent_id, best = parent.info.run_id, scored.iloc[0]
    link = functools.partial(run_link, parent.info.experiment_id)
    runs = ", ".join(
        f"[{row['run']}]({link(row['run_id'])}) {row[objective]:.4f}"
        for _, row in scored.iterrows()
    )
    compare = runs_link(parent.info.experiment_id, sweep_view_id(parent_id), True)
    note = (
        f"Best of {n_runs} runs: **{best['run']}**, {objective} = "
        f"{best[objective]:.4f}.\n\nBy {objective}: {runs}. [Compare them]({compare})"
        f".\n\nAll runs: artifact "
        "`sweep_summary.json`; the objective against each swept parameter: "
        "`objective.png`."
    )
    client.log_batch(
        parent_id,
        metrics=[Metric(objective, float(best[objective]), int(time.time() * 1000), 0)],
        params=[Param(key, str(best[key])) for key in swept],
        tags=[
            RunTag(BEST_RUN_TAG, best["run"]),
            RunTag(f"{BEST_RUN_TAG}_id", best["run_id"]),
            RunTag(OBJECTIVE_TAG, objective),
            RunTag("mlflow.note.content", note),
        ],
    )


def _log_best_inputs(client, parent_id, children, best_id):
    """The best run's data set(s) as the parent's inputs, for its Dataset column."""
    (best,) = (child for child in children if child.info.run_id == best_id)
    if best.inputs is not None and best.inputs.dataset_inputs:
        client.log_inputs(parent_id, datasets=list(best.inputs.dataset_inputs))
