"""What a multirun checks before its first job starts: every job's config, as a single
run checks its own, then the store.

Hydra turns an exception raised in a callback into a warning and launches the jobs
anyway, so a failed check stops the sweep with ``SystemExit`` (which Hydra lets
through): one message, no job, no run.
"""

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from pipelines.checks import check_config
from pipelines.device import resolve_device
from pipelines.run import build_step, grid_members, open_checked

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_sweep(config: DictConfig, uri: str) -> None:
    """Check every job of the multirun ``config``, then the store at ``uri``; on a
    failure, stop the sweep (``SystemExit`` with a message saying what to do)."""
    try:
        resolve_device(config.get("device", "cpu"))  # whatever the sweeper
        check_jobs(config)
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


def check_jobs(config: DictConfig) -> None:
    """Compose each job's config as the launcher will, and check it as a single run
    checks its own (device, networks, preprocessing); the first bad job raises,
    naming its overrides."""
    jobs = job_overrides(config)
    loader = GlobalHydra.instance().config_loader()
    devices = set()
    for number, overrides in enumerate(jobs):
        job = loader.load_sweep_config(config, list(overrides))
        try:
            check_task(job, devices)
        except Exception as exc:
            raise ValueError(f"job #{number} ({' '.join(overrides)}): {exc}") from exc


def check_task(cfg: DictConfig, devices: set) -> None:
    """The checks ``pipelines.run.resolve_run`` makes before it opens the store:
    the data, evaluation and tracking settings, the device (each setting once), the
    networks, the preprocessing steps."""
    check_config(cfg)
    device = str(cfg.get("device", "cpu"))
    if device not in devices:
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
