"""What a multirun checks before its first job starts: every job's config, as a single
run checks its own, then the store.

Hydra turns an exception raised in a callback into a warning and launches the jobs
anyway, so a failed check stops the sweep with ``SystemExit`` (which Hydra lets
through): one message, no job, no run.
"""

import copy
import sys

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig

from pipelines.checks import check_config
from pipelines.device import resolve_device
from pipelines.run import build_step, grid_members, open_checked
from pipelines.slurm import check_request, register_launcher

MAX_KEPT = 256  # compositions kept from the sweeper's check for the launcher
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
SLURM_LAUNCHER = "hydra_plugins.skmlp_slurm.SlurmLauncher"


def check_sweep(config: DictConfig, uri: str) -> dict:
    """Check every job of the multirun ``config``, then the store at ``uri``; on a
    failure, stop the sweep (``SystemExit`` with a message saying what to do).
    Returns the jobs' configs as composed for the check (:func:`check_jobs`)."""
    on_slurm = config.hydra.launcher.get("_target_") == SLURM_LAUNCHER
    try:
        if on_slurm:  # the jobs' device is on their nodes: check what they ask for
            register_launcher()
            check_request(config.hydra.launcher, str(config.get("device", "cpu")))
        else:
            resolve_device(config.get("device", "cpu"))  # whatever the sweeper
        checked = check_jobs(config, check_device=not on_slurm)
    except Exception as exc:
        raise SystemExit(
            f"The sweep was stopped before any job started: {exc}\n"
            "Fix or remove that value; no run was created."
        ) from exc
    try:
        open_checked(uri)  # once a process: the basic launcher's jobs skip it
    except Exception as exc:
        raise SystemExit(
            f"The sweep was stopped before any job started: {exc}"
        ) from exc
    return checked


def check_jobs(config: DictConfig, check_device: bool = True) -> dict:
    """Compose each job's config as the launcher will, and check it as a single run
    checks its own (device unless ``check_device`` is false, networks,
    preprocessing); the first bad job raises, naming its overrides. Returns the
    composed configs, ``{(config name, job overrides): config}``."""
    jobs = job_overrides(config)
    loader = GlobalHydra.instance().config_loader()
    devices = set() if check_device else None  # a Slurm job checks its own
    checked = {}
    for number, overrides in enumerate(jobs):
        job = loader.load_sweep_config(config, list(overrides))
        try:
            check_task(job, devices)
        except Exception as exc:
            raise ValueError(f"job #{number} ({' '.join(overrides)}): {exc}") from exc
        checked[(config.hydra.job.config_name, tuple(overrides))] = job
    return checked


def check_task(cfg: DictConfig, devices: set | None) -> None:
    """The checks ``pipelines.run.resolve_run`` makes before it opens the store:
    the data, evaluation and tracking settings, the device (each setting once), the
    networks, the preprocessing steps."""
    check_config(cfg)
    device = str(cfg.get("device", "cpu"))
    if devices is not None and device not in devices:
        resolve_device(device)
        devices.add(device)
    grid_members(cfg)
    for step in cfg.get("preprocessing", {}).get("steps", []):
        build_step(step)


def job_overrides(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, expanded as Hydra's basic sweeper expands them (its
    ``params``, then the command line's); none for other sweepers (Optuna chooses
    its values as it goes: each job checks its own)."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    arguments = [*params, *config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [
        job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch
    ]


class ComposedOnce:
    """Hydra's ``load_sweep_config`` for a sweep whose sweeper runs in this process,
    composing each job's config fewer times (:func:`reuse_compositions`)."""

    def __init__(self, loader, checked: dict, keep: bool, limit: int = MAX_KEPT):
        self.loader, self.compose = loader, loader.load_sweep_config
        self.own = vars(loader).get("load_sweep_config")  # a wrapper of someone's
        self.checked, self.keep, self.limit, self.kept = dict(checked), keep, limit, {}

    def __call__(self, master_config, sweep_overrides):
        job = (master_config.hydra.job.config_name, tuple(sweep_overrides))
        key = (job, tuple(master_config.hydra.overrides.hydra))
        if not _called_by_validation():  # the launcher
            copies = self.kept.get(key)
            config = (
                copies.pop() if copies else self.compose(master_config, sweep_overrides)
            )
        elif job in self.checked:
            config = self.checked.pop(job)
        else:
            config = self.compose(master_config, sweep_overrides)
            if self.keep and sum(map(len, self.kept.values())) < self.limit:
                self.kept.setdefault(key, []).append(copy.deepcopy(config))
        if not (self.keep or self.checked):  # the launcher's own, as it was
            if self.own is None:
                vars(self.loader).pop("load_sweep_config", None)
            else:
                self.loader.load_sweep_config = self.own
        return config


def reuse_compositions(checked: dict, keep: bool, loader=None) -> None:
    """Compose each job's config fewer times in this sweep (Hydra's ``loader``, the
    global one by default).

    Hydra's sweepers compose every job of a batch to check that it composes
    (``validate_batch_is_legal``, its result unused), and the basic launcher composes
    each job again before it runs it; :func:`check_jobs` has composed each one
    already. From now on:

    - the sweeper's check of a job in ``checked`` takes that composition (it lacks
      only the hand-over's ``++tracking.*`` overrides, quoted strings, which cannot
      fail to compose);
    - with ``keep`` (the basic launcher: jobs composed in this process), the
      sweeper's check of any other job (another sweeper's, or a job listed twice)
      keeps a copy of its composition, at most ``MAX_KEPT`` at a time, which the
      launcher takes for that job instead of composing it again: each config is
      handed out once (the launcher sets the job's number in it).

    Without ``keep`` (the jobs are composed elsewhere), Hydra's own method is back
    once the checked ones are used, so that nothing of this travels to the workers.
    """
    loader = loader or GlobalHydra.instance().config_loader()
    loader.load_sweep_config = ComposedOnce(loader, checked, keep)


def _called_by_validation() -> bool:
    """Whether the caller of the caller is the sweeper's check of a batch."""
    return sys._getframe(2).f_code is Sweeper.validate_batch_is_legal.__code__
