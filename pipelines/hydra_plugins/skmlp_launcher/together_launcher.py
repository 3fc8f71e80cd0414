"""The ``together`` launcher: a sweep's jobs of one network shape as one joint fit."""

import copy
import logging
from functools import partial
from pathlib import Path

from hydra.core.utils import configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

log = logging.getLogger(__name__)


class TogetherLauncher(Launcher):
    """Runs every job of a batch as a normal Hydra job (its own job dir, ``.hydra``
    files, log file and return value), but fits the networks of the jobs that share
    a shape and the training inputs with one ``skmlp.fit_together`` call.

    See :func:`pipelines.together.run_together` for how the jobs take turns.

    Parameters
    ----------
    fallback : DictConfig
        The launcher config that runs the jobs instead when the task config says
        ``together: false`` (the memorization experiment's switch).
    """

    def __init__(self, fallback=None) -> None:
        self.fallback = fallback
        self.config = self.task_function = self.hydra_context = None
        self._fallback_launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        if config.get("together", True) is False:
            self._fallback_launcher = self._setup_fallback()

    def _setup_fallback(self):
        """The fallback launcher, set up with a config that names it (each job's
        ``hydra.launcher``, which ``blas_threads: auto`` reads)."""
        from hydra.core.plugins import Plugins

        config = copy.deepcopy(self.config)
        with open_dict(config):
            config.hydra.launcher = self.fallback
        return Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
        )

    def launch(self, job_overrides, initial_job_idx):
        from pipelines.together import SweptJob, run_together

        if self._fallback_launcher is not None:
            return self._fallback_launcher.launch(job_overrides, initial_job_idx)
        setup_globals()
        self._configure_log()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, fitting shared shapes together")
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = idx
            run = partial(
                run_job,
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            jobs.append(SweptJob(config, run))
        try:
            return run_together(jobs, launcher_logging=self._configure_log)
        finally:
            self._configure_log()

    def _configure_log(self):
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
