"""The step for one network on dense NumPy input, with buffers allocated once.

On a 100-row batch of the seed's 784-16-16-10 network the arithmetic is two 784 x 16
products; everything else is a few dozen NumPy calls on arrays of a few hundred
numbers, where each call's fixed cost, not its arithmetic, sets the speed. So, and only
so, this step departs from the pure functions of ``_backprop`` (the stacked step of
``_stacked.py`` runs everything else):

- it updates the member's flat parameters through their layer views, and fills one
  flat step, so the momentum update (``momentum_step``) is a few calls in all;
- the learning rate is folded into the output delta (backprop is linear in it), so
  the gradient comes out as the plain step ``lr * g``;
- products write into preallocated buffers (``out=``);
- the output layer is computed transposed, shape (n_outputs, n_samples): the softmax's
  reductions then run over the first axis, which NumPy vectorises better than the
  last axis of a short row; column sums are products with ones;
- the cost of a chunk of batches is computed once, from the chunk's stored outputs,
  with the pure functions of ``_losses``.

The gradient is that of the batch's mean cost, as ``backprop`` returns it. The
activations, their derivatives and the output deltas are those of ``_activations`` and
``_losses``. ``tests/test_steps.py`` runs it, the stacked step and ``backprop`` on the
same batches.
"""

import numpy as np

from skmlp._activations import ACTIVATIONS, DERIVATIVES
from skmlp._data import take_rows
from skmlp._losses import LOSSES, batch_totals, l2_cost, weight_decay
from skmlp._optimizers import momentum_step
from skmlp._state import chunks


class NumpyStep:
    """Epochs of mini-batch SGD for one network on dense NumPy arrays.

    Parameters
    ----------
    params : FlatParams
        The member's flat parameters (the layer arrays are views).
    optimizer : SGDOptimizer
        Its learning rate and momentum are read at every batch; its flat velocity is
        updated in place.
    activation, out_activation : str
        Hidden and output activations.
    loss : {"log_loss", "squared_error"}
    alpha : float
        L2 penalty strength.
    """

    def __init__(self, params, optimizer, *, activation, out_activation, loss, alpha):
        self.params, self.optimizer = params, optimizer
        self.grad = np.empty_like(params.flat)
        self.activation, self.out_activation = activation, out_activation
        self.loss, self.alpha = LOSSES[loss], alpha
        self.derivative = DERIVATIVES[activation]
        n_coefs = params.n_coefs
        weights, grads = params.views(), params.views(self.grad)
        # one (W, b, dC/dW, dC/db) per layer, the output layer last
        self.layers = list(
            zip(
                weights[:n_coefs],
                weights[n_coefs:],
                grads[:n_coefs],
                grads[n_coefs:],
                strict=True,
            )
        )
        self.coef_values = params.flat[: params.n_coef_values]
        self.coef_grad_values = self.grad[: params.n_coef_values]
        self.scratch = np.empty_like(params.flat)
        self.buffers = {}  # n_rows -> hidden activations, transposed output, ones
        # compared and clipped against: a Python 0 would cost a conversion per call
        self.zero = np.zeros((), params.flat.dtype)

    def _buffers(self, n_rows, dtype):
        if n_rows not in self.buffers:
            hidden = [
                np.empty((n_rows, W.shape[1]), dtype) for W, *_ in self.layers[:-1]
            ]
            output = np.empty((self.layers[-1][0].shape[1], n_rows), dtype)
            self.buffers[n_rows] = hidden, output, np.ones(n_rows, dtype)
        return self.buffers[n_rows]

    def epoch(self, X, Y, sample_weight, order, batch_size):
        """One pass over ``(X, Y)`` in ``order`` (None: as stored); the summed cost.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        Y : array of shape (n_samples, n_outputs)
            Targets in the output encoding.
        sample_weight : array of shape (n_samples,) or None
        order : array of shape (n_samples,) or None
        batch_size : int

        Returns
        -------
        total_cost : float
            Sum over the batches of the batch's mean cost times its number of rows;
            divide by ``n_samples`` for the epoch's mean cost.
        """
        total_cost = 0.0
        for chunk, batches in chunks(X.shape[0], batch_size):
            rows = chunk if order is None else order[chunk]  # one gather per chunk
            X_chunk, Y_chunk = take_rows(X, rows, np), take_rows(Y, rows, np)
            weight = (
                None if sample_weight is None else take_rows(sample_weight, rows, np)
            )
            self.start_chunk(Y_chunk, weight)
            for batch in batches:
                total_cost += self(
                    X_chunk[batch],
                    Y_chunk[batch],
                    None if weight is None else weight[batch],
                    batch,
                )
            total_cost += self.end_chunk()
        return total_cost

    def start_chunk(self, Y, sample_weight):
        """Room for the chunk's outputs (and each row's share of its batch's cost)."""
        self.Y, self.outputs = Y, np.empty_like(Y)
        self.row_factors = (
            None if sample_weight is None else np.empty_like(sample_weight)
        )

    def end_chunk(self):
        """Sum of the chunk's per-sample costs, each times its row factor."""
        if self.loss.out_activation == "softmax" and self.Y.shape[1] > 1:
            # one-hot Y: the true class's probability, one log per sample, not ten
            eps = np.finfo(self.outputs.dtype).eps
            proba = np.clip(np.vecdot(self.Y, self.outputs), eps, 1 - eps)
            sample_costs = -np.log(proba)
        else:
            sample_costs = np.sum(self.loss.value(self.Y, self.outputs, np), axis=1)
        if self.row_factors is None:
            return float(np.sum(sample_costs))
        return float(self.row_factors @ sample_costs)

    def __call__(self, X, Y, sample_weight, batch):
        """Step on one batch; return the L2 part of its cost times its rows (the
        data part is summed by ``end_chunk``). A batch whose weights sum to 0 has
        no mean cost: no step."""
        n_rows = X.shape[0]
        hidden, output, ones = self._buffers(n_rows, self.outputs.dtype)
        activations = self._forward(X, hidden, output)
        self.outputs[batch] = activations[-1].T
        delta = self.loss.delta(Y.T, activations[-1], np)  # dC_i/dz, transposed
        learning_rate = self.optimizer.learning_rate
        if sample_weight is None:
            total_weight = n_rows
            delta *= learning_rate / total_weight
        else:
            total_weight, keep = batch_totals(sample_weight, np)
            total_weight = float(total_weight)
            if not keep:  # the batch counts for nothing
                self.row_factors[batch] = 0
                self.outputs[batch] = 0.5  # any finite value: its cost weighs 0
                return 0.0
            delta *= sample_weight * (learning_rate / total_weight)
            np.multiply(
                sample_weight, n_rows / total_weight, out=self.row_factors[batch]
            )
        self._backward(activations, delta, ones)
        penalty = 0.0
        if self.alpha:
            decay = weight_decay(learning_rate, self.alpha, total_weight)
            self.coef_grad_values += self._times(decay, self.coef_values)
            squares = float(self.coef_values @ self.coef_values)
            penalty = l2_cost(self.alpha, squares, n_rows, total_weight)
        optimizer = self.optimizer
        momentum_step(
            self.params.flat,
            optimizer.velocities[0],
            self.grad,
            float(optimizer.momentum),
            bool(optimizer.nesterov),
            times=self._times,
            xp=np,
        )
        return penalty

    def _times(self, a, b):
        """``a * b`` into the scratch buffer (no temporary the size of the weights)."""
        return np.multiply(a, b, out=self.scratch[: b.size])

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
