"""A member: one estimator's training in one ``fit`` or ``partial_fit`` call.

The training loop (``_loop.py``) runs members, one or many; a single network is a group
of one. A member owns what is its own in a group: its flat parameters and training
state, its data, its shuffle draw, its snapshot and rollback, the judgement of its
epochs (divergence, records, the stopping rule, early stopping's best weights) and its
callbacks (``sklearn.callback``: the epoch is a subtask of the fit). It is built by the
estimator (``SGDMLPClassifier._member``), the one place that knows how.
"""

import dataclasses
import math

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from skmlp._backprop import accuracy
from skmlp._capture import capture_backend
from skmlp._state import EpochRecord
from skmlp._warnings import warn

# An epoch whose mean cost exceeds this many times the cost of guessing has diverged,
# even where every number is still finite (see ``Member.diverged``).
DIVERGENCE_FACTOR = 1e6


class Member:
    """One estimator's training in one call: parameters, state, data, callbacks.

    Parameters
    ----------
    estimator : SGDMLPClassifier
        The estimator trained; its ``coefs_``, ``intercepts_`` and ``n_iter_`` follow.
    params : FlatParams
        Its weights and biases (``coefs_`` and ``intercepts_`` are views of them).
    state : TrainingState
        Updated epoch by epoch (records, counters, optimizer, random generator).
    data : TrainingData
    loss_kwargs : dict
        ``activation``, ``out_activation``, ``loss`` and ``alpha``.
    batch_size : int
    shuffle : bool
    stopping : StoppingRule
    xp : array namespace
    device : device of the arrays
    capture : bool
        Whether its epochs may be captured as one GPU graph (torch CUDA, CuPy).
    epochs : int
        At most this many epochs in this call (one per ``partial_fit``).
    incremental : bool
        A ``partial_fit`` call: ``n_iter_`` counts on, and no warning at the end.
    arguments : tuple
        ``(X, y, sample_weight)`` of the call, as the callbacks see them.
    """

    def __init__(
        self, estimator, params, state, *, data, loss_kwargs, batch_size, shuffle,
        stopping, xp, device, capture, epochs, incremental, arguments,
    ):  # fmt: skip
        self.estimator, self.params, self.state = estimator, params, state
        self.optimizer, self.data, self.stopping = state.optimizer, data, stopping
        self.loss_kwargs, self.batch_size = loss_kwargs, batch_size
        self.shuffle, self.xp, self.device = shuffle, xp, device
        self.sparse = sp.issparse(data.X)
        capture = capture and not self.sparse
        self.backend = capture_backend(xp, device) if capture else None
        self.epochs, self.incremental, self.arguments = epochs, incremental, arguments
        self.best_params, self.n_epochs, self.numpy_step = None, 0, None
        self.before = None  # the estimator before the call (set by its ``_member``)
        self.failure = None  # diverged before any good epoch: the call's error

    @property
    def n_samples(self):
        return self.data.X.shape[0]

    # ----------------------------------------------------------------- callbacks

    def begin(self):
        """The fit task begins: its callback context (``sklearn.callback``)."""
        est, (X, y, sample_weight) = self.estimator, self.arguments
        metadata = {} if sample_weight is None else {"sample_weight": sample_weight}
        self.task = dict(estimator=est, X=X, y=y, metadata=metadata)
        self.n_iter = est.n_iter_ if self.incremental else 0
        self.n_records = len(self.state.records)
        self.context = est._init_callback_context(max_subtasks=self.epochs)
        self.context.call_on_fit_task_begin(**self.task)

    def begin_epoch(self):
        """An epoch begins: a subtask of the fit."""
        self.epoch_context = self.context.subcontext(task_name="epoch")
        self.epoch_context.call_on_fit_task_begin(**self.task)

    def sync(self):
        """``n_iter_`` (the epochs of this call), ``coefs_`` and ``intercepts_``."""
        est = self.estimator
        est.n_iter_ = self.n_iter + len(self.state.records) - self.n_records
        est.coefs_, est.intercepts_ = self.params.layers()

    def end_epoch(self, converged):
        """The epoch's callbacks; True when this member's call ends (then finished):
        it converged, a callback asked to stop, or its epochs are spent."""
        self.n_epochs += 1
        stop = self.epoch_context.call_on_fit_task_end(
            **self.task,
            reconstruction_attributes=self.estimator._reconstruction_attributes,
        )
        stopped = bool(converged or stop)
        if self.failure is not None:  # no model to finish: the call raises
            return True
        if stopped or self.n_epochs == self.epochs:
            self.finish(stopped)
            return True
        return False

    def finish(self, stopped):
        """End the call: warn where ``fit`` did not converge, early stopping's best
        weights back in place, and the fit's callbacks."""
        est = self.estimator
        if not (stopped or self.incremental):
            warn(
                f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) reached "
                "and the optimization hasn't converged yet.",
                ConvergenceWarning,
            )
        if self.best_params is not None:
            self.params.flat[...] = self.best_params
            self.best_params = None
        est.coefs_, est.intercepts_ = self.params.layers()
        self.context.call_on_fit_task_end(**self.task, reconstruction_attributes={})

    # ----------------------------------------------------------------- one epoch

    def draw_order(self):
        """The epoch's shuffle order (a NumPy array), or None without shuffling."""
        if not self.shuffle:
            return None
        return self.state.random_state.permutation(self.n_samples)

    def judge(self, loss, seconds, saved):
        """Judge and record an epoch of mean cost ``loss``; True when training stops.

        ``saved`` is the ``snapshot()`` taken before the epoch, put back if it
        diverged. A network that diverges before any good epoch has no model to keep:
        ``failure`` then holds the error its call raises (``raise_failure``).
        """
        if self.diverged(loss):
            self.restore(saved)
            if not self.state.records:
                self.failure = ValueError(
                    f"Training diverged in its first epoch (the loss became {loss:.4g}) "
                    "and no epoch trained well, so there is no model to keep; the "
                    "estimator is left as it was. Lower learning_rate_init (now "
                    f"{self.optimizer.learning_rate_init})."
                )
                return True
            warn(
                f"Training diverged in epoch {len(self.state.records) + 1}: the loss "
                f"became {loss:.4g}. The weights of epoch {len(self.state.records)} "
                "were kept and training stopped; lower learning_rate_init (now "
                f"{self.optimizer.learning_rate_init}).",
                ConvergenceWarning,
            )
            return True
        self.state.t += self.n_samples
        self._record(loss, seconds)
        return self._check_stopping()

    def diverged(self, loss):
        """Whether an epoch's mean cost ``loss`` means training diverged.

        It has when the loss or a weight is not finite, or when the loss exceeds
        ``DIVERGENCE_FACTOR`` times the cost of guessing (every class the same
        score): the data term of the cost is bounded, so such a loss comes from
        weights grown without bound, which a float64 model can carry for many epochs.
        """
        if not (
            math.isfinite(loss)
            and bool(self.xp.all(self.xp.isfinite(self.params.flat)))
        ):
            return True
        chance = _chance_cost(self.loss_kwargs["loss"], self.data.Y.shape[1])
        return loss > DIVERGENCE_FACTOR * chance

    def _record(self, loss, seconds):
        score = None
        if self.data.validation is not None:
            X_val, y_val, weight = self.data.validation
            coefs, intercepts = self.params.layers()
            score = accuracy(
                X_val, y_val, coefs, intercepts, sample_weight=weight, xp=self.xp,
                activation=self.loss_kwargs["activation"],
                out_activation=self.loss_kwargs["out_activation"],
            )  # fmt: skip
        records = self.state.records
        records.append(
            EpochRecord(
                len(records) + 1, loss, self.optimizer.learning_rate, seconds, score
            )
        )
        if self.stopping.verbose:
            extra = "" if score is None else f", validation score = {score:.6f}"
            print(f"Epoch {len(records)}, loss = {loss:.8f}{extra}")

    def _check_stopping(self):
        """Update the no-improvement count; True when training should stop."""
        state, rule, last = self.state, self.stopping, self.state.records[-1]
        if rule.early_stopping:
            improved = last.validation_score >= state.best_validation_score + rule.tol
            if last.validation_score > state.best_validation_score:
                state.best_validation_score = last.validation_score
                self.best_params = self.xp.asarray(self.params.flat, copy=True)
        else:
            improved = last.loss <= state.best_loss - rule.tol
            state.best_loss = min(state.best_loss, last.loss)
        state.no_improvement_count = 0 if improved else state.no_improvement_count + 1
        self.optimizer.iteration_ends(state.t)
        if state.no_improvement_count <= rule.n_iter_no_change:
            return False
        if self.optimizer.trigger_stopping():
            if rule.verbose:
                print(
                    f"No improvement of more than tol={rule.tol} for "
                    f"{rule.n_iter_no_change} consecutive epochs. Stopping."
                )
            return True
        state.no_improvement_count = 0
        return False

    # ------------------------------------------------------------------ rollback

    def put_back(self):
        """The estimator as it was before this call (nothing of it trained)."""
        put_back(self.estimator, self.before)

    def raise_failure(self):
        """If training failed (``failure``): the estimator as it was, and the error."""
        if self.failure is not None:
            self.put_back()
            raise self.failure

    def snapshot(self):
        """Everything an epoch changes, to undo a diverged or interrupted epoch."""
        return (
            self.xp.asarray(self.params.flat, copy=True),
            self.xp.asarray(self.optimizer.velocities[0], copy=True),
            self.optimizer.learning_rate,
            self.state.random_state.get_state(),
            dataclasses.replace(self.state),  # shallow: records are trimmed below
            len(self.state.records),
            self.best_params,
        )

    def restore(self, saved):
        """Put back a ``snapshot()``, in place (views and captured graphs hold)."""
        params, velocity, learning_rate, rng_state, state, n_records, best = saved
        self.params.flat[...] = params
        self.optimizer.velocities[0][...] = velocity
        self.optimizer.learning_rate = learning_rate
        self.state.random_state.set_state(rng_state)
        for field in dataclasses.fields(state):
            setattr(self.state, field.name, getattr(state, field.name))
        del self.state.records[n_records:]
        self.best_params = best


