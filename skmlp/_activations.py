"""Activation functions and their derivatives, written against the array API.

Every function takes the array namespace ``xp`` explicitly so that the same code runs on
NumPy, CuPy and torch arrays. Derivatives are expressed in terms of the activation
*output* ``a = f(z)``, so the forward pass only has to keep the activations.
"""

# Names follow sklearn.neural_network._base.


def identity(z, xp):
    """Return ``z`` unchanged."""
    return z


def logistic(z, xp):
    """Logistic sigmoid ``1 / (1 + exp(-z))``.

    Computed as ``(1 + tanh(z / 2)) / 2``, which is the same function but never
    overflows, whatever the magnitude of ``z``.
    """
    return 0.5 * (xp.tanh(0.5 * z) + 1.0)


def tanh(z, xp):
    """Hyperbolic tangent."""
    return xp.tanh(z)


def relu(z, xp):
    """Rectified linear unit ``max(z, 0)``."""
    return xp.clip(z, min=0.0)


def softmax(z, xp):
    """Row-wise softmax of ``z`` of shape (n_samples, n_outputs).

    The row maximum is subtracted first: this leaves the result unchanged and keeps
    ``exp`` from overflowing.
    """
    exp_z = xp.exp(z - xp.max(z, axis=1, keepdims=True))
    return exp_z / xp.sum(exp_z, axis=1, keepdims=True)


def logistic_derivative(a, xp):
    """Derivative of the sigmoid from its output: ``a (1 - a)``."""
    return a * (1.0 - a)


def tanh_derivative(a, xp):
    """Derivative of tanh from its output: ``1 - a**2``."""
    return 1.0 - a * a


def relu_derivative(a, xp):
    """Derivative of ReLU from its output: 1 where ``a > 0``, else 0."""
    return xp.astype(a > 0, a.dtype)


ACTIVATIONS = {
    "identity": identity,
    "logistic": logistic,
    "tanh": tanh,
    "relu": relu,
    "softmax": softmax,
}

# ``None`` marks the identity, whose derivative is 1: backprop skips the product.
DERIVATIVES = {
    "identity": None,
    "logistic": logistic_derivative,
    "tanh": tanh_derivative,
    "relu": relu_derivative,
}
