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
the columns and the sort. ``save_runs_view`` writes one (the objective and the
parameters that matter, best first) and ``runs_url`` opens it.
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

log = logging.getLogger(__name__)

EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + view id: a saved runs-table view
# The metric that the runs page's chart view (its "Compare" mode) charts first.
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
UI_ADDRESS = "http://127.0.0.1:5000"  # where ``mlflow ui`` listens by default
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
    """The ``mlflow ui`` command that serves the store at ``uri`` (None for a server)."""
    if uri.startswith(("http://", "https://")):
        return None
    if uri.startswith("sqlite:///"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return f"mlflow ui --backend-store-uri {uri}"


def save_runs_view(client, experiment_id, view_id, name, metrics, params):
    """Save (or replace) a runs-table view of the experiment: the data set, ``metrics``
    and ``params`` as columns, sorted by the first metric, highest first. The first
    metric also becomes the experiment's primary metric, which the chart view (the
    runs page's compare mode, in a browser with no charts of its own) charts first.

    Returns ``view_id``, for ``runs_url``. The view is the one the UI's "Views" menu
    saves (MLflow 3.17's format); the UI lists it under ``name``.
    """
    state = {
        "selectedColumns": [
            "attributes.`Dataset`",
            *(f"metrics.`{key}`" for key in metrics),
            *(f"params.`{key}`" for key in params),
        ],
        "orderByKey": f"metrics.`{metrics[0]}`",
        "orderByAsc": False,
        **_view_charts(metrics[0], params),
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


def _view_charts(objective, params):
    """The chart view's charts in a saved view: the objective against the ``params``
    (parallel coordinates) and the objective of each run (bars), in one section."""
    section = "skmlp-objective"
    common = {"metricSectionId": section, "runsCountToCompare": 10, "deleted": False}
    common["isGenerated"] = False
    parallel = {"uuid": "skmlp-parallel", "type": "PARALLEL", **common}
    parallel.update(selectedParams=list(params), selectedMetrics=[objective])
    bars = {"uuid": "skmlp-bars", "type": "BAR", "metricKey": objective, **common}
    sections = [{"uuid": section, "name": f"Objective: {objective}", "display": True}]
    sections[0].update(isReordered=False, deleted=False, isGenerated=False)
    return {"compareRunCharts": [parallel, bars], "compareRunSections": sections}


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
