"""The task's data, evaluation and tracking settings, checked before anything runs.

``check_config(cfg)`` is the first step of ``pipelines.run.resolve_run``, beside the
model's parameters (validated by scikit-learn's own constraints there). It reads no data
and opens no store, so an impossible value (``data.n_train=0``,
``tracking.experiment_name=''``) fails the command at once, naming the override and what
it may be, before any data is loaded or any run created. What only the data can tell (a
subset smaller than the number of classes) is checked as the data are cut, in
``pipelines.data``.
"""

from numbers import Integral, Real
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipelines.parallel import CHECKS as PARALLEL_CHECKS
from skmlp.corruption import INPUT_CORRUPTIONS, LABEL_CORRUPTIONS

SEED_MAX = 2**32 - 1  # what NumPy's and scikit-learn's random states take


class ConfigError(ValueError):
    """A config value that cannot work; the message names the override."""


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first impossible value of ``cfg``.

    Parameters
    ----------
    cfg : DictConfig
        A task's config (``conf/train.yaml``, ``memorization.yaml``,
        ``grid_search.yaml``); keys it does not have are not checked. A grid's values
        (``grid.corruption.p=[...]``) are checked one by one.

    Raises
    ------
    ConfigError
        Naming the key, its value and the values it may take.
    """
    grid = cfg.get("grid") or OmegaConf.create({})
    for key, check in CHECKS.items():
        values = OmegaConf.select(grid, key, default=None)
        if values is not None:
            origin = f"grid.{key}"
            values = values if OmegaConf.is_list(values) else [values]
        else:
            origin, values = key, [OmegaConf.select(cfg, key, default=_ABSENT)]
        for value in values:
            if value is _ABSENT:
                continue
            problem = check(value, cfg)
            if problem:
                raise ConfigError(f"{origin}={_shown(value)}: {problem}")


_ABSENT = object()


def _shown(value) -> str:
    """A value as it is written in an override (``''``, ``null``, ``2.0``)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value) if not value.strip() else value
    return str(value)


def _integer(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _seed(value, cfg):
    if not _integer(value) or not 0 <= value <= SEED_MAX:
        return f"must be an integer from 0 to {SEED_MAX} (a random seed)."
    return None


def _data_name(value, cfg):
    """``data.name`` only names the data set (runs, tags); ``data=...`` chooses it."""
    chosen = _data_choice()
    if chosen is None:
        return None
    files = _data_files()
    declared = OmegaConf.load(files[chosen]).get("name") if chosen in files else None
    if declared is None or value == declared:
        return None
    return (
        f"data.name names the data set in runs and tags; it does not choose it. This "
        f"task loads data={chosen}, whose name is {declared}. To train on another "
        f"data set, choose it with data=<one of: {', '.join(sorted(files))}>."
    )


def _data_choice():
    """The option of the ``data`` config group in use (None outside Hydra)."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("data")


def _data_files():
    """The ``data`` config group's options (``conf/data/*.yaml``): name -> file."""
    files = {}
    for source in HydraConfig.get().runtime.config_sources:
        if source.schema == "file":
            for path in sorted(Path(source.path, "data").glob("*.yaml")):
                files.setdefault(path.stem, path)
    return files


def _subset_size(value, cfg):
    if value is None or (_integer(value) and value >= 1):
        return None
    return "must be null (the whole set) or a positive integer (a stratified subset)."


def _validation_size(value, cfg):
    if value is None or (_number(value) and value == 0):
        return None  # no validation set
    if _integer(value) and value >= 1:
        n_train = OmegaConf.select(cfg, "data.n_train", default=None)
        if _integer(n_train) and value >= n_train:
            return (
                f"holds out {value} of data.n_train={n_train} training images, "
                "leaving none to train on; hold out fewer, or a fraction."
            )
        return None
    if isinstance(value, float) and 0 < value < 1:
        return None
    return (
        "must be 0 (no validation set), a fraction of the training set in (0, 1) "
        "such as 0.1, or a count of images (a positive integer)."
    )


def _data_dir(value, cfg):
    if value is None or Path(str(value)).is_dir():  # as the loader reads it
        return None
    return (
        "is not a directory. Name the directory that holds the data set's files, or "
        "leave data.loader.data_dir=null for the environment variable or the cache."
    )


def _train_samples(value, cfg):
    if value is None or (_integer(value) and value >= 0):
        return None
    return (
        "must be null (score the whole training set each epoch), 0 (no per-epoch "
        "training accuracy) or a positive integer (a fixed random sample)."
    )


def _noise_samples(value, cfg):
    if _integer(value) and value >= 1:
        return None
    return "must be a positive integer (uniform-noise images to score the model on)."


def _experiment_name(value, cfg):
    if isinstance(value, str) and value.strip():
        return None
    return "must be a non-empty name (the MLflow experiment the runs go to)."


def _corruption_kind(value, cfg):
    known = ["none", *LABEL_CORRUPTIONS, *INPUT_CORRUPTIONS]
    return None if value in known else f"must be one of: {', '.join(known)}."


def _fraction(value, cfg):
    if _number(value) and 0 <= value <= 1:
        return None
    return "must be a number from 0 to 1."


# Each key's check: None if its value can work, else what it may be.
CHECKS = {
    "seed": _seed,
    "data.name": _data_name,
    "data.n_train": _subset_size,
    "data.n_test": _subset_size,
    "data.validation_size": _validation_size,
    "data.loader.data_dir": _data_dir,
    "eval.train_accuracy_samples": _train_samples,
    "eval.noise_samples": _noise_samples,
    "tracking.experiment_name": _experiment_name,
    "corruption.kind": _corruption_kind,
    "corruption.p": _fraction,
    "fit_threshold": _fraction,
    **PARALLEL_CHECKS,  # the backend (its extra installed), address and n_jobs
}
