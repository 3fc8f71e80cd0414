"""Finite-difference check of the backpropagation."""

from typing import NamedTuple

import numpy as np

from skmlp._backprop import backprop
from skmlp._losses import LOSSES


class GradientCheckResult(NamedTuple):
    """Outcome of :func:`check_gradients`.

    Attributes
    ----------
    max_relative_error : float
        Largest relative error over all parameter arrays.
    coef_errors : list of float
        Relative error of the gradient of each weight matrix.
    intercept_errors : list of float
        Relative error of the gradient of each bias vector.
    """

    max_relative_error: float
    coef_errors: list
    intercept_errors: list


def check_gradients(
    layer_sizes,
    *,
    activation="relu",
    loss="log_loss",
    alpha=0.0,
    n_samples=12,
    sample_weight=False,
    epsilon=1e-6,
    random_state=0,
) -> GradientCheckResult:
    """Compare backprop's gradients with central finite differences, in float64.

    A random network with the given layer sizes, random inputs and random labels are
    drawn; every weight and bias is then nudged by ``+-epsilon`` and the change of the
    cost compared with the gradient that :func:`skmlp._backprop.backprop` returns.

    Parameters
    ----------
    layer_sizes : sequence of int
        Units of every layer, input and output included, e.g. ``(784, 16, 16, 10)``. An
        output of size 1 is a binary problem (logistic output).
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Hidden activation.
    loss : {"log_loss", "squared_error"}, default="log_loss"
        Cost function.
    alpha : float, default=0.0
        L2 penalty strength.
    n_samples : int, default=12
        Size of the random batch.
    sample_weight : bool, default=False
        Whether to draw random sample weights.
    epsilon : float, default=1e-6
        Finite-difference step.
    random_state : int, default=0
        Seed.

    Returns
    -------
    result : GradientCheckResult
        For each parameter array, ``||g_backprop - g_numeric|| / (||g_backprop|| +
        ||g_numeric||)``, and their maximum.

    Examples
    --------
    >>> from skmlp import check_gradients
    >>> check_gradients((5, 4, 3), activation="tanh").max_relative_error < 1e-6
    True
    """
    rng = np.random.default_rng(random_state)
    # Weights scaled by 1/sqrt(fan_in) keep the outputs away from saturation, where the
    # loss clips probabilities and finite differences would see a flat function.
    coefs = [
        rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)
        for fan_in, fan_out in zip(layer_sizes[:-1], layer_sizes[1:], strict=False)
    ]
    intercepts = [rng.normal(size=size) for size in layer_sizes[1:]]
    X = rng.normal(size=(n_samples, layer_sizes[0]))
    n_outputs = layer_sizes[-1]
    labels = rng.integers(0, max(n_outputs, 2), size=n_samples)
    if n_outputs == 1:
        Y = labels[:, None].astype(float)
        out_activation = "logistic"
    else:
        Y = np.eye(n_outputs)[labels]
        out_activation = LOSSES[loss].out_activation
    weights = rng.uniform(0.5, 2.0, size=n_samples) if sample_weight else None

    def cost_and_grads():
        return backprop(
            X,
            Y,
            coefs,
            intercepts,
            activation=activation,
            out_activation=out_activation,
            loss=loss,
            alpha=alpha,
            sample_weight=weights,
            xp=np,
        )

    _, coef_grads, intercept_grads = cost_and_grads()

    def error(param, grad):
        numeric = np.empty_like(param)
        for index in np.ndindex(param.shape):
            original = param[index]
            param[index] = original + epsilon
            cost_plus = float(cost_and_grads()[0])
            param[index] = original - epsilon
            cost_minus = float(cost_and_grads()[0])
            param[index] = original
            numeric[index] = (cost_plus - cost_minus) / (2 * epsilon)
        scale = np.linalg.norm(grad) + np.linalg.norm(numeric)
        return float(np.linalg.norm(grad - numeric) / scale) if scale else 0.0

    coef_errors = [error(c, g) for c, g in zip(coefs, coef_grads, strict=False)]
    intercept_errors = [
        error(b, g) for b, g in zip(intercepts, intercept_grads, strict=False)
    ]
    return GradientCheckResult(
        max(coef_errors + intercept_errors), coef_errors, intercept_errors
    )
