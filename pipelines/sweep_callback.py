"""The Hydra callback that makes a multirun one parent MLflow run with its jobs as
children, and gives the parent the sweep's summary when it ends."""

import atexit
import json
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from joblib import register_parallel_backend
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.figures import defer, settle
from pipelines.lifecycle import (
    INTERRUPTED,
    REASON_TAG,
    exit_without_collecting,
    handle_signals,
    interrupted,
    noted_failure,
    stop_children,
)
from pipelines.outage import Store, StoreUnavailable, outage_wait_s
from pipelines.store import tracking_uri
from pipelines.summary import SWEPT_TAG, log_sweep_summary, swept_keys
from pipelines.sweep_check import check_sweep, reuse_compositions
from pipelines.tracking import (
    SWEEP_JOB_TAG,
    git_commit,
    hand_over,
    setup_experiment,
    start_run,
)
from pipelines.ui import announce
from pipelines.warm import warm_workers
from skmlp._workers import (
    EXIT_CODE,
    WatchedLokyBackend,
    parent_gone,
    remove_dead_leftovers,
)


class MLflowSweepCallback(Callback):
    """Hydra callback: one parent MLflow run per multirun, its jobs as children.

    ``on_multirun_start`` checks every job's config and the store (a failure stops
    the sweep before any job), creates the experiment (once, before any worker
    starts) and the parent run, and hands the store and the parent's id to the jobs
    in their config (:func:`pipelines.tracking.hand_over`). The parent ends FINISHED
    in ``on_multirun_end`` if every job launched has its run there; if not, it ends
    FAILED naming the jobs missing, and the command exits non-zero. If the sweep dies
    first (a failed job, a dead worker, Ctrl-C, SIGTERM), an exit handler ends it
    FAILED or KILLED, never RUNNING. The joblib launcher's workers end with this
    process, however it ends, and start no job once it is gone.
    """

    def __init__(self):
        self._parent = None
        self._uri = None
        self._swept = []
        self._sweep_dir = None

    def on_multirun_start(self, config, **kwargs):
        # First, so that a signal from here on ends the parent and its children
        # KILLED; on Ctrl-C or SIGTERM the children end their runs before joblib
        # kills its workers.
        handle_signals(before_raise=self._stop_children)
        exit_without_collecting()
        uri = tracking_uri(config.tracking.uri)
        checked = check_sweep(config, uri)  # a bad value, GPU or store: no parent
        launcher = config.hydra.launcher.get("_target_", "")
        _watch_workers()
        client = MlflowClient(uri)
        experiment_id = setup_experiment(
            client,
            uri,
            config.tracking.experiment_name,
            config.tracking.get("artifact_root"),
        )
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
        self._uri, self._sweep_dir = uri, Path(sweep_dir)
        hand_over(config, uri, self._parent)
        atexit.register(self._end, "FAILED")
        basic = launcher.endswith(".BasicLauncher")
        reuse_compositions(checked, keep=basic)  # jobs composed fewer times
        if launcher.endswith(".JoblibLauncher"):
            warm_workers()  # forked from a fork server that has imported a job's code
        if basic:
            defer()  # jobs in this process: figures drawn while the next job runs

    def on_job_start(self, config, **kwargs):
        # (In the job's process.) A worker whose sweep's parent died starts nothing.
        if parent_gone():
            print("The sweep's parent process died: job not started.", file=sys.stderr)
            os._exit(EXIT_CODE)

    def _stop_children(self):
        if self._parent is not None:
            stop_children(MlflowClient(self._uri), self._parent)

    def on_multirun_end(self, config, **kwargs):
        settle()  # every job's figures in the store before the sweep ends
        if self._parent is None:
            return
        # Each write waits for a store that stops answering (tracking.outage_wait_s).
        store = Store(self._uri, outage_wait_s(config))
        try:
            missing = store.call(self._summarize)
            if missing:
                self._end_missing(missing, store)
            self._end("FINISHED", store=store)
        except StoreUnavailable as exc:
            parent, self._parent = self._parent, None  # not again at exit
            raise SystemExit(
                f"{exc}. The sweep's jobs ended; its parent run {parent} stays RUNNING "
                "until `skmlp-reap` ends it (FAILED) once this process is gone."
            ) from None

    def _summarize(self) -> dict:
        """Give the parent its summary, if some launched job has a run under it;
        return the jobs that have none (:func:`missing_jobs`)."""
        client = MlflowClient(self._uri)
        launched = launched_jobs(self._sweep_dir)
        missing = missing_jobs(client, self._parent, launched)
        if len(missing) < len(launched) or not launched:  # a summary of some
            view_id = log_sweep_summary(client, self._parent, self._swept)
            experiment_id = client.get_run(self._parent).info.experiment_id
            announce(self._uri, experiment_id, view_id)
        return missing

    def _end_missing(self, missing, store):
        """End the parent FAILED naming the jobs without a run under it, and exit
        non-zero (Hydra turns a callback's exceptions into warnings, not exits)."""
        jobs = "; ".join(f"job {num} ({' '.join(o)})" for num, o in missing.items())
        reason = f"{len(missing)} job(s) have no run under this sweep: {jobs}"
        parent, uri = self._parent, self._uri
        self._end("FAILED", reason[:500], store)
        raise SystemExit(
            f"The sweep's parent run {parent} in {uri} ended FAILED: {reason}. They "
            "ran but logged elsewhere (another store or experiment): check that every "
            "job can reach this store (README: Past one machine)."
        )

    def _end(self, status, reason=None, store=None):
        """End the parent ``status`` (its children first), once; through ``store``
        (a ``pipelines.outage.Store``) where given, else with one try (at exit)."""
        settle()  # the figures of the runs that finished, even on an interrupt
        if self._parent is None:
            return
        if store is None:
            self._end_in_store(status, reason)
        else:
            store.call(self._end_in_store, status, reason)
        self._parent = None

    def _end_in_store(self, status, reason):
        client = MlflowClient(self._uri)
        parent = client.get_run(self._parent)
        if parent.info.status == "RUNNING":
            crashed = stop_children(client, self._parent)
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
                if status == "KILLED":
                    reason = INTERRUPTED
                reason = (
                    reason
                    or noted_failure()
                    or (
                        f"{failed} job(s) failed"
                        if failed
                        else "a job ended without its run"
                    )
                )
                if crashed:  # a worker died: which, and how
                    reason += ": " + "; ".join(crashed)
                client.set_tag(self._parent, REASON_TAG, reason[:4000])
            client.set_terminated(self._parent, status)


def _watch_workers():
    """Make the joblib launcher's workers (loky, which it names) end with this process
    and remove what killed sweeps left in ``/dev/shm``."""
    register_parallel_backend("loky", WatchedLokyBackend)
    remove_dead_leftovers()


def launched_jobs(sweep_dir: Path) -> dict:
    """``{job number: its overrides}`` of the jobs Hydra started under ``sweep_dir``
    (each saves its config in ``<job dir>/.hydra``), the hand-over's overrides left
    out."""
    jobs = {}
    for saved in Path(sweep_dir).glob("**/.hydra/hydra.yaml"):
        hydra = OmegaConf.load(saved).hydra
        overrides = [o for o in hydra.overrides.task if not o.startswith("++tracking.")]
        jobs[str(hydra.job.num)] = overrides
    return jobs


def missing_jobs(client: MlflowClient, parent_id: str, launched: dict) -> dict:
    """Those of the ``launched`` jobs (:func:`launched_jobs`) with no child run under
    ``parent_id`` in the parent's experiment."""
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    found = {child.data.tags.get(SWEEP_JOB_TAG) for child in children}
    return {
        num: overrides
        for num, overrides in sorted(launched.items(), key=lambda job: int(job[0]))
        if num not in found
    }
