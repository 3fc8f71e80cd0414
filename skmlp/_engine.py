"""The training engine: flat buffers, the two batch steps and the one epoch loop.

One ``Engine`` serves one ``fit`` or ``partial_fit`` call. It packs the weights and
biases of every layer into one flat array (weights first, layer by layer), so that the
momentum update, a snapshot, a restore or a copy of the best weights is one operation on
one array; each layer's ``W`` and ``b`` are views of it. The optimizer owns the flat
velocity, the batch step the gradient.

The batch step is chosen once per fit:

- dense NumPy input runs ``NumpyStep`` (``_numpy_sgd.py``): the same arithmetic as
  ``backprop``, into preallocated buffers, for NumPy's cost per call;
- everything else (torch, CuPy, array-api-strict, sparse input) runs ``BackpropStep``:
  the pure ``backprop`` followed by ``SGDOptimizer.update_params``.

Both give the gradient of the batch's mean cost (L2 term included), and both are driven
by ``epoch_cost``: shuffle order, chunks of batches, batches whose sample weights sum to
0 (no step), the summed cost. On torch CUDA and CuPy that same loop is captured once per
fit as one graph and replayed every epoch (``_capture.py``).

The flat arrays are 1-D, of length ``n_params``; several networks of one shape trained
together would stack them along a leading model axis.
"""

import dataclasses
import math
import os
import time
import warnings
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from skmlp._backprop import accuracy, backprop
from skmlp._capture import (
    capture_backend,
    graph_backend,
    make_captured_epoch,
    torch_mirror,
)
from skmlp._data import take_rows
from skmlp._numpy_sgd import NumpyStep

# An epoch whose mean cost exceeds this many times the cost of guessing has diverged,
# even where every number is still finite (see ``Engine.diverged``).
DIVERGENCE_FACTOR = 1e6

# Arrays the size of the weights that a fit holds at its peak (benchmarks/bench_memory.py
# measures 7.3, and 8.4 with early stopping; see check_memory).
WEIGHT_COPIES = 8

# Rows gathered at once: a few MiB for MNIST, so a chunk stays in cache while its
# batches are used, and one gather replaces ten.
CHUNK_ROWS = 1024


class EpochRecord(NamedTuple):
    """What one epoch leaves: ``loss_curve_``, ``history_``... derive from these."""

    epoch: int
    loss: float
    learning_rate: float
    seconds: float
    validation_score: float | None = None


@dataclasses.dataclass
class TrainingState:
    """What training keeps from one call to the next (pickled with the estimator).

    ``records`` holds one ``EpochRecord`` per epoch ever run; the estimator's
    ``loss_curve_``, ``validation_scores_`` and ``history_`` derive from it.
    """

    optimizer: object  # SGDOptimizer: learning rate and the flat velocity
    random_state: np.random.RandomState  # shuffling (and the validation split)
    records: list = dataclasses.field(default_factory=list)
    t: int = 0  # training samples seen
    no_improvement_count: int = 0
    best_loss: float | None = None
    best_validation_score: float | None = None


@dataclasses.dataclass
class StoppingRule:
    """When to stop: MLPClassifier's rule (``tol``, ``n_iter_no_change``, adaptive)."""

    tol: float
    n_iter_no_change: float
    early_stopping: bool
    verbose: bool = False


def init_params(layer_units, activation, random_state, dtype, xp, device):
    """Glorot-uniform weights and biases, drawn exactly as MLPClassifier does.

    The memory the training will need is checked first (``check_memory``), so an
    impossible size fails at once, before anything is allocated.
    """
    check_memory(layer_units, dtype, xp, device)
    factor = 2.0 if activation == "logistic" else 6.0
    coefs, intercepts = [], []
    for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:], strict=False):
        bound = math.sqrt(factor / (fan_in + fan_out))
        coef = random_state.uniform(-bound, bound, (fan_in, fan_out))
        intercept = random_state.uniform(-bound, bound, fan_out)
        coefs.append(xp.asarray(coef, dtype=dtype, device=device))
        intercepts.append(xp.asarray(intercept, dtype=dtype, device=device))
    return coefs, intercepts


