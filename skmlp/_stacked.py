"""The stacked step: m networks of one shape (m >= 1), trained as one computation.

It runs every group of ``fit_together`` and every single network that is not on dense
NumPy input (torch, CuPy, array-api-strict, sparse input), captured as one GPU graph
where the device allows (``_loop.py``).

The parameters of a group's members are stacked along a model axis:

- the first layer's weights as (n_features, m, n_units): the members that see the
  same mini-batch (a "stream") multiply it with one wide matrix,
  ``X_batch @ reshape(W, (n_features, k * n_units))``;
- every other weight matrix as (m, fan_in, fan_out), every bias as (m, fan_out).

These arrays are views of one flat buffer (weights, then biases), and so are the
velocities and the gradients, which backprop writes in place: the momentum step of the
whole group is three or four calls over the flat buffers, with per-member scalars
spread over them once per epoch, and no Python loop over members runs per batch.

Activations and deltas are (m, n_rows, n_units), and each layer is one batched
product over the model axis (``matmul`` broadcasts over it), so the group pays one
call's fixed cost where m separate fits pay m. The arithmetic of each member is that of
``backprop`` and ``momentum_step``: the gradient of the batch's mean cost (the L2 term
included), then the (Nesterov) momentum step, with each member's own learning rate,
momentum, ``alpha`` and sample weights. Written against the array API: it runs on
NumPy, torch and CuPy; a SciPy sparse ``X`` only meets ``@`` and ``transpose``.

A stack of one network is the network itself: its buffers are the member's own flat
parameters and velocity (``(n_features, 1, n_units)`` is laid out as
``(n_features, n_units)``), so nothing is packed or unpacked.
"""

import math

import numpy as np
import scipy.sparse as sp

from skmlp._activations import ACTIVATIONS, DERIVATIVES
from skmlp._data import take_rows, to_numpy
from skmlp._losses import LOSSES, batch_totals, l2_cost, weight_decay
from skmlp._optimizers import momentum_step
from skmlp._state import chunks, views


