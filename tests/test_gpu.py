"""The captured GPU epoch against the eager loop, on torch CUDA and CuPy.

Skipped without CUDA (torch) or without CuPy. Self-contained: numpy, scipy,
scikit-learn, torch, cupy and pytest, and sklearn's bundled digits (no download).
Run with ``python -m pytest tests/test_gpu.py``. The same stacked step, run eagerly as
a graph replays it, is tested on CPU in ``test_steps.py``.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn import config_context
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

from skmlp import SGDMLPClassifier


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return lambda a: torch.asarray(a, device="cuda")


def _cupy():
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy installed, no usable device
        pytest.skip(f"no CUDA device for CuPy: {exc}")
    return cupy.asarray


BACKENDS = {"torch": _torch_cuda, "cupy": _cupy}


def _to_numpy(array):
    return array.get() if hasattr(array, "get") else np.asarray(array.cpu())


def _fit(to_device, capture, sample_weight=None, **params):
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    kwargs = dict(
        hidden_layer_sizes=(64, 32),
        batch_size=64,  # 1797 = 28 x 64 + 5: a short last batch
        learning_rate_init=0.05,
        max_iter=6,
        tol=0.0,
        n_iter_no_change=100,
        random_state=0,
    )
    clf = SGDMLPClassifier(**{**kwargs, **params}, capture=capture)
    weight = None if sample_weight is None else to_device(sample_weight)
    with config_context(array_api_dispatch=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture fails here
        clf.fit(to_device(X), to_device(y), sample_weight=weight)
        score = float(clf.score(to_device(X), to_device(y)))
    return clf, score


def _assert_close(captured, eager):
    assert captured.n_iter_ == eager.n_iter_
    assert_allclose(captured.loss_curve_, eager.loss_curve_, rtol=1e-4)
    for ours, ref in zip(
        captured.coefs_ + captured.intercepts_,
        eager.coefs_ + eager.intercepts_,
        strict=True,
    ):
        assert_allclose(_to_numpy(ours), _to_numpy(ref), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_captured_epochs_equal_eager_and_learn(backend):
    to_device = BACKENDS[backend]()
    captured, score = _fit(to_device, capture=True)
    eager, _ = _fit(to_device, capture=False)
    _assert_close(captured, eager)
    assert score > 0.95
    assert captured.loss_curve_[-1] < captured.loss_curve_[0] / 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "params",
    [
        dict(learning_rate="invscaling", learning_rate_init=0.2),  # lr changes
        dict(learning_rate="adaptive", tol=10.0, n_iter_no_change=1),
        dict(early_stopping=True),
        dict(nesterovs_momentum=False, alpha=0.01, activation="tanh"),
        dict(shuffle=False),
    ],
    ids=repr,
)
def test_captured_epochs_equal_eager_with_options(backend, params):
    to_device = BACKENDS[backend]()
    _assert_close(
        _fit(to_device, capture=True, **params)[0],
        _fit(to_device, capture=False, **params)[0],
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_batches_are_skipped_on_the_device(backend):
    to_device = BACKENDS[backend]()
    weight = np.random.default_rng(0).uniform(0.5, 2.0, 1797).astype(np.float32)
    weight[:640] = 0.0  # with shuffle=False: the first 10 batches weigh nothing
    captured, _ = _fit(to_device, True, sample_weight=weight, shuffle=False)
    eager, _ = _fit(to_device, False, sample_weight=weight, shuffle=False)
    _assert_close(captured, eager)
    assert np.all(np.isfinite(captured.loss_curve_))


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_is_caught_on_the_device(backend):
    to_device = BACKENDS[backend]()
    X, y = load_digits(return_X_y=True)
    clf = SGDMLPClassifier((32,), learning_rate_init=1e6, max_iter=5, random_state=0)
    with config_context(array_api_dispatch=True):
        with pytest.raises(ValueError, match="diverged in its first epoch"):
            clf.fit(to_device(X.astype(np.float32)), to_device(y))
    assert not hasattr(clf, "coefs_")  # no good epoch: left unfitted


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_together_captures_the_group_epoch_and_equals_separate_fits(
    backend, weighted, monkeypatch
):
    """Float64: a group of four, one of which stops early (the group is then captured
    anew), each member as its own (captured) fit. A CuPy group is captured as torch
    kernels on the CuPy arrays' memory."""
    from skmlp import _loop, fit_together

    to_device = BACKENDS[backend]()
    if backend == "cupy":
        _torch_cuda()  # the capture needs torch
    graphs = []

    def recorded(*args, **kwargs):  # the real graph, kept to look at afterwards
        graphs.append(_together_make(*args, **kwargs))
        return graphs[-1]

    _together_make = _loop.make_captured_epoch
    monkeypatch.setattr(_loop, "make_captured_epoch", recorded)
    X, y = load_digits(return_X_y=True)
    X, y = to_device(X / 16), to_device(y)
    rng = np.random.default_rng(0)
    weight = to_device(rng.uniform(0.5, 2.0, 1797)) if weighted else None
    base = dict(hidden_layer_sizes=(64, 32), batch_size=64, max_iter=8, tol=0.0,
                n_iter_no_change=100, random_state=0)  # fmt: skip
    params = [
        dict(learning_rate_init=0.01),
        dict(learning_rate_init=0.05, alpha=1e-3),
        dict(learning_rate_init=0.1, momentum=0.5, nesterovs_momentum=False),
        dict(learning_rate_init=0.05, max_iter=3),  # leaves the group after epoch 3
    ]

    def members():
        return [SGDMLPClassifier(**{**base, **p}) for p in params]

    with config_context(array_api_dispatch=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture fails here
        together = fit_together(members(), X, y, sample_weight=weight)
        n_graphs = len(graphs)  # single fits are captured too (groups of one)
        alone = [est.fit(X, y, sample_weight=weight) for est in members()]
    assert n_graphs == 2  # four members, then three
    assert len(graphs) == n_graphs + len(alone)
    assert all(g.output is not None and not g.eager for g in graphs)
    for ours, ref in zip(together, alone, strict=True):
        assert ours.n_iter_ == ref.n_iter_
        assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-9)
        for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_,
                        strict=True):  # fmt: skip
            assert_allclose(_to_numpy(a), _to_numpy(b), rtol=1e-7, atol=1e-9)
