"""A sweep's jobs of one network shape fitted as one ``skmlp.fit_together`` call.

The ``together`` launcher (``hydra_plugins.skmlp_launcher``) runs each Hydra job with
Hydra's own ``run_job``, in a thread of its own, ONE THREAD AT A TIME: Hydra's config
singleton, the working directory and the logging set-up are global to the process.
A job runs until its fit (:func:`fit_estimator`, called by ``pipelines.training.fit``):
there it parks, and the next job starts. Once every job has parked or ended, the
parked networks that share a shape and the training inputs are fitted together
(:func:`group_fits`, :func:`fit_group`), one group at a time, in the launcher's thread;
after each group, its jobs resume, with their Hydra config, working directory and log
file restored, and end as they would have alone (evaluation, artifacts, the end of
their MLflow run) before the next group is fitted.

Without a launcher (any other launcher, a single run), :func:`fit_estimator` is
``estimator.fit(X, y)``.
"""

import dataclasses
import logging
import os
import threading
import time
import warnings

import scipy.sparse as sp
import sklearn
from sklearn.exceptions import ConvergenceWarning

from pipelines.lifecycle import CHILDREN_GRACE_S

log = logging.getLogger(__name__)

# A run's tag: how many networks its fit shared (1: fitted alone by the launcher).
GROUP_TAG = "skmlp.fit_together"
_current = threading.local()  # .job: the SweptJob this thread runs, if any


@dataclasses.dataclass
class ParkedFit:
    """A job's fit, waiting for the launcher: what to fit, and how it went."""

    estimator: object
    X: object
    y: object
    config: dict  # the job's scikit-learn config (array API dispatch, ...)
    cwd: str
    group_size: int = 1
    seconds: float = 0.0
    error: Exception | None = None  # the joint fit failed: the job fits alone
    interrupt: BaseException | None = None  # the sweep ends: raised at the fit


class SweptJob:
    """One Hydra job in its own thread, taking turns with the launcher.

    Parameters
    ----------
    config : DictConfig
        The job's config (``hydra`` node included), as given to ``run(...)``.
    run : callable
        ``run() -> JobReturn``: Hydra's ``run_job`` for this job.
    """

    def __init__(self, config, run):
        self.config = config
        self.parked = None  # a ParkedFit while the job waits for its fit
        self.job_return = None
        self.error = None  # what escaped run_job (KeyboardInterrupt, ...)
        self._run = run
        self._state = "new"  # then "running", "parked", "running", ..., "ended"
        self._turns = threading.Condition()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self):
        _current.job = self
        try:
            self.job_return = self._run()
        except BaseException as exc:  # run_job returns a job's Exception itself
            self.error = exc
        finally:
            self._set_state("ended")

    def _set_state(self, state):
        with self._turns:
            self._turns.notify_all()  # first: an interrupt in it changes nothing
            self._state = state
            if state != "parked":
                self.parked = None

    def step(self, timeout=None):
        """Start or resume the job; return once it parks at its fit or ends (or
        ``timeout`` seconds later)."""
        with self._turns:
            if self._state == "new":
                self._state = "running"
                self._thread.start()
            elif self._state == "parked":
                self._restore()
                self._turns.notify_all()  # before the state: see _set_state
                self._state = "running"
            self._turns.wait_for(self._settled, timeout)

    def _settled(self):
        """Not running: parked, ended, or never started. (A Ctrl-C inside
        ``Thread.start`` leaves "running": the thread almost surely runs by then.)"""
        return self._state != "running"

    def park(self, fit):
        """(In the job's thread.) Hand ``fit`` to the launcher; wait to be resumed."""
        with self._turns:
            self._turns.notify_all()
            self.parked, self._state = fit, "parked"
            self._turns.wait_for(lambda: self._state == "running")
            self.parked = None

    def settle(self, deadline):
        """Wait until the job is not running (or ``deadline``, a ``time.monotonic``
        time); return whether it is not running."""
        with self._turns:
            return self._turns.wait_for(self._settled, deadline - time.monotonic())

    def interrupt(self, exc, deadline):
        """(Every job settled.) A parked job resumes with ``exc`` raised at its fit,
        so that it ends its own run KILLED; wait for it until ``deadline``."""
        with self._turns:
            if self._state != "parked":
                return
            self.parked.interrupt = exc
        self.step(timeout=max(0.0, deadline - time.monotonic()))

    def _restore(self):
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import configure_log

        HydraConfig.instance().set_config(self.config)
        os.chdir(self.parked.cwd)
        configure_log(self.config.hydra.job_logging, self.config.hydra.verbose)


