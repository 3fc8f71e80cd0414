"""Backpropagation against central finite differences, and the pure functions."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from skmlp import check_gradients
from skmlp._activations import ACTIVATIONS, DERIVATIVES

ACTIVATION_NAMES = ["identity", "logistic", "tanh", "relu"]
LOSS_NAMES = ["log_loss", "squared_error"]
# input, hidden..., output: 0 to 3 hidden layers
DEPTHS = [(6, 4), (6, 5, 4), (6, 5, 3, 4), (6, 5, 3, 4, 4)]


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("layer_sizes", DEPTHS, ids=lambda s: f"{len(s) - 2}hidden")
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_backprop_matches_finite_differences(activation, loss, layer_sizes, alpha):
    result = check_gradients(layer_sizes, activation=activation, loss=loss, alpha=alpha)
    assert result.max_relative_error < 1e-6, result


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_backprop_binary_output_and_sample_weight(activation, loss):
    result = check_gradients(
        (5, 4, 1), activation=activation, loss=loss, alpha=0.1, sample_weight=True
    )
    assert result.max_relative_error < 1e-6, result


def test_gradient_check_detects_a_wrong_gradient(monkeypatch):
    """The check is not vacuous: a derivative off by a factor fails it."""
    monkeypatch.setitem(DERIVATIVES, "tanh", lambda a, xp: 1.1 * (1.0 - a * a))
    result = check_gradients((5, 4, 3), activation="tanh")
    assert result.max_relative_error > 1e-3


@pytest.mark.parametrize("name", ["logistic", "tanh", "relu"])
def test_derivatives_from_outputs_match_numeric_slope(name):
    z = np.linspace(-3, 3, 41) + 0.013  # avoid relu's kink at 0
    a = ACTIVATIONS[name](z, np)
    step = 1e-6
    numeric = (ACTIVATIONS[name](z + step, np) - ACTIVATIONS[name](z - step, np)) / (
        2 * step
    )
    assert_allclose(DERIVATIVES[name](a, np), numeric, rtol=1e-6, atol=1e-8)


def test_logistic_and_softmax_do_not_overflow():
    z = np.array([[-1e4, 0.0, 1e4]])
    with np.errstate(over="raise", invalid="raise"):
        assert_allclose(ACTIVATIONS["logistic"](z, np), [[0.0, 0.5, 1.0]])
        assert_allclose(ACTIVATIONS["softmax"](z, np), [[0.0, 0.0, 1.0]])
