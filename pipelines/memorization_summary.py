"""The memorization sweep's parent run: its children's summary table and figures.

A module of its own, apart from the entry point ``pipelines.memorization``: this Hydra
callback subclasses an MLflow one, and importing the entry point (for --cfg job or
--help) should not import MLflow.
"""

import os
import warnings

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipelines.tracking import MLflowSweepCallback
from skmlp.plots import plot_memorization_summary


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
