"""Forward pass and backpropagation: pure functions on arrays.

Notation (as in 3Blue1Brown's series and Nielsen's book): layer ``l`` computes
``z^(l) = a^(l-1) W^(l) + b^(l)`` and ``a^(l) = f(z^(l))``. Arrays hold a whole mini-batch,
one sample per row, so ``a^(l)`` has shape (n_samples, n_units_l).

The functions take the array namespace ``xp`` and use only operations of the array API
standard (``@``, ``.T``, ``xp.sum``, ...), so NumPy, CuPy and torch arrays all run the same
code on their own device. A SciPy sparse ``X`` works too: it only meets ``@``.
"""

from skmlp._activations import ACTIVATIONS, DERIVATIVES
from skmlp._losses import LOSSES


def forward_pass(X, coefs, intercepts, *, activation, out_activation, xp):
    """Propagate ``X`` through the network.

    Parameters
    ----------
    X : array or sparse matrix of shape (n_samples, n_features)
        Input batch.
    coefs : list of arrays, element ``i`` of shape (n_units_i, n_units_{i+1})
        Weight matrices.
    intercepts : list of arrays, element ``i`` of shape (n_units_{i+1},)
        Bias vectors.
    activation : str
        Hidden-layer activation, a key of ``ACTIVATIONS``.
    out_activation : str
        Output activation, ``"softmax"`` or ``"logistic"``.
    xp : array namespace

    Returns
    -------
    activations : list of arrays, element ``l`` of shape (n_samples, n_units_l)
        ``activations[0]`` is ``X`` itself, ``activations[-1]`` the network's output.
    """
    activations = [X]
    last = len(coefs) - 1
    for layer, (W, b) in enumerate(zip(coefs, intercepts, strict=False)):
        f = ACTIVATIONS[out_activation if layer == last else activation]
        activations.append(f(activations[-1] @ W + b, xp))
    return activations


def accuracy(X, y, coefs, intercepts, *, activation, out_activation, sample_weight, xp):
    """(Weighted) fraction of the samples whose output picks their class index ``y``."""
    output = forward_pass(
        X,
        coefs,
        intercepts,
        activation=activation,
        out_activation=out_activation,
        xp=xp,
    )[-1]
    if output.shape[1] == 1:  # one logistic output: class 1 above 1/2
        predicted = xp.astype(output[:, 0] > 0.5, y.dtype)
    else:
        predicted = xp.astype(xp.argmax(output, axis=1), y.dtype)
    correct = xp.astype(predicted == y, output.dtype)
    if sample_weight is None:
        return float(xp.mean(correct))
    return float(xp.sum(correct * sample_weight) / xp.sum(sample_weight))


def l2_penalty(coefs, xp):
    """Sum of the squared weights, ``sum_l ||W^(l)||^2`` (biases are not penalised)."""
    return sum(xp.sum(W * W) for W in coefs)


def backprop(
    X,
    Y,
    coefs,
    intercepts,
    *,
    activation,
    out_activation,
    loss,
    alpha=0.0,
    sample_weight=None,
    xp,
):
    """Cost of a mini-batch and its gradient with respect to every weight and bias.

    The cost is the (weighted) mean of the per-sample losses plus the L2 term
    ``alpha / (2 n) * sum_l ||W^(l)||^2``, ``n`` being the number of samples (or the sum
    of the sample weights), as in scikit-learn's ``MLPClassifier``.

    Parameters
    ----------
    X : array or sparse matrix of shape (n_samples, n_features)
        Input batch.
    Y : array of shape (n_samples, n_outputs)
        Targets in the output encoding (one-hot, or one 0/1 column for binary problems).
    coefs, intercepts : lists of arrays
        Weights and biases, shaped as in :func:`forward_pass`.
    activation, out_activation : str
        Hidden and output activations.
    loss : {"log_loss", "squared_error"}
        The cost function.
    alpha : float, default=0.0
        L2 penalty strength.
    sample_weight : array of shape (n_samples,) or None, default=None
        Weight of each sample in the mean.
    xp : array namespace

    Returns
    -------
    cost : 0-d array
        The cost, on the device of ``X`` (no host synchronisation).
    coef_grads : list of arrays, shaped like ``coefs``
        dC/dW for each layer.
    intercept_grads : list of arrays, shaped like ``intercepts``
        dC/db for each layer.
    """
    activations = forward_pass(
        X,
        coefs,
        intercepts,
        activation=activation,
        out_activation=out_activation,
        xp=xp,
    )
    cost_function = LOSSES[loss]
    # delta = dC/dz at the output; the 1/n of the mean is folded into it once, here.
    delta = cost_function.delta(Y, activations[-1], xp)
    sample_losses = xp.sum(cost_function.value(Y, activations[-1], xp), axis=1)
    if sample_weight is None:
        total_weight = X.shape[0]
        cost = xp.sum(sample_losses) / total_weight
        delta = delta / total_weight
    else:
        total_weight = xp.sum(sample_weight)
        cost = xp.sum(sample_weight * sample_losses) / total_weight
        delta = delta * (sample_weight / total_weight)[:, None]
    if alpha:
        cost = cost + (0.5 * alpha / total_weight) * l2_penalty(coefs, xp)

    derivative = DERIVATIVES[activation]
    n_layers = len(coefs)
    coef_grads, intercept_grads = [None] * n_layers, [None] * n_layers
    for layer in range(n_layers - 1, -1, -1):
        coef_grads[layer] = activations[layer].T @ delta  # dC/dW = a^(l-1)^T delta^(l)
        if alpha:
            coef_grads[layer] += (alpha / total_weight) * coefs[layer]
        intercept_grads[layer] = xp.sum(delta, axis=0)  # dC/db = column sums of delta
        if layer > 0:  # delta^(l-1) = (delta^(l) W^(l)^T) * f'(z^(l-1))
            delta = delta @ coefs[layer].T
            if derivative is not None:
                delta = delta * derivative(activations[layer], xp)
    return cost, coef_grads, intercept_grads
