"""One epoch of mini-batch SGD on dense NumPy arrays, with buffers allocated once.

This is ``_backprop.backprop`` followed by ``SGDOptimizer.update_params``, batch after
batch, specialised for NumPy. On a 100-row batch of the seed's 784-16-16-10 network the
arithmetic is two 784 x 16 products; everything else is ~40 NumPy calls on arrays of a
few hundred numbers, where each call's fixed cost (1-5 us), not its arithmetic, sets the
speed. So, and only so, this module departs from the pure functions of ``_backprop``:

- the weights, biases, velocities and gradients of all layers each live in one flat
  array (weights first), so the momentum update is four calls instead of four per
  layer, and the L2 gradient two; the gradients are sums over the batch, and ``1/n``
  joins the step size;
- products write into preallocated buffers (``out=``);
- the output layer is computed transposed, shape (n_outputs, n_samples): the softmax's
  reductions then run over the first axis, which NumPy vectorises (over the last axis of
  a 100 x 10 array they cost 2-3 times more);
- samples are gathered a chunk of batches at a time, and the chunk's cost is computed
  once from its stored outputs, with the pure functions of ``_losses``.

The activations, their derivatives and the output deltas are those of
``_activations`` and ``_losses``. Tests train the same network through both paths
(dense input takes this one, sparse input the pure one) and compare the weights.
"""

import numpy as np

from skmlp._activations import ACTIVATIONS, DERIVATIVES
from skmlp._losses import LOSSES

# Rows gathered at once: a few MiB for MNIST, so a chunk stays in cache while its
# batches are used, and one call replaces ten.
CHUNK_ROWS = 1024


