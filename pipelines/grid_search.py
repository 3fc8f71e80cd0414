"""The same search the scikit-learn way: GridSearchCV over the Pipeline.

    python -m pipelines.grid_search data=digits
    python -m pipelines.grid_search 'search.param_grid.model__activation=[relu,tanh]'

One parent MLflow run holds the search (best parameters, best cross-validated score,
test accuracy of the refitted best pipeline, the cv_results_ table); every candidate
is a child run with its parameters and its mean and spread of fold scores.
"""

import time
import warnings

import hydra
import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from pipelines.data import load_data
from pipelines.lifecycle import start_run, task_wrapper
from pipelines.tracking import log_run_context, setup_experiment, tracking_uri
from pipelines.train import build_pipeline


def log_candidates(results, experiment_id):
    """One child run per candidate of ``cv_results_`` under the active run."""
    for i, params in enumerate(results["params"]):
        with start_run(
            experiment_id=experiment_id, nested=True, run_name=f"candidate-{i}"
        ):
            mlflow.log_params(params)
            mlflow.log_metrics(
                {
                    "mean_cv_accuracy": float(results["mean_test_score"][i]),
                    "std_cv_accuracy": float(results["std_test_score"][i]),
                    "rank": int(results["rank_test_score"][i]),
                    "mean_fit_seconds": float(results["mean_fit_time"][i]),
                }
            )


def search(cfg, data):
    grid = GridSearchCV(
        build_pipeline(cfg),
        OmegaConf.to_container(cfg.search.param_grid, resolve=True),
        cv=cfg.search.cv,
        n_jobs=cfg.search.n_jobs,
        scoring="accuracy",
        error_score="raise",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(data.X_train, data.y_train)
    return grid


@hydra.main(config_path="../conf", config_name="grid_search", version_base="1.3")
@task_wrapper
def main(cfg: DictConfig) -> float:
    """Hydra entry point (console script ``skmlp-grid-search``)."""
    data = load_data(cfg.data, cfg.seed)
    experiment_id = setup_experiment(
        tracking_uri(cfg.tracking.uri), cfg.tracking.experiment_name
    )
    with start_run(experiment_id=experiment_id, run_name="grid-search"):
        log_run_context(cfg, data)
        start = time.perf_counter()
        grid = search(cfg, data)
        log_candidates(grid.cv_results_, experiment_id)
        test_accuracy = float(grid.score(data.X_test, data.y_test))
        mlflow.log_params({f"best.{k}": v for k, v in grid.best_params_.items()})
        mlflow.log_metrics(
            {
                "best_cv_accuracy": float(grid.best_score_),
                "final_test_accuracy": test_accuracy,
                "search_seconds": time.perf_counter() - start,
            }
        )
        table = pd.DataFrame(grid.cv_results_).drop(columns="params").astype(str)
        mlflow.log_table(table, "cv_results.json")
        print(
            f"best {grid.best_params_}: cv accuracy {grid.best_score_:.4f}, "
            f"test accuracy {test_accuracy:.4f}"
        )
    return test_accuracy


if __name__ == "__main__":
    main()
