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

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from skmlp._backprop import backprop
from skmlp._capture import graph_backend, make_captured_epoch
from skmlp._numpy_sgd import NumpyStep

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
        X_chunk, Y_chunk = _take_rows(X, rows, xp), _take_rows(Y, rows, xp)
        weight = None if sample_weight is None else _take_rows(sample_weight, rows, xp)
        step.start_chunk(Y_chunk, weight)
        for start in range(0, X_chunk.shape[0], batch_size):
            batch = slice(start, min(start + batch_size, X_chunk.shape[0]))
            total_cost = total_cost + step(
                _take_rows(X_chunk, batch, xp),
                Y_chunk[batch, ...],
                None if weight is None else weight[batch],
                batch,
            )
        total_cost = total_cost + step.end_chunk()
    return total_cost


def _take_rows(X, rows, xp):
    """Rows of ``X`` (an array or a sparse matrix) at a slice or an index array."""
    if sp.issparse(X):
        return X[rows]
    if isinstance(rows, slice):
        return X[rows, ...]
    return xp.take(X, rows, axis=0)


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


class Engine:
    """Training state of one ``fit`` / ``partial_fit`` call, and its epochs.

    Parameters
    ----------
    coefs, intercepts : lists of arrays
        The weights and biases to train (copied into the flat array once).
    optimizer : SGDOptimizer
        Its single velocity is shaped like the flat array.
    loss_kwargs : dict
        ``activation``, ``out_activation``, ``loss`` and ``alpha``.
    batch_size : int
    shuffle : bool
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
        self, coefs, intercepts, optimizer, *, loss_kwargs, batch_size, shuffle, xp,
        device, sparse, capture, device_scalars=None,
    ):  # fmt: skip
        self.params = FlatParams(coefs, intercepts, xp)
        self.optimizer, self.xp, self.device = optimizer, xp, device
        self.batch_size, self.shuffle = batch_size, shuffle
        self._graph = None
        backend = None if sparse or not capture else graph_backend(xp, device)
        if device_scalars is None:
            device_scalars = backend is not None
        if xp is np and not sparse and not device_scalars:
            self.step = NumpyStep(self.params, optimizer, **loss_kwargs)
        else:
            scalars = self._device_scalars() if device_scalars else None
            self.step = BackpropStep(
                self.params, optimizer, loss_kwargs=loss_kwargs, xp=xp, scalars=scalars
            )
        self._backend = backend

    def _device_scalars(self):
        dtype = self.params.flat.dtype
        return tuple(
            self.xp.asarray(value, dtype=dtype, device=self.device)
            for value in (self.optimizer.learning_rate, self.optimizer.momentum)
        )

    def layers(self):
        """``(coefs, intercepts)`` as views of the flat parameters."""
        return self.params.layers()

    def epoch(self, X, Y, sample_weight, random_state):
        """Run one epoch; return the summed cost as a Python float (see ``epoch_cost``)."""
        order = None
        if self.shuffle:
            order = random_state.permutation(X.shape[0])
            if not sp.issparse(X):
                order = self.xp.asarray(order, device=self.device)
        if self._backend is None:
            if self.step.scalars is not None:
                self._write_learning_rate()
            cost = epoch_cost(
                X, Y, sample_weight, order, self.batch_size, self.step, self.xp
            )
            return float(cost)
        if self._graph is None:
            self._graph = make_captured_epoch(
                self._backend,
                lambda order: epoch_cost(
                    X, Y, sample_weight, order, self.batch_size, self.step, self.xp
                ),
                order,
                prepare=self._write_learning_rate,
            )
        return self._graph(order)

    def _write_learning_rate(self):
        self.step.scalars[0][...] = self.optimizer.learning_rate

    def snapshot(self):
        """One copy of the parameters and one of the velocity, for ``restore``."""
        copy = self.xp.asarray
        return (
            copy(self.params.flat, copy=True),
            copy(self.optimizer.velocities[0], copy=True),
        )

    def restore(self, saved):
        """Put back a ``snapshot`` in place (views and captured graphs stay valid)."""
        self.params.flat[...] = saved[0]
        self.optimizer.velocities[0][...] = saved[1]

    def copy_params(self):
        """One copy of the flat parameters (the best weights of early stopping)."""
        return self.xp.asarray(self.params.flat, copy=True)

    def load_params(self, flat):
        self.params.flat[...] = flat

    def params_finite(self):
        return bool(self.xp.all(self.xp.isfinite(self.params.flat)))
