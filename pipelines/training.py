"""A task's networks through three phases: set up, fit, finish.

1. :func:`prepare_inputs` fits the preprocessing once on the training inputs that
   every member shares and moves them to the device; :func:`set_up` starts each
   member's MLflow run (parameters, tags, data set) and gives its estimator callbacks
   that log to that run.
2. :func:`fit_members` fits every member's estimator: with one ``skmlp.fit_together``
   call (which groups them by shape) or, with ``together: false``, one after another.
3. :func:`finish` evaluates each fitted member, logs its curves, metrics, figures and
   model, and ends its run.

No phase waits for another job: a task that runs many members sets them all up, fits
them once, then finishes each (``pipelines.members``).
"""

import contextlib
import functools
import inspect
import logging
import time
import warnings
from dataclasses import dataclass

import hydra
import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.entities import Metric, RunTag
from mlflow.models import infer_signature
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline

from pipelines.callbacks import EpochScoring, MLflowEpochLogger
from pipelines.device import to_numpy
from pipelines.figures import Destination, Figure, log_figures, settle
from pipelines.outage import (
    DEFAULT_WAIT_S,
    REPLAY_COMMAND,
    Spooled,
    Store,
    StoreUnavailable,
    one_try,
    outage_wait_s,
    spool_dir,
    write_spool,
)
from pipelines.parallel import n_jobs
from pipelines.summary import OBJECTIVE_TAG
from pipelines.tracking import (
    flatten,
    log_run_context,
    logged_config,
    preload_package_map,
    start_run,
)
from skmlp import fit_together
from skmlp.inspection import noise_confidence
from skmlp.plots import (
    plot_confusion_matrix,
    plot_first_layer_weights,
    plot_learning_curves,
)

log = logging.getLogger(__name__)

# A run's tag: how many networks its fit_together call held (absent: fitted alone).
GROUP_TAG = "skmlp.fit_together"
# cloudpickle, not skops: importing skops walks every scikit-learn module (and torch
# where it is installed), which costs more than the whole model logging. A pickle is
# loaded only from a store you trust, like any joblib file of a scikit-learn model:
# MLflow says so once per process.
MODEL_REQUIREMENTS = ["skmlp", "scikit-learn", "numpy", "pandas", "cloudpickle"]
PICKLE_CAUTION = "Saving scikit-learn models in the pickle or cloudpickle format"


class _Once(logging.Filter):
    """Lets the first record that starts with ``prefix`` through, drops its repeats."""

    def __init__(self, prefix):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record):
        if not record.getMessage().startswith(self.prefix):
            return True
        seen, self.seen = self.seen, True
        return not seen


