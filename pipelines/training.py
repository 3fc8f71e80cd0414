"""The library the entry points share: build, fit, evaluate and log one pipeline."""

import inspect
import logging
import os
import time
import warnings

import hydra
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline

from pipelines.callbacks import EpochScoring
from pipelines.device import resolve_device, to_numpy
from pipelines.summary import OBJECTIVE_TAG, sweep_run_name
from pipelines.together import fit_estimator
from pipelines.tracking import (
    PARENT_RUN_ENV,
    log_run_context,
    setup_experiment,
    tracking_uri,
)
from pipelines.ui import announce, save_runs_view
from skmlp.inspection import noise_confidence
from skmlp.plots import (
    plot_confusion_matrix,
    plot_first_layer_weights,
    plot_learning_curves,
)

log = logging.getLogger(__name__)

# cloudpickle, not skops: importing skops walks every scikit-learn module (importing
# torch where it is installed), 3.6 to 6.3 s of each run against 0.7 to 1.1 s for the
# whole log_model (digits, 2-core box). A pickle is loaded only from a store you trust,
# like any joblib file of a scikit-learn model: MLflow says so once per process.
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


# The parameters that the runs-table view of single runs shows (pipelines.ui).
SINGLE_RUN_PARAMS = [
    "data.name",
    "model.hidden_layer_sizes",
    "model.activation",
    "model.learning_rate_init",
]


def build_preprocessing(cfg):
    """The (unfitted) steps of ``cfg.preprocessing``, as a list of transformers."""
    return [
        hydra.utils.instantiate(step, _convert_="all")
        for step in cfg.preprocessing.steps
    ]


def build_pipeline(cfg, steps=None):
    """A Pipeline of the preprocessing ``steps`` (default: ``cfg.preprocessing``)
    followed by the classifier ``cfg.model``."""
    steps = build_preprocessing(cfg) if steps is None else steps
    named = [(f"step{i}", step) for i, step in enumerate(steps)]
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    return Pipeline([*named, ("model", model)])


def eval_sets(cfg, data):
    """Per-epoch evaluation sets: the training set (a fixed sample of
    ``cfg.eval.train_accuracy_samples`` rows, null: all, 0: none), the test set,
    validation."""
    n_train, n_sample = len(data.y_train), cfg.eval.train_accuracy_samples
    rows = slice(None)
    if n_sample is not None and n_sample < n_train:
        rows = np.random.default_rng(cfg.seed).choice(n_train, n_sample, replace=False)
    sets = {"test": (data.X_test, data.y_test)}
    if n_sample != 0:
        sets["train"] = (data.X_train[rows], data.y_train[rows])
    if data.X_val is not None:
        sets["val"] = (data.X_val, data.y_val)
    return sets


def instantiate_callbacks(callbacks_cfg, scoring):
    """The callbacks of ``cfg.callbacks``, after ``scoring``; those that take a
    ``scoring`` argument (``pipelines.callbacks``) read it, others (sklearn's
    ``ProgressBar``) are built from their config alone."""
    callbacks = [scoring]
    for callback in (callbacks_cfg or {}).values():
        if callback is not None:
            target = hydra.utils.get_object(callback._target_)
            reads = "scoring" in inspect.signature(target).parameters
            extra = {"scoring": scoring} if reads else {}
            callbacks.append(hydra.utils.instantiate(callback, **extra))
    return callbacks


def fit(cfg, data, sets):
    """Fit the pipeline on ``cfg.device``, scored after every epoch on ``sets`` (raw
    inputs).

    The training and evaluation data move to the device once (before the clock starts),
    and the fitted pipeline comes back as NumPy. The preprocessing is fitted first, so
    that the evaluation sets are transformed once and the classifier's callbacks see
    what the classifier sees. Returns the fitted pipeline, the fit time and the
    per-epoch curves (one row per epoch).
    """
    device = resolve_device(cfg.device)
    sets = device.put_sets({"fit": (data.X_train, data.y_train), **sets})
    (X_train, y_train), start = sets.pop("fit"), time.perf_counter()
    steps = build_preprocessing(cfg)
    with warnings.catch_warnings(), device.dispatch():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for step in steps:
            X_train = step.fit_transform(X_train, y_train)
            sets = {name: (step.transform(X), y) for name, (X, y) in sets.items()}
        pipeline = build_pipeline(cfg, steps)
        scoring = EpochScoring(sets)
        pipeline[-1].set_callbacks(*instantiate_callbacks(cfg.callbacks, scoring))
        preprocessed = time.perf_counter()
        # Alone, or with the sweep's networks of its shape (the together launcher).
        fit_seconds = fit_estimator(pipeline[-1], X_train, y_train)
    pipeline[-1].set_callbacks()  # the callbacks are not part of the model
    seconds = preprocessed - start + fit_seconds
    pipeline = pipeline if device.is_numpy else to_numpy(pipeline)
    return pipeline, seconds, curves(pipeline[-1], scoring)


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


