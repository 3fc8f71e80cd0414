"""Label and input corruptions of the memorization experiment."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skmlp.corruption import (
    corrupt_labels,
    gaussian_images,
    random_pixels,
    shuffle_labels,
    shuffle_pixels,
)


@pytest.fixture
def labels():
    return np.arange(20000) % 10


@pytest.mark.parametrize("p", [0.0, 0.2, 0.6, 1.0])
def test_corrupt_labels_replaces_a_fraction_p_by_uniform_classes(labels, p):
    corrupted = corrupt_labels(labels, p, random_state=0)
    changed = np.mean(corrupted != labels)
    # a replaced label keeps its class with probability 1/10
    assert changed == pytest.approx(p * 0.9, abs=0.015)
    assert np.bincount(corrupted, minlength=10).min() > 1800  # still ~uniform


@pytest.mark.parametrize("p", [0.0, 0.4, 1.0])
def test_shuffle_labels_permutes_a_fraction_p(labels, p):
    shuffled = shuffle_labels(labels, p, random_state=0)
    assert_array_equal(np.bincount(shuffled), np.bincount(labels))  # same frequencies
    assert np.mean(shuffled != labels) == pytest.approx(p * 0.9, abs=0.015)


def test_corruptions_are_seeded_and_leave_inputs_alone(labels):
    original = labels.copy()
    assert_array_equal(
        shuffle_labels(labels, 0.5, random_state=3),
        shuffle_labels(labels, 0.5, random_state=3),
    )
    assert not np.array_equal(
        corrupt_labels(labels, 0.5, random_state=3),
        corrupt_labels(labels, 0.5, random_state=4),
    )
    assert_array_equal(labels, original)


def test_corruption_level_outside_0_1_is_refused(labels):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        corrupt_labels(labels, 1.5)


def test_shuffled_pixels_use_one_permutation_for_all_images(rng):
    X = rng.random((50, 16))
    shuffled = shuffle_pixels(X, random_state=0)
    order = np.argsort(shuffled[0])
    assert_array_equal(np.sort(shuffled, axis=1), np.sort(X, axis=1))
    # the permutation that maps image 0 maps every image
    permutation = [int(np.flatnonzero(X[0] == v)[0]) for v in shuffled[0]]
    assert_array_equal(shuffled, X[:, permutation])
    assert order.shape == (16,)


def test_random_pixels_use_a_permutation_per_image(rng):
    X = rng.random((50, 16))
    shuffled = random_pixels(X, random_state=0)
    assert_array_equal(np.sort(shuffled, axis=1), np.sort(X, axis=1))
    permutations = {tuple(np.argsort(np.argsort(row))) for row in shuffled - 0}
    assert len(permutations) > 1


def test_gaussian_images_match_mean_and_variance(rng):
    X = rng.uniform(size=(2000, 64)).astype(np.float32)
    noise = gaussian_images(X, random_state=0)
    assert noise.dtype == np.float32 and noise.shape == X.shape
    assert noise.mean() == pytest.approx(X.mean(), abs=0.01)
    assert noise.std() == pytest.approx(X.std(), rel=0.02)
