"""Throughput of ``fit_together`` on MNIST 60k, against fits one at a time.

1. Six 784-16-16-10 networks at batch 100, learning rates 0.002 ... 0.05, one
   ``random_state``, fitted together: each member's share of the joint epoch, against
   ``MLPClassifier(solver="sgd")`` and one ``SGDMLPClassifier`` with the same settings
   (learning rate 0.01), timed in the same run, alternately; and the bound: the time of
   the joint epoch's two wide first-layer products alone, against sklearn.
   With ``--n-jobs N`` (default 2), also ``fit_together(..., n_jobs=N)`` (each part of
   the group in a joblib worker), against sklearn alone and against the six
   ``MLPClassifier`` fits run by joblib in N workers (the peer given the same cores);
   always by wall time, each call as a whole (sharing ``X`` with the workers included;
   their start is paid before the timed rounds).
2. Six 784-512-512-10 networks at batch 128 (same learning rates): together, against the
   six fitted one after the other by ``SGDMLPClassifier``.

The ratios (higher is better for ``fit_together``) are the numbers to read: absolute
times drift on a shared machine. Each ratio is also given as the median of the ratios of
runs made side by side.

Run:  OMP_NUM_THREADS=1 SKMLP_MNIST_DIR=../shared/data/mnist \
      python benchmarks/bench_together.py
(one BLAS thread: on a loaded 2-core machine two BLAS threads made every timing erratic,
sklearn's 0.25 to 7 s/epoch.) Add ``--cpu-time`` on a shared machine: with one thread
per side, the process's CPU time leaves out the waits for a core.
"""

import argparse
import time
import warnings

import numpy as np
from bench_fit import common_params
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from skmlp import SGDMLPClassifier, fit_together
from skmlp.datasets import load_mnist

