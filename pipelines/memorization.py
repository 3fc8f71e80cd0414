"""The shuffled-label memorization experiment (Zhang et al. 2017; Arpit et al. 2017).

    python -m pipelines.memorization                      # quick (~5 min on 2 cores)
    python -m pipelines.memorization scale=full           # MNIST 60k
    python -m pipelines.memorization regularization=l2    # Arpit's contrast

A sweep over corruption level p and network size; each job trains on corrupted
training data and is measured on the true test set. Each job logs per epoch the loss,
the accuracy on its (corrupted) training labels and the test accuracy, and at the end
the "time to fit" (first epoch with training accuracy >= ``fit_threshold``). When the
sweep ends, the parent run gets the summary table and figures (``MemorizationSummary``).
"""

import os
import warnings

import hydra
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from sklearn.utils import Bunch

from pipelines import config_dir
from pipelines.data import load_data
from pipelines.tracking import MLflowSweepCallback
from pipelines.training import tracked_run
from pipelines.utils import metric_value, task_wrapper
from skmlp.corruption import INPUT_CORRUPTIONS, LABEL_CORRUPTIONS
from skmlp.plots import plot_memorization_summary


def corrupt(data, corruption, seed):
    """Training data with the configured corruption; the test set stays true."""
    X, y = data.X_train, data.y_train
    if corruption.kind in LABEL_CORRUPTIONS:
        y = LABEL_CORRUPTIONS[corruption.kind](y, corruption.p, random_state=seed)
    elif corruption.kind in INPUT_CORRUPTIONS:
        X = INPUT_CORRUPTIONS[corruption.kind](X, random_state=seed)
    elif corruption.kind != "none":
        known = ["none", *LABEL_CORRUPTIONS, *INPUT_CORRUPTIONS]
        raise ValueError(
            f"Unknown corruption.kind {corruption.kind!r}; one of {known}."
        )
    return Bunch(**{**data, "X_train": X, "y_train": y})


def time_to_fit(curves, threshold):
    """First epoch whose training accuracy reaches ``threshold`` (NaN if none)."""
    reached = curves.loc[curves["train_accuracy"] >= threshold, "epoch"]
    return float(reached.iloc[0]) if len(reached) else float("nan")


@task_wrapper
def memorize(cfg: DictConfig) -> dict:
    """One job of the sweep: train on corrupted data; returns its final metrics."""
    data = corrupt(load_data(cfg.data, cfg.seed), cfg.corruption, cfg.seed)
    sizes = "-".join(str(s) for s in cfg.model.hidden_layer_sizes)
    metrics, _ = tracked_run(
        cfg,
        data,
        name=f"{cfg.corruption.kind}-p{cfg.corruption.p}-{sizes}-{cfg.regularization}",
        tags={
            "skmlp.corruption": cfg.corruption.kind,
            "skmlp.regularization": cfg.regularization,
        },
        extra_metrics=lambda curves: {
            "time_to_fit": time_to_fit(curves, cfg.fit_threshold)
        },
    )
    return metrics


class MemorizationSummary(MLflowSweepCallback):
    """Parent run of the sweep + the summary of its children when it ends:
    ``summary.csv`` and figures after Zhang et al.'s Figure 1, on MNIST."""

    def on_multirun_end(self, config, **kwargs):
        if self._parent is not None:
            client = MlflowClient(self._uri)
            table, curves = collect(client, self._parent)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                for name, figure in plot_memorization_summary(table, curves).items():
                    client.log_figure(self._parent, figure, f"{name}.png")
            client.log_table(self._parent, table, "summary.json")
            path = os.path.join(config.hydra.sweep.dir, "summary.csv")
            os.makedirs(config.hydra.sweep.dir, exist_ok=True)
            table.to_csv(path, index=False)
            client.log_artifact(self._parent, path)
        super().on_multirun_end(config, **kwargs)


def collect(client, parent_id):
    """The children's final numbers (one row per run) and per-epoch training curves."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    rows, curves = [], []
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        row = {
            "run_id": child.info.run_id,
            "corruption": params["corruption.kind"],
            "p": float(params["corruption.p"]),
            "hidden_layer_sizes": params["model.hidden_layer_sizes"],
            "regularization": params["regularization"],
            "n_parameters": metrics.get("n_parameters"),
            "epochs": metrics.get("n_epochs"),
            "time_to_fit": metrics.get("time_to_fit", np.nan),
            "final_train_accuracy": metrics.get("final_train_accuracy"),
            "final_test_accuracy": metrics.get("final_test_accuracy"),
            "fit_seconds": metrics.get("fit_seconds"),
        }
        rows.append(row)
        for key in ("loss", "train_accuracy", "test_accuracy"):
            for m in client.get_metric_history(child.info.run_id, key):
                curves.append(
                    {
                        "run_id": child.info.run_id,
                        "metric": key,
                        "epoch": m.step,
                        "value": m.value,
                    }
                )
    table = pd.DataFrame(rows).sort_values(["hidden_layer_sizes", "p"])
    return table.reset_index(drop=True), pd.DataFrame(curves)


@hydra.main(config_path=config_dir(), config_name="memorization", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (console script ``skmlp-memorization``)."""
    return metric_value(memorize(cfg), cfg.optimized_metric)


if __name__ == "__main__":
    main()
