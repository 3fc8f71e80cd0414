"""Speed and memory of SGDMLPClassifier against sklearn's MLPClassifier(solver="sgd").

Both estimators are timed in the same process, alternately, on MNIST 60k in float32 with
the same architecture, batch size, epochs, learning rate and momentum; the script prints
seconds per epoch and the ratio sklearn / skmlp (higher is better for skmlp). A "floor"
row times only what every implementation must do per epoch (gather the shuffled batches,
the first layer's forward and gradient products): sklearn / floor is the speed-up that
removing every other cost would give. Peak memory of a fit is measured with tracemalloc
and compared with the size of the training set and with that of the weights.

Run:  SKMLP_MNIST_DIR=../shared/data/mnist python benchmarks/bench_fit.py
"""

import argparse
import time
import tracemalloc
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_info

from skmlp import SGDMLPClassifier
from skmlp.datasets import load_mnist

CASES = [((16, 16), 100), ((512, 512), 128)][
    : int(__import__("os").environ.get("BENCH_CASES", 2))
]


def common_params(hidden, batch_size, epochs):
    return dict(
        hidden_layer_sizes=hidden,
        activation="relu",
        alpha=1e-4,
        batch_size=batch_size,
        learning_rate_init=0.01,
        momentum=0.9,
        max_iter=epochs,
        tol=0.0,
        n_iter_no_change=10**6,
        random_state=0,
    )


CLOCK = time.perf_counter  # --cpu-time: time.process_time


def seconds_per_epoch(estimator, X, y, epochs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = CLOCK()
        estimator.fit(X, y)
    return (CLOCK() - start) / epochs


def time_alternately(hidden, batch, X, y, epochs, repeats):
    """Seconds per epoch of each contender, ``repeats`` times, alternating."""
    params = common_params(hidden, batch, epochs)
    times = {"skmlp": [], "sklearn": []}
    if hidden == CASES[0][0]:  # wider layers add products of their own: no tight floor
        times["floor"] = []
    for repeat in range(repeats):  # alternate, so drift hits all alike
        times["skmlp"].append(
            seconds_per_epoch(SGDMLPClassifier(**params), X, y, epochs)
        )
        times["sklearn"].append(
            seconds_per_epoch(MLPClassifier(solver="sgd", **params), X, y, epochs)
        )
        if "floor" in times:
            times["floor"].append(floor_seconds_per_epoch(X, hidden, batch, repeat))
    return times


def print_row(name, batch, ours, theirs):
    """Best of each, their ratio, and the median ratio of runs made side by side."""
    paired = float(np.median(np.divide(theirs, ours)))
    print(
        f"{name:<16} {batch:>5} {min(ours):>14.3f} {min(theirs):>16.3f} "
        f"{min(theirs) / min(ours):>8.2f}x {paired:>15.2f}x"
    )


def floor_seconds_per_epoch(X, hidden, batch_size, seed=0):
    """Seconds per epoch of the work no NumPy implementation of the epoch can avoid.

    Gather each shuffled mini-batch and compute the first layer's two products
    (forward ``X_batch @ W``, gradient ``X_batch.T @ delta``); nothing else. The ratio
    sklearn / floor bounds the speed-up any NumPy-call-based implementation can reach.
    """
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((X.shape[1], hidden[0])).astype(X.dtype)
    delta = rng.standard_normal((batch_size, hidden[0])).astype(X.dtype)
    order = rng.permutation(X.shape[0])
    start = CLOCK()
    for begin in range(0, X.shape[0] - batch_size + 1, batch_size):
        X_batch = np.take(X, order[begin : begin + batch_size], axis=0)
        X_batch @ W
        X_batch.T @ delta
    return CLOCK() - start


def peak_extra_bytes(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        tracemalloc.start()
        estimator.fit(X, y)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by this process's CPU time, not wall time (steadier on a shared "
        "machine with OMP_NUM_THREADS=1: the waits for a core are left out)",
    )
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    data = load_mnist()
    X, y = data.X_train, data.y_train
    print(
        f"MNIST train {X.shape} {X.dtype}, {X.nbytes / 2**20:.0f} MiB; BLAS: "
        + ", ".join(
            f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info()
        )
    )
    print(
        f"{'network':<16} {'batch':>5} {'skmlp s/epoch':>14} "
        f"{'sklearn s/epoch':>16} {'speed-up':>9} {'median of pairs':>16}"
    )
    for hidden, batch in CASES:
        times = time_alternately(hidden, batch, X, y, args.epochs, args.repeats)
        name = "784-" + "-".join(map(str, hidden)) + "-10"
        print_row(name, batch, times["skmlp"], times["sklearn"])
        if "floor" in times:
            print_row("  floor", batch, times["floor"], times["sklearn"])
    print(
        "floor: gathering the shuffled batches and the first layer's two products, "
        "nothing else"
    )
    for hidden, batch in CASES:
        params = common_params(hidden, batch, 1)
        ours = SGDMLPClassifier(**params)
        peak = peak_extra_bytes(ours, X, y)
        ref = peak_extra_bytes(MLPClassifier(solver="sgd", **params), X, y)
        weights = sum(a.nbytes for a in ours.coefs_ + ours.intercepts_)
        print(
            f"peak extra memory of one fit, {hidden} batch {batch}: skmlp "
            f"{peak / 2**20:.1f} MiB = {peak / X.nbytes:.2f} x training set = "
            f"{peak / weights:.1f} x weights; sklearn {ref / 2**20:.1f} MiB = "
            f"{ref / X.nbytes:.2f} x"
        )


if __name__ == "__main__":
    main()
