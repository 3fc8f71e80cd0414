"""Cost functions: the per-sample value and the delta at the output layer.

``Y`` is the target in the output layer's encoding: one-hot of shape
(n_samples, n_classes) for multiclass problems, a single 0/1 column for binary ones.
``A`` is the output layer's activation of the same shape. The cost functions return
terms whose row sums are the samples' costs (summing them all at once, when there are no
sample weights, saves a reduction per mini-batch).
"""


def log_loss(Y, A, xp):
    """Cross-entropy of each sample, shape (n_samples, 1).

    With one output column (binary problems, logistic output) this is the binary
    cross-entropy; with several (softmax output) the categorical one, which for a
    one-hot ``Y`` is ``-log`` of the probability given to the true class: the row's
    dot product with ``Y`` picks it, so only one logarithm per sample is taken.
    Probabilities are clipped at the dtype's epsilon, as scikit-learn does.
    """
    eps = xp.finfo(A.dtype).eps
    if A.shape[1] == 1:
        A = xp.clip(A, min=eps, max=1.0 - eps)
        return -(Y * xp.log(A) + (1.0 - Y) * xp.log(1.0 - A))
    true_class_proba = xp.vecdot(Y, A)[:, None]
    return -xp.log(xp.clip(true_class_proba, min=eps))


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


# name -> (per-sample value, output delta, output activation for multiclass problems)
LOSSES = {
    "log_loss": (log_loss, log_loss_delta, "softmax"),
    "squared_error": (squared_error, squared_error_delta, "logistic"),
}
