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
from pipelines.slurm import check_request, register_launcher

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
SLURM_LAUNCHER = "hydra_plugins.skmlp_slurm.SlurmLauncher"


def check_sweep(config: DictConfig, uri: str) -> None:
    """Check every job of the multirun ``config``, then the store at ``uri``; on a
    failure, stop the sweep (``SystemExit`` with a message saying what to do)."""
    on_slurm = config.hydra.launcher.get("_target_") == SLURM_LAUNCHER
    try:
        if on_slurm:  # the jobs' device is on their nodes: check what they ask for
            register_launcher()
            check_request(config.hydra.launcher, str(config.get("device", "cpu")))
        else:
            resolve_device(config.get("device", "cpu"))  # whatever the sweeper
        check_jobs(config, check_device=not on_slurm)
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


def check_jobs(config: DictConfig, check_device: bool = True) -> None:
    """Compose each job's config as the launcher will, and check it as a single run
    checks its own (device unless ``check_device`` is false, networks,
    preprocessing); the first bad job raises, naming its overrides."""
    jobs = job_overrides(config)
    loader = GlobalHydra.instance().config_loader()
    devices = set() if check_device else None  # a Slurm job checks its own
    for number, overrides in enumerate(jobs):
        job = loader.load_sweep_config(config, list(overrides))
        try:
            check_task(job, devices)
        except Exception as exc:
            raise ValueError(f"job #{number} ({' '.join(overrides)}): {exc}") from exc


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