def caution_once(logger_name="mlflow.sklearn", prefix=PICKLE_CAUTION):
    """Let ``logger_name`` log its message starting with ``prefix`` once per process."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _Once) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(_Once(prefix))


@dataclass(frozen=True)
class Inputs:
    """What every member of a task trains and is scored on.

    Attributes
    ----------
    X : array of shape (n_samples, n_features)
        The training inputs, preprocessed, on the device.
    eval_X : dict of str -> array
        Each evaluation set's inputs (``test``, ``train``, ``val``), likewise.
    rows : slice, array of int or None
        The rows of the training set scored after each epoch (None: none).
    steps : list of transformers
        The fitted preprocessing.
    seconds : float
        The time the preprocessing took.
    """

    X: object
    eval_X: dict
    rows: object
    steps: list
    seconds: float


@dataclass(frozen=True)
class Fitting:
    """A member between its set-up and its finish.

    Attributes
    ----------
    member : Member
        The network.
    run_id : str
        Its MLflow run, started.
    data : Bunch
        Its data, NumPy (its own training labels).
    y : array of shape (n_samples,)
        Its training labels, on the device.
    scoring : EpochScoring
        Its per-epoch scores.
    """

    member: object
    run_id: str
    data: object
    y: object
    scoring: EpochScoring


def train_rows(cfg, n_train):
    """The rows of the training set scored after each epoch: a fixed random sample
    of ``cfg.eval.train_accuracy_samples`` (null: all, 0: none)."""
    n_sample = cfg.eval.train_accuracy_samples
    if n_sample == 0:
        return None
    if n_sample is None or n_sample >= n_train:
        return slice(None)
    return np.random.default_rng(cfg.seed).choice(n_train, n_sample, replace=False)


def prepare_inputs(run, data) -> Inputs:
    """Move the shared inputs to the device once and fit the run's preprocessing on
    them (before any member's clock starts, the move; within it, the fitting)."""
    rows = train_rows(run.cfg, len(data.y_train))
    sets = {"fit": (data.X_train, data.y_train), "test": (data.X_test, None)}
    if rows is not None:
        sets["train"] = (data.X_train[rows], None)
    if data.X_val is not None:
        sets["val"] = (data.X_val, None)
    sets = run.device.put_sets(sets)
    (X, y), start = sets.pop("fit"), time.perf_counter()
    eval_X = {name: X_set for name, (X_set, _) in sets.items()}
    steps = list(run.preprocessing)
    with run.device.dispatch():
        for step in steps:
            X = step.fit_transform(X, y)
            eval_X = {name: step.transform(X_set) for name, X_set in eval_X.items()}
    return Inputs(X, eval_X, rows, steps, time.perf_counter() - start)


def set_up(run, inputs, member, data, name, parent_id=None, tags=None) -> Fitting:
    """Start ``member``'s run (a child of ``parent_id``), log its context, and give
    its estimator the callbacks of ``member.cfg.callbacks``, scoring on the device.
    Each write waits for a store that does not answer (``tracking.outage_wait_s``)."""
    wait_s = outage_wait_s(member.cfg)  # checked before the run exists
    store = Store(run.uri, wait_s)
    objective = member.cfg.get("optimized_metric")
    tags = {**({OBJECTIVE_TAG: objective} if objective else {}), **(tags or {})}
    args = (run.client, run.experiment_id, name, parent_id, tags)
    run_id = store.call(start_run, *args)
    run.started.append(run_id)
    context = {**run.device.tags(), **tags}
    args = (run.client, run_id, member.cfg, data, context, run.commit)
    store.call(log_run_context, *args)
    y, labels = labels_on_device(run, inputs, data)
    scoring = EpochScoring({k: (inputs.eval_X[k], labels[k]) for k in labels})
    callbacks = instantiate_callbacks(
        member.cfg.callbacks, scoring, run_id, name, outage_wait_s=wait_s,
        spool_dir=spool_dir(member.cfg.tracking.get("spool_dir")),
    )  # fmt: skip
    member.estimator.set_callbacks(*callbacks)
    return Fitting(member, run_id, data, y, scoring)


def labels_on_device(run, inputs, data):
    """A member's training labels, and the labels of each evaluation set, on the
    device."""
    sets = {"fit": (data.y_train, None), "test": (data.y_test, None)}
    if inputs.rows is not None:
        sets["train"] = (data.y_train[inputs.rows], None)
    if data.X_val is not None:
        sets["val"] = (data.y_val, None)
    labels = {key: y for key, (y, _) in run.device.put_sets(sets).items()}
    return labels.pop("fit"), labels


def instantiate_callbacks(
    callbacks_cfg,
    scoring,
    run_id=None,
    run_name=None,
    outage_wait_s=DEFAULT_WAIT_S,
    spool_dir=None,
):
    """The callbacks of ``cfg.callbacks``, after ``scoring``. Those whose class takes
    a ``scoring``, ``run_id``, ``run_name``, ``outage_wait_s`` or ``spool_dir``
    argument (``pipelines.callbacks``) get it; others (sklearn's ``ProgressBar``) are
    built from their config alone."""
    callbacks, given = [scoring], {"scoring": scoring, "run_id": run_id}
    given.update(run_name=run_name, outage_wait_s=outage_wait_s, spool_dir=spool_dir)
    for callback in (callbacks_cfg or {}).values():
        if callback is not None:
            takes = inspect.signature(hydra.utils.get_object(callback._target_))
            extra = {k: v for k, v in given.items() if k in takes.parameters}
            callbacks.append(hydra.utils.instantiate(callback, **extra))
    return callbacks


def fit_members(run, inputs, fittings) -> list[float]:
    """Fit every member's estimator on the shared inputs and its own labels; return
    each member's fit time (a joint fit's members share its wall time).

    One ``skmlp.fit_together`` call fits them all (it groups them by shape), unless
    the config says ``together: false`` or there is one member.
    """
    estimators = [f.member.estimator for f in fittings]
    with warnings.catch_warnings(), run.device.dispatch():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if run.fits_together:
            log.info("fitting %d networks with one fit_together call", len(fittings))
            start = time.perf_counter()
            ys = [f.y for f in fittings]
            fit_together(estimators, inputs.X, ys, n_jobs=n_jobs(run.cfg))
            return [time.perf_counter() - start] * len(fittings)
        seconds = []
        for estimator, fitting in zip(estimators, fittings, strict=True):
            start = time.perf_counter()
            estimator.fit(inputs.X, fitting.y)
            seconds.append(time.perf_counter() - start)
        return seconds


def finish(run, inputs, fitting, seconds, extra_metrics=None) -> dict:
    """Evaluate a fitted member, log its curves, final metrics (``extra_metrics(curves)``
    added), figures and model, end its run FINISHED; return its metrics.

    Each write waits for a store that does not answer, up to
    ``tracking.outage_wait_s`` (``pipelines.outage``); past that, what the run holds
    goes to the spool (:func:`spool`) and :class:`StoreUnavailable` says how to
    replay it.
    """
    settle(wait=False)  # the figures of earlier runs that are drawn by now
    model = fitting.member.estimator
    cfg, data = fitting.member.cfg, fitting.data
    loggers = epoch_loggers(model)
    model.set_callbacks()  # the callbacks are not part of the model
    named = [(f"step{i}", step) for i, step in enumerate(inputs.steps)]
    pipeline = Pipeline([*named, ("model", model)])
    pipeline = pipeline if run.device.is_numpy else to_numpy(pipeline)
    table = curves(pipeline[-1], fitting.scoring)
    metrics = evaluate(pipeline, data, inputs.seconds + seconds, cfg)
    if extra_metrics is not None:
        metrics.update(extra_metrics(table))
    points = learning_rates(table) + final_points(metrics)
    tags = {GROUP_TAG: str(len(run.members))} if run.fits_together else {}
    store = Store(run.uri, outage_wait_s(cfg))
    artifacts = dict(pipeline=pipeline, data=data, cfg=cfg, curves=table)
    try:
        end_in_store(run, store, fitting.run_id, loggers, points, tags, artifacts)
    except StoreUnavailable as exc:
        pending = [p for logger in loggers for p in logger.pending]
        earlier = [p for logger in loggers for p in logger.spooled_points()]
        spooled = Spooled(
            run.uri,
            fitting.run_id,
            "FINISHED",
            metrics=earlier + [_listed(p) for p in pending + points],
            params=params_of(cfg),
            tags=tags,
        )
        save = functools.partial(save_artifacts, **artifacts)
        error = spool(run, fitting, spooled, save, exc)  # exc: said there
        for logger in loggers:
            logger.drop_spooled()  # now in the run's own spool
        raise error from None
    run.started.remove(fitting.run_id)
    return metrics


def end_in_store(run, store, run_id, loggers, points, tags, artifacts):
    """Write a run's end (the ``loggers``' waiting points, ``points``, ``tags``,
    :func:`log_artifacts` of ``artifacts``) and end it FINISHED, each write waiting
    as ``store`` allows."""
    for logger in loggers:
        logger.flush(store)
    run_tags = [RunTag(key, value) for key, value in tags.items()]
    store.call(run.client.log_batch, run_id, metrics=points, tags=run_tags)
    store.call(mlflow.start_run, run_id=run_id)  # MLflow logs models to the active run
    store.call(log_artifacts, **artifacts)
    # Ended through the client first: MLflow's end_run forgets the active run before
    # it asks the store, so a failure there could not be tried again.
    store.call(run.client.set_terminated, run_id, "FINISHED")
    store.call(mlflow.end_run)


def spool(run, fitting, spooled, save, gave_up) -> StoreUnavailable:
    """Write ``spooled`` (and ``save(path)``'s artifacts) to the spool; forget the
    run here (it is ended when replayed); return the error that says so, after
    ``gave_up``'s message."""
    folder = write_spool(spool_dir(run.cfg.tracking.get("spool_dir")), spooled, save)
    with one_try(), contextlib.suppress(Exception):
        mlflow.end_run()  # the active run, if any: its store does not answer
    run.started.remove(fitting.run_id)
    return StoreUnavailable(
        f"{gave_up}. Run {fitting.run_id} is trained; its metrics, parameters, tags "
        f"and artifacts are saved in {folder}. Once the store answers, write them "
        f"there and end the run with: {REPLAY_COMMAND} {folder}"
    )


def _listed(metric) -> list:
    return [metric.key, metric.value, metric.timestamp, metric.step]


def final_points(metrics) -> list:
    """The final metrics as points at step 0, all stamped now (so that writing them
    again adds nothing)."""
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, 0) for key, value in metrics.items()]


