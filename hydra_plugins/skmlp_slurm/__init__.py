"""skmlp's Slurm launcher: Hydra's submitit launcher that fails loudly and cleans up.

Hydra loads launchers only from the ``hydra_plugins`` package, so the class lives
here; what it does lives in ``pipelines.slurm``. It is a subclass rather than a
callback because Hydra turns a callback's exceptions into warnings, and because the
waiting for the jobs (where PENDING reasons, dead jobs and interrupts show) happens
inside ``launch``. The presets ``hydra/launcher=slurm`` and ``slurm_gpu`` name it.
"""

import logging
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
# Settings of submitit's executor itself, not of its jobs (as Hydra's launcher has them).
EXECUTOR_KEYS = {"submitit_folder", "max_num_timeout"}


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """Submit the sweep as Hydra's submitit launcher does, then wait with
    :func:`pipelines.slurm.wait` (PENDING reasons logged, jobs dead on their node
    reported, ``scancel`` on an interrupt) rather than submitit's silent wait."""

    def launch(self, job_overrides, initial_job_idx):
        import submitit

        from pipelines.lifecycle import note_failure
        from pipelines.slurm import SlurmError, cancelled_on_interrupt, wait

        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params.get("max_num_timeout", 0),
        )
        executor.update_parameters(**job_parameters(self.params))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        labels, arguments = [], []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            labels.append(f"#{number}: {' '.join(filter_overrides(overrides))}")
            log.info(f"\t{labels[-1]}")
            arguments.append(
                (list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}")
            )
        state = Singleton.get_state()
        arguments = [(*job, state) for job in arguments]
        jobs = executor.map_array(self, *zip(*arguments, strict=True))
        ids = [job.job_id for job in jobs]
        log.info("Slurm jobs %s submitted", ", ".join(ids))
        with cancelled_on_interrupt(ids):
            try:
                wait(jobs, dict(zip(ids, labels, strict=True)))
            except SlurmError as exc:  # the message, not a traceback of the launcher
                note_failure(str(exc))  # the parent's end reason
                raise SystemExit(f"The Slurm sweep failed: {exc}") from exc
        return [job.results()[0] for job in jobs]


def job_parameters(params: dict) -> dict:
    """The launcher's settings as submitit's executor takes them: the shared ones as
    they are, Slurm's own prefixed ``slurm_`` (as Hydra's launcher does)."""
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    return {
        key if key in shared else f"slurm_{key}": value
        for key, value in params.items()
        if key not in EXECUTOR_KEYS
    }
