import os

# SciPy reads this at import: it lets sklearn's estimator checks (and ours) run the
# array-API code paths with array-api-strict and torch.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits():
    """sklearn's 8x8 digits scaled to [0, 1] (read-only arrays: tests cannot alter them)."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


@pytest.fixture(scope="session")
def mnist():
    """MNIST from $SKMLP_MNIST_DIR (CI points it at ../shared/data/mnist)."""
    from skmlp.datasets import load_mnist

    data_dir = os.environ.get("SKMLP_MNIST_DIR")
    if not data_dir or not Path(data_dir).is_dir():
        pytest.skip("set SKMLP_MNIST_DIR to the directory of the MNIST IDX files")
    return load_mnist(data_dir)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
