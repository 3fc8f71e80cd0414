"""The batch steps against the reference: ``NumpyStep``, ``Stack`` and ``backprop``.

``NumpyStep`` (one network on dense NumPy) and the stacked step (everything else, here
as a stack of one network, eager and in the protocol a GPU captures) are run on the same
batches as the pure ``backprop`` followed by the momentum update written out below, and
must leave the same parameters, velocity and cost, in float64, for every activation,
cost, depth and option.
"""

import types

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

import skmlp._state
from skmlp._backprop import backprop
from skmlp._numpy_sgd import NumpyStep
from skmlp._optimizers import SGDOptimizer
from skmlp._stacked import Stack
from skmlp._state import FlatParams

LEARNING_RATE = 0.05


def _network(sizes, seed=0):
    rng = np.random.default_rng(seed)
    coefs = [
        rng.uniform(-0.5, 0.5, (a, b)) for a, b in zip(sizes, sizes[1:], strict=False)
    ]
    intercepts = [rng.uniform(-0.5, 0.5, b) for b in sizes[1:]]
    return coefs, intercepts


def _targets(y, n_outputs):
    if n_outputs == 1:
        return (y[:, None] == 1).astype(float)
    return (y[:, None] == np.arange(n_outputs)).astype(float)


def _reference_epoch(X, Y, weight, order, batch_size, params, optimizer, kwargs):
    """``backprop``, then the momentum update as scikit-learn's SGDOptimizer writes
    it, batch by batch; a batch whose weights sum to 0 makes no step."""
    total, velocity = 0.0, optimizer.velocities[0]
    order = np.arange(X.shape[0]) if order is None else order
    for start in range(0, X.shape[0], batch_size):
        rows = order[start : start + batch_size]
        w = None if weight is None else weight[rows]
        if w is not None and w.sum() == 0:
            continue
        coefs, intercepts = params.layers()
        cost, coef_grads, intercept_grads = backprop(
            X[rows], Y[rows], coefs, intercepts, **kwargs, sample_weight=w, xp=np
        )
        grad = np.concat([g.ravel() for g in coef_grads + intercept_grads])
        total += float(cost) * rows.shape[0]
        if not optimizer.momentum:  # the velocity stays 0
            params.flat -= LEARNING_RATE * grad
            continue
        velocity[...] = optimizer.momentum * velocity - LEARNING_RATE * grad
        if optimizer.nesterov:
            params.flat += optimizer.momentum * velocity - LEARNING_RATE * grad
        else:
            params.flat += velocity
    return total


def _train(kind, X, Y, weight, sizes, epochs=2, xp=np, *, activation, loss, alpha=1e-3,
           batch_size=64, momentum=0.9, nesterov=True, shuffle=True):  # fmt: skip
    """Parameters, velocity and costs after ``epochs`` epochs through one step kind:
    "reference", "numpy", "stacked" or "capturable" (the stacked step as a GPU
    graph replays it, run eagerly)."""
    coefs, intercepts = _network(sizes)
    to_xp = (
        (lambda a: a) if xp is np else (lambda a: None if a is None else xp.asarray(a))
    )
    params = FlatParams([to_xp(c) for c in coefs], [to_xp(b) for b in intercepts], xp)
    optimizer = SGDOptimizer(
        [params.flat], LEARNING_RATE, "constant", momentum, nesterov, 0.5, xp
    )
    out_activation = (
        "logistic" if Y.shape[1] == 1 or loss == "squared_error" else "softmax"
    )
    kwargs = dict(activation=activation, out_activation=out_activation, loss=loss)
    rng, costs = np.random.default_rng(1), []
    for _ in range(epochs):
        order = rng.permutation(X.shape[0]) if shuffle else None
        if kind == "reference":
            cost = _reference_epoch(
                X, Y, weight, order, batch_size, params, optimizer,
                dict(kwargs, alpha=alpha),
            )  # fmt: skip
        elif kind == "numpy":
            step = NumpyStep(params, optimizer, **kwargs, alpha=alpha)
            cost = step.epoch(X, Y, weight, order, batch_size)
        else:
            cost = _stacked_epoch(
                kind, params, optimizer, dict(kwargs, alpha=alpha), xp,
                to_xp(X) if not sp.issparse(X) else X, to_xp(Y), to_xp(weight),
                None if order is None else to_xp(order), batch_size,
            )  # fmt: skip
        costs.append(float(cost))
    return np.asarray(params.flat), np.asarray(optimizer.velocities[0]), costs


