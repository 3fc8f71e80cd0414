"""Cost functions: the per-sample value and the delta at the output layer.

``Y`` is the target in the output layer's encoding: one-hot of shape
(n_samples, n_classes) for multiclass problems, a single 0/1 column for binary ones.
``A`` is the output layer's activation of the same shape. The cost functions return
terms whose row sums are the samples' costs (summing them all at once, when there are no
sample weights, saves a reduction per mini-batch).
"""

from typing import NamedTuple


def log_loss(Y, A, xp):
    """Cross-entropy terms, shape (n_samples, n_outputs): sum a row for a sample's cost.

    With one output column (binary problems, logistic output) this is the binary
    cross-entropy; with several (softmax output) the categorical one, which for a
    one-hot ``Y`` is ``-log`` of the probability given to the true class.
    Probabilities are clipped to ``[eps, 1 - eps]`` (``eps`` the dtype's), as
    scikit-learn does.
    """
    eps = xp.finfo(A.dtype).eps
    A = xp.clip(A, min=eps, max=1.0 - eps)
    if A.shape[1] == 1:
        return -(Y * xp.log(A) + (1.0 - Y) * xp.log(1.0 - A))
    return -Y * xp.log(A)


def log_loss_delta(Y, A, xp):
    """dC/dz at the output for cross-entropy on softmax (or sigmoid) outputs.

    The softmax Jacobian and the derivative of ``-log`` cancel: with ``A = softmax(z)``,
    dC/dz_k = A_k - Y_k (the same holds for one sigmoid with binary cross-entropy).
    """
    return A - Y


def squared_error(Y, A, xp):
    """Squared differences, shape (n_samples, n_outputs): sum a row for a sample's cost."""
    diff = A - Y
    return diff * diff


def squared_error_delta(Y, A, xp):
    """dC/dz at the output for the quadratic cost on sigmoid outputs."""
    return 2.0 * (A - Y) * A * (1.0 - A)


class Loss(NamedTuple):
    """A cost function: its per-sample terms, its output delta, its output activation."""

    value: object  # (Y, A, xp) -> terms whose row sums are the samples' costs
    delta: object  # (Y, A, xp) -> dC_i/dz at the output layer, one row per sample
    out_activation: str  # output activation for multiclass problems


LOSSES = {
    "log_loss": Loss(log_loss, log_loss_delta, "softmax"),
    "squared_error": Loss(squared_error, squared_error_delta, "logistic"),
}
