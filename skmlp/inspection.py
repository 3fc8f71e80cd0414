"""Looking inside a fitted network."""

import numpy as np


def noise_confidence(estimator, X_real, *, n_samples=1000, random_state=0):
    """Mean top-class probability on uniform-noise inputs and on real inputs.

    The video's point, measured: a network trained on digits is about as sure of
    itself on random pixels as on real digits.

    Parameters
    ----------
    estimator : fitted classifier with ``predict_proba``
    X_real : array of shape (n, n_features)
        Real inputs, in [0, 1].
    n_samples : int, default=1000
        Number of noise images, pixels uniform in [0, 1].
    random_state : int, default=0

    Returns
    -------
    confidence : dict
        ``{"noise": ..., "real": ...}``: mean of the largest class probability.
    """
    rng = np.random.default_rng(random_state)
    noise = rng.uniform(size=(n_samples, np.shape(X_real)[1])).astype(np.float32)
    return {
        "noise": float(np.mean(np.max(estimator.predict_proba(noise), axis=1))),
        "real": float(np.mean(np.max(estimator.predict_proba(X_real), axis=1))),
    }
