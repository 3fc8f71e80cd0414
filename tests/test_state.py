"""The up-front memory check: its estimate against measured peaks, and its limits."""

import subprocess
import sys
import textwrap
import tracemalloc
import warnings

import numpy as np
import pytest

from skmlp import SGDMLPClassifier
from skmlp._state import memory_needed


@pytest.mark.parametrize(
    ("hidden", "batch_size", "early_stopping", "dtype"),
    [
        ((8000,), 200, False, "float64"),  # a short last batch (1797 = 8 x 200 + 197)
        ((8000,), 100, True, "float32"),
        ((1000, 1000), 200, False, "float64"),  # weights dominate
        ((4000,), 1797, False, "float64"),  # one batch: activations dominate
    ],
)
def test_the_estimate_is_within_25_percent_of_the_measured_peak(
    digits, hidden, batch_size, early_stopping, dtype
):
    """tracemalloc's peak of a fit (what NumPy allocates) beside ``memory_needed``."""
    X, y = digits
    clf = SGDMLPClassifier(
        hidden, batch_size=batch_size, early_stopping=early_stopping, dtype=dtype,
        max_iter=2, random_state=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracemalloc.start()
        try:
            clf.fit(X, y)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    units = [X.shape[1], *hidden, 10]
    itemsize = np.dtype(dtype).itemsize
    estimate = memory_needed(units, itemsize, X.shape[0], batch_size, early_stopping)
    assert 0.75 <= peak / estimate <= 1.25, (peak / 2**20, estimate / 2**20)


def test_a_fit_larger_than_ulimit_v_allows_fails_up_front(tmp_path):
    """The machine has memory to spare, but the process may map only so much more:
    the check says so before anything is allocated (no MemoryError mid-fit)."""
    code = textwrap.dedent(
        """
        import os, resource
        from sklearn.datasets import load_digits
        from skmlp import SGDMLPClassifier
        X, y = load_digits(return_X_y=True)
        pages = int(open("/proc/self/statm").read().split()[0])
        mapped = pages * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (mapped + 400 * 2**20, hard))
        clf = SGDMLPClassifier((100000,), max_iter=1, dtype="float64")
        try:
            clf.fit(X / 16, y)
        except MemoryError as exc:
            print("refused:", exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: A network of layer sizes [64, 100000, 10]" in result.stdout
    assert "GiB of memory is available" in result.stdout
