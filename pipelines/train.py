"""Train and evaluate one SGDMLPClassifier pipeline, tracked in MLflow.

python -m pipelines.train                       # the defaults (conf/train.yaml)
python -m pipelines.train experiment=3b1b       # the video's network
python -m pipelines.train -m model.activation=relu,logistic   # a sweep
python -m pipelines.train --cfg job             # show the resolved config
"""

import hydra
from omegaconf import DictConfig

from pipelines import config_dir
from pipelines.utils import metric_value, task_wrapper


def run_name(cfg):
    model = cfg.model
    sizes = "-".join(str(s) for s in model.hidden_layer_sizes) or "none"
    return f"{cfg.data.name}-{sizes}-{model.activation}-lr{model.learning_rate_init}"


@task_wrapper
def train(cfg: DictConfig) -> dict:
    """One tracked training run; returns its final metrics."""
    # Imported here: --cfg job and --help need neither scikit-learn nor MLflow.
    from pipelines.data import load_data_soon

    data = load_data_soon(cfg.data, cfg.seed)  # loads while MLflow is imported
    from pipelines.training import tracked_run

    data = data.result()
    metrics, _ = tracked_run(cfg, data, name=run_name(cfg))
    return metrics


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (console script ``skmlp-train``): returns the
    ``optimized_metric`` for the sweepers."""
    return metric_value(train(cfg), cfg.optimized_metric)


if __name__ == "__main__":
    main()
