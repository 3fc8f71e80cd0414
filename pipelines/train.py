"""Train and evaluate one SGDMLPClassifier pipeline, tracked in MLflow.

python -m pipelines.train                       # the defaults (conf/train.yaml)
python -m pipelines.train experiment=3b1b       # the video's network
python -m pipelines.train -m model.activation=relu,logistic   # a sweep
python -m pipelines.train --cfg job             # show the resolved config
"""

import os
import time
import warnings

import hydra
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from omegaconf import DictConfig, OmegaConf
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline

from pipelines.data import load_data
from pipelines.lifecycle import start_run, task_wrapper
from pipelines.tracking import (
    PARENT_RUN_ENV,
    MLflowEpochLogger,
    log_run_context,
    setup_experiment,
    tracking_uri,
)
from skmlp.inspection import noise_confidence
from skmlp.plots import (
    plot_confusion_matrix,
    plot_first_layer_weights,
    plot_learning_curves,
)


def build_pipeline(cfg):
    """The preprocessing steps of ``cfg.preprocessing`` followed by ``cfg.model``."""
    steps = [
        (f"step{i}", hydra.utils.instantiate(step, _convert_="all"))
        for i, step in enumerate(cfg.preprocessing.steps)
    ]
    steps.append(("model", hydra.utils.instantiate(cfg.model, _convert_="all")))
    return Pipeline(steps)


def preprocess(pipeline, X):
    """What the classifier of a fitted ``pipeline`` sees for input ``X``."""
    for _, step in pipeline.steps[:-1]:
        X = step.transform(X)
    return X


def run_name(cfg):
    model = cfg.model
    sizes = "-".join(str(s) for s in model.hidden_layer_sizes) or "none"
    return f"{cfg.data.name}-{sizes}-{model.activation}-lr{model.learning_rate_init}"


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
        c.size + b.size for c, b in zip(model.coefs_, model.intercepts_, strict=False)
    )
    return metrics


# What the skops format must trust to load our pipeline (instead of pickle).
TRUSTED_TYPES = ["skmlp._classifier.SGDMLPClassifier", "skmlp._optimizers.SGDOptimizer"]


def log_artifacts(pipeline, data, cfg, curves):
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
        model.set_callbacks()  # the MLflow logger is not part of the model
        example = data.X_test[:5]
        mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            skops_trusted_types=TRUSTED_TYPES,
            pip_requirements=["skmlp", "scikit-learn", "numpy", "pandas", "skops"],
        )


def default_eval_sets(cfg, data):
    """Per-epoch evaluation sets: a fixed training sample (none if
    ``eval.train_accuracy_samples`` is 0), the test set, validation."""
    n_sample = min(cfg.eval.train_accuracy_samples, len(data.y_train))
    sample = np.random.default_rng(cfg.seed).choice(
        len(data.y_train), size=n_sample, replace=False
    )
    eval_sets = {"test": (data.X_test, data.y_test)}
    if n_sample > 0:
        eval_sets["train"] = (data.X_train[sample], data.y_train[sample])
    if data.X_val is not None:
        eval_sets["val"] = (data.X_val, data.y_val)
    return eval_sets


def train(cfg, data, eval_sets, stop_at=None):
    """Fit the pipeline with per-epoch MLflow logging.

    Returns the fitted pipeline, its fit time and the per-epoch metrics (DataFrame).
    """
    pipeline = build_pipeline(cfg)
    logger = MLflowEpochLogger(
        eval_sets, preprocess=lambda X: preprocess(pipeline, X), stop_at=stop_at
    )
    pipeline[-1].set_callbacks(logger)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(data.X_train, data.y_train)
    return pipeline, time.perf_counter() - start, pd.DataFrame(logger.records)


def tracked_run(
    cfg, data, eval_sets, *, name, tags=None, stop_at=None, extra_metrics=None
):
    """One MLflow run (a child when a sweep's parent is set): parameters, tags, the
    per-epoch curves, final metrics and artifacts. Returns the metrics and curves.

    ``extra_metrics(curves) -> dict`` adds metrics derived from the per-epoch curves.
    """
    experiment_id = setup_experiment(
        tracking_uri(cfg.tracking.uri), cfg.tracking.experiment_name
    )
    with start_run(
        experiment_id=experiment_id,
        run_name=name,
        parent_run_id=os.environ.get(PARENT_RUN_ENV),
        log_system_metrics=False,
    ) as active:
        log_run_context(cfg, data, tags)
        pipeline, seconds, curves = train(cfg, data, eval_sets, stop_at=stop_at)
        metrics = evaluate(pipeline, data, seconds, cfg)
        if extra_metrics is not None:
            metrics.update(extra_metrics(curves))
        mlflow.log_metrics(metrics)
        log_artifacts(pipeline, data, cfg, curves)
        print(
            f"run {active.info.run_id}: test accuracy "
            f"{metrics['final_test_accuracy']:.4f} after {metrics['n_epochs']} epochs "
            f"({seconds:.1f} s)"
        )
    return metrics, curves


def run(cfg: DictConfig) -> float:
    """One tracked training run; returns the score a sweeper maximises."""
    data = load_data(cfg.data, cfg.seed)
    metrics, _ = tracked_run(
        cfg, data, default_eval_sets(cfg, data), name=run_name(cfg)
    )
    # The sweepers' objective: validation accuracy when a validation set is held out.
    return metrics[
        "final_val_accuracy" if data.X_val is not None else "final_test_accuracy"
    ]


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@task_wrapper
def main(cfg: DictConfig) -> float:
    """Hydra entry point (console script ``skmlp-train``)."""
    return run(cfg)


if __name__ == "__main__":
    main()
