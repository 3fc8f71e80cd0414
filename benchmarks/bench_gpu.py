"""skmlp on a GPU (torch CUDA, CuPy) against a plain torch eager loop, in the same run.

The contenders train the same network (ReLU, Glorot-uniform initialisation of weights and
biases), on the same data on the same device, with the same batch size, learning rate,
momentum (Nesterov), and L2 term:

- ``skmlp torch``: SGDMLPClassifier on torch tensors (array-API dispatch);
- ``skmlp cupy``: SGDMLPClassifier on CuPy arrays (skipped without CuPy or a GPU);
- ``skmlp eager``: as ``skmlp torch`` with ``capture=False`` (no CUDA graph: the gain of
  capture is ``skmlp eager / skmlp torch``);
- ``torch loop``: ``nn.Sequential``, autograd and ``torch.optim.SGD``, the loop a torch user
  writes (shuffle with ``randperm``, index the batch, step; the loss is summed on the device
  and read once per epoch). Checked by hand: given skmlp's initial weights and the same
  batch order, one epoch of this loop gives skmlp's weights to 1e-16 (float64).

It prints, per network, seconds per epoch (median of the epochs after the first) and the
first epoch's seconds (which include any one-off set-up such as graph capture), and the
ratios. Then the shuffled-labels check: 784-512-512-10 on the shuffled training labels
(Zhang et al.'s optimiser: batch 128, learning rate 0.01, momentum 0.9, no L2), stopped
once the training accuracy (evaluated on the device after each epoch) reaches 99.9 %:
the accuracy reached and the training seconds (target: >= 99.9 % within 15 s).
With ``--together-epochs N``: six networks of each memorization shape, one per
shuffled fraction of the labels, as one ``fit_together`` group whose epoch is one
captured graph, against the same group eager and against six captured single fits
(seconds per epoch for all six).

Run:  SKMLP_MNIST_DIR=../shared/data/mnist python benchmarks/bench_gpu.py
CPU smoke test (torch on the CPU):
      python benchmarks/bench_gpu.py --device cpu --epochs 2 --n-samples 2000
"""

import argparse
import math
import os
import time
import warnings

os.environ.setdefault("SCIPY_ARRAY_API", "1")  # before SciPy's import (array-API mode)

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils._array_api import get_namespace  # noqa: E402

from skmlp import SGDMLPClassifier, fit_together  # noqa: E402
from skmlp.corruption import LABEL_CORRUPTIONS  # noqa: E402
from skmlp.datasets import load_mnist  # noqa: E402

CASES = [((16, 16), 100), ((512, 512), 128)]
LEARNING_RATE, MOMENTUM, ALPHA = 0.01, 0.9, 1e-4
# Zhang et al.'s optimiser for MLPs, as the memorization experiment trains them
ZHANG = dict(learning_rate_init=0.01, momentum=0.9, nesterovs_momentum=False, alpha=0.0)


class EpochClock:
    """sklearn callback: the time at the end of each epoch; stops the fit once
    ``stop(fitted_estimator)`` is true or ``time_limit`` seconds have passed."""

    def __init__(self, stop=None, time_limit=math.inf):
        self.stop, self.time_limit = stop, time_limit
        self.start, self.ends, self.last = None, [], None

    def setup(self, estimator, context):
        self.start, self.ends = time.perf_counter(), []

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context):
        pass

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None):
        if context.task_name != "epoch" or fitted_estimator is None:
            return False
        self.ends.append(time.perf_counter())
        if self.stop is not None:
            self.last = self.stop(fitted_estimator)
            if self.last is True:
                return True
        return self.ends[-1] - self.start > self.time_limit

    def epoch_seconds(self):
        """Seconds of each epoch (the first counts from the start of the fit)."""
        return np.diff([self.start, *self.ends])


def network(hidden, batch, epochs, capture=True, **optimiser):
    """An SGDMLPClassifier that runs ``epochs`` epochs (no stopping rule), float32."""
    return SGDMLPClassifier(
        hidden_layer_sizes=hidden,
        batch_size=batch,
        max_iter=epochs,
        tol=0.0,
        n_iter_no_change=10**6,
        random_state=0,
        dtype="float32",
        capture=capture,
        **optimiser,
    )


def skmlp_epochs(xp_X, xp_y, hidden, batch, epochs, capture=True):
    """Seconds of each epoch of SGDMLPClassifier on the arrays' device, and its last
    epoch's training loss."""
    clock = EpochClock()
    model = network(
        hidden, batch, epochs, capture,
        learning_rate_init=LEARNING_RATE, momentum=MOMENTUM, alpha=ALPHA,
    )  # fmt: skip
    model.set_callbacks(clock)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(xp_X, xp_y)
    return clock.epoch_seconds(), model.loss_curve_[-1]


