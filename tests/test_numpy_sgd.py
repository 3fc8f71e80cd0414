"""The NumPy epoch kernel against the pure backprop: same training, every configuration.

Dense NumPy input trains through ``_numpy_sgd.sgd_epoch``; the same data as a CSR
matrix trains through ``backprop`` + ``SGDOptimizer`` batch by batch. Both must give the
same weights and loss curve, in float64, for every activation, cost, depth and option.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose
from sklearn.exceptions import ConvergenceWarning

import skmlp._numpy_sgd
from skmlp import SGDMLPClassifier


def _fit_both(X, y, sample_weight=None, **params):
    fitted = []
    for data in (X, sp.csr_matrix(X)):
        clf = SGDMLPClassifier(**params, random_state=0, dtype="float64")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted.append(clf.fit(data, y, sample_weight=sample_weight))
    return fitted


def _assert_same_training(kernel, pure):
    assert kernel.n_iter_ == pure.n_iter_
    assert_allclose(kernel.loss_curve_, pure.loss_curve_, rtol=1e-10)
    for ours, ref in zip(
        kernel.coefs_ + kernel.intercepts_, pure.coefs_ + pure.intercepts_, strict=True
    ):
        assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("hidden_layer_sizes", [(), (12,), (12, 7)])
def test_kernel_equals_pure_backprop(digits, activation, loss, hidden_layer_sizes):
    X, y = digits
    kernel, pure = _fit_both(
        X[:600],
        y[:600],
        hidden_layer_sizes=hidden_layer_sizes,
        activation=activation,
        loss=loss,
        batch_size=64,  # 600 = 9 x 64 + 24: a short last batch
        learning_rate_init=0.05,
        max_iter=3,
    )
    _assert_same_training(kernel, pure)


@pytest.mark.parametrize(
    "params",
    [
        dict(nesterovs_momentum=False),
        dict(momentum=0.0),
        dict(alpha=0.0),
        dict(alpha=0.5),
        dict(shuffle=False),
        dict(learning_rate="invscaling"),
        dict(early_stopping=True),
    ],
    ids=repr,
)
def test_kernel_equals_pure_backprop_options(digits, params):
    X, y = digits
    kernel, pure = _fit_both(
        X, y, hidden_layer_sizes=(16,), batch_size=50, max_iter=3, **params
    )
    _assert_same_training(kernel, pure)


@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
def test_kernel_equals_pure_backprop_binary_weighted(digits, loss):
    X, y = digits
    weight = np.random.default_rng(0).uniform(0.2, 3.0, size=X.shape[0])
    kernel, pure = _fit_both(
        X, y % 2, sample_weight=weight, hidden_layer_sizes=(10,), loss=loss, max_iter=3
    )
    _assert_same_training(kernel, pure)


def test_kernel_spans_several_chunks(digits, monkeypatch):
    """Batches that straddle no chunk boundary, chunks that end on a short batch."""
    monkeypatch.setattr(skmlp._numpy_sgd, "CHUNK_ROWS", 200)
    X, y = digits
    kernel, pure = _fit_both(X, y, hidden_layer_sizes=(16,), batch_size=64, max_iter=2)
    _assert_same_training(kernel, pure)