def log_learning_rates(curves):
    """The learning rate of each epoch, as one metric history (one call)."""
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(
        mlflow.active_run().info.run_id,
        metrics=[
            Metric("learning_rate", float(rate), now, int(epoch))
            for epoch, rate in zip(
                curves["epoch"], curves["learning_rate"], strict=True
            )
        ],
    )


def log_artifacts(pipeline, data, cfg, curves):
    """Config, learning curves, figures and (if ``cfg.tracking.log_model``) the model."""
    model = pipeline[-1]
    mlflow.log_dict(OmegaConf.to_container(cfg, resolve=True), "config.yaml")
    mlflow.log_table(curves, "learning_curves.json")
    mlflow.log_figure(plot_learning_curves(curves), "learning_curves.png")
    mlflow.log_figure(
        plot_confusion_matrix(data.y_test, pipeline.predict(data.X_test)),
        "confusion_matrix.png",
    )
    n_pixels = int(np.prod(data.image_shape))
    if model.n_layers_ > 2 and model.coefs_[0].shape[0] == n_pixels:
        mlflow.log_figure(
            plot_first_layer_weights(model.coefs_[0], data.image_shape),
            "first_layer_weights.png",
        )
    if cfg.tracking.log_model:
        example = data.X_test[:5]
        caution_once()  # MLflow's caution on pickled models, not once per run
        mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            serialization_format="cloudpickle",
            pip_requirements=MODEL_REQUIREMENTS,
        )


def tracked_run(cfg, data, *, name, tags=None, extra_metrics=None):
    """One MLflow run (a child when a sweep's parent is set): parameters, tags, the
    per-epoch curves, final metrics and artifacts. Returns the metrics and curves.

    ``extra_metrics(curves) -> dict`` adds metrics derived from the per-epoch curves.
    """
    uri = tracking_uri(cfg.tracking.uri)
    experiment_id = setup_experiment(uri, cfg.tracking.experiment_name)
    parent_id = os.environ.get(PARENT_RUN_ENV)
    # Started here and ended below on success; on failure or interrupt the task
    # wrapper (pipelines.utils.task_wrapper) ends it with the right status.
    active = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=sweep_run_name(MlflowClient(uri), parent_id) or name,
        parent_run_id=parent_id,
        log_system_metrics=False,
    )
    objective = cfg.get("optimized_metric")
    tags = {**({OBJECTIVE_TAG: objective} if objective else {}), **(tags or {})}
    log_run_context(cfg, data, {**resolve_device(cfg.device).tags(), **tags})
    pipeline, seconds, curves = fit(cfg, data, eval_sets(cfg, data))
    log_learning_rates(curves)
    metrics = evaluate(pipeline, data, seconds, cfg)
    if extra_metrics is not None:
        metrics.update(extra_metrics(curves))
    mlflow.log_metrics(metrics)
    log_artifacts(pipeline, data, cfg, curves)
    mlflow.end_run()
    log.info(
        "run %s (%s): test accuracy %.4f after %d epochs (%.1f s)",
        active.info.run_id,
        name,
        metrics["final_test_accuracy"],
        metrics["n_epochs"],
        seconds,
    )
    if parent_id is None:  # a sweep's jobs leave it to the sweep's end
        announce_single_run(uri, experiment_id, objective)
    return metrics, curves


def announce_single_run(uri, experiment_id, objective):
    """Save the experiment's runs-table view of single runs; say how to open it."""
    metrics = [objective or "final_test_accuracy", "final_test_accuracy", "fit_seconds"]
    view_id = save_runs_view(
        MlflowClient(uri),
        experiment_id,
        "skmlp-runs",
        "skmlp runs",
        list(dict.fromkeys(metrics)),
        SINGLE_RUN_PARAMS,
    )
    announce(uri, experiment_id, view_id)
