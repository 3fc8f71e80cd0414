"""Train and evaluate one SGDMLPClassifier pipeline, tracked in MLflow.

python -m pipelines.train                       # the defaults (conf/train.yaml)
python -m pipelines.train experiment=3b1b       # the video's network
python -m pipelines.train -m model.activation=relu,logistic   # a sweep, one job each
python -m pipelines.train +grid.model.learning_rate_init=[0.01,0.1]  # one joint fit
python -m pipelines.train --cfg job             # show the resolved config
"""

import hydra
from omegaconf import DictConfig

from pipelines import config_dir
from pipelines.redact import redact_printed_config
from pipelines.warm import start_early

start_early()  # a parallel sweep: its workers' fork server imports while this does


def run_name(member):
    """``digits-16-16-relu-lr0.05``: what a single run is named."""
    cfg = member.cfg
    model = cfg.model
    sizes = "-".join(str(s) for s in model.hidden_layer_sizes) or "none"
    return f"{cfg.data.name}-{sizes}-{model.activation}-lr{model.learning_rate_init}"


@redact_printed_config  # --cfg job, --info, --help: no password
@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (console script ``skmlp-train``): one tracked run (a grid:
    one per member); returns the ``optimized_metric`` for the sweepers."""
    # Imported here: --cfg job and --help need neither scikit-learn nor MLflow.
    from pipelines.data import load_data_soon
    from pipelines.run import metric_value, task

    with task(cfg) as run:
        data = load_data_soon(cfg.data, cfg.seed)  # loads while the rest is imported
        from pipelines.members import run_members

        metrics = run_members(run, data.result(), run_name)
    return metric_value(metrics, cfg.optimized_metric)


if __name__ == "__main__":
    main()
