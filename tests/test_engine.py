"""The engine: its two batch steps against each other, and the epoch loop.

``NumpyStep`` (dense NumPy) and ``BackpropStep`` (``backprop`` + ``update_params``, every
other input) are run directly on the same batches through the one epoch loop,
``epoch_cost``, and must leave the same parameters, velocity and cost, in float64, for
every activation, cost, depth and option. ``BackpropStep`` with device scalars (the step
a GPU captures) runs eagerly here, on NumPy and on torch CPU.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

import skmlp._engine
from skmlp._engine import (
    BackpropStep,
    Engine,
    FlatParams,
    StoppingRule,
    TrainingData,
    TrainingState,
    epoch_cost,
)
from skmlp._numpy_sgd import NumpyStep
from skmlp._optimizers import SGDOptimizer


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


def _train(kind, X, Y, weight, sizes, epochs=2, xp=np, *, activation, loss, alpha=1e-3,
           batch_size=64, momentum=0.9, nesterov=True, shuffle=True):  # fmt: skip
    """Parameters, velocity and costs after ``epochs`` epochs through one step kind."""
    coefs, intercepts = _network(sizes)
    to_xp = (
        (lambda a: a) if xp is np else (lambda a: None if a is None else xp.asarray(a))
    )
    params = FlatParams([to_xp(c) for c in coefs], [to_xp(b) for b in intercepts], xp)
    optimizer = SGDOptimizer(
        [params.flat], 0.05, "constant", momentum, nesterov, 0.5, xp
    )
    out_activation = (
        "logistic" if Y.shape[1] == 1 or loss == "squared_error" else "softmax"
    )
    kwargs = dict(
        activation=activation, out_activation=out_activation, loss=loss, alpha=alpha
    )
    if kind == "numpy":
        step = NumpyStep(params, optimizer, **kwargs)
    else:
        scalars = None
        if kind == "device_scalars":
            scalars = tuple(
                xp.asarray(v, dtype=params.flat.dtype) for v in (0.05, momentum)
            )
        step = BackpropStep(
            params, optimizer, loss_kwargs=kwargs, xp=xp, scalars=scalars
        )
    rng, costs = np.random.default_rng(1), []
    for _ in range(epochs):
        order = to_xp(rng.permutation(X.shape[0])) if shuffle else None
        cost = epoch_cost(
            to_xp(X), to_xp(Y), to_xp(weight), order, batch_size, step, xp
        )
        costs.append(float(cost))
    return np.asarray(params.flat), np.asarray(optimizer.velocities[0]), costs


def _assert_same(left, right):
    for ours, ref in zip(left[:2], right[:2], strict=True):
        assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    assert_allclose(left[2], right[2], rtol=1e-10)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("hidden", [(), (12,), (12, 7)], ids=str)
def test_numpy_step_equals_backprop_step(digits, activation, loss, hidden):
    X, y = digits
    X, y = X[:600], y[:600]  # 600 = 9 x 64 + 24: a short last batch
    sizes, Y = (64, *hidden, 10), _targets(y, 10)
    kwargs = dict(activation=activation, loss=loss)
    _assert_same(
        _train("numpy", X, Y, None, sizes, **kwargs),
        _train("backprop", X, Y, None, sizes, **kwargs),
    )


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
def test_steps_agree_with_options(digits, options):
    X, y = digits
    kwargs = dict(activation="tanh", loss="log_loss", **options)
    sizes, Y = (64, 16, 10), _targets(y, 10)
    _assert_same(
        _train("numpy", X, Y, None, sizes, **kwargs),
        _train("backprop", X, Y, None, sizes, **kwargs),
    )


@pytest.mark.parametrize("kind", ["backprop", "device_scalars"])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
def test_steps_agree_binary_weighted_with_zero_weight_batches(digits, kind, loss):
    X, y = digits
    weight = np.random.default_rng(0).uniform(0.2, 3.0, size=X.shape[0])
    weight[: X.shape[0] // 2] = 0.0  # with shuffle=False: whole batches weigh nothing
    sizes, Y = (64, 10, 1), _targets(y % 2, 1)
    kwargs = dict(activation="relu", loss=loss, shuffle=False, batch_size=50)
    numpy_run = _train("numpy", X, Y, weight, sizes, **kwargs)
    _assert_same(numpy_run, _train(kind, X, Y, weight, sizes, **kwargs))
    assert np.all(np.isfinite(numpy_run[0]))


def test_epoch_spans_several_chunks(digits, monkeypatch):
    """Chunks that end on a short batch, batches that straddle no chunk boundary."""
    monkeypatch.setattr(skmlp._engine, "CHUNK_ROWS", 200)
    X, y = digits
    sizes, Y = (64, 16, 10), _targets(y, 10)
    kwargs = dict(activation="relu", loss="log_loss")
    _assert_same(
        _train("numpy", X, Y, None, sizes, **kwargs),
        _train("backprop", X, Y, None, sizes, **kwargs),
    )


def test_device_scalar_step_on_torch_cpu(digits):
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
        _train("numpy", X, Y, weight, sizes, **kwargs),
        _train("device_scalars", X, Y, weight, sizes, xp=xp, **kwargs),
    )


def test_engine_device_scalars_follow_the_learning_rate(digits):
    """The learning rate is written into its device scalar before every epoch."""
    torch = pytest.importorskip("torch")
    from sklearn.utils._array_api import get_namespace

    X, y = digits
    xp = get_namespace(torch.zeros(1))[0]
    Y = _targets(y, 10)
    results = []
    for kind, namespace in (("numpy", np), ("device_scalars", xp)):
        coefs, intercepts = _network((64, 16, 10))
        coefs = [namespace.asarray(c) for c in coefs]
        intercepts = [namespace.asarray(b) for b in intercepts]
        flat = FlatParams(coefs, intercepts, namespace).flat
        optimizer = SGDOptimizer([flat], 0.1, "adaptive", 0.9, True, 0.5, namespace)
        state = TrainingState(optimizer, np.random.RandomState(0), best_loss=np.inf)
        engine = Engine(
            state, coefs, intercepts,
            stopping=StoppingRule(tol=0.0, n_iter_no_change=np.inf, early_stopping=False),
            loss_kwargs=dict(activation="relu", out_activation="softmax",
                             loss="log_loss", alpha=1e-4),
            batch_size=50, shuffle=True, xp=namespace, device=None, sparse=False,
            capture=True, device_scalars=kind == "device_scalars",
        )  # fmt: skip
        data = TrainingData(namespace.asarray(X), namespace.asarray(Y))
        for _ in range(3):
            engine.run_epoch(data)
            optimizer.learning_rate /= 5  # as the adaptive schedule does
        costs = [record.loss for record in state.records]
        results.append((np.asarray(engine.params.flat), costs))
    assert_allclose(results[0][0], results[1][0], rtol=1e-9, atol=1e-12)
    assert_allclose(results[0][1], results[1][1], rtol=1e-10)