def _chance_cost(loss, n_outputs):
    """Mean cost of a model that gives every class the same score."""
    if loss == "log_loss":
        return math.log(max(2, n_outputs))
    return 0.25 * n_outputs  # every sigmoid output at 1/2


def estimator_state(estimator):
    """What a failed call puts back (``put_back``): the estimator's attributes and
    the states of the random generators a fit draws from that belong to it (its own,
    after a first fit, and a ``RandomState`` passed as its ``random_state``)."""
    generators = [estimator.random_state]
    state = estimator.__dict__.get("_state")
    if state is not None:
        generators.append(state.random_state)
    unique = {id(g): g for g in generators if isinstance(g, np.random.RandomState)}
    return dict(estimator.__dict__), [(g, g.get_state()) for g in unique.values()]


def put_back(estimator, before):
    """The estimator as it was when ``estimator_state`` saw it."""
    attributes, generators = before
    estimator.__dict__.clear()
    estimator.__dict__.update(attributes)
    for generator, state in generators:
        generator.set_state(state)


def adopt(estimator, fitted):
    """``estimator`` takes the state of ``fitted``, its copy fitted elsewhere (a
    ``fit_together`` worker), but keeps its own callbacks and parameters (objects
    the caller holds).

    Each of its callbacks that has a method ``adopt_copy(copy)`` is given its copy
    that ran with ``fitted`` (the one at the same place in its list), to take what
    that copy recorded in the worker.
    """
    own = {
        name: estimator.__dict__[name]
        for name in ("_skl_callbacks", *estimator.get_params(deep=False))
        if name in estimator.__dict__
    }
    copies = fitted.__dict__.get("_skl_callbacks", [])
    estimator.__dict__.clear()
    estimator.__dict__.update(fitted.__dict__)
    estimator.__dict__.update(own)
    for callback, copy in zip(own.get("_skl_callbacks", []), copies, strict=False):
        if hasattr(callback, "adopt_copy"):
            callback.adopt_copy(copy)