LEARNING_RATES = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05)
# wall time by default; --cpu-time: the process's CPU time, which leaves out the waits
# for a core on a shared machine (both sides run in one thread: one BLAS thread)
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def seconds_per_epoch(estimator, X, y, epochs, clock="wall"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = CLOCK[clock]()
        estimator.fit(X, y)
    return (CLOCK[clock]() - start) / epochs


def members(hidden, batch, epochs):
    return [
        SGDMLPClassifier(
            **{**common_params(hidden, batch, epochs), "learning_rate_init": lr}
        )
        for lr in LEARNING_RATES
    ]


def together_seconds_per_member_epoch(hidden, batch, X, y, epochs, clock, n_jobs=None):
    estimators = members(hidden, batch, epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = CLOCK[clock]()
        fit_together(estimators, X, y, n_jobs=n_jobs)
    seconds = CLOCK[clock]() - start
    assert all(est.n_iter_ == epochs for est in estimators)
    return seconds / (epochs * len(estimators))


def separate_seconds_per_member_epoch(hidden, batch, X, y, epochs, clock):
    estimators = members(hidden, batch, epochs)
    total = sum(seconds_per_epoch(est, X, y, epochs, clock) for est in estimators)
    return total / len(estimators)


def _fit_quietly(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


def sklearn_parallel_seconds_per_member_epoch(hidden, batch, X, y, epochs, n_jobs):
    """The peer given the same cores: the six ``MLPClassifier`` fits in ``n_jobs``
    joblib workers (as ``GridSearchCV(n_jobs=...)`` would run them)."""
    fits = [
        MLPClassifier(
            solver="sgd",
            **{**common_params(hidden, batch, epochs), "learning_rate_init": lr},
        )
        for lr in LEARNING_RATES
    ]
    start = time.perf_counter()
    Parallel(n_jobs=n_jobs)(delayed(_fit_quietly)(est, X, y) for est in fits)
    return (time.perf_counter() - start) / (epochs * len(fits))


def first_layer_seconds_per_member_epoch(hidden, batch, X, clock):
    """The floor of a joint epoch: only its two wide first-layer products per batch,
    ``X_b @ W`` (batch x 784 @ 784 x 6*16) and ``X_b^T @ delta``, per member."""
    rng = np.random.default_rng(0)
    width = len(LEARNING_RATES) * hidden[0]
    W = rng.standard_normal((X.shape[1], width)).astype(X.dtype)
    delta = rng.standard_normal((batch, width)).astype(X.dtype)
    z, grad = np.empty((batch, width), X.dtype), np.empty_like(W)
    start = CLOCK[clock]()
    for begin in range(0, X.shape[0] - batch + 1, batch):
        X_batch = X[begin : begin + batch]
        np.matmul(X_batch, W, out=z)
        np.matmul(X_batch.T, delta, out=grad)
    return (CLOCK[clock]() - start) / len(LEARNING_RATES)


def report(name, ours, theirs, peer):
    paired = float(np.median(np.divide(theirs, ours)))
    print(
        f"{name:<34} {min(theirs):>9.3f} s/epoch   together {min(ours):>7.3f} "
        f"s/epoch per member   {min(theirs) / min(ours):>6.2f}x "
        f"(median of pairs {paired:.2f}x) vs {peer}"
    )


def small(X, y, epochs, repeats, clock, n_jobs):
    hidden, batch = (16, 16), 100
    times = {"together": [], "sklearn": [], "skmlp": [], "products": []}
    if n_jobs > 1:  # the workers start once (as in a session's first call)
        start = time.perf_counter()
        together_seconds_per_member_epoch(hidden, batch, X, y, 1, clock, n_jobs)
        print(
            f"(n_jobs={n_jobs}: the first call, 1 epoch, workers starting, took "
            f"{time.perf_counter() - start:.2f} s wall; timed calls find them started)"
        )
        times.update({"parallel": [], "sklearn parallel": []})
    for _ in range(repeats):  # alternate, so drift hits all alike
        params = common_params(hidden, batch, epochs)
        times["together"].append(
            together_seconds_per_member_epoch(hidden, batch, X, y, epochs, clock)
        )
        if n_jobs > 1:
            times["parallel"].append(
                together_seconds_per_member_epoch(
                    hidden, batch, X, y, epochs, "wall", n_jobs
                )
            )
            times["sklearn parallel"].append(
                sklearn_parallel_seconds_per_member_epoch(
                    hidden, batch, X, y, epochs, n_jobs
                )
            )
        sklearn = MLPClassifier(solver="sgd", **params)
        times["sklearn"].append(seconds_per_epoch(sklearn, X, y, epochs, clock))
        skmlp = SGDMLPClassifier(**params)
        times["skmlp"].append(seconds_per_epoch(skmlp, X, y, epochs, clock))
        times["products"].append(
            first_layer_seconds_per_member_epoch(hidden, batch, X, clock)
        )
    for peer in ("sklearn", "skmlp"):
        report("6 x 784-16-16-10, batch 100", times["together"], times[peer], peer)
    if n_jobs > 1:  # wall time: the workers' CPU time is not this process's
        for peer in ("sklearn", "sklearn parallel"):
            report(
                f"  the same, n_jobs={n_jobs}",
                times["parallel"],
                times[peer],
                peer if peer == "sklearn" else f"6 MLPClassifier fits, n_jobs={n_jobs}",
            )
    report(
        "  bound: first-layer products only",
        times["products"],
        times["sklearn"],
        "sklearn (the most any joint epoch could reach)",
    )


def wide(X, y, epochs, repeats, clock):
    hidden, batch = (512, 512), 128
    times = {"together": [], "separate": []}
    for _ in range(repeats):
        times["together"].append(
            together_seconds_per_member_epoch(hidden, batch, X, y, epochs, clock)
        )
        times["separate"].append(
            separate_seconds_per_member_epoch(hidden, batch, X, y, epochs, clock)
        )
    report(
        "6 x 784-512-512-10, batch 128",
        times["together"],
        times["separate"],
        "6 separate skmlp fits",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wide-epochs", type=int, default=1)
    parser.add_argument("--wide-repeats", type=int, default=1)
    parser.add_argument("--skip-wide", action="store_true")
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=2,
        help="also time fit_together(n_jobs=...) and the six sklearn fits in as many "
        "workers (1: neither)",
    )
    parser.add_argument(
        "--cpu-time", action="store_true", help="time by CPU time, not wall time"
    )
    args = parser.parse_args()
    clock = "cpu" if args.cpu_time else "wall"
    if args.cpu_time and args.n_jobs > 1:  # the workers' CPU time is not ours
        print("--cpu-time: the n_jobs rows (wall time only) are left out")
        args.n_jobs = 1
    data = load_mnist()
    X, y = data.X_train, data.y_train
    print(
        f"MNIST train {X.shape} {X.dtype}; learning rates {LEARNING_RATES}; "
        f"{clock} time"
    )
    small(X, y, args.epochs, args.repeats, clock, args.n_jobs)
    if not args.skip_wide:
        wide(X, y, args.wide_epochs, args.wide_repeats, clock)


if __name__ == "__main__":
    main()