def params_of(cfg) -> dict:
    """The run's parameters, as :func:`log_run_context` logs them."""
    return {key: str(value) for key, value in flatten(logged_config(cfg)).items()}


def epoch_loggers(model) -> list:
    """The ``MLflowEpochLogger`` callbacks of ``model`` (whose points may wait)."""
    callbacks = getattr(model, "_skl_callbacks", [])
    return [c for c in callbacks if isinstance(c, MLflowEpochLogger)]


def curves(model, scoring):
    """The per-epoch table: the scores, and the model's own learning-rate record."""
    rows = [{"epoch": scores.epoch, **scores.metrics} for scores in scoring.history]
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["epoch", "loss"])
    rates = model.history_[["epoch", "learning_rate"]]
    return table.merge(rates, on="epoch", how="left")


def evaluate(pipeline, data, fit_seconds, cfg):
    """Final metrics of a fitted pipeline, named ``final_*``.

    (Per-epoch curves use the plain names; with early stopping the final model is the
    best epoch's, not the last one's.)
    """
    metrics = {"fit_seconds": fit_seconds}
    for name in ("train", "val", "test"):
        X, y = data[f"X_{name}"], data[f"y_{name}"]
        if X is None:
            continue
        proba = pipeline.predict_proba(X)
        classes = pipeline.classes_
        metrics[f"final_{name}_accuracy"] = float(
            np.mean(classes[proba.argmax(1)] == y)
        )
        metrics[f"final_{name}_log_loss"] = float(log_loss(y, proba, labels=classes))
    confidence = noise_confidence(
        pipeline, data.X_test, n_samples=cfg.eval.noise_samples, random_state=cfg.seed
    )
    metrics["noise_confidence"] = confidence["noise"]
    metrics["test_confidence"] = confidence["real"]
    model = pipeline[-1]
    metrics["n_epochs"] = model.n_iter_
    metrics["n_parameters"] = sum(
        c.size + b.size for c, b in zip(model.coefs_, model.intercepts_, strict=True)
    )
    return metrics


