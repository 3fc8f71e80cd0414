"""GridSearchCV over the Pipeline as one parent MLflow run, one child per candidate."""

import logging
import time
import warnings

import pandas as pd
from mlflow.entities import Metric, Param
from omegaconf import OmegaConf
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from pipelines.console import is_quiet
from pipelines.parallel import n_jobs
from pipelines.summary import OBJECTIVE_TAG, log_sweep_summary, short_name
from pipelines.tracking import log_run_context, start_run
from pipelines.ui import announce, log_training_input, training_dataset

log = logging.getLogger(__name__)


def search(run, data):
    """The fitted GridSearchCV, and its best pipeline's accuracy on the test set.

    The data moves to the device once. On a GPU the candidates run one after the
    other: parallel workers would each get their own copy of the data.
    """
    cfg, (member,) = run.cfg, run.members
    steps = [(f"step{i}", step) for i, step in enumerate(run.preprocessing)]
    grid = GridSearchCV(
        Pipeline([*steps, ("model", member.estimator)]),
        OmegaConf.to_container(cfg.search.param_grid, resolve=True),
        cv=cfg.search.cv,
        n_jobs=1 if run.device.is_gpu else n_jobs(cfg, cfg.search.n_jobs),
        scoring="accuracy",
        error_score="raise",
        # 2: a line per candidate and fold, as they end (none on a quiet console)
        verbose=0 if is_quiet() else cfg.search.verbose,
    )
    sets = run.device.put_sets(
        {"train": (data.X_train, data.y_train), "test": (data.X_test, data.y_test)}
    )
    with warnings.catch_warnings(), run.device.dispatch():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(*sets["train"])
        return grid, float(grid.score(*sets["test"]))


def log_candidates(run, parent_id, results, swept, dataset):
    """One child run of ``parent_id`` per candidate of ``cv_results_``, named by its
    values of the ``swept`` parameters."""
    now = int(time.time() * 1000)
    for i, params in enumerate(results["params"]):
        name = short_name({key: params[key] for key in swept})
        tags = {OBJECTIVE_TAG: "mean_cv_accuracy"}
        run_id = start_run(run.client, run.experiment_id, name, parent_id, tags)
        scores = {
            "mean_cv_accuracy": float(results["mean_test_score"][i]),
            "std_cv_accuracy": float(results["std_test_score"][i]),
            "rank": int(results["rank_test_score"][i]),
            "mean_fit_seconds": float(results["mean_fit_time"][i]),
        }
        run.client.log_batch(
            run_id,
            metrics=[Metric(key, value, now, 0) for key, value in scores.items()],
            params=[Param(key, str(value)) for key, value in params.items()],
        )
        log_training_input(run.client, run_id, dataset)
        run.client.set_terminated(run_id, "FINISHED")


def grid_search(run, data) -> dict:
    """The search as one parent run (candidates as children); returns its metrics."""
    cfg, client = run.cfg, run.client
    parent_id = start_run(client, run.experiment_id, "grid-search")
    run.started.append(parent_id)
    context = run.device.tags()
    log_run_context(client, parent_id, cfg, data, context, run.commit)
    start = time.perf_counter()
    grid, test_accuracy = search(run, data)
    swept = [key for key, values in grid.param_grid.items() if len(values) > 1]
    dataset = training_dataset(data.X_train, data.y_train, cfg.data.name)
    log_candidates(run, parent_id, grid.cv_results_, swept, dataset)
    view_id = log_sweep_summary(client, parent_id, swept)
    metrics = {
        "best_cv_accuracy": float(grid.best_score_),
        "final_test_accuracy": test_accuracy,
        "search_seconds": time.perf_counter() - start,
    }
    now = int(time.time() * 1000)
    client.log_batch(
        parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()]
    )
    table = pd.DataFrame(grid.cv_results_).drop(columns="params").astype(str)
    client.log_table(parent_id, table, "cv_results.json")
    client.set_terminated(parent_id, "FINISHED")
    run.started.remove(parent_id)
    log.info(
        "best %s: cv accuracy %.4f, test accuracy %.4f",
        grid.best_params_,
        metrics["best_cv_accuracy"],
        metrics["final_test_accuracy"],
    )
    announce(run.uri, run.experiment_id, view_id)
    return metrics