def together_epochs(xp_X, labels, hidden, batch, epochs, capture=True):
    """Seconds of each joint epoch of ``fit_together`` over one member per label
    array (Zhang et al.'s optimiser, one ``random_state``), and the last member's
    last loss."""
    clock = EpochClock()
    members = [network(hidden, batch, epochs, capture, **ZHANG) for _ in labels]
    members[0].set_callbacks(clock)  # its epochs end when the group's joint epoch does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture fails here
        fit_together(members, xp_X, list(labels))
    return clock.epoch_seconds(), members[-1].loss_curve_[-1]


def print_together(name, batch, n_members, results, separate):
    """Joint epochs (graph, eager) against the members' own captured fits."""
    steady = {k: float(np.median(s[1:])) for k, (s, _) in results.items()}
    steady["separate"] = n_members * float(np.median(separate[0][1:]))
    for contender, seconds in steady.items():
        print(
            f"{name:<16} {batch:>5}  {contender:<16} {seconds:>10.4f} s/epoch "
            f"for all {n_members}"
        )
    print(
        f"{'':<16} {'':>5}  ratios: separate / together graph = "
        f"{steady['separate'] / steady['together graph']:.2f}x; together eager / "
        f"together graph = {steady['together eager'] / steady['together graph']:.2f}x"
    )


def together_cases(tX, y, epochs, cupy_data=None):
    """6 members, one per shuffled fraction of the labels (the memorization sweep);
    with ``cupy_data`` (X, y as CuPy arrays) the group on CuPy too."""
    shuffled = [
        LABEL_CORRUPTIONS["shuffle"](y, p, random_state=0)
        for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    ]
    labels = [torch.asarray(labels, device=tX.device) for labels in shuffled]
    print(f"fit_together, {len(labels)} members (p = 0 ... 1), {epochs} epochs each:")
    for hidden, batch in [((16, 16), 128), ((512,), 128), ((512, 512), 128)]:
        results = {
            "together graph": together_epochs(tX, labels, hidden, batch, epochs),
            "together eager": together_epochs(
                tX, labels, hidden, batch, epochs, capture=False
            ),
        }
        if cupy_data is not None:
            import cupy

            results["together cupy"] = together_epochs(
                cupy_data[0], [cupy.asarray(a) for a in shuffled], hidden, batch, epochs
            )
        separate = together_epochs(tX, labels[:1], hidden, batch, epochs)
        name = "784-" + "-".join(map(str, hidden)) + "-10"
        print_together(name, batch, len(labels), results, separate)


def torch_network(sizes, device):
    """``nn.Sequential`` of Linear + ReLU with skmlp's (MLPClassifier's) initialisation."""
    torch.manual_seed(0)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        linear = torch.nn.Linear(fan_in, fan_out)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        torch.nn.init.uniform_(linear.weight, -bound, bound)
        torch.nn.init.uniform_(linear.bias, -bound, bound)
        layers += [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).to(device)


def torch_loop_epochs(X, y, hidden, batch, epochs):
    """Seconds of each epoch of the plain torch loop on ``X``'s device, and its last
    epoch's training loss (mean cross-entropy plus the L2 term, as skmlp reports it)."""
    network = torch_network([X.shape[1], *hidden, 10], X.device)
    weights = [p for name, p in network.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in network.named_parameters() if name.endswith("bias")]
    # skmlp's L2 gradient is alpha * W / batch size: torch's weight decay on weights.
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": ALPHA / batch}, {"params": biases}],
        lr=LEARNING_RATE,
        momentum=MOMENTUM,
        nesterov=True,
    )
    loss_function = torch.nn.CrossEntropyLoss()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(X.shape[0], device=X.device)
        total = torch.zeros((), device=X.device)
        for begin in range(0, X.shape[0], batch):
            rows = order[begin : begin + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(X[rows]), y[rows])
            loss.backward()
            optimizer.step()
            total += loss.detach() * rows.shape[0]
        loss = float(total) / X.shape[0]  # read once: the device is done
        seconds.append(time.perf_counter() - start)
    penalty = sum(float(torch.sum(w.detach() ** 2)) for w in weights)
    return np.array(seconds), loss + 0.5 * ALPHA / X.shape[0] * penalty


