"""Corrupted labels and inputs for the memorization experiment (Zhang et al. 2017).

Pure, seeded functions: arrays in, new arrays out (the inputs are never modified).
"""

import numpy as np
from sklearn.utils import check_random_state


def corrupt_labels(y, p, *, n_classes=None, random_state=None):
    """Zhang's partially corrupted labels: each label, with probability ``p``, is
    replaced by a class drawn uniformly at random (possibly its own).

    Parameters
    ----------
    y : array of shape (n_samples,)
        Integer class labels in ``[0, n_classes)``.
    p : float in [0, 1]
        Corruption probability.
    n_classes : int, default=None
        Number of classes; ``max(y) + 1`` if None.
    random_state : int, RandomState instance or None

    Returns
    -------
    y_corrupted : ndarray of shape (n_samples,)
    """
    _check_fraction(p)
    rng = check_random_state(random_state)
    y = np.asarray(y)
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    replace = rng.uniform(size=y.shape[0]) < p
    y_corrupted = y.copy()
    y_corrupted[replace] = rng.randint(0, n_classes, size=int(replace.sum()))
    return y_corrupted


def shuffle_labels(y, p, *, random_state=None):
    """Shuffled labels: a random fraction ``p`` of the labels is permuted among itself.

    With ``p=1`` every label is permuted: the class frequencies stay, the link between
    image and label is gone.
    """
    _check_fraction(p)
    rng = check_random_state(random_state)
    y = np.asarray(y)
    chosen = rng.choice(y.shape[0], size=int(round(p * y.shape[0])), replace=False)
    y_shuffled = y.copy()
    y_shuffled[chosen] = y[rng.permutation(chosen)]
    return y_shuffled


def shuffle_pixels(X, *, random_state=None):
    """Shuffled pixels: one random permutation of the pixels, the same for every image."""
    rng = check_random_state(random_state)
    X = np.asarray(X)
    return X[:, rng.permutation(X.shape[1])]


def random_pixels(X, *, random_state=None):
    """Random pixels: a different random permutation of the pixels for each image."""
    rng = check_random_state(random_state)
    X = np.asarray(X)
    order = np.argsort(rng.uniform(size=X.shape), axis=1)
    return np.take_along_axis(X, order, axis=1)


def gaussian_images(X, *, random_state=None):
    """Gaussian images: every pixel drawn from a normal distribution with the data's
    mean and variance."""
    rng = check_random_state(random_state)
    X = np.asarray(X)
    noise = rng.normal(X.mean(), X.std(), size=X.shape)
    return noise.astype(X.dtype, copy=False)


LABEL_CORRUPTIONS = {"corrupt": corrupt_labels, "shuffle": shuffle_labels}
INPUT_CORRUPTIONS = {
    "shuffled_pixels": shuffle_pixels,
    "random_pixels": random_pixels,
    "gaussian": gaussian_images,
}


def _check_fraction(p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"The corruption level p must be in [0, 1], got {p}.")
