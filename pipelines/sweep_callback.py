"""The Hydra callback that makes a multirun one parent MLflow run with its jobs as
children, and gives the parent the sweep's summary when it ends."""

import atexit
import json
import os
from pathlib import Path

from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient

from pipelines.device import resolve_device
from pipelines.figures import defer, settle
from pipelines.lifecycle import (
    INTERRUPTED,
    REASON_TAG,
    handle_signals,
    interrupted,
    stop_children,
)
from pipelines.run import open_checked
from pipelines.store import tracking_uri
from pipelines.summary import SWEPT_TAG, log_sweep_summary, swept_keys
from pipelines.tracking import PARENT_RUN_ENV, git_commit, setup_experiment, start_run
from pipelines.ui import announce


class MLflowSweepCallback(Callback):
    """Hydra callback: one parent MLflow run per multirun, its jobs as children.

    ``on_multirun_start`` creates the experiment (once, before any worker starts) and
    the parent run, and hands its id to the jobs through ``SKMLP_PARENT_RUN_ID``.
    The parent ends FINISHED in ``on_multirun_end``; if the sweep dies first (a failed
    job, Ctrl-C, SIGTERM), an exit handler ends it FAILED or KILLED, never RUNNING.
    """

    def __init__(self):
        self._parent = None
        self._uri = None
        self._swept = []

    def on_multirun_start(self, config, **kwargs):
        # First, so that a signal from here on ends the parent and its children
        # KILLED; on Ctrl-C or SIGTERM the children end their runs before joblib
        # kills its workers.
        handle_signals(before_raise=self._stop_children)
        resolve_device(config.get("device", "cpu"))  # a missing GPU: no parent, no job
        uri = tracking_uri(config.tracking.uri)
        open_checked(uri)  # once: the jobs of the basic launcher skip it
        client = MlflowClient(uri)
        experiment_id = setup_experiment(client, uri, config.tracking.experiment_name)
        sweep_dir = config.hydra.sweep.dir
        self._swept = swept_keys(
            config.hydra.overrides.task, config.hydra.sweeper.get("params")
        )
        tags = {
            "skmlp.sweep_dir": str(sweep_dir),
            "skmlp.git_commit": git_commit(),
            SWEPT_TAG: json.dumps(self._swept),
        }
        name = f"sweep-{Path(sweep_dir).name}"
        self._parent = start_run(client, experiment_id, name, tags=tags)
        self._uri = uri
        os.environ[PARENT_RUN_ENV] = self._parent
        atexit.register(self._end, "FAILED")
        if config.hydra.launcher.get("_target_", "").endswith(".BasicLauncher"):
            defer()  # jobs in this process: figures drawn while the next job runs

    def _stop_children(self):
        if self._parent is not None:
            stop_children(MlflowClient(self._uri), self._parent)

    def on_multirun_end(self, config, **kwargs):
        settle()  # every job's figures in the store before the sweep ends
        if self._parent is not None:
            client = MlflowClient(self._uri)
            view_id = log_sweep_summary(client, self._parent, self._swept)
            experiment_id = client.get_run(self._parent).info.experiment_id
            announce(self._uri, experiment_id, view_id)
        self._end("FINISHED")

    def _end(self, status):
        settle()  # the figures of the runs that finished, even on an interrupt
        if self._parent is None:
            return
        client = MlflowClient(self._uri)
        parent = client.get_run(self._parent)
        if parent.info.status == "RUNNING":
            stop_children(client, self._parent)
            children = client.search_runs(
                [parent.info.experiment_id],
                f"tags.mlflow.parentRunId = '{self._parent}'",
            )
            if status != "FINISHED" and (
                interrupted() or any(c.info.status == "KILLED" for c in children)
            ):
                status = "KILLED"
            if status != "FINISHED":  # why, as on every run that ends early
                failed = sum(c.info.status == "FAILED" for c in children)
                reason = (
                    INTERRUPTED if status == "KILLED" else f"{failed} job(s) failed"
                )
                client.set_tag(self._parent, REASON_TAG, reason)
            client.set_terminated(self._parent, status)
        os.environ.pop(PARENT_RUN_ENV, None)
        self._parent = None