class Stack:
    """The parameters and velocities of m members, stacked; packed once per epoch.

    Parameters
    ----------
    members : list of Member
        Members (``_member.py``) of networks of one shape; their flat parameters and
        velocities are copied in here, and back by ``unpack`` (shared, for one).
    xp : array namespace
    loss_kwargs : dict
        ``activation``, ``out_activation`` and ``loss`` (``alpha`` is per member).
    capturable : bool, default=False
        Whether the epoch may be captured as one GPU graph (``_loop.py``): then
        nothing is read back to the host inside it, the learning rates live in a
        device vector written by ``write_learning_rates`` before each epoch, nothing
        derived from them is cached.
    mirror : callable or None, default=None
        Maps a member's flat array to an array of ``xp`` on the same memory (a
        CuPy group is captured as torch tensors: ``torch.from_dlpack``); None: the
        members' arrays are of ``xp`` already.
    """

    def __init__(self, members, xp, loss_kwargs, capturable=False, mirror=None):
        self.members, self.xp, self.n_coefs = members, xp, members[0].params.n_coefs
        self.mirror = (lambda array: array) if mirror is None else mirror
        self.activation = loss_kwargs["activation"]
        self.out_activation = loss_kwargs["out_activation"]
        self.loss = LOSSES[loss_kwargs["loss"]]
        first = members[0].params.shapes
        self.axes = [1] + [0] * (len(first) - 1)  # the model axis of each array
        # parameters, velocities and gradients each live in ONE flat buffer, the
        # arrays of the layers being views of it (weights first, then biases): the
        # momentum step is then three or four calls for the whole group
        shapes = [
            _stacked_shape(shape, len(members), axis)
            for shape, axis in zip(first, self.axes, strict=True)
        ]
        flat = self.mirror(members[0].params.flat)
        size = sum(math.prod(shape) for shape in shapes)
        self.shared = len(members) == 1  # the member's own buffers, not copies
        if self.shared:
            self.flat = flat
            self.velocity_flat = self.mirror(members[0].optimizer.velocities[0])
        else:
            self.flat, self.velocity_flat = (
                xp.zeros(size, dtype=flat.dtype, device=flat.device) for _ in range(2)
            )
        self.grad_flat = xp.zeros(size, dtype=flat.dtype, device=flat.device)
        self.params = views(self.flat, shapes, xp)
        self.velocities = views(self.velocity_flat, shapes, xp)
        self.grads = views(self.grad_flat, shapes, xp)
        self.capturable = capturable
        self.pack()
        self.n_weights = sum(math.prod(shape) for shape in shapes[: self.n_coefs])
        self._scratch = np.empty_like(self.flat) if xp is np else None
        m, n_features = len(members), shapes[0][0]
        self._weight_views = [xp.reshape(self.params[0], (n_features, -1))] + [
            xp.reshape(W, (m, -1)) for W in self.params[1 : self.n_coefs]
        ]
        self._set_scalars([e.optimizer for e in members], members)

    def pack(self):
        """Copy each member's parameters and velocities into the stacked buffers."""
        if self.shared:
            return
        xp, members, shapes = self.xp, self.members, self.members[0].params.shapes
        layers = [views(self.mirror(e.params.flat), shapes, xp) for e in members]
        moments = [
            views(self.mirror(e.optimizer.velocities[0]), shapes, xp) for e in members
        ]
        for k, axis in enumerate(self.axes):
            self.params[k][...] = xp.stack([member[k] for member in layers], axis=axis)
            self.velocities[k][...] = xp.stack(
                [member[k] for member in moments], axis=axis
            )

    def write_learning_rates(self):
        """Each member's current learning rate into the device vector (in place)."""
        rates = [e.optimizer.learning_rate for e in self.members]
        self.learning_rate[...] = self._vector(rates)

    def _set_scalars(self, optimizers, members):
        """Each member's learning rate, momentum, Nesterov flag and ``alpha``."""
        self.learning_rate = self._vector([o.learning_rate for o in optimizers])
        self.momentum = self._vector([o.momentum for o in optimizers])
        self.alpha = self._vector([e.loss_kwargs["alpha"] for e in members])
        self.any_alpha = any(e.loss_kwargs["alpha"] for e in members)
        self._ones_by_size, self._delta_scales = {}, {}
        self._decays = {}  # n_rows -> lr * alpha / n_rows over the weights
        # one Python float where all members share it (a scalar product is faster
        # than a broadcast one), else one value per element of the flat buffer
        momenta = [o.momentum for o in optimizers]
        self.momenta = (
            float(momenta[0]) if len(set(momenta)) == 1 else self._spread(self.momentum)
        )
        nesterov = [bool(o.nesterov) for o in optimizers]
        self.nesterov = nesterov[0] if len(set(nesterov)) == 1 else nesterov
        if isinstance(self.nesterov, list):
            self.nesterov = self._spread(self._vector(self.nesterov)) > 0

    def _vector(self, values):
        flat = self.flat
        return self.xp.asarray(values, dtype=flat.dtype, device=flat.device)

    def unpack(self):
        """Copy the trained parameters and velocities back into each member."""
        if self.shared:
            return
        for j, member in enumerate(self.members):
            self.mirror(member.params.flat)[...] = self._member(self.params, j)
            if member.optimizer.momentum:  # without momentum the velocity stays 0
                velocity = self.mirror(member.optimizer.velocities[0])
                velocity[...] = self._member(self.velocities, j)

    def _member(self, arrays, j):
        parts = [
            a[:, j, ...] if axis else a[j, ...]
            for a, axis in zip(arrays, self.axes, strict=True)
        ]
        return self.xp.concat([self.xp.reshape(p, (-1,)) for p in parts])

    def _spread(self, vector):
        """``vector`` (one value per member) repeated over each member's elements of
        the flat buffer."""
        xp = self.xp
        return xp.concat(
            [
                xp.reshape(xp.broadcast_to(self._along(vector, k), p.shape), (-1,))
                for k, p in enumerate(self.params)
            ]
        )

    def _along(self, vector, k):
        """``vector`` (one value per member) shaped to broadcast over array ``k``."""
        shape = [1] * self.params[k].ndim
        shape[self.axes[k]] = vector.shape[0]
        return self.xp.reshape(vector, tuple(shape))

    # ------------------------------------------------------------------ one epoch

    def epoch(self, Xs, Ys, sample_weights, orders, streams, batch_size):
        """One pass of mini-batch SGD for every member.

        Parameters
        ----------
        Xs, Ys, sample_weights : lists, one entry per member
            Training inputs (n_samples, n_features), targets (n_samples, n_outputs)
            and sample weights (n_samples,) or None.
        orders : list of arrays of shape (n_samples,) or of None
            Each member's shuffle order.
        streams : list of (begin, end)
            Runs of members with the same ``X`` and the same order.
        batch_size : int

        Returns
        -------
        costs : list of float
            Each member's summed cost (divide by n_samples for the mean).
        """
        sums = self.epoch_sums(Xs, Ys, sample_weights, orders, streams, batch_size)
        return to_numpy(sums).tolist()

    def epoch_sums(self, Xs, Ys, sample_weights, orders, streams, batch_size):
        """``epoch``'s costs as one device array of shape (m,), read by no one:
        this is the part a GPU graph captures (``_loop.py``)."""
        xp, n_samples = self.xp, Xs[0].shape[0]
        weighted = any(w is not None for w in sample_weights)
        self.streams, total = streams, 0.0
        n_features = self.params[0].shape[0]
        # each stream's first-layer weights and gradients as (n_features, k * n_units)
        # matrices, views made once per epoch rather than on every batch
        self._wide = [
            tuple(
                xp.reshape(array[:, begin:end, :], (n_features, -1))
                for array in (self.params[0], self.grads[0])
            )
            for begin, end in streams
        ]
        for chunk, batches in chunks(n_samples, batch_size):
            rows = [chunk if o is None else o[chunk] for o in orders]
            X_chunks = [take_rows(Xs[b], rows[b], xp) for b, _ in streams]
            Y_chunk = xp.stack(
                [take_rows(Y, r, xp) for Y, r in zip(Ys, rows, strict=True)]
            )
            W_chunk = None
            if weighted:
                W_chunk = xp.stack(
                    [
                        _weights(w, r, Y_chunk, xp)
                        for w, r in zip(sample_weights, rows, strict=True)
                    ]
                )
            # without sample weights a batch's cost is a plain sum: the outputs of
            # the chunk's batches are kept, and their cost taken once per chunk
            outputs = None if weighted else xp.empty_like(Y_chunk)
            for batch in batches:
                total = total + self.step(
                    [take_rows(X, batch, xp) for X in X_chunks],
                    Y_chunk[:, batch, :],
                    None if W_chunk is None else W_chunk[:, batch],
                    None if outputs is None else outputs[:, batch, :],
                )
            if outputs is not None:
                total = total + xp.sum(self._cost_terms(Y_chunk, outputs), axis=1)
        return total

    def step(self, X_batches, Y, sample_weight, outputs=None):
        """Step every member on its batch; return each member's cost times rows.

        Parameters
        ----------
        X_batches : list of arrays of shape (n_rows, n_features)
            The batch of each stream.
        Y : array of shape (m, n_rows, n_outputs)
        sample_weight : array of shape (m, n_rows) or None
        outputs : array of shape (m, n_rows, n_outputs) or None
            Without sample weights, where the output layer's activations are written
            for the caller to cost (then only the L2 term is returned).

        Returns
        -------
        costs : array of shape (m,)
            Each member's batch mean cost times ``n_rows`` (0 for a member whose
            batch weights sum to 0: it makes no step).
        """
        xp, n_rows = self.xp, Y.shape[1]
        activations = self._forward(X_batches)
        A = activations[-1]
        delta = self.loss.delta(Y, A, xp)  # dC_i/dz at the output, (m, n_rows, n_out)
        keep = None
        # Each member's delta is scaled by its learning rate: backprop is linear in
        # delta, so the gradients come out as the plain steps lr * g, and no pass over
        # weight-sized arrays is spent on the scaling.
        learning_rate = self.learning_rate[:, None, None]
        if sample_weight is None:
            total_weight = float(n_rows)
            if self.capturable:  # the learning rates change between replays
                delta = delta * (learning_rate / total_weight)
            else:
                if n_rows not in self._delta_scales:
                    self._delta_scales[n_rows] = learning_rate / total_weight
                delta = delta * self._delta_scales[n_rows]
            if outputs is None:
                costs = xp.sum(self._cost_terms(Y, A), axis=1)
            else:
                outputs[...] = A
                costs = 0.0
        else:
            terms = xp.reshape(self._cost_terms(Y, A), (-1, Y.shape[2]))
            sample_costs = terms @ xp.ones_like(Y[0, 0])
            total_weight, keep = batch_totals(sample_weight, xp)  # (m,) each
            row_factors = sample_weight / total_weight[:, None]
            delta = delta * (row_factors[:, :, None] * learning_rate)
            sample_costs = xp.reshape(sample_costs, sample_weight.shape)
            costs = xp.sum(sample_weight * sample_costs, axis=1) * (
                n_rows / total_weight
            )
        self._backward(activations, delta, X_batches)
        if self.any_alpha:
            costs = costs + self._add_penalty(total_weight, n_rows)
        # (a captured epoch reads nothing back: it always selects on the device)
        if keep is not None and (self.capturable or not bool(xp.all(keep))):
            self._update_kept(keep)
            return xp.where(keep, costs, xp.zeros_like(costs))
        self._update()
        return costs

    def _cost_terms(self, Y, A):
        """The loss's own terms, (m, n_rows * n_outputs): a row sum is a member's
        cost (times ``n_rows``); NumPy sums short rows slowly, so no reduction here."""
        xp, m, n_outputs = self.xp, Y.shape[0], Y.shape[2]
        terms = self.loss.value(
            xp.reshape(Y, (-1, n_outputs)), xp.reshape(A, (-1, n_outputs)), xp
        )
        return xp.reshape(terms, (m, -1))

    def _forward(self, X_batches):
        """``a^(l) = f(a^(l-1) W^(l) + b^(l))`` for every member at once."""
        xp, n_coefs = self.xp, self.n_coefs
        b, n_units = self.params[n_coefs], self.params[0].shape[2]
        parts = [
            xp.reshape(X @ W, (X.shape[0], end - begin, n_units))  # one wide product
            for (begin, end), X, (W, _) in zip(
                self.streams, X_batches, self._wide, strict=True
            )
        ]
        z = parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)
        z = xp.permute_dims(z, (1, 0, 2)) + b[:, None, :]
        activations = [None]
        for k in range(1, n_coefs + 1):
            function = self.activation if k < n_coefs else self.out_activation
            activations.append(_activate(z, function, xp))
            if k < n_coefs:
                W, b = self.params[k], self.params[n_coefs + k]
                z = activations[-1] @ W + b[:, None, :]
        return activations

    def _backward(self, activations, delta, X_batches):
        """``dC/dW = a^T delta``, ``dC/db = sum of delta's rows``,
        ``delta^(l-1) = (delta W^T) * f'(a^(l-1))``, every member at once, written
        into ``self.grads`` (row sums as a product with ones: faster than a NumPy
        reduction over the middle axis)."""
        xp, n_coefs, grads = self.xp, self.n_coefs, self.grads
        derivative = DERIVATIVES[self.activation]
        n_rows = delta.shape[1]
        ones = self._ones(n_rows)
        for k in range(n_coefs - 1, 0, -1):
            a = activations[k]
            self._product(a.mT, delta, grads[k])
            self._product(ones, delta, grads[n_coefs + k])
            delta = delta @ self.params[k].mT
            if derivative is not None:
                delta = delta * derivative(a, xp)
        self._product(ones, delta, grads[n_coefs])
        delta = xp.permute_dims(delta, (1, 0, 2))  # (n_rows, m, n_units)
        for (begin, end), X, (_, grad) in zip(
            self.streams, X_batches, self._wide, strict=True
        ):
            delta_stream = xp.reshape(delta[:, begin:end, :], (n_rows, -1))
            self._product(_transpose(X), delta_stream, grad)  # one wide product

    def _ones(self, n_rows):
        """A vector of ``n_rows`` ones (kept: a batch size repeats)."""
        if n_rows not in self._ones_by_size:
            flat = self.flat
            self._ones_by_size[n_rows] = self.xp.ones(
                n_rows, dtype=flat.dtype, device=flat.device
            )
        return self._ones_by_size[n_rows]

    def _product(self, a, b, out):
        """``out[...] = a @ b``; on dense NumPy without a temporary."""
        if self.xp is np and not sp.issparse(a):
            np.matmul(a, b, out=out)
        else:
            out[...] = a @ b

    def _add_penalty(self, total_weight, n_rows):
        """Add the L2 term's step to the weight steps; return its cost times rows."""
        uniform = isinstance(total_weight, float)  # no sample weights: n_rows
        decay = self._decays.get(n_rows) if uniform and not self.capturable else None
        if decay is None:  # per element of the weights: the members' factors spread
            factor = weight_decay(self.learning_rate, self.alpha, total_weight)
            decay = self._spread(factor)[: self.n_weights]
            if uniform:
                self._decays[n_rows] = decay
        weights = self.flat[: self.n_weights]
        self.grad_flat[: self.n_weights] += self._times(decay, weights, weights)
        return l2_cost(self.alpha, self._squares(), n_rows, total_weight)

    def _squares(self):
        """Each member's sum of squared weights, shape (m,)."""
        xp, (columns, *layers) = self.xp, self._weight_views
        # the first layer as (n_features, m * n_units): a column sum is one product,
        # faster than a sum over the first and last axes
        squares = self._times(columns, columns, columns)
        column_sums = self._ones(columns.shape[0]) @ squares
        total = xp.sum(xp.reshape(column_sums, (self.alpha.shape[0], -1)), axis=1)
        for W in layers:  # (m, fan_in * fan_out)
            total = total + xp.vecdot(W, W)
        return total

    def _times(self, a, b, like):
        """``a * b``, shaped like ``like``; on NumPy into a buffer kept for the
        purpose (a new temporary the size of the weights on every batch costs page
        faults)."""
        if self.xp is not np:
            return a * b
        out = np.reshape(self._scratch[: like.size], like.shape)
        return np.multiply(a, b, out=out)

    def _update(self):
        """``momentum_step`` for every member, with its own scalars, as a few calls
        over the flat buffers (``grad_flat`` holds the plain steps
        ``lr * g``: see ``step``)."""
        momentum_step(
            self.flat,
            self.velocity_flat,
            self.grad_flat,
            self.momenta,
            self.nesterov,
            times=self._times_velocity,
            xp=self.xp,
        )

    def _times_velocity(self, a, b):
        return self._times(a, b, self.velocity_flat)

    def _update_kept(self, keep):
        """``_update`` for the members in ``keep`` only; the others stay as they were."""
        xp = self.xp
        saved = [xp.asarray(a, copy=True) for a in (self.flat, self.velocity_flat)]
        self._update()
        for flat, before in zip((self.flat, self.velocity_flat), saved, strict=True):
            flat[...] = xp.where(self._spread(keep), flat, before)


