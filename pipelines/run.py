"""One task's run, resolved once: its device, store, experiment and networks.

``task(cfg)`` (after lightning-hydra-template's ``task_wrapper``) is the context every
entry point runs its task in. It turns SIGTERM and SIGINT into KeyboardInterrupt,
resolves the run (:func:`resolve_run`: a bad model or data override, a missing GPU or
an unusable store fails here, before any data is loaded or run created), limits BLAS
threads, and ends the runs that a failure leaves open KILLED (interrupt) or FAILED
(error), never RUNNING. Everything after it reads the :class:`Run` it yields.
"""

import copy
import itertools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral

import hydra
import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict
from threadpoolctl import threadpool_limits

from pipelines.checks import check_config
from pipelines.device import Device, resolve_device
from pipelines.lifecycle import (
    INTERRUPTED,
    blas_threads,
    end_runs,
    exit_without_collecting,
    handle_signals,
    reap_dead_runs,
)
from pipelines.outage import Store, StoreUnavailable, outage_wait_s
from pipelines.parallel import parallel_backend
from pipelines.store import check_store
from pipelines.tracking import (
    check_parent,
    flatten,
    git_commit,
    handed_over,
    setup_experiment,
)
from skmlp._data import layer_sizes

log = logging.getLogger(__name__)

# What a grid may not vary: its members share one training set (one fit_together call),
# one device and one store. A Hydra multirun (-m) varies these.
FIXED_KEYS = ("data", "seed", "preprocessing", "device", "tracking", "eval", "grid")
FIXED_KEYS += ("corruption.kind", "together", "parallel")


@dataclass(frozen=True)
class Member:
    """One network of a task.

    Attributes
    ----------
    cfg : DictConfig
        The task's config with this member's grid values set (and no ``grid``).
    values : dict of str -> object
        Its value of each grid key (empty outside a grid).
    estimator : SGDMLPClassifier
        Its classifier, unfitted, its parameters validated.
    """

    cfg: DictConfig
    values: dict
    estimator: object


@dataclass(frozen=True)
class Run:
    """What a task works with, resolved once by :func:`resolve_run`.

    Attributes
    ----------
    cfg : DictConfig
        The task's config.
    device : Device
        Where the members train.
    uri, client, experiment_id : str, MlflowClient, str
        The store (checked, opened, its dead runs reaped) and the task's experiment.
    parent_id : str or None
        The Hydra multirun's parent run (None outside a multirun).
    members : tuple of Member
        The task's networks (one outside a grid).
    preprocessing : tuple of transformers
        The unfitted preprocessing steps that all members share.
    commit : str
        The project's git commit, tagged on every run.
    started : list of str
        The runs this task has started and not ended yet; :func:`task` ends them
        on an interrupt or a failure. (The one field that changes.)
    """

    cfg: DictConfig
    device: Device
    uri: str
    client: MlflowClient
    experiment_id: str
    parent_id: str | None
    members: tuple
    preprocessing: tuple
    commit: str
    started: list = field(default_factory=list)

    @property
    def is_grid(self) -> bool:
        """Whether the task runs a grid (``cfg.grid``): a parent run and its members."""
        return bool(self.cfg.get("grid"))

    @property
    def fits_together(self) -> bool:
        """Whether the members are fitted with one ``fit_together`` call: several,
        and the config does not say ``together: false``."""
        return len(self.members) > 1 and self.cfg.get("together", True)


def resolve_run(cfg: DictConfig) -> Run:
    """Resolve the task's device, networks, store and experiment, in that order (a
    bad override fails before the store is touched); reap this host's dead runs."""
    check_config(cfg)  # data, evaluation and tracking settings: no import, no I/O
    device = resolve_device(cfg.get("device", "cpu"))
    members = tuple(grid_members(cfg))
    steps = tuple(
        build_step(step) for step in cfg.get("preprocessing", {}).get("steps", [])
    )
    uri, parent_id = handed_over(cfg)  # a multirun's job: its parent's store
    if parent_id is None:
        client, experiment_id = open_experiment(cfg, uri)
    else:  # the sweep found its store: a job waits for one that stops answering
        store = Store(uri, outage_wait_s(cfg))
        client, experiment_id = store.call(open_experiment, cfg, uri, parent_id)
    mlflow.set_tracking_uri(uri)  # MLflow's own calls (the model's logging) use it
    return Run(
        cfg, device, uri, client, experiment_id, parent_id, members, steps, git_commit()
    )


def open_experiment(cfg, uri, parent_id=None) -> tuple[MlflowClient, str]:
    """Check and open the store (:func:`open_checked`), find the multirun's parent
    run there; return a client of the store and the id of the task's experiment
    (made if new)."""
    open_checked(uri)  # first: a client of a database store connects at once
    client = MlflowClient(uri)
    if parent_id is not None:
        check_parent(client, uri, parent_id)
    experiment_id = setup_experiment(
        client, uri, cfg.tracking.experiment_name, cfg.tracking.get("artifact_root")
    )
    return client, experiment_id


