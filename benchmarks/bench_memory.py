"""Peak memory of a fit as a multiple of the weights, skmlp against MLPClassifier.

A network wide enough for its weights to dominate (784-8192-10, 6.5M parameters) is
fitted for 2 epochs on 1000 random rows, so the batch buffers and the data weigh little
beside the weights. tracemalloc measures everything NumPy allocates during ``fit``,
printed beside the up-front memory check's estimate (``skmlp._state.memory_needed``).

Run:  python benchmarks/bench_memory.py
"""

import warnings

import numpy as np
from bench_fit import peak_extra_bytes
from sklearn.neural_network import MLPClassifier

from skmlp import SGDMLPClassifier
from skmlp._state import memory_needed


def main():
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    y = np.arange(1000) % 10
    common = dict(hidden_layer_sizes=(8192,), batch_size=100, max_iter=2)
    for dtype in ("float32", "float64"):
        X = rng.random((1000, 784)).astype(dtype)
        for early_stopping in (False, True):
            ours = SGDMLPClassifier(
                **common, dtype=dtype, early_stopping=early_stopping
            )
            peak = peak_extra_bytes(ours, X, y)
            weights = sum(a.nbytes for a in ours.coefs_ + ours.intercepts_)
            ref = MLPClassifier(
                **common, solver="sgd", early_stopping=early_stopping
            )  # MLPClassifier computes in X's dtype
            ref_peak = peak_extra_bytes(ref, X, y)
            units = [784, *common["hidden_layer_sizes"], 10]
            itemsize = np.dtype(dtype).itemsize
            estimate = memory_needed(units, itemsize, 1000, 100, early_stopping)
            print(
                f"{dtype} early_stopping={early_stopping!s:<5} weights "
                f"{weights / 2**20:5.1f} MiB: skmlp peak {peak / weights:.1f} x "
                f"weights (estimated {estimate / weights:.1f} x), MLPClassifier "
                f"{ref_peak / weights:.1f} x"
            )


if __name__ == "__main__":
    main()
