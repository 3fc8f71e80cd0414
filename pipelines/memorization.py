"""The shuffled-label memorization experiment (Zhang et al. 2017; Arpit et al. 2017).

    python -m pipelines.memorization                      # quick (~5 min on 2 cores)
    python -m pipelines.memorization scale=full           # MNIST 60k
    python -m pipelines.memorization regularization=l2    # Arpit's contrast

A sweep over corruption level p and network size; each job trains on corrupted
training data and is measured on the true test set. Each job logs per epoch the loss,
the accuracy on its (corrupted) training labels and the test accuracy, and at the end
the "time to fit" (first epoch with training accuracy >= ``fit_threshold``). When the
sweep ends, the parent run gets the summary table and figures
(``pipelines.memorization_summary.MemorizationSummary``).
"""

import hydra
from omegaconf import DictConfig

from pipelines import config_dir
from pipelines.utils import metric_value, task_wrapper

# scikit-learn, MLflow and skmlp are imported where used: importing the entry point
# (for --cfg job or --help) stays at Hydra alone. The sweep's summary callback lives
# in pipelines.memorization_summary for the same reason.


def corrupt(data, corruption, seed):
    """Training data with the configured corruption; the test set stays true."""
    from sklearn.utils import Bunch

    from skmlp.corruption import INPUT_CORRUPTIONS, LABEL_CORRUPTIONS

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
    from pipelines.data import load_data_soon

    data = load_data_soon(cfg.data, cfg.seed)  # loads while MLflow is imported
    from pipelines.training import tracked_run

    data = corrupt(data.result(), cfg.corruption, cfg.seed)
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


@hydra.main(config_path=config_dir(), config_name="memorization", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (console script ``skmlp-memorization``)."""
    return metric_value(memorize(cfg), cfg.optimized_metric)


if __name__ == "__main__":
    main()