# The stores this process has checked and reaped: a sweep's jobs in one process (the
# basic launcher) and its callback do it once, not once per job.
_CHECKED: set[str] = set()


def open_checked(uri: str) -> None:
    """Check the store ``uri`` (:func:`~pipelines.store.check_store`: usable, opened)
    and reap this host's dead runs in it, once per process."""
    if uri not in _CHECKED:
        check_store(uri)
        reap_dead_runs(uri)
        _CHECKED.add(uri)


def build_step(step_cfg):
    """Instantiate one configured step and validate its parameters as fit would."""
    step = hydra.utils.instantiate(step_cfg, _convert_="all")
    if hasattr(step, "_validate_params"):
        step._validate_params()  # scikit-learn's _parameter_constraints
    return step


def build_model(cfg: DictConfig):
    """The classifier of ``cfg.model``, validated; its hidden layer sizes must be
    positive integers (``model.hidden_layer_sizes=16`` is read as ``[16]``)."""
    sizes = cfg.model.get("hidden_layer_sizes")
    if isinstance(sizes, int):
        cfg.model.hidden_layer_sizes = sizes = [sizes]
    if sizes is not None and any(
        not isinstance(s, Integral) or isinstance(s, bool) or s < 1 for s in sizes
    ):
        raise ValueError(
            f"hidden_layer_sizes must contain positive integers, got {list(sizes)}."
        )
    return build_step(cfg.model)


def grid_members(cfg: DictConfig) -> list[Member]:
    """One :class:`Member` per combination of the values in ``cfg.grid`` (a nested
    mapping whose leaves are lists of values, e.g. ``grid.model.alpha=[0.001,0.01]``);
    a config without a grid is one member."""
    grid = cfg.get("grid")
    grid = flatten(OmegaConf.to_container(grid, resolve=True)) if grid else {}
    grid = {
        key: values if isinstance(values, list) else [values]
        for key, values in grid.items()
    }
    for key, values in grid.items():
        _check_grid_key(cfg, key, values)
    base = copy.deepcopy(cfg)
    with open_dict(base):
        base.pop("grid", None)
    members = []
    for combination in itertools.product(*grid.values()):
        member = copy.deepcopy(base)
        values = dict(zip(grid, combination, strict=True))
        for key, value in values.items():
            OmegaConf.update(member, key, value, merge=False)
        members.append(Member(member, values, build_model(member)))
    return members


def _check_grid_key(cfg, key, values):
    if any(key == fixed or key.startswith(f"{fixed}.") for fixed in FIXED_KEYS):
        raise ValueError(
            f"grid.{key}: a grid varies what its networks do not share ({key} is one "
            f"training set's, device's or store's); use a Hydra multirun (-m) for it."
        )
    if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
        raise ValueError(f"grid.{key}: {key} is not a key of the task's config.")
    if not values:
        raise ValueError(f"grid.{key}: no values.")


_ABSENT = object()


@contextmanager
def task(cfg: DictConfig):
    """The context of one task: yields its resolved :class:`Run`; on an interrupt or
    a failure, ends the runs it leaves open (KILLED or FAILED, with the reason)."""
    # First: a signal while the store is created or migrated waits for the database
    # call to return, instead of killing the process inside it.
    handle_signals()
    exit_without_collecting()
    run = resolve_run(cfg)
    try:
        threads = blas_threads(cfg.blas_threads, first_layers(run))
        log.info("BLAS threads: %s (blas_threads=%s)", threads, cfg.blas_threads)
        # The cluster (parallel=ray|dask) connected before any run is started.
        with threadpool_limits(threads), parallel_backend(cfg, run.uri):
            yield run
    except KeyboardInterrupt:
        end_runs(run.client, run.started, "KILLED", INTERRUPTED)
        raise
    except Exception as exc:
        if not isinstance(exc, StoreUnavailable):  # Hydra prints its message alone
            log.exception("%s failed", cfg.get("task_name", "the task"))
        end_runs(
            run.client, run.started, "FAILED", f"{type(exc).__name__}: {exc}"[:500]
        )
        raise


def first_layers(run) -> int:
    """The first-layer units of all the task's networks together (what BLAS threads
    would share out: a joint fit's first layer is one wide product)."""
    sizes = [layer_sizes(m.estimator.hidden_layer_sizes) for m in run.members]
    return sum(units[0] if units else 0 for units in sizes)  # none: a narrow product


def metric_value(metrics: dict, name: str | None):
    """The value a sweeper optimises: ``metrics[name]`` (``cfg.optimized_metric``)."""
    if name is None:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} is not among the run's metrics "
            f"{sorted(metrics)}; set optimized_metric to one of them."
        )
    return metrics[name]