def run_together(jobs, launcher_logging=None):
    """Run ``jobs`` (SweptJob) to their fits, then fit those fits group by group,
    each group's jobs finishing (evaluation, artifacts, end of run) before the next
    group is fitted.

    Returns their ``JobReturn`` in order. ``launcher_logging()`` sets the launcher's
    logging up while a group is fitted (its epochs are logged there). An interrupt
    (Ctrl-C, SIGTERM) wherever it lands, while a job runs up to its fit, in a joint
    fit or while a job finishes, ends every started job through its own lifecycle
    (``_end_jobs``) before it goes on.
    """
    try:
        for job in jobs:
            job.step()
        parked = {id(job.parked): job for job in jobs if job.parked is not None}
        fits = [job.parked for job in parked.values()]
        for group in group_fits(fits):
            if launcher_logging is not None:
                launcher_logging()
            fit_group(group)
            for fit in group:
                parked[id(fit)].step()
    except BaseException as exc:  # Ctrl-C, SIGTERM: every started job ends KILLED
        _end_jobs(jobs, exc)
        raise
    for job in jobs:
        if job.error is not None:
            raise job.error
    return [job.job_return for job in jobs]


def _end_jobs(jobs, exc):
    """After ``exc`` in the launcher: let the running job (at most one) reach its fit
    or its end, then resume each parked job, one at a time, to end with ``exc``.
    All within ``CHILDREN_GRACE_S``; a job that overstays it is left, and no other job
    is resumed beside it (the sweep's parent marks their runs KILLED)."""
    deadline = time.monotonic() + CHILDREN_GRACE_S
    if not all(job.settle(deadline) for job in jobs):
        log.warning("a job is still running %d s after %r", CHILDREN_GRACE_S, exc)
        return
    for job in jobs:
        try:
            job.interrupt(exc, deadline)
        except Exception:  # (its Hydra context could not be restored) the others end
            log.exception("could not resume a job to end it")
        if not job.settle(deadline):
            log.warning("a job is still ending %d s after %r", CHILDREN_GRACE_S, exc)
            return


def fit_estimator(estimator, X, y):
    """Fit ``estimator`` on ``X, y``; jointly with the sweep's other jobs of the same
    shape when the ``together`` launcher runs this thread's job.

    Returns the seconds the fit took (a joint fit's: the group's wall time).
    """
    job = getattr(_current, "job", None)
    start = time.perf_counter()
    if job is None:
        estimator.fit(X, y)
        return time.perf_counter() - start
    fit = ParkedFit(estimator, X, y, sklearn.get_config(), os.getcwd())
    job.park(fit)
    if fit.interrupt is not None:
        raise fit.interrupt
    if fit.error is not None:  # the joint fit failed: this job fits alone
        log.warning("the joint fit failed (%s); fitting this job alone", fit.error)
        fit.group_size, start = 1, time.perf_counter()
    if fit.group_size == 1:
        estimator.fit(X, y)
        fit.seconds = time.perf_counter() - start
    import mlflow

    mlflow.set_tag(GROUP_TAG, fit.group_size)
    log.info("fitted in a group of %d networks (%.1f s)", fit.group_size, fit.seconds)
    return fit.seconds


def group_fits(fits):
    """The parked ``fits`` (an iterable) that share a shape and ``X``, in groups."""
    groups = []
    for fit in fits:
        group = next((g for g in groups if _same_group(g[0], fit)), None)
        if group is None:
            groups.append([fit])
        else:
            group.append(fit)
    return groups


def fit_group(group):
    """One ``fit_together`` call for a group of parked fits; a group of one is left
    to its job. A failed joint fit leaves each job to fit alone."""
    if len(group) == 1:
        return
    from skmlp import fit_together

    log.info("fitting %d networks together", len(group))
    start = time.perf_counter()
    try:
        with sklearn.config_context(**group[0].config), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit_together([f.estimator for f in group], group[0].X, [f.y for f in group])
    except Exception as exc:  # each job then fits alone, and a bad one fails alone
        for fit in group:
            fit.error = exc
    seconds = time.perf_counter() - start
    for fit in group:
        fit.group_size, fit.seconds = len(group), seconds


def shape_key(fit):
    """What ``fit_together`` groups by, from the estimator's parameters and data."""
    params = fit.estimator.get_params()
    return (
        tuple(params["hidden_layer_sizes"]),
        params["activation"],
        params["loss"],
        params["batch_size"],
        params["dtype"],
        params["shuffle"],
        params["early_stopping"] and params["validation_fraction"],
        type(fit.X),
        tuple(fit.X.shape),
        str(fit.X.dtype),
        sorted(fit.config.items()),
    )


def _same_group(a, b):
    if shape_key(a) != shape_key(b) or a.config != b.config:
        return False
    if a.X is b.X:
        return True
    if sp.issparse(a.X) or sp.issparse(b.X):
        return False
    return bool((a.X == b.X).all())
