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


def batch_totals(sample_weight, xp):
    """Each network's total sample weight in a batch, and whether it makes a step.

    A batch whose weights sum to 0 has no mean cost: that network makes no step (its
    total is given as 1, so that no 0/0 is computed on the way).

    Parameters
    ----------
    sample_weight : array of shape (n_rows,) or (m, n_rows)
    xp : array namespace

    Returns
    -------
    total_weight : array of shape () or (m,)
    keep : boolean array of shape () or (m,)
    """
    total = xp.sum(sample_weight, axis=-1)
    keep = total > 0
    return xp.where(keep, total, xp.ones_like(total)), keep


def weight_decay(learning_rate, alpha, total_weight):
    """The factor of the L2 term's step, ``learning_rate * alpha / total_weight``:
    the step of ``alpha / (2 n) * sum ||W||^2`` is that times ``W``."""
    return learning_rate * alpha / total_weight


def l2_cost(alpha, squares, n_rows, total_weight):
    """The L2 term of a batch's mean cost, ``alpha / (2 n) * squares``, times its
    ``n_rows`` (``n`` is ``total_weight``, the rows or the sum of their weights)."""
    cost = 0.5 * alpha * squares
    if isinstance(total_weight, float) and total_weight == n_rows:  # no weights
        return cost
    return cost * (n_rows / total_weight)