def _stacked_epoch(kind, params, optimizer, kwargs, xp, X, Y, weight, order, batch):
    member = types.SimpleNamespace(
        params=params, optimizer=optimizer, loss_kwargs=kwargs
    )
    capturable = kind == "capturable"
    stack = Stack([member], xp, kwargs, capturable=capturable)
    arguments = ([X], [Y], [weight], [order], [(0, 1)], batch)
    if not capturable:
        return stack.epoch(*arguments)[0]
    stack.write_learning_rates()
    return float(stack.epoch_sums(*arguments)[0])


def _assert_same(left, right):
    for ours, ref in zip(left[:2], right[:2], strict=True):
        assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    assert_allclose(left[2], right[2], rtol=1e-10)


@pytest.mark.parametrize("kind", ["numpy", "stacked"])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("hidden", [(), (12,), (12, 7)], ids=str)
def test_steps_equal_the_reference(digits, kind, activation, loss, hidden):
    X, y = digits
    X, y = X[:600], y[:600]  # 600 = 9 x 64 + 24: a short last batch
    sizes, Y = (64, *hidden, 10), _targets(y, 10)
    kwargs = dict(activation=activation, loss=loss)
    _assert_same(
        _train(kind, X, Y, None, sizes, **kwargs),
        _train("reference", X, Y, None, sizes, **kwargs),
    )


@pytest.mark.parametrize("kind", ["numpy", "stacked", "capturable"])
@pytest.mark.parametrize(
    "options",
    [
        dict(nesterov=False),
        dict(momentum=0.0),
        dict(alpha=0.0),
        dict(alpha=0.5),
        dict(shuffle=False),
        dict(batch_size=1797),
    ],
    ids=repr,
)
def test_steps_agree_with_options(digits, kind, options):
    X, y = digits
    kwargs = dict(activation="tanh", loss="log_loss", **options)
    sizes, Y = (64, 16, 10), _targets(y, 10)
    _assert_same(
        _train(kind, X, Y, None, sizes, **kwargs),
        _train("reference", X, Y, None, sizes, **kwargs),
    )


@pytest.mark.parametrize("kind", ["numpy", "stacked", "capturable"])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
def test_binary_weighted_with_zero_weight_batches(digits, kind, loss):
    X, y = digits
    weight = np.random.default_rng(0).uniform(0.2, 3.0, size=X.shape[0])
    weight[: X.shape[0] // 2] = 0.0  # with shuffle=False: whole batches weigh nothing
    sizes, Y = (64, 10, 1), _targets(y % 2, 1)
    kwargs = dict(activation="relu", loss=loss, shuffle=False, batch_size=50)
    result = _train(kind, X, Y, weight, sizes, **kwargs)
    _assert_same(result, _train("reference", X, Y, weight, sizes, **kwargs))
    assert np.all(np.isfinite(result[0]))


def test_stacked_step_on_sparse_input(digits):
    """Sparse input meets only ``@`` and a transpose in the stacked step."""
    X, y = digits
    sizes, Y = (64, 16, 10), _targets(y, 10)
    kwargs = dict(activation="relu", loss="log_loss")
    _assert_same(
        _train("stacked", sp.csr_matrix(X), Y, None, sizes, **kwargs),
        _train("reference", X, Y, None, sizes, **kwargs),
    )


@pytest.mark.parametrize("kind", ["numpy", "stacked"])
def test_epoch_spans_several_chunks(digits, kind, monkeypatch):
    """Chunks that end on a short batch, batches that straddle no chunk boundary."""
    monkeypatch.setattr(skmlp._state, "CHUNK_ROWS", 200)
    X, y = digits
    sizes, Y = (64, 16, 10), _targets(y, 10)
    kwargs = dict(activation="relu", loss="log_loss")
    _assert_same(
        _train(kind, X, Y, None, sizes, **kwargs),
        _train("reference", X, Y, None, sizes, **kwargs),
    )


def test_capturable_step_on_torch_cpu(digits):
    """The step a GPU captures, run eagerly on torch CPU tensors."""
    torch = pytest.importorskip("torch")
    from sklearn.utils._array_api import get_namespace

    X, y = digits
    weight = np.random.default_rng(0).uniform(0.0, 2.0, size=X.shape[0])
    weight[:200] = 0.0
    sizes, Y = (64, 16, 10), _targets(y, 10)
    kwargs = dict(activation="relu", loss="log_loss", batch_size=100, shuffle=False)
    xp = get_namespace(torch.zeros(1))[0]
    _assert_same(
        _train("capturable", X, Y, weight, sizes, xp=xp, **kwargs),
        _train("reference", X, Y, weight, sizes, **kwargs),
    )
