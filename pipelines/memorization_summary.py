"""The memorization grid's parent run: its members' summary table and figures."""

import logging
import os
import warnings

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from skmlp.plots import plot_memorization_summary

log = logging.getLogger(__name__)
# What the console shows of each run: the memorization experiment's answer.
CONSOLE_COLUMNS = [
    "hidden_layer_sizes",
    "p",
    "final_train_accuracy",
    "final_test_accuracy",
    "epochs",
    "time_to_fit",
]


def log_memorization_summary(client: MlflowClient, parent_id: str, out_dir: str):
    """Give the parent run ``summary.csv`` (also written to ``out_dir``), its table
    as ``summary.json`` and the figures after Zhang et al.'s Figure 1."""
    table, curves = collect(client, parent_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name, figure in plot_memorization_summary(table, curves).items():
            client.log_figure(parent_id, figure, f"{name}.png")
    client.log_table(parent_id, table, "summary.json")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "summary.csv")
    table.to_csv(path, index=False)
    client.log_artifact(parent_id, path)
    counts = {  # epochs: no decimals; "-": never fitted
        key: table[key].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
        for key in ("epochs", "time_to_fit")
    }
    shown = table[CONSOLE_COLUMNS].assign(**counts)
    shown = shown.to_string(index=False, float_format=lambda value: f"{value:.4f}")
    log.info("Memorization, per network and corruption level p:\n%s", shown)


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