def check_memory(layer_units, dtype, xp, device):
    """Raise MemoryError, naming the need, if training cannot fit in memory.

    A fit holds about ``WEIGHT_COPIES`` arrays the size of the weights (parameters,
    velocity, gradient, scratch, the epoch's snapshot of parameters and velocity,
    early stopping's best weights); ``benchmarks/bench_fit.py`` measures the peak.
    """
    sizes = zip(layer_units[:-1], layer_units[1:], strict=False)
    n_params = sum(fan_in * fan_out + fan_out for fan_in, fan_out in sizes)
    weights = n_params * xp.finfo(dtype).bits // 8
    needed, available = WEIGHT_COPIES * weights, _available_bytes(xp, device)
    if available is not None and needed > available:
        raise MemoryError(
            f"A network of layer sizes {list(layer_units)} has {n_params:,} parameters "
            f"({weights / 2**30:.1f} GiB); training it needs about {needed / 2**30:.1f} "
            f"GiB ({WEIGHT_COPIES} copies of the weights), but only "
            f"{available / 2**30:.1f} GiB of memory is available. Use smaller "
            "hidden_layer_sizes or dtype='float32'."
        )


def _available_bytes(xp, device):
    """Free memory where the arrays live (None when it cannot be told)."""
    backend = graph_backend(xp, device)
    if backend == "torch":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    if backend == "cupy":
        import cupy

        return cupy.cuda.Device().mem_info[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


class FlatParams:
    """Weights then biases of every layer, in one flat array of length ``n_params``.

    Parameters
    ----------
    coefs, intercepts : lists of arrays
        The layers' weights and biases, copied into the flat array.
    xp : array namespace
    """

    def __init__(self, coefs, intercepts, xp):
        arrays = list(coefs) + list(intercepts)
        self.xp, self.n_coefs = xp, len(coefs)
        self.shapes = [tuple(a.shape) for a in arrays]
        self.flat = xp.concat([xp.reshape(a, (-1,)) for a in arrays])
        self.n_coef_values = sum(math.prod(s) for s in self.shapes[: self.n_coefs])

    def views(self, flat=None):
        """Arrays shaped like the layers' (views of ``flat`` where ``xp`` gives views)."""
        flat = self.flat if flat is None else flat
        views, offset = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            views.append(self.xp.reshape(flat[offset : offset + size], shape))
            offset += size
        return views

    def layers(self):
        """``(coefs, intercepts)``: the current weights and biases, layer by layer."""
        views = self.views()
        return views[: self.n_coefs], views[self.n_coefs :]


def epoch_cost(X, Y, sample_weight, order, batch_size, step, xp):
    """One pass of mini-batch SGD over ``(X, Y)``, each batch through ``step``.

    Parameters
    ----------
    X : array or sparse matrix of shape (n_samples, n_features)
    Y : array of shape (n_samples, n_outputs)
        Targets in the output encoding.
    sample_weight : array of shape (n_samples,) or None
    order : array of shape (n_samples,) or None
        Order in which to visit the samples (None: as stored).
    batch_size : int
    step : NumpyStep or BackpropStep
        Updates the parameters from one batch; see ``BackpropStep`` for the contract.
    xp : array namespace

    Returns
    -------
    total_cost : float or 0-d array
        Sum over the batches of the batch's mean cost times its number of rows (on the
        device for device arrays: no host synchronisation); divide by ``n_samples``
        for the epoch's mean cost.
    """
    chunk_rows = max(1, CHUNK_ROWS // batch_size) * batch_size
    total_cost, n_samples = 0.0, X.shape[0]
    for begin in range(0, n_samples, chunk_rows):
        rows = slice(begin, min(begin + chunk_rows, n_samples))
        if order is not None:  # one gather per chunk and array, not one per batch
            rows = order[rows]
        X_chunk, Y_chunk = take_rows(X, rows, xp), take_rows(Y, rows, xp)
        weight = None if sample_weight is None else take_rows(sample_weight, rows, xp)
        step.start_chunk(Y_chunk, weight)
        for start in range(0, X_chunk.shape[0], batch_size):
            batch = slice(start, min(start + batch_size, X_chunk.shape[0]))
            total_cost = total_cost + step(
                take_rows(X_chunk, batch, xp),
                Y_chunk[batch, ...],
                None if weight is None else weight[batch],
                batch,
            )
        total_cost = total_cost + step.end_chunk()
    return total_cost


class BackpropStep:
    """``backprop`` then ``update_params``, on any namespace and on sparse input.

    The step contract ``epoch_cost`` relies on: ``start_chunk(Y, sample_weight)``
    before a chunk's batches; ``step(X, Y, sample_weight, batch)`` updates the
    parameters from one batch (``batch``: its rows in the chunk) and returns its mean
    cost times its rows, or 0 for a batch whose weights sum to 0 (no step);
    ``end_chunk()`` returns the cost of the chunk not yet returned.

    With ``scalars`` (0-d device arrays, see ``SGDOptimizer.update_params``) the step
    never reads a value back to the host, so a GPU can capture it: the zero-weight
    skip then runs on the device, as a select between the stepped and the saved state.
    """

    def __init__(self, params, optimizer, *, loss_kwargs, xp, scalars=None):
        self.params, self.optimizer, self.xp = params, optimizer, xp
        self.loss_kwargs, self.scalars = loss_kwargs, scalars

    def start_chunk(self, Y, sample_weight):
        pass

    def end_chunk(self):
        return 0.0

    def __call__(self, X, Y, sample_weight, batch):
        xp = self.xp
        if self.scalars is None and sample_weight is not None:
            if float(xp.sum(sample_weight)) == 0:  # no mean cost: no step
                return 0.0
        keep = None
        if self.scalars is not None and sample_weight is not None:
            # Decided on the device: a step with unit weights is made (finite, no 0/0),
            # then undone by a select when the weights sum to 0.
            keep = xp.sum(sample_weight) > 0
            sample_weight = xp.where(keep, sample_weight, xp.ones_like(sample_weight))
        coefs, intercepts = self.params.layers()
        cost, coef_grads, intercept_grads = backprop(
            X,
            Y,
            coefs,
            intercepts,
            **self.loss_kwargs,
            sample_weight=sample_weight,
            xp=xp,
        )
        grad = xp.concat([xp.reshape(g, (-1,)) for g in coef_grads + intercept_grads])
        flat, velocity = self.params.flat, self.optimizer.velocities[0]
        if keep is None:
            self.optimizer.update_params([flat], [grad], self.scalars)
            return cost * X.shape[0]
        saved = xp.asarray(flat, copy=True), xp.asarray(velocity, copy=True)
        self.optimizer.update_params([flat], [grad], self.scalars)
        flat[...] = xp.where(keep, flat, saved[0])
        velocity[...] = xp.where(keep, velocity, saved[1])
        return xp.where(keep, cost, xp.zeros_like(cost)) * X.shape[0]


class TrainingData(NamedTuple):
    """The arrays of a fit: training inputs and targets, and the validation set."""

    X: object  # (n_samples, n_features), array or sparse matrix
    Y: object  # (n_samples, n_outputs), targets in the output encoding
    sample_weight: object = None  # (n_samples,) or None
    validation: tuple | None = None  # (X_val, y_indices_val, sample_weight_val)


class Engine:
    """The epochs of one ``fit`` / ``partial_fit`` call, on flat buffers.

    Parameters
    ----------
    state : TrainingState
        Updated epoch by epoch (records, counters, optimizer, random generator).
    coefs, intercepts : lists of arrays
        The weights and biases to train (copied into the flat array once).
    loss_kwargs : dict
        ``activation``, ``out_activation``, ``loss`` and ``alpha``.
    batch_size : int
    shuffle : bool
    stopping : StoppingRule
    xp : array namespace
    device : device of the arrays
    sparse : bool
        Whether ``X`` is a SciPy sparse matrix.
    capture : bool
        Whether to capture the epoch as one graph where the namespace and device
        allow it (torch CUDA, CuPy).
    device_scalars : bool or None, default=None
        Whether the step reads the learning rate and momentum from 0-d device arrays;
        None: where the epoch is captured. (True elsewhere runs the capturable step
        eagerly, which is how it is tested without a GPU.)
    """

    def __init__(
        self, state, coefs, intercepts, *, loss_kwargs, batch_size, shuffle, stopping,
        xp, device, sparse, capture, device_scalars=None,
    ):  # fmt: skip
        self.state, self.stopping = state, stopping
        self.params = FlatParams(coefs, intercepts, xp)
        self.optimizer, self.xp, self.device = state.optimizer, xp, device
        self.batch_size, self.shuffle = batch_size, shuffle
        self.loss_kwargs, self.best_params, self._graph = loss_kwargs, None, None
        self._backend = None if sparse or not capture else capture_backend(xp, device)
        if device_scalars is None:
            device_scalars = self._backend is not None
        if xp is np and not sparse and not device_scalars:
            self.step = NumpyStep(self.params, self.optimizer, **loss_kwargs)
        else:
            scalars = self._device_scalars() if device_scalars else None
            self.step = BackpropStep(
                self.params,
                self.optimizer,
                loss_kwargs=loss_kwargs,
                xp=xp,
                scalars=scalars,
            )

    def _device_scalars(self):
        dtype = self.params.flat.dtype
        return tuple(
            self.xp.asarray(value, dtype=dtype, device=self.device)
            for value in (self.optimizer.learning_rate, self.optimizer.momentum)
        )

    def layers(self):
        """``(coefs, intercepts)`` as views of the flat parameters."""
        return self.params.layers()

    # ------------------------------------------------------------------ one epoch

    def run_epoch(self, data):
        """Run and record one epoch; return True when training should stop.

        If the epoch diverges (``diverged``) or is interrupted (an exception,
        KeyboardInterrupt from Ctrl-C included), everything is put back exactly as it
        was after the previous epoch: weights, optimizer, random generator, records.
        """
        start = time.perf_counter()
        saved = self._snapshot()
        try:
            # Overflow is detected below and reported as divergence, once, in words.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                loss = self.epoch(data.X, data.Y, data.sample_weight) / data.X.shape[0]
            return self.end_epoch(loss, data, time.perf_counter() - start, saved)
        except (
            BaseException
        ):  # Ctrl-C, SIGTERM turned into an exception, MemoryError...
            self._restore(saved)
            raise

    def end_epoch(self, loss, data, seconds, saved):
        """Judge and record an epoch of mean cost ``loss``; True when training stops.

        ``saved`` is the ``_snapshot()`` taken before the epoch, put back if it
        diverged. ``fit_together`` (``_together.py``) runs the epochs of several
        engines as one computation and ends each engine's epoch here.
        """
        if self.diverged(loss, data.Y.shape[1]):
            self._restore(saved)
            _warn_diverged(loss, len(self.state.records), self.optimizer)
            return True
        self.state.t += data.X.shape[0]
        self._record(loss, data, seconds)
        return self._check_stopping()

    def epoch(self, X, Y, sample_weight):
        """One pass over the data; the summed cost as a Python float (``epoch_cost``)."""
        order = None
        if self.shuffle:
            order = self.state.random_state.permutation(X.shape[0])
        if self._backend is not None:
            if self._graph is None:
                self._graph = self._make_graph(X, Y, sample_weight)
            return self._graph(order)
        if order is not None and not sp.issparse(X):
            order = self.xp.asarray(order, device=self.device)
        if self.step.scalars is not None:
            self._write_learning_rate()
        cost = epoch_cost(
            X, Y, sample_weight, order, self.batch_size, self.step, self.xp
        )
        return float(cost)

    def _make_graph(self, X, Y, sample_weight):
        """The captured epoch; a CuPy epoch is captured as torch kernels on the same
        memory (``torch_mirror``: CuPy refuses cuBLAS calls during a capture)."""
        step, xp = self.step, self.xp
        optimizer, batch_size = self.optimizer, self.batch_size
        if self._backend == "cupy":
            (X, Y, sample_weight), step, xp = torch_mirror((X, Y, sample_weight), step)
        device = X.device

        # (the closures hold no reference to the engine: the graph is then freed
        # with it, not later by the garbage collector, maybe during another capture)
        def prepare():
            step.scalars[0][...] = optimizer.learning_rate

        return make_captured_epoch(
            lambda order: epoch_cost(X, Y, sample_weight, order, batch_size, step, xp),
            to_device=lambda order: xp.asarray(order, device=device),
            prepare=prepare,
        )

    def _write_learning_rate(self):
        self.step.scalars[0][...] = self.optimizer.learning_rate

    def diverged(self, loss, n_outputs):
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
        return loss > DIVERGENCE_FACTOR * _chance_cost(
            self.loss_kwargs["loss"], n_outputs
        )

    # ------------------------------------------------------- records and stopping

    def _record(self, loss, data, seconds):
        score = None
        if data.validation is not None:
            X_val, y_val, weight = data.validation
            coefs, intercepts = self.layers()
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

    def finish(self):
        """End of the call: early stopping's best weights go back into place."""
        if self.best_params is not None:
            self.params.flat[...] = self.best_params
            self.best_params = None

    # ----------------------------------------------------------- rollback support

    def _snapshot(self):
        """Everything an epoch changes, to undo a diverged or interrupted epoch.

        The parameters and the velocity are one copy each of their flat array.
        """
        return (
            self.xp.asarray(self.params.flat, copy=True),
            self.xp.asarray(self.optimizer.velocities[0], copy=True),
            self.optimizer.learning_rate,
            self.state.random_state.get_state(),
            dataclasses.replace(self.state),  # shallow: records are trimmed below
            len(self.state.records),
            self.best_params,
        )

    def _restore(self, saved):
        params, velocity, learning_rate, rng_state, state, n_records, best = saved
        if self._graph is not None:  # an interrupted replay may still be running
            self._graph.synchronize()
        self.params.flat[...] = params  # in place: views and captured graphs hold
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


def _warn_diverged(loss, n_epochs, optimizer):
    warnings.warn(
        f"Training diverged in epoch {n_epochs + 1}: the loss became {loss:.4g}. The "
        f"weights of epoch {n_epochs} were kept and training stopped; lower "
        f"learning_rate_init (now {optimizer.learning_rate_init}).",
        ConvergenceWarning,
        stacklevel=6,
    )
