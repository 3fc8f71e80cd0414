"""What the estimator tests share: fits without the expected warnings, and the
comparisons of two fits (the oracles: the same weights, or the same whole fit)."""

import warnings

import numpy as np
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning


def quietly(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with "max_iter reached" silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return function(*args, **kwargs)


def quiet_fit(estimator, *args, **kwargs):
    """``estimator.fit(*args, **kwargs)``, quietly."""
    return quietly(estimator.fit, *args, **kwargs)


def assert_same_weights(a, b, rtol=1e-7, atol=1e-12):
    """Every weight and bias of two fitted estimators to ``rtol`` (0: bitwise)."""
    assert len(a.coefs_) == len(b.coefs_)
    for left, right in zip(
        a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True
    ):
        assert_allclose(np.asarray(left), np.asarray(right), rtol=rtol, atol=atol)


def assert_same_fit(ours, theirs, rtol=1e-9, atol=1e-9):
    """Weights and velocities to ``atol``, the same epochs, records and classes."""
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.t_ == theirs.t_
    assert_array_equal(ours.classes_, theirs.classes_)
    assert_same_weights(ours, theirs, rtol=rtol, atol=atol)
    velocities = [est._state.optimizer.velocities[0] for est in (ours, theirs)]
    assert_allclose(*map(np.asarray, velocities), rtol=rtol, atol=atol)
    assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    history, reference = ours.history_, theirs.history_
    assert list(history.columns) == list(reference.columns)
    compared = [c for c in history.columns if c != "seconds"]
    assert_allclose(
        history[compared].to_numpy(), reference[compared].to_numpy(), rtol=rtol
    )
    if theirs.validation_scores_ is not None:
        assert ours.validation_scores_ == theirs.validation_scores_
