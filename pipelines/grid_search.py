"""The same search the scikit-learn way: GridSearchCV over the Pipeline.

    python -m pipelines.grid_search data=digits
    python -m pipelines.grid_search 'search.param_grid.model__activation=[relu,tanh]'

One parent MLflow run holds the search (best parameters, best cross-validated score,
test accuracy of the refitted best pipeline, the cv_results_ table); every candidate
is a child run with its parameters and its mean and spread of fold scores.
"""

import hydra
from omegaconf import DictConfig

from pipelines import config_dir
from pipelines.redact import redact_printed_config


@redact_printed_config  # --cfg job, --info, --help: no password
@hydra.main(config_path=config_dir(), config_name="grid_search", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (console script ``skmlp-grid-search``): the search as one
    parent run (candidates as children); returns its ``optimized_metric``."""
    # Imported here: --cfg job and --help need neither scikit-learn nor MLflow.
    from pipelines.data import load_data_soon
    from pipelines.run import metric_value, task

    with task(cfg) as run:
        data = load_data_soon(cfg.data, cfg.seed)  # loads while the rest is imported
        from pipelines.searching import grid_search

        metrics = grid_search(run, data.result())
    return metric_value(metrics, cfg.optimized_metric)


if __name__ == "__main__":
    main()