def _activate(z, function, xp):
    if function == "softmax":  # over the last axis: (m, n_rows, n_outputs)
        exp_z = xp.exp(z - _row_max(z, xp))
        n_outputs = z.shape[-1]
        ones = xp.ones((n_outputs, 1), dtype=z.dtype, device=z.device)
        sums = xp.reshape(exp_z, (-1, n_outputs)) @ ones  # faster than a NumPy sum
        return exp_z / xp.reshape(sums, (*z.shape[:-1], 1))
    return ACTIVATIONS[function](z, xp)


def _row_max(z, xp):
    """``max(z, axis=-1, keepdims=True)`` by halving the rows (overlapping halves
    where the width is odd): NumPy reduces short rows slowly."""
    while z.shape[-1] > 1:
        half = (z.shape[-1] + 1) // 2
        z = xp.maximum(z[..., :half], z[..., z.shape[-1] - half :])
    return z


def _weights(sample_weight, rows, Y_chunk, xp):
    """A member's sample weights for a chunk (ones where it has none)."""
    if sample_weight is None:
        return xp.ones(Y_chunk.shape[1], dtype=Y_chunk.dtype, device=Y_chunk.device)
    return take_rows(sample_weight, rows, xp)


def _stacked_shape(shape, m, axis):
    """The shape of m stacked arrays of ``shape``, the model axis at ``axis``."""
    return tuple(shape[:axis]) + (m,) + tuple(shape[axis:])


def _transpose(X):
    """``X`` transposed: an array's ``mT``, a sparse matrix's ``T``."""
    return X.T if sp.issparse(X) else X.mT
