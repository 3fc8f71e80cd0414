"""Training data: namespaces, classes, label encoding, targets, the validation split.

Pure functions shared by the estimator's ``fit`` and ``predict``; NumPy takes the fast
path, any other array namespace the array-API one, on its own device.
"""

from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import train_test_split
from sklearn.utils._array_api import (
    _convert_to_numpy,
    _is_numpy_namespace,
    get_namespace_and_device,
    move_to,
)
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import _check_sample_weight, validate_data

from skmlp._warnings import warn


def validate_training_data(estimator, X, y, sample_weight, *, dtype, reset):
    """``validate_data`` for a fit: labels and weights follow ``X``'s namespace.

    ``dtype``: "float32", "float64", an array dtype, or None (float32 input stays
    float32, anything else becomes float64).
    """
    xp_raw, _, device = get_namespace_and_device(X)
    if not _is_numpy_namespace(xp_raw):
        y, sample_weight = move_to(y, sample_weight, xp=xp_raw, device=device)
    xp, _ = namespace(X)
    if dtype is None:
        dtype = [xp.float64, xp.float32]
    elif isinstance(dtype, str):
        dtype = getattr(xp, dtype)
    X, y = validate_data(estimator, X, y, reset=reset, accept_sparse="csr", dtype=dtype)
    check_classification_targets(y)
    target_type = type_of_target(y)
    if target_type not in ("binary", "multiclass"):
        raise ValueError(
            f"Expected binary or multiclass labels, got {target_type!r} labels."
        )
    if sample_weight is not None:
        sample_weight = _check_sample_weight(
            sample_weight, X, dtype=X.dtype, ensure_non_negative=True
        )
    return X, y, sample_weight


def layer_sizes(hidden_layer_sizes):
    """The hidden layer sizes as a list of positive ints (one int is one layer)."""
    sizes = hidden_layer_sizes
    sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
    if any(not isinstance(s, Integral) or s < 1 for s in sizes):
        raise ValueError(
            f"hidden_layer_sizes must contain positive integers, got {sizes}."
        )
    return [int(s) for s in sizes]


def batch_size_for(batch_size, n_samples):
    """The mini-batch size of a fit on ``n_samples`` rows (``"auto"``: up to 200)."""
    if batch_size == "auto":
        return min(200, n_samples)
    if batch_size > n_samples:
        warn(
            f"Got batch_size={batch_size} larger than the number of samples "
            f"({n_samples}); using batches of {n_samples}.",
            UserWarning,
        )
    return min(batch_size, n_samples)


def check_classes(y, classes, known, incremental, xp, device):
    """The classes of a fit: from ``classes`` or ``y``, or ``known`` ones checked.

    ``known`` (None on a first call) are the classes already fitted: ``classes`` must
    equal them, and so must those of ``y`` in a warm-started ``fit`` (MLPClassifier's
    rule and words); ``partial_fit`` accepts a ``y`` with fewer classes.
    """
    if known is not None:
        if classes is not None and not same_labels(classes, known):
            raise ValueError(
                f"classes={np.asarray(classes)!r} is not the same as on the first "
                f"call to partial_fit, which was {known!r}."
            )
        if not incremental and not same_labels(y, known):
            raise ValueError(
                "warm_start can only be used where `y` has the same classes as in "
                f"the previous call to fit. Previously got {known!r}, `y` has "
                f"{sorted_unique(y, xp, device)!r}."
            )
        return known
    found = sorted_unique(y if classes is None else classes, xp, device)
    if found.shape[0] < 2:
        raise ValueError(
            "The training data must contain samples of at least 2 classes; got "
            f"only 1 class: {found!r}."
        )
    return found


def namespace(*arrays):
    """The array namespace of ``arrays`` and their device.

    For NumPy arrays this is NumPy itself: NumPy >= 2.1 implements the standard, and
    the compatibility wrapper sklearn returns costs microseconds per call, which adds
    up over thousands of mini-batches.
    """
    xp, _, device = get_namespace_and_device(*arrays)
    return (np if _is_numpy_namespace(xp) else xp), device


def to_numpy(values):
    xp, _ = namespace(values)
    return np.asarray(values) if xp is np else _convert_to_numpy(values, xp)


def sorted_unique(labels, xp, device):
    """The distinct labels, sorted (any label type, strings included, for NumPy)."""
    if _is_numpy_namespace(xp):
        return np.unique(np.asarray(labels))
    return xp.sort(xp.unique_values(xp.asarray(labels, device=device)))


def same_labels(labels, classes):
    """Whether the distinct values of ``labels`` are exactly ``classes``."""
    labels, known = np.unique(to_numpy(labels)), to_numpy(classes)
    return labels.shape == known.shape and bool(np.all(labels == known))


def encode(y, classes, xp):
    """Indices of ``y`` in the sorted ``classes``; error for labels that are not classes."""
    if _is_numpy_namespace(xp):
        y, classes = np.asarray(y), np.asarray(classes)
        indices = np.clip(np.searchsorted(classes, y), 0, classes.shape[0] - 1)
        unknown = classes[indices] != y
    else:
        indices = xp.clip(xp.searchsorted(classes, y), max=classes.shape[0] - 1)
        unknown = xp.take(classes, indices) != y
    if bool(xp.any(xp.asarray(unknown))):
        bad = np.unique(_convert_to_numpy(y, xp)[_convert_to_numpy(unknown, xp)])
        raise ValueError(
            f"y contains labels {bad.tolist()} that are not in classes "
            f"{to_numpy(classes).tolist()}."
        )
    return indices


def decode(indices, classes, xp):
    """The labels at ``indices`` of ``classes``."""
    if _is_numpy_namespace(xp):
        return classes[indices]
    return xp.take(classes, indices)


def targets(y_indices, n_classes, dtype, xp, device):
    """Output-layer encoding of the labels: one-hot, or a 0/1 column if binary."""
    y_indices = xp.asarray(y_indices, device=device)
    if n_classes == 2:
        return xp.astype(y_indices[:, None] == 1, dtype)
    columns = xp.arange(n_classes, device=device)
    return xp.astype(y_indices[:, None] == columns, dtype)


def take_rows(X, rows, xp):
    """Rows of ``X`` (an array or a sparse matrix) at a slice or an index array."""
    if sp.issparse(X):
        return X[rows]
    if isinstance(rows, slice):
        return X[rows, ...]
    return xp.take(X, rows, axis=0)


def split_data(X, y_indices, sample_weight, validation_fraction, random_state):
    """``(train, validation)``: two ``(X, y_indices, sample_weight)`` triples.

    The split is stratified and drawn from ``random_state``, as in MLPClassifier.
    """
    xp, device = namespace(y_indices)
    train, val = train_test_split(
        np.arange(X.shape[0]),
        test_size=validation_fraction,
        stratify=to_numpy(y_indices),
        random_state=random_state,
    )
    if val.shape[0] < 2:
        raise ValueError(
            "The validation set is too small. Increase 'validation_fraction' "
            "or the size of your dataset."
        )
    return tuple(
        tuple(
            None if a is None else take_rows(a, xp.asarray(rows, device=device), xp)
            for a in (X, y_indices, sample_weight)
        )
        for rows in (train, val)
    )
