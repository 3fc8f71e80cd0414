"""The same search the scikit-learn way: GridSearchCV over the Pipeline.

    python -m pipelines.grid_search data=digits
    python -m pipelines.grid_search 'search.param_grid.model__activation=[relu,tanh]'

One parent MLflow run holds the search (best parameters, best cross-validated score,
test accuracy of the refitted best pipeline, the cv_results_ table); every candidate
is a child run with its parameters and its mean and spread of fold scores.
"""

import logging
import time
import warnings

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import config_dir
from pipelines.utils import metric_value, task_wrapper

# scikit-learn, MLflow and skmlp are imported where used: importing the entry point
# (for --cfg job or --help) stays at Hydra alone.

log = logging.getLogger(__name__)


def log_candidates(results, experiment_id, swept, dataset):
    """One child run per candidate of ``cv_results_`` under the active run, named by
    its values of the ``swept`` parameters."""
    import mlflow

    from pipelines.summary import OBJECTIVE_TAG, short_name
    from pipelines.ui import log_training_input

    for i, params in enumerate(results["params"]):
        name = short_name({key: params[key] for key in swept})
        with mlflow.start_run(experiment_id=experiment_id, nested=True, run_name=name):
            mlflow.log_params(params)
            log_training_input(dataset)
            mlflow.set_tag(OBJECTIVE_TAG, "mean_cv_accuracy")
            mlflow.log_metrics(
                {
                    "mean_cv_accuracy": float(results["mean_test_score"][i]),
                    "std_cv_accuracy": float(results["std_test_score"][i]),
                    "rank": int(results["rank_test_score"][i]),
                    "mean_fit_seconds": float(results["mean_fit_time"][i]),
                }
            )


def search(cfg, data, device):
    """The fitted GridSearchCV, and its best pipeline's accuracy on the test set.

    The data moves to ``device`` once. On a GPU the candidates run one after the other:
    parallel workers would each get their own copy of the data.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV

    from pipelines.training import build_pipeline

    grid = GridSearchCV(
        build_pipeline(cfg),
        OmegaConf.to_container(cfg.search.param_grid, resolve=True),
        cv=cfg.search.cv,
        n_jobs=1 if device.is_gpu else cfg.search.n_jobs,
        scoring="accuracy",
        error_score="raise",
    )
    sets = device.put_sets(
        {"train": (data.X_train, data.y_train), "test": (data.X_test, data.y_test)}
    )
    with warnings.catch_warnings(), device.dispatch():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(*sets["train"])
        return grid, float(grid.score(*sets["test"]))


@task_wrapper
def grid_search(cfg: DictConfig) -> dict:
    """The search as one parent run (candidates as children); returns its metrics."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from pipelines.data import load_data
    from pipelines.device import resolve_device
    from pipelines.summary import log_sweep_summary
    from pipelines.tracking import log_run_context, setup_experiment, tracking_uri
    from pipelines.ui import announce, training_dataset

    # a missing GPU or library fails here, before any work
    device = resolve_device(cfg.device)
    data = load_data(cfg.data, cfg.seed)
    uri = tracking_uri(cfg.tracking.uri)
    experiment_id = setup_experiment(uri, cfg.tracking.experiment_name)
    parent = mlflow.start_run(experiment_id=experiment_id, run_name="grid-search")
    log_run_context(cfg, data, device.tags())
    start = time.perf_counter()
    grid, test_accuracy = search(cfg, data, device)
    swept = [key for key, values in grid.param_grid.items() if len(values) > 1]
    dataset = training_dataset(data.X_train, data.y_train, cfg.data.name)
    log_candidates(grid.cv_results_, experiment_id, swept, dataset)
    view_id = log_sweep_summary(MlflowClient(uri), parent.info.run_id, swept)
    metrics = {
        "best_cv_accuracy": float(grid.best_score_),
        "final_test_accuracy": test_accuracy,
        "search_seconds": time.perf_counter() - start,
    }
    mlflow.log_metrics(metrics)
    table = pd.DataFrame(grid.cv_results_).drop(columns="params").astype(str)
    mlflow.log_table(table, "cv_results.json")
    mlflow.end_run()
    log.info(
        "best %s: cv accuracy %.4f, test accuracy %.4f",
        grid.best_params_,
        metrics["best_cv_accuracy"],
        metrics["final_test_accuracy"],
    )
    announce(uri, experiment_id, view_id)
    return metrics


@hydra.main(config_path=config_dir(), config_name="grid_search", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (console script ``skmlp-grid-search``)."""
    return metric_value(grid_search(cfg), cfg.optimized_metric)


if __name__ == "__main__":
    main()