def learning_rates(curves) -> list:
    """The learning rate of each epoch, as points of one metric history."""
    now = int(time.time() * 1000)
    return [
        Metric("learning_rate", float(rate), now, int(epoch))
        for epoch, rate in zip(curves["epoch"], curves["learning_rate"], strict=True)
    ]


def log_artifacts(pipeline, data, cfg, curves):
    """Config, learning curves, figures (:mod:`pipelines.figures`) and (if
    ``cfg.tracking.log_model``) the model, to the active run."""
    mlflow.log_dict(logged_config(cfg), "config.yaml")
    mlflow.log_table(curves, "learning_curves.json")
    run_id = mlflow.active_run().info.run_id
    store = Store(mlflow.get_tracking_uri(), outage_wait_s(cfg))
    spool = spool_dir(cfg.tracking.get("spool_dir"))
    to = Destination(mlflow.MlflowClient(), run_id, store, spool)
    log_figures(to, run_figures(pipeline, data, curves))
    if cfg.tracking.log_model:
        example = data.X_test[:5]
        caution_once()  # MLflow's caution on pickled models, not once per run
        preload_package_map()  # MLflow's check of the requirements, cached
        mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            serialization_format="cloudpickle",
            pip_requirements=MODEL_REQUIREMENTS,
        )


def run_figures(pipeline, data, curves) -> list[Figure]:
    """A run's figures: learning curves, confusion matrix and, for a network on
    pixels, its first layer's weights."""
    model = pipeline[-1]
    figures = [
        Figure("learning_curves.png", plot_learning_curves, (curves,)),
        Figure(
            "confusion_matrix.png",
            plot_confusion_matrix,
            (data.y_test, pipeline.predict(data.X_test)),
        ),
    ]
    n_pixels = int(np.prod(data.image_shape))
    if model.n_layers_ > 2 and model.coefs_[0].shape[0] == n_pixels:
        figures.append(
            Figure(
                "first_layer_weights.png",
                plot_first_layer_weights,
                (model.coefs_[0], data.image_shape),
            )
        )
    return figures


def save_artifacts(directory, *, pipeline, data, cfg, curves):
    """The files :func:`log_artifacts` logs, saved under ``directory`` (a spooled
    run's); the model as an MLflow model folder, ``model/``."""
    (directory / "config.yaml").write_text(yaml.safe_dump(logged_config(cfg)))
    table = curves.to_json(orient="split", index=False)
    (directory / "learning_curves.json").write_text(table)
    for figure in run_figures(pipeline, data, curves):
        figure.plot(*figure.args).savefig(directory / figure.file_name)
    if cfg.tracking.log_model:
        example = data.X_test[:5]
        preload_package_map()
        mlflow.sklearn.save_model(
            pipeline,
            directory / "model",
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            serialization_format="cloudpickle",
            pip_requirements=MODEL_REQUIREMENTS,
        )
