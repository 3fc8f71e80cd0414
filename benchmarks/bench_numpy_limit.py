"""How fast can a NumPy-call implementation of the seed network's epoch be?

Times, alternately on MNIST 60k in float32 (784-16-16-10, ReLU, softmax, batch 100,
momentum 0.9):

- ``sklearn``: ``MLPClassifier(solver="sgd")``, seconds per epoch of a 3-epoch fit;
- ``skmlp``: ``SGDMLPClassifier``, its fastest epoch (``history_``);
- ``minimal``: a hand-inlined NumPy loop doing only what one SGD step needs (forward,
  softmax, backprop, momentum update; no cost, no L2 term, no bookkeeping), with
  preallocated buffers and flat parameter arrays;
- ``floor``: the gather of each batch and the first layer's two products, nothing else.

sklearn / minimal bounds what removing all of skmlp's bookkeeping could give.

Run:  SKMLP_MNIST_DIR=../shared/data/mnist python benchmarks/bench_numpy_limit.py
"""

import time
import warnings

import numpy as np
from bench_fit import common_params, floor_seconds_per_epoch
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from skmlp import SGDMLPClassifier
from skmlp._state import FlatParams
from skmlp.datasets import load_mnist

SIZES, BATCH, EPOCHS = (784, 16, 16, 10), 100, 3


def minimal_epoch(X, Y, order, params, velocity, lr=0.01, momentum=0.9):
    """One epoch of the bare SGD step; ``params`` (a ``FlatParams``) and ``velocity``
    (its flat twin) are updated in place."""
    (W1, W2, W3), (b1, b2, b3) = params.layers()
    grad_flat = np.empty_like(params.flat)
    G1, G2, G3, g1, g2, g3 = params.views(grad_flat)
    H1, H2 = np.empty((BATCH, 16), np.float32), np.empty((BATCH, 16), np.float32)
    Z = np.empty((10, BATCH), np.float32)
    ones, zero = np.ones(BATCH, np.float32), np.zeros((), np.float32)
    for begin in range(0, X.shape[0] - BATCH + 1, BATCH):
        rows = order[begin : begin + BATCH]
        Xb, Yb = np.take(X, rows, axis=0), np.take(Y, rows, axis=0)
        np.matmul(Xb, W1, out=H1)
        H1 += b1
        np.maximum(H1, zero, out=H1)
        np.matmul(H1, W2, out=H2)
        H2 += b2
        np.maximum(H2, zero, out=H2)
        np.matmul(W3.T, H2.T, out=Z)
        Z += b3[:, None]
        Z -= np.maximum.reduce(Z, axis=0)
        np.exp(Z, out=Z)
        Z /= np.add.reduce(Z, axis=0)
        Z -= Yb.T
        np.matmul(H2.T, Z.T, out=G3)
        np.matmul(Z, ones, out=g3)
        D = np.matmul(Z.T, W3.T)
        D *= H2 > zero
        np.matmul(H1.T, D, out=G2)
        np.matmul(ones, D, out=g2)
        D = np.matmul(D, W2.T)
        D *= H1 > zero
        np.matmul(Xb.T, D, out=G1)
        np.matmul(ones, D, out=g1)
        grad_flat *= lr / BATCH
        velocity *= momentum
        velocity -= grad_flat
        params.flat += velocity


def main(repeats=5):
    data = load_mnist()
    X, y = data.X_train, data.y_train
    Y = np.eye(10, dtype=np.float32)[y]
    rng = np.random.default_rng(0)
    params = FlatParams(
        [
            rng.uniform(-0.1, 0.1, (fan_in, fan_out)).astype(np.float32)
            for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:], strict=True)
        ],
        [np.zeros(fan_out, np.float32) for fan_out in SIZES[1:]],
        np,
    )
    velocity = np.zeros_like(params.flat)
    common = common_params(SIZES[1:-1], BATCH, EPOCHS)
    times = {"sklearn": [], "skmlp": [], "minimal": [], "floor": []}
    warnings.simplefilter("ignore", ConvergenceWarning)
    for repeat in range(repeats):
        start = time.perf_counter()
        MLPClassifier(solver="sgd", **common).fit(X, y)
        times["sklearn"].append((time.perf_counter() - start) / EPOCHS)
        ours = SGDMLPClassifier(**common).fit(X, y)
        times["skmlp"].append(float(ours.history_["seconds"].min()))
        start = time.perf_counter()
        minimal_epoch(X, Y, rng.permutation(X.shape[0]), params, velocity)
        times["minimal"].append(time.perf_counter() - start)
        times["floor"].append(floor_seconds_per_epoch(X, SIZES[1:-1], BATCH, repeat))
    sklearn = np.array(times["sklearn"])
    print(f"{'':<8} {'s/epoch':>8} {'sklearn/this':>13} {'median of pairs':>16}")
    for name, seconds in times.items():
        seconds = np.array(seconds)
        print(
            f"{name:<8} {seconds.min():>8.3f} {sklearn.min() / seconds.min():>12.2f}x "
            f"{np.median(sklearn / seconds):>15.2f}x"
        )


if __name__ == "__main__":
    main()