def shuffled_labels_check(X, y, seconds_limit):
    """Train 784-512-512-10 on ``y`` (shuffled labels) until 99.9 % training accuracy,
    or ``seconds_limit``. Returns the accuracy reached, the fit's seconds, the epochs."""
    xp = get_namespace(X)[0]

    def training_accuracy(model):  # on the device: one number comes back
        return float(xp.mean(xp.astype(model.predict(X) == y, xp.float32)))

    clock = EpochClock(lambda m: training_accuracy(m) >= 0.999, seconds_limit)
    model = network((512, 512), 128, 10_000, **ZHANG)
    model.set_callbacks(clock)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    return training_accuracy(model), time.perf_counter() - start, len(clock.ends)


def cupy_arrays(X, y):
    """``X``, ``y`` as CuPy arrays, or None where CuPy or its GPU is missing."""
    try:
        import cupy

        return cupy.asarray(X), cupy.asarray(y)
    except Exception as exc:  # noqa: BLE001 - no CuPy, no driver, no GPU: say so, go on
        print(f"skmlp cupy: skipped ({type(exc).__name__}: {exc})")
        return None


def print_case(name, batch, results):
    """One row per contender (s/epoch, first epoch, last loss), then the ratios."""
    steady = {}
    for contender, (seconds, loss) in results.items():
        steady[contender] = float(
            np.median(seconds[1:] if len(seconds) > 1 else seconds)
        )
        later = f"{steady[contender]:.4f}" if len(seconds) > 1 else "-"
        print(
            f"{name:<16} {batch:>5}  {contender:<12} {later:>14} "
            f"{seconds[0]:>14.3f} {loss:>10.4f}"
        )
    pairs = [("torch loop", "skmlp torch"), ("torch loop", "skmlp cupy")]
    pairs += [("skmlp cupy", "skmlp torch"), ("skmlp eager", "skmlp torch")]
    ratios = [
        f"{a} / {b} = {steady[a] / steady[b]:.2f}x"
        for a, b in pairs
        if a in steady and b in steady
    ]
    print(f"{'':<16} {'':>5}  ratios of s/epoch: " + "; ".join(ratios))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per contender")
    parser.add_argument("--n-samples", type=int, default=None, help="default: all 60k")
    parser.add_argument(
        "--shuffled-seconds",
        type=float,
        default=60.0,
        help="stop the shuffled-labels check after this many seconds (0: skip it)",
    )
    parser.add_argument(
        "--together-epochs",
        type=int,
        default=0,
        help="epochs of the fit_together comparison (0: skip it)",
    )
    parser.add_argument(
        "--only-together", action="store_true", help="run the fit_together part only"
    )
    return parser.parse_args()


def main():
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU; use --device cpu")
    data = load_mnist()
    X, y = (
        data.X_train[: args.n_samples],
        data.y_train[: args.n_samples].astype(np.int64),
    )
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"MNIST train {X.shape} {X.dtype} on {name}; torch {torch.__version__}")
    tX, ty = torch.asarray(X, device=args.device), torch.asarray(y, device=args.device)
    cupy_data = cupy_arrays(X, y) if args.device == "cuda" else None
    print(f"{'network':<16} {'batch':>5}  {'contender':<12} {'s/epoch':>14}", end="")
    print(f" {'first epoch s':>14} {'last loss':>10}")
    print(f"{'':<16} {'':>5}  {'':<12} {'(median 2nd+)':>14}")
    with sklearn.config_context(array_api_dispatch=True):
        if args.together_epochs:
            together_cases(tX, y, args.together_epochs, cupy_data)
        if args.only_together:
            return
        for hidden, batch in CASES:
            results = {"skmlp torch": skmlp_epochs(tX, ty, hidden, batch, args.epochs)}
            if cupy_data is not None:
                results["skmlp cupy"] = skmlp_epochs(
                    *cupy_data, hidden, batch, args.epochs
                )
            results["skmlp eager"] = skmlp_epochs(
                tX, ty, hidden, batch, args.epochs, capture=False
            )
            results["torch loop"] = torch_loop_epochs(
                tX, ty, hidden, batch, args.epochs
            )
            print_case("784-" + "-".join(map(str, hidden)) + "-10", batch, results)
        if args.shuffled_seconds > 0:
            shuffled = LABEL_CORRUPTIONS["shuffle"](y, 1.0, random_state=0)
            accuracy, seconds, epochs = shuffled_labels_check(
                tX, torch.asarray(shuffled, device=args.device), args.shuffled_seconds
            )
            print(
                f"shuffled labels, 784-512-512-10 on {len(y)} images (skmlp torch): "
                f"training accuracy {100 * accuracy:.2f} % after {epochs} epochs in "
                f"{seconds:.1f} s of training (target >= 99.9 % within 15 s)"
            )


if __name__ == "__main__":
    main()
