"""The shuffled-label memorization experiment (Zhang et al. 2017; Arpit et al. 2017).

    python -m pipelines.memorization                      # quick
    python -m pipelines.memorization scale=full           # MNIST 60k
    python -m pipelines.memorization regularization=l2    # Arpit's contrast

One task: a grid of corruption levels p x network sizes (``grid`` in the config, set by
``scale``), each member trained on corrupted training labels and measured on the true
test set, all fitted with one ``skmlp.fit_together`` call. Each member is a child run
that logs per epoch the loss, the accuracy on its (corrupted) training labels and the
test accuracy, and at the end the "time to fit" (first epoch with training accuracy
>= ``fit_threshold``). The parent run gets the summary table and figures
(``pipelines.memorization_summary``).
"""

import hydra
from omegaconf import DictConfig

from pipelines import config_dir
from pipelines.redact import redact_printed_config
from pipelines.warm import start_early

start_early()  # a parallel sweep: its workers' fork server imports while this does

# scikit-learn, MLflow and skmlp are imported where used: importing the entry point
# (for --cfg job or --help) stays at Hydra alone.


def corrupt_inputs(data, kind, seed):
    """The data with its training inputs corrupted, for an input corruption ``kind``
    (the same for every corruption level); else the data as they are."""
    from sklearn.utils import Bunch

    from skmlp.corruption import INPUT_CORRUPTIONS, LABEL_CORRUPTIONS

    if kind in INPUT_CORRUPTIONS:
        X = INPUT_CORRUPTIONS[kind](data.X_train, random_state=seed)
        return Bunch(**{**data, "X_train": X})
    if kind != "none" and kind not in LABEL_CORRUPTIONS:
        known = ["none", *LABEL_CORRUPTIONS, *INPUT_CORRUPTIONS]
        raise ValueError(f"Unknown corruption.kind {kind!r}; one of {known}.")
    return data


def corrupt_labels(data, corruption, seed):
    """The data with training labels corrupted as ``corruption`` says (kind, p), for
    a label corruption; the training inputs and the test set stay as they are."""
    from sklearn.utils import Bunch

    from skmlp.corruption import LABEL_CORRUPTIONS

    if corruption.kind not in LABEL_CORRUPTIONS:
        return data
    corrupt = LABEL_CORRUPTIONS[corruption.kind]
    y = corrupt(data.y_train, corruption.p, random_state=seed)
    return Bunch(**{**data, "y_train": y})


def time_to_fit(curves, threshold):
    """First epoch whose training accuracy reaches ``threshold`` (NaN if none)."""
    reached = curves.loc[curves["train_accuracy"] >= threshold, "epoch"]
    return float(reached.iloc[0]) if len(reached) else float("nan")


def member_name(member):
    cfg = member.cfg
    sizes = "-".join(str(s) for s in cfg.model.hidden_layer_sizes)
    return f"{cfg.corruption.kind}-p{cfg.corruption.p}-{sizes}-{cfg.regularization}"


def member_tags(member):
    cfg = member.cfg
    return {
        "skmlp.corruption": cfg.corruption.kind,
        "skmlp.regularization": cfg.regularization,
    }


@redact_printed_config  # --cfg job, --info, --help: no password
@hydra.main(config_path=config_dir(), config_name="memorization", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (console script ``skmlp-memorization``): the whole grid as
    one task; returns the best member's ``optimized_metric``."""
    from hydra.core.hydra_config import HydraConfig

    from pipelines.data import load_data_soon
    from pipelines.run import metric_value, task

    with task(cfg) as run:
        data = load_data_soon(cfg.data, cfg.seed)  # loads while the rest is imported
        from pipelines.members import run_members
        from pipelines.memorization_summary import log_memorization_summary

        data = corrupt_inputs(data.result(), cfg.corruption.kind, cfg.seed)
        out_dir = HydraConfig.get().runtime.output_dir
        metrics = run_members(
            run,
            data,
            member_name,
            tags=member_tags,
            member_data=lambda m, d: corrupt_labels(d, m.cfg.corruption, cfg.seed),
            extra_metrics=lambda m, curves: {
                "time_to_fit": time_to_fit(curves, m.cfg.fit_threshold)
            },
            summarize=lambda client, parent: log_memorization_summary(
                client, parent, out_dir
            ),
        )
    return metric_value(metrics, cfg.optimized_metric)


if __name__ == "__main__":
    main()