def sgd_epoch(
    X,
    Y,
    sample_weight,
    order,
    batch_size,
    coefs,
    intercepts,
    optimizer,
    *,
    activation,
    out_activation,
    loss,
    alpha,
):
    """Run one epoch of mini-batch SGD, updating weights and velocities in place.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Training inputs, dense.
    Y : ndarray of shape (n_samples, n_outputs)
        Targets in the output encoding.
    sample_weight : ndarray of shape (n_samples,) or None
        Weight of each sample.
    order : ndarray of shape (n_samples,) or None
        Order in which to visit the samples (None: as stored).
    batch_size : int
        Rows per mini-batch.
    coefs, intercepts : lists of ndarrays
        Weights and biases, updated in place at the end of the epoch.
    optimizer : SGDOptimizer
        Step size and momentum; its velocities are updated in place.
    activation, out_activation : str
        Hidden and output activations.
    loss : {"log_loss", "squared_error"}
        The cost function.
    alpha : float
        L2 penalty strength.

    Returns
    -------
    total_cost : float
        Sum over the batches of the batch's mean cost times its number of rows, as
        the pure path computes it; divide by ``n_samples`` for the epoch's mean.
    """
    params = _Flat(coefs + intercepts, n_coefs=len(coefs))
    velocity = _Flat(optimizer.velocities, n_coefs=len(coefs))
    grad = _Flat(coefs + intercepts, n_coefs=len(coefs), empty=True)
    step = _BatchStep(params, grad, activation, out_activation, loss, alpha)
    chunk_rows = max(1, CHUNK_ROWS // batch_size) * batch_size
    total_cost = 0.0
    for X_chunk, Y_chunk, weight in _chunks(X, Y, sample_weight, order, chunk_rows):
        outputs = np.empty_like(Y_chunk)
        row_factors = None if weight is None else np.empty_like(weight)
        for start in range(0, X_chunk.shape[0], batch_size):
            batch = slice(start, start + batch_size)
            penalty, grad_scale = step.run(
                X_chunk[batch],
                Y_chunk[batch],
                None if weight is None else weight[batch],
                outputs[batch],
                None if weight is None else row_factors[batch],
            )
            if grad_scale is None:  # weights summing to 0: the batch counts for nothing
                continue
            total_cost += penalty
            optimizer.update_params(
                [params.flat], [grad.flat], [velocity.flat], grad_scale=grad_scale
            )
        total_cost += _summed_loss(loss, Y_chunk, outputs, row_factors)
    params.write_back(coefs + intercepts)
    velocity.write_back(optimizer.velocities)
    return total_cost


def _chunks(X, Y, sample_weight, order, chunk_rows):
    """Yield ``(X, Y, sample_weight)`` chunk after chunk, in the epoch's order.

    Without an order the chunks are views; with one, each is gathered by one ``take``
    per array (``take`` is faster than fancy indexing, and one call replaces ten).
    """
    for begin in range(0, X.shape[0], chunk_rows):
        rows = slice(begin, begin + chunk_rows)
        if order is None:
            yield (
                X[rows],
                Y[rows],
                None if sample_weight is None else sample_weight[rows],
            )
            continue
        rows = order[rows]
        weight = None if sample_weight is None else np.take(sample_weight, rows)
        yield np.take(X, rows, axis=0), np.take(Y, rows, axis=0), weight


def _summed_loss(loss, Y, outputs, row_factors):
    """Sum of the per-sample costs, each times its row factor (1 without weights)."""
    terms = LOSSES[loss][0](Y, outputs, np)
    if row_factors is None:
        return float(np.sum(terms))
    return float(row_factors @ np.sum(terms, axis=1))


class _Flat:
    """Arrays of several layers stored in one flat array, weights first.

    ``views`` are shaped like the given arrays and share the flat array's memory.
    """

    def __init__(self, arrays, n_coefs, empty=False):
        if empty:
            self.flat = np.empty(sum(a.size for a in arrays), dtype=arrays[0].dtype)
        else:
            self.flat = np.concatenate([np.ravel(a) for a in arrays])
        self.n_coef_values = sum(a.size for a in arrays[:n_coefs])
        self.views, offset = [], 0
        for array in arrays:
            self.views.append(
                self.flat[offset : offset + array.size].reshape(array.shape)
            )
            offset += array.size
        self.coefs, self.intercepts = self.views[:n_coefs], self.views[n_coefs:]

    @property
    def coef_values(self):
        return self.flat[: self.n_coef_values]

    def write_back(self, arrays):
        for array, view in zip(arrays, self.views, strict=True):
            np.copyto(array, view)


class _BatchStep:
    """Forward pass and backpropagation of one mini-batch, into preallocated buffers."""

    def __init__(self, params, grad, activation, out_activation, loss, alpha):
        self.params, self.grad = params, grad
        self.activation, self.out_activation = activation, out_activation
        self.output_delta = LOSSES[loss][1]
        self.derivative = DERIVATIVES[activation]
        self.alpha = alpha
        # one (W, b, dC/dW, dC/db) per layer, the output layer last
        self.layers = list(
            zip(
                params.coefs,
                params.intercepts,
                grad.coefs,
                grad.intercepts,
                strict=True,
            )
        )
        self.buffers = {}  # n_rows -> hidden activations, transposed output, ones
        self.scratch = np.empty_like(grad.coef_values)
        # compared and clipped against: a Python 0 would cost a conversion per call
        self.zero = np.zeros((), grad.flat.dtype)

    def _buffers(self, n_rows, dtype):
        if n_rows not in self.buffers:
            hidden = [
                np.empty((n_rows, W.shape[1]), dtype) for W, *_ in self.layers[:-1]
            ]
            output = np.empty((self.layers[-1][0].shape[1], n_rows), dtype)
            self.buffers[n_rows] = hidden, output, np.ones(n_rows, dtype)
        return self.buffers[n_rows]

    def run(self, X, Y, sample_weight, outputs, row_factors):
        """Fill ``grad`` with the batch's summed gradient; return its penalty and scale.

        A batch whose sample weights sum to 0 has no mean cost: ``grad_scale`` is then
        None, and the batch must be skipped.

        ``grad`` holds sum_i dC_i/dparams (+ alpha W for the weights); times the
        returned ``grad_scale`` (1 / n, or 1 / sum of the weights) it is the gradient of
        the batch's mean cost. The returned penalty is the L2 term of the batch cost
        times its number of rows. The batch's outputs go to ``outputs`` (and each row's
        share of the batch cost, with sample weights, to ``row_factors``).
        """
        hidden, output, ones = self._buffers(X.shape[0], outputs.dtype)
        activations = self._forward(X, hidden, output)
        outputs[...] = activations[-1].T
        delta = self.output_delta(Y.T, activations[-1], np)  # dC_i/dz, transposed
        if sample_weight is None:
            total_weight = X.shape[0]
        else:
            total_weight = float(np.sum(sample_weight))
            if total_weight == 0:
                row_factors[...] = 0
                return 0.0, None
            delta *= sample_weight
            np.multiply(sample_weight, X.shape[0] / total_weight, out=row_factors)
        self._backward(activations, delta, ones)
        if not self.alpha:
            return 0.0, 1.0 / total_weight
        coef_values = self.params.coef_values
        np.multiply(coef_values, self.alpha, out=self.scratch)
        self.grad.coef_values[...] += self.scratch
        penalty = 0.5 * self.alpha * float(coef_values @ coef_values)
        return penalty * X.shape[0] / total_weight, 1.0 / total_weight

    def _forward(self, X, hidden, output):
        """``a^(l) = f(a^(l-1) W^(l) + b^(l))``; the output layer's transposed."""
        activations = [X]
        for (W, b, *_), z in zip(self.layers, hidden, strict=False):
            np.matmul(activations[-1], W, out=z)
            z += b
            if self.activation == "relu":
                activations.append(np.maximum(z, self.zero, out=z))
            else:
                activations.append(ACTIVATIONS[self.activation](z, np))
        W, b, *_ = self.layers[-1]
        z = np.matmul(W.T, activations[-1].T, out=output)
        z += b[:, None]
        if self.out_activation == "softmax":  # over axis 0: the layer is transposed
            z -= np.maximum.reduce(z, axis=0)  # the ufunc's method: no Python wrapper
            np.exp(z, out=z)
            z /= np.add.reduce(z, axis=0)
        else:
            z = ACTIVATIONS[self.out_activation](z, np)
        activations.append(z)
        return activations

    def _backward(self, activations, delta, ones):
        """``dC/dW = a^(l-1)^T delta``, ``dC/db`` = sum of delta's rows, and
        ``delta^(l-1) = (delta W^T) * f'(a^(l-1))``; ``delta`` comes in transposed."""
        W, _, coef_grad, intercept_grad = self.layers[-1]
        a = activations[-2]
        np.matmul(a.T, delta.T, out=coef_grad)
        np.matmul(delta, ones, out=intercept_grad)
        delta = delta.T  # a view: (n_rows, n_units) from here on
        for layer in range(len(self.layers) - 2, -1, -1):
            delta = np.matmul(delta, W.T)
            if self.activation == "relu":
                delta *= a > self.zero  # the boolean mask itself: no cast to float
            elif self.derivative is not None:
                delta *= self.derivative(a, np)
            W, _, coef_grad, intercept_grad = self.layers[layer]
            a = activations[layer]
            np.matmul(a.T, delta, out=coef_grad)
            np.matmul(ones, delta, out=intercept_grad)
