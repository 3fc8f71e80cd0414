"""What a user needs to find a run in the MLflow UI: the data set as a run input, the
experiment's kind, and the command and address that open its runs.

MLflow 3.17's web app opens an experiment in its GenAI view unless the address says
``workflowType=machine_learning`` (or the browser remembers the "Model training"
toggle); the experiment tag ``mlflow.experimentKind`` alone does not switch it (the
app reads the tag only when its workflow-type feature flag is off, and in 3.17 it is
always on). So the tag is set for MLflow's own bookkeeping, and the printed address
carries the workflow type.

The runs table hides every metric and parameter until the user picks columns; its
column choice lives in the browser, not in the address. What the address can name is
a saved view ("Views" menu): an experiment tag ``mlflow.sharedViewState.<id>`` holding
the columns, the sort, the search filter (a sweep's view: its runs only), which runs
the charts show and the charts themselves. ``save_runs_view`` writes one (the
objective and the parameters that matter, best first) and ``runs_url`` opens it.
``skmlp-ui`` (``pipelines.ui_server``) serves the store and opens the latest one.
"""

import hashlib
import json
import logging
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
from mlflow.data.numpy_dataset import NumpyDataset, from_numpy
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipelines.redact import redact_uri
from pipelines.store import PROJECT_ROOT

log = logging.getLogger(__name__)

EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + view id: a saved runs-table view
# The metric that the runs page's chart view (its "Compare" mode) charts first.
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
UI_ADDRESS = "http://127.0.0.1:5000"  # where ``mlflow ui`` listens by default
PROJECT_STORE = f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"  # the default
SINGLE_RUNS_VIEW = "skmlp-runs"  # the experiment's saved view of its single runs
_ALL_RUNS = 10_000  # a chart's run count: all of them
_DIGEST_ROWS = 1000  # rows of X that enter the digest (all of y does)


def training_dataset(X, y, name) -> NumpyDataset:
    """The training arrays as an MLflow dataset, for ``mlflow.log_input``.

    MLflow's own digest flattens (copies) the whole feature array; this one hashes
    the labels, the shapes and at most ``_DIGEST_ROWS`` evenly spaced rows of ``X``,
    so a corrupted, shuffled or subsampled training set gets its own digest cheaply.
    """
    X, y = np.asarray(X), np.asarray(y)
    digest = hashlib.md5(str((X.shape, X.dtype.str, y.dtype.str)).encode())
    digest.update(np.ascontiguousarray(y).tobytes())
    step = max(1, len(X) // _DIGEST_ROWS)
    digest.update(np.ascontiguousarray(X[::step]).tobytes())
    return from_numpy(X, targets=y, name=name, digest=digest.hexdigest()[:8])


def log_training_input(client, run_id, dataset):
    """Log ``dataset`` as the training input of run ``run_id``, safe for parallel jobs."""
    entity = DatasetInput(
        dataset._to_mlflow_entity(),
        tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")],
    )
    return retry_on_duplicate(client.log_inputs, run_id, datasets=[entity])


def retry_on_duplicate(write, *args, attempts=3, **kwargs):
    """``write(*args, **kwargs)``, tried again when it hit a unique constraint.

    Jobs of a sweep that start together write the same rows at once (the data set
    input, the experiment's view and primary-metric tags); MLflow's sqlite store
    inserts a row only when it finds none, so all but one of them hit the table's
    unique constraint. The row is there by then (an update succeeds): try again.
    """
    for attempt in range(attempts):
        try:
            return write(*args, **kwargs)
        except MlflowException as exc:
            message = str(exc).lower()  # sqlite: UNIQUE constraint; others: duplicate
            if not ("unique" in message or "duplicate" in message):
                raise
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def ui_command(uri):
    """The ``skmlp-ui`` command that serves the store at ``uri`` (None for a server):
    no option for the project's own store, ``--uri`` for any other."""
    if uri.startswith(("http://", "https://")):
        return None
    if uri.startswith("sqlite:///"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if uri == PROJECT_STORE:
        return "skmlp-ui"
    return f"skmlp-ui --uri {uri}"


def save_runs_view(
    client,
    experiment_id,
    view_id,
    name,
    metrics,
    params,
    search_filter="",
    curves=(),
    dataset=True,
):
    """Save (or replace) a runs-table view of the experiment: the data set (unless
    not ``dataset``), ``metrics`` and ``params`` as columns, sorted by the first metric,
    highest first, showing the runs that match ``search_filter`` (MLflow's search
    syntax; empty: all runs). The first metric also becomes the experiment's primary
    metric.

    Its chart view (what the runs page's "Compare" mode shows) charts each metric
    against the swept ``params`` and the per-epoch ``curves`` (metric keys logged at
    every step) of every run, with no run hidden (MLflow hides all but 10 by default).

    Returns ``view_id``, for ``runs_url``. The view is the one the UI's "Views" menu
    saves (MLflow 3.17's format); the UI lists it under ``name``.
    """
    state = {
        "selectedColumns": [
            *(["attributes.`Dataset`"] if dataset else []),
            *(f"metrics.`{key}`" for key in metrics),
            *(f"params.`{key}`" for key in params),
        ],
        "orderByKey": f"metrics.`{metrics[0]}`",
        "orderByAsc": False,
        "searchFilter": search_filter,
        "runsHiddenMode": "SHOW_ALL",
        **view_charts(metrics, params, curves),
    }
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now}
    envelope["state"] = json.dumps(state)
    tag = client.set_experiment_tag
    retry_on_duplicate(
        tag, experiment_id, VIEW_TAG_PREFIX + view_id, json.dumps(envelope)
    )
    retry_on_duplicate(tag, experiment_id, PRIMARY_METRIC_TAG, metrics[0])
    return view_id


def view_charts(metrics, params, curves=()):
    """The chart view's charts of a saved view, in two sections.

    "Objective": each metric against each swept parameter (at most two), as points
    on an axis fitted to the values (MLflow's bars start at 0 and label two
    decimals), and the parallel coordinates of parameters and metrics; bars only
    where nothing swept is a parameter. "Per epoch": a line chart of each of the
    ``curves`` over the epochs (steps).
    """
    objective = _section("skmlp-objective", f"Objective: {metrics[0]}")
    charts = [
        _chart(f"skmlp-scatter-{i}-{j}", "SCATTER", objective["uuid"])
        | {"xaxis": {"key": param, "type": "PARAM"}}
        | {"yaxis": {"key": metric, "type": "METRIC"}}
        for i, metric in enumerate(metrics)
        for j, param in enumerate(params[:2])
    ]
    if params:
        parallel = _chart("skmlp-parallel", "PARALLEL", objective["uuid"])
        parallel.update(selectedParams=list(params), selectedMetrics=list(metrics))
        charts.append(parallel)
    else:
        charts += [
            _chart(f"skmlp-bars-{i}", "BAR", objective["uuid"]) | {"metricKey": metric}
            for i, metric in enumerate(metrics)
        ]
    sections = [objective]
    if curves:
        sections.append(_section("skmlp-epochs", "Per epoch"))
        charts += [
            _chart(f"skmlp-line-{key}", "LINE", "skmlp-epochs") | _line(key)
            for key in curves
        ]
    return {"compareRunCharts": charts, "compareRunSections": sections}


def _section(uuid, name):
    """A section (a named group of chart cards) of the chart view."""
    return {
        "uuid": uuid,
        "name": name,
        "display": True,
        "isReordered": False,
        "deleted": False,
        "isGenerated": False,
    }


def _chart(uuid, kind, section):
    """A chart card of the chart view; every run counts (MLflow's default: 10)."""
    return {
        "uuid": uuid,
        "type": kind,
        "metricSectionId": section,
        "runsCountToCompare": _ALL_RUNS,
        "deleted": False,
        "isGenerated": False,
    }


def _line(key):
    """A line chart of metric ``key`` over the steps (epochs), on a fitted axis."""
    return {
        "metricKey": key,
        "selectedMetricKeys": [key],
        "xAxisKey": "step",
        "scaleType": "linear",
        "xAxisScaleType": "linear",
        "lineSmoothness": 0,
        "useGlobalLineSmoothing": False,
        "useGlobalXaxisKey": False,
        "range": {},  # no bounds: fitted to the values (null would be taken as bounds)
    }


def runs_url(uri, experiment_id, view_id=None, charts=False):
    """Address of the experiment's runs table in the model-training view, opened on
    the saved view ``view_id`` if given; ``charts``: its chart view (what "Compare"
    opens), which a saved view fills with the objective against the swept parameters.
    """
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    return base + "/" + runs_link(experiment_id, view_id, charts)


def runs_link(experiment_id, view_id=None, charts=False):
    """``runs_url`` relative to the UI's address, for links that the UI renders."""
    query = {"workflowType": "machine_learning"}
    if charts:
        query["compareRunsMode"] = "CHART"
    if view_id:
        query["viewStateShareKey"] = view_id
    return f"#/experiments/{experiment_id}/runs?{urlencode(query)}"


def run_link(experiment_id, run_id):
    """Relative address of a run's page in the model-training view, for links that the
    UI renders (a run's note): the UI keeps the workflow type only in the address (or
    a browser that clicked the toggle), so its own links to runs fall back to GenAI."""
    query = urlencode({"workflowType": "machine_learning"})
    return f"#/experiments/{experiment_id}/runs/{run_id}?{query}"


def announce(uri, experiment_id, view_id=None):
    """Log (to the terminal and Hydra's log file) how to open these runs in the UI
    (a password in ``uri`` shown as ``***``)."""
    uri = redact_uri(uri)
    command, url = ui_command(uri), runs_url(uri, experiment_id, view_id)
    message = f"{command}\n  then open {url}" if command else url
    if view_id:
        message += f"\n  compare them: {runs_url(uri, experiment_id, view_id, True)}"
    log.info("See the runs in the MLflow UI: %s", message)
