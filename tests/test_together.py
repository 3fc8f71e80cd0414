"""fit_together: every member ends exactly as its own fit would leave it (digits)."""

import copy
import json
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from fitting import assert_same_fit, quietly
from helpers import run
from numpy.testing import assert_array_equal
from sklearn import config_context
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError
from threadpoolctl import threadpool_limits

from pipelines.callbacks import EpochScoring, StopAt
from skmlp import SGDMLPClassifier, _loop, fit_together
from skmlp._loop import (
    NUMPY_JOINT_MAX_PARAMS,
    StackedRunner,
    _side_by_side,
    make_runner,
)
from skmlp._together import _groups, _prepare

BASE = dict(hidden_layer_sizes=(16, 8), batch_size=64, max_iter=4, random_state=0)

# Members that differ in what a group may mix; each case is fitted jointly and
# compared with separate fits.
CASES = {
    "learning_rate_init": [dict(learning_rate_init=lr) for lr in (0.01, 0.05, 0.2)],
    "schedules": [
        dict(learning_rate="constant"),
        dict(learning_rate="invscaling", learning_rate_init=0.2, power_t=0.3),
        dict(learning_rate="adaptive", tol=0.5, n_iter_no_change=1, max_iter=6),
    ],
    "momentum": [
        dict(momentum=0.0),
        dict(momentum=0.5, nesterovs_momentum=False),
        dict(momentum=0.9, nesterovs_momentum=True),
    ],
    # one update rule, a momentum per member: spread over the group's flat buffer
    "classical_momenta": [
        dict(momentum=m, nesterovs_momentum=False) for m in (0.0, 0.5, 0.9)
    ],
    "nesterov_momenta": [dict(momentum=m) for m in (0.3, 0.6, 0.9)],
    "alpha": [dict(alpha=0.0), dict(alpha=1e-4), dict(alpha=0.3)],
    "random_state": [dict(random_state=0), dict(random_state=1), dict(random_state=0)],
    "max_iter": [dict(max_iter=2), dict(max_iter=5), dict(max_iter=3)],
    "stopping": [  # each stops at its own epoch while the others go on
        dict(tol=0.05, n_iter_no_change=1, max_iter=30),
        dict(tol=0.01, n_iter_no_change=2, max_iter=30),
        dict(tol=0.0, max_iter=7),
    ],
    "early_stopping": [
        dict(early_stopping=True, n_iter_no_change=2, tol=0.01, max_iter=20),
        dict(early_stopping=True, learning_rate_init=0.1, max_iter=5, random_state=3),
        dict(early_stopping=True, validation_fraction=0.2, max_iter=4),
    ],
    "divergence": [  # the first two diverge in epochs 3 and 2; the third goes on
        dict(activation="identity", learning_rate_init=0.2, max_iter=6),
        dict(activation="identity", learning_rate_init=0.25, max_iter=6),
        dict(activation="identity", learning_rate_init=0.05, max_iter=6),
    ],
    "shapes": [  # three groups: (16, 8) relu, (16, 8) tanh, (12,) with batch 50
        dict(),
        dict(activation="tanh"),
        dict(hidden_layer_sizes=(12,), batch_size=50),
        dict(learning_rate_init=0.1),
        dict(activation="tanh", learning_rate_init=0.1),
    ],
}


def _members(case):
    return [SGDMLPClassifier(**{**BASE, **params}) for params in CASES[case]]


def _separately(estimators, X, ys, weights):
    return [
        quietly(clone(est).fit, X, y, sample_weight=w)
        for est, y, w in zip(estimators, ys, weights, strict=True)
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_members_end_as_their_own_fits(digits, case):
    X, y = digits
    estimators = _members(case)
    alone = _separately(estimators, X, [y] * len(estimators), [None] * len(estimators))
    assert quietly(fit_together, estimators, X, y) == estimators
    for together, reference in zip(estimators, alone, strict=True):
        assert_same_fit(together, reference)


@pytest.fixture
def captured_protocol(monkeypatch):
    """Joint epochs run as on a GPU, where each is one captured graph: one persistent
    ``Stack`` refilled every epoch, learning rates written before each replay, the
    shuffle orders copied into one static buffer (``StackedRunner._captured_epoch``) — with
    the epoch's code run eagerly, as the graph would replay it. Counts the stacks
    built (one per change of the group's members)."""
    monkeypatch.setattr(_loop, "_capture_mode", lambda members: "eager")
    built = []

    class CountedStack(_loop.Stack):
        def __init__(self, *args, **kwargs):
            assert kwargs.get("capturable"), "a captured epoch's stack is capturable"
            built.append(len(args[0]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(_loop, "Stack", CountedStack)
    return built


@pytest.mark.parametrize(
    "case", ["learning_rate_init", "schedules", "stopping", "early_stopping", "alpha"]
)
def test_captured_protocol_members_end_as_their_own_fits(
    digits, case, captured_protocol
):
    X, y = digits
    estimators = _members(case)
    alone = _separately(estimators, X, [y] * len(estimators), [None] * len(estimators))
    quietly(fit_together, estimators, X, y)
    for together, reference in zip(estimators, alone, strict=True):
        assert_same_fit(together, reference)
    if case == "stopping":  # one group, whose members stop at three epochs
        # one stack while all train, a new one each time the group loses a member
        # while at least two go on (a last member trains alone, by its engine)
        n_iters = [est.n_iter_ for est in estimators]
        changes = [t for t in set(n_iters) if sum(n > t for n in n_iters) >= 2]
        assert len(captured_protocol) == 1 + len(changes) == 2


def test_captured_protocol_mirrored_as_torch_tensors(
    digits, captured_protocol, monkeypatch
):
    """A CuPy group's epoch is captured as torch kernels on the CuPy arrays' memory;
    here NumPy members are mirrored as torch CPU tensors: the torch kernels must
    train the NumPy arrays themselves, exactly as their own fits."""
    pytest.importorskip("torch")
    monkeypatch.setattr(_loop, "_mirrored", lambda members: True)
    X, y = (np.array(a) for a in digits)  # writable: DLPack exports no read-only array
    weights = np.random.RandomState(0).uniform(0.5, 2.0, y.shape[0])
    estimators = _members("stopping") + [SGDMLPClassifier(**BASE, alpha=1e-3)]
    ys, sample_weights = [y] * 4, [None, weights, None, weights]
    alone = _separately(estimators, X, ys, sample_weights)
    quietly(fit_together, estimators, X, ys, sample_weight=sample_weights)
    for together, reference in zip(estimators, alone, strict=True):
        assert isinstance(together.coefs_[0], np.ndarray)
        assert_same_fit(together, reference)
    assert len(captured_protocol) == 3  # four members, then three, then two


def test_captured_protocol_labels_and_weights(digits, captured_protocol):
    """Weighted batches select each member's step on the device (no read-back),
    including a batch whose weights sum to 0 for one member."""
    X, y = digits
    rng = np.random.RandomState(0)
    weights = rng.uniform(0.5, 2.0, y.shape[0])
    zero_first_batch = np.ones(y.shape[0])
    zero_first_batch[:64] = 0.0
    ys = [y, rng.permutation(y), y % 2, y]
    sample_weights = [None, weights, weights, zero_first_batch]
    estimators = [SGDMLPClassifier(**BASE, alpha=1e-3) for _ in ys]
    alone = _separately(estimators, X, ys, sample_weights)
    quietly(fit_together, estimators, X, ys, sample_weight=sample_weights)
    for together, reference in zip(estimators, alone, strict=True):
        assert_same_fit(together, reference)


@pytest.mark.parametrize("case", ["stopping", "divergence"])
def test_members_really_stop_at_different_epochs(digits, case):
    X, y = digits
    estimators = quietly(fit_together, _members(case), X, y)
    assert len({est.n_iter_ for est in estimators}) == 3


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")  # the third: max_iter
def test_a_diverging_member_warns_as_its_own_fit(digits):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match="diverged in epoch 2") as record:
        fit_together(_members("divergence")[1:], X, y)
    assert sum("diverged" in str(w.message) for w in record) == 1


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_a_member_diverging_in_its_first_epoch_is_named_the_others_fitted(
    digits, n_jobs
):
    """Its own fit would raise and change nothing: so here, after the others."""
    X, y = digits
    estimators = _members("learning_rate_init")
    estimators[1].set_params(activation="identity", learning_rate_init=50.0)
    alone = _separately([estimators[0], estimators[2]], X * 16, [y, y], [None, None])
    with pytest.raises(ValueError, match=r"not estimators\[1\]: .*first epoch"):
        fit_together(estimators, X * 16, y, n_jobs=n_jobs)
    assert not hasattr(estimators[1], "coefs_")
    for together, reference in zip([estimators[0], estimators[2]], alone, strict=True):
        assert_same_fit(together, reference)


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_each_member_its_own_labels_and_weights(digits, n_jobs):
    """Per-member labels (a corrupted copy, a binary task, strings) and weights,
    including a batch whose weights sum to 0 (no step for that member only); with
    ``n_jobs=2`` in two worker processes."""
    X, y = digits
    rng = np.random.RandomState(0)
    shuffled = rng.permutation(y)
    names = np.array(list("abcdefghij"))[y]
    weights = rng.uniform(0.5, 2.0, y.shape[0])
    zero_first_batch = np.ones(y.shape[0])
    zero_first_batch[:64] = 0.0
    ys = [y, shuffled, names, y % 2, y]
    sample_weights = [None, weights, None, weights, zero_first_batch]
    estimators = [SGDMLPClassifier(**BASE, shuffle=False) for _ in ys]
    alone = _separately(estimators, X, ys, sample_weights)
    quietly(
        fit_together, estimators, X, ys, sample_weight=sample_weights, n_jobs=n_jobs
    )
    for together, reference in zip(estimators, alone, strict=True):
        assert_same_fit(together, reference)
    assert estimators[2].classes_[0] == "a" and estimators[3].n_outputs_ == 1


def test_warm_started_members_continue_as_their_own_fits(digits):
    X, y = digits
    started = quietly(SGDMLPClassifier(**BASE, warm_start=True).fit, X, y)
    alone = quietly(copy.deepcopy(started).fit, X, y)
    estimators = [copy.deepcopy(started), SGDMLPClassifier(**BASE)]
    quietly(fit_together, estimators, X, y)
    assert_same_fit(estimators[0], alone)
    assert estimators[0].n_iter_ == 4 and len(estimators[0].loss_curve_) == 8


def test_float32_members(digits):
    X, y = digits
    estimators = [
        SGDMLPClassifier(**BASE, dtype="float32", learning_rate_init=lr)
        for lr in (0.01, 0.1)
    ]
    alone = _separately(estimators, X, [y, y], [None, None])
    quietly(fit_together, estimators, X, y)
    for together, reference in zip(estimators, alone, strict=True):
        assert together.coefs_[0].dtype == np.float32
        assert_same_fit(together, reference, rtol=1e-4, atol=1e-5)


def test_sparse_members_end_as_their_own_fits(digits):
    X, y = digits
    X = sp.csr_matrix(X)
    estimators = _members("learning_rate_init")[:2]
    alone = _separately(estimators, X, [y, y], [None, None])
    quietly(fit_together, estimators, X, y)
    for together, reference in zip(estimators, alone, strict=True):
        assert_same_fit(together, reference)


@pytest.mark.parametrize("blas_threads", [1, 2])
def test_wide_numpy_networks_train_member_by_member(digits, blas_threads):
    """Above NUMPY_JOINT_MAX_PARAMS a NumPy group is not stacked (cache-bound); its
    members train side by side, one per BLAS thread."""
    X, y = digits

    def members(hidden):
        return [
            SGDMLPClassifier(
                **{**BASE, "hidden_layer_sizes": hidden, "max_iter": 2},
                learning_rate_init=lr,
            )
            for lr in (0.01, 0.05)
        ]

    wide, narrow = (400, 300), BASE["hidden_layer_sizes"]
    assert not _stacked(_prepare(members(wide), X, [y, y], [None, None]))
    assert _stacked(_prepare(members(narrow), X, [y, y], [None, None]))
    sparse = sp.csr_matrix(X)  # sparse too: stacked wide networks train slower
    assert not _stacked(_prepare(members(wide), sparse, [y, y], [None, None]))
    assert _stacked(_prepare(members(narrow), sparse, [y, y], [None, None]))
    estimators = members(wide)
    alone = _separately(estimators, X, [y, y], [None, None])
    with threadpool_limits(limits=blas_threads):
        assert _side_by_side(_prepare(estimators, X, [y, y], [None, None])) == (
            blas_threads
        )
        quietly(fit_together, estimators, X, y)
    n_params = sum(a.size for a in estimators[0].coefs_ + estimators[0].intercepts_)
    assert n_params > NUMPY_JOINT_MAX_PARAMS
    for together, reference in zip(estimators, alone, strict=True):
        assert_same_fit(together, reference)


def _stacked(members):
    return isinstance(make_runner(members), StackedRunner)


def test_members_are_grouped_by_shape(digits):
    X, y = digits
    estimators = _members("shapes") + [
        SGDMLPClassifier(**BASE, dtype="float32"),
        SGDMLPClassifier(**BASE, shuffle=False),
        SGDMLPClassifier(**BASE, loss="squared_error"),
    ]
    ys = [y] * 7 + [y % 2]  # 2 classes: one output, another shape
    groups = _groups(_prepare(estimators, X, ys, [None] * 8))
    found = [[estimators.index(m.estimator) for m in group] for group in groups]
    assert found == [[0, 3], [1, 4], [2], [5], [6], [7]]


@pytest.mark.parametrize(
    ("case", "protocol"), [("momentum", "stacked"), ("stopping", "captured")]
)
def test_torch_members_end_as_their_own_fits(digits, case, protocol, request):
    """On torch CPU; "captured": the captured epoch's protocol (see above)."""
    torch = pytest.importorskip("torch")
    if protocol == "captured":
        request.getfixturevalue("captured_protocol")
    X, y = digits
    X, y = torch.asarray(X.copy()), torch.asarray(y.copy())
    estimators = _members(case) + [SGDMLPClassifier(**{**BASE, "random_state": 1})]
    with config_context(array_api_dispatch=True):
        alone = _separately(estimators, X, [y] * 4, [None] * 4)
        quietly(fit_together, estimators, X, y)
    for together, reference in zip(estimators, alone, strict=True):
        assert isinstance(together.coefs_[0], torch.Tensor)
        assert_same_fit(together, reference)


def test_each_member_callbacks_see_its_own_fit(digits):
    X, y = digits
    estimators = _members("max_iter")
    scorings = [EpochScoring({"train": (X, y)}) for _ in estimators]
    for est, scoring in zip(estimators, scorings, strict=True):
        est.set_callbacks(scoring)
    quietly(fit_together, estimators, X, y)
    for est, scoring in zip(estimators, scorings, strict=True):
        assert [s.epoch for s in scoring.history] == list(range(1, est.max_iter + 1))
        assert [s.metrics["loss"] for s in scoring.history] == est.loss_curve_
        assert scoring.history[-1].metrics["train_accuracy"] == est.score(X, y)


def test_a_callback_stops_its_own_member_only(digits):
    X, y = digits

    def members():
        scoring = EpochScoring({"train": (X, y)})
        stopped = SGDMLPClassifier(**{**BASE, "max_iter": 30})
        stopped.set_callbacks(scoring, StopAt(scoring, "train_accuracy", 0.8))
        return [stopped, SGDMLPClassifier(**{**BASE, "max_iter": 12})]

    alone = [quietly(est.fit, X, y) for est in members()]
    estimators = quietly(fit_together, members(), X, y)
    assert estimators[0].n_iter_ < estimators[1].n_iter_ == 12
    for together, reference in zip(estimators, alone, strict=True):
        assert_same_fit(together, reference)


class InterruptInEpoch:
    """A callback: Ctrl-C (SIGALRM as KeyboardInterrupt) soon after epoch ``epoch``
    begins, that is in the middle of the group's joint epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context):
        if context.task_name == "epoch" and context.task_id == self.epoch:
            signal.setitimer(signal.ITIMER_REAL, 0.02)

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None):
        return False


def test_ctrl_c_as_a_side_by_side_epoch_starts_waits_for_it(digits, monkeypatch):
    """A Ctrl-C whose handler would run inside ``Thread.start`` (the pool's submit,
    after the worker already runs the epoch) waits for the submits: the pool then waits
    for every epoch before the members are put back. Without that, the rollback raced
    with a member's epoch (seen once in CI: ``t_`` one epoch ahead of ``n_iter_``)."""
    monkeypatch.setattr(_loop, "NUMPY_JOINT_MAX_PARAMS", 0)
    monkeypatch.setattr(_loop, "_side_by_side", lambda members: 2)
    X, y = digits
    X, y = np.repeat(X, 8, axis=0), np.repeat(y, 8)
    params = dict(hidden_layer_sizes=(64,), batch_size=8, tol=0, random_state=0)
    estimators = [
        SGDMLPClassifier(**params, max_iter=1000, learning_rate_init=lr)
        for lr in (0.001, 0.002, 0.004)
    ]
    start, workers = threading.Thread.start, []

    def start_then_signal(thread):
        start(thread)
        workers.append(thread)
        if len(workers) == 5:  # the third epoch's first worker (two per epoch)
            os.kill(os.getpid(), signal.SIGALRM)

    monkeypatch.setattr(threading.Thread, "start", start_then_signal)
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_together(estimators, X, y)
    finally:
        signal.signal(signal.SIGALRM, previous)
    for worker in workers:  # an epoch left running would change its member later
        worker.join(timeout=60)
    for est in estimators:
        assert est.n_iter_ == len(est.loss_curve_) == len(est.history_) == 2
        assert_same_fit(est, quietly(clone(est).set_params(max_iter=2).fit, X, y))


@pytest.mark.parametrize(
    "stacked", [True, False, "captured"], ids=["stacked", "side_by_side", "captured"]
)
def test_ctrl_c_leaves_every_member_at_its_last_complete_epoch(
    digits, stacked, monkeypatch
):
    if stacked == "captured":  # the captured epoch's protocol (see above)
        monkeypatch.setattr(_loop, "_capture_mode", lambda members: "eager")
    if not stacked:  # the members then train in two threads (see _side_by_side)
        monkeypatch.setattr(_loop, "NUMPY_JOINT_MAX_PARAMS", 0)
        monkeypatch.setattr(_loop, "_side_by_side", lambda members: 2)
    X, y = digits
    # Epochs much longer than a signal takes to reach the main thread, even on a
    # loaded machine (the side-by-side members run in threads holding the GIL).
    repeat = 8 if stacked else 24
    X, y = np.repeat(X, repeat, axis=0), np.repeat(y, repeat)
    params = dict(hidden_layer_sizes=(64,), batch_size=8, tol=0, random_state=0)
    estimators = [
        SGDMLPClassifier(**params, max_iter=1000, learning_rate_init=lr)
        for lr in (0.001, 0.002, 0.004)
    ]
    estimators[1].set_callbacks(InterruptInEpoch(2))
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_together(estimators, X, y)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    for est in estimators:
        assert est.n_iter_ == len(est.loss_curve_) == len(est.history_) == 2
        alone = quietly(clone(est).set_params(max_iter=2).fit, X, y)
        assert_same_fit(est, alone)
        # and training on gives the same epoch (the shuffle's generator was restored)
        assert_same_fit(est.partial_fit(X, y), alone.partial_fit(X, y))


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (dict(alpha=-1.0), InvalidParameterError, r"(?s)estimators\[1\].*'alpha'"),
        (
            dict(validation_fraction=0.001, early_stopping=True),
            ValueError,
            r"(?s)estimators\[1\].*test_size",
        ),
        ("one class", ValueError, r"(?s)estimators\[1\].*at least 2 classes"),
    ],
)
@pytest.mark.parametrize("n_jobs", [None, 2])
def test_a_bad_member_raises_before_any_training(digits, bad, error, match, n_jobs):
    X, y = digits
    fitted = quietly(SGDMLPClassifier(**BASE).fit, X, y)
    before = [W.copy() for W in fitted.coefs_], fitted.loss_curve_
    params = {} if bad == "one class" else bad
    ys = [y, np.zeros_like(y) if bad == "one class" else y, y]
    estimators = [SGDMLPClassifier(**BASE), SGDMLPClassifier(**BASE, **params), fitted]
    with pytest.raises(error, match=match):
        fit_together(estimators, X, ys, n_jobs=n_jobs)
    assert not hasattr(estimators[0], "coefs_") and not hasattr(estimators[1], "coefs_")
    for W, W_before in zip(fitted.coefs_, before[0], strict=True):
        assert_array_equal(W, W_before)
    assert fitted.loss_curve_ == before[1]


@pytest.mark.parametrize("bad", ["foo", None, "MLPClassifier"])
def test_a_member_of_another_type_is_named(digits, bad):
    from sklearn.neural_network import MLPClassifier

    X, y = digits
    estimators = _members("alpha")[:2]
    bad = MLPClassifier() if bad == "MLPClassifier" else bad
    with pytest.raises(
        TypeError, match=r"estimators\[1\] is .*not an SGDMLPClassifier"
    ):
        fit_together([estimators[0], bad, estimators[1]], X, y)
    assert not hasattr(estimators[0], "coefs_")


def test_wrong_numbers_of_labels_and_repeated_estimators(digits):
    X, y = digits
    estimators = _members("alpha")
    with pytest.raises(ValueError, match="y has 2 entries for 3 estimators"):
        fit_together(estimators, X, [y, y])
    with pytest.raises(ValueError, match="more than once"):
        fit_together([estimators[0], estimators[0]], X, y)
    assert not any(hasattr(est, "coefs_") for est in estimators)


# ------------------------------------------------------------ n_jobs: worker processes


class RecordProcess:
    """A callback that notes, on the estimator it is given, the process that ran
    the fit (a worker's copy of the estimator comes back whole)."""

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context):
        estimator.fitted_in_ = os.getpid()

    def on_fit_task_end(self, estimator, context, **kwargs):
        pass


@pytest.mark.parametrize(
    "case", ["shapes", "early_stopping", "stopping", "random_state"]
)
def test_members_trained_in_workers_end_as_their_own_fits(digits, case):
    """``n_jobs=2``: every group cut in two, each part fitted jointly in a joblib
    worker process; each member still ends as its own fit, keeps its own callback
    objects, and the caller sees the workers' warnings."""
    X, y = digits
    estimators = _members(case)
    n = len(estimators)
    alone = _separately(estimators, X, [y] * n, [None] * n)
    callbacks = [RecordProcess() for _ in estimators]
    for est, callback in zip(estimators, callbacks, strict=True):
        est.set_callbacks(callback)
    with pytest.warns(ConvergenceWarning):  # raised in the workers, seen here
        assert fit_together(estimators, X, y, n_jobs=2) == estimators
    for together, reference, callback in zip(estimators, alone, callbacks, strict=True):
        assert_same_fit(together, reference)
        assert together._skl_callbacks == [callback]  # the caller's own object
    # in worker processes (which of the two ran a part is the pool's choice)
    assert os.getpid() not in {est.fitted_in_ for est in estimators}


def test_callbacks_in_workers_report_to_this_process(digits):
    """A callback made to report across processes (``ScoringMonitor``) gets each
    member's epochs from the workers, as with scikit-learn's own parallel fits."""
    from sklearn.callback import ScoringMonitor

    X, y = digits
    estimators = _members("max_iter")
    monitors = [ScoringMonitor(scoring="accuracy") for _ in estimators]
    for est, monitor in zip(estimators, monitors, strict=True):
        est.set_callbacks(monitor)
    quietly(fit_together, estimators, X, y, n_jobs=2)
    for est, monitor in zip(estimators, monitors, strict=True):
        log = monitor.get_logs().data_as_pandas
        epochs = log[log.task_name == "epoch"]
        assert len(epochs) == est.n_iter_
        assert epochs.accuracy.iloc[-1] == pytest.approx(est.score(X, y))


def test_members_not_seeded_by_an_int_train_in_this_process(digits):
    """A member seeded by a ``RandomState`` object (the caller's own generator) or
    by None (NumPy's global one) is not sent to a worker: the generator advances
    as ``est.fit`` advances it. So does a member that cannot be pickled."""
    X, y = digits

    def seeded(seed, **params):
        return SGDMLPClassifier(**{**BASE, **params, "random_state": seed})

    reference = quietly(seeded(np.random.RandomState(7)).fit, X, y)
    np.random.seed(5)  # noqa: NPY002 (random_state=None draws from this one)
    reference_none = quietly(seeded(None).fit, X, y)
    estimators = _members("learning_rate_init") + [
        # a group of its own with no member to send (another shape)
        seeded(np.random.RandomState(1), hidden_layer_sizes=(12,)),
        seeded(np.random.RandomState(7)),
        seeded(None),
        seeded(3),
    ]
    generator = estimators[-3].random_state
    for est in estimators:
        est.set_callbacks(RecordProcess())
    estimators[-1].set_callbacks(NotPicklable())
    np.random.seed(5)  # noqa: NPY002 (random_state=None draws from this one)
    quietly(fit_together, estimators, X, y, n_jobs=2)
    here = [est.fitted_in_ == os.getpid() for est in estimators]
    assert here == [False, False, False, True, True, True, True]
    assert estimators[-3].random_state is generator
    assert_same_fit(estimators[-3], reference)
    assert generator.get_state()[2] == reference.random_state.get_state()[2]
    assert_same_fit(estimators[-2], reference_none)


class NotPicklable(RecordProcess):
    def __init__(self):
        self.hook = lambda: None  # pickle refuses lambdas


def test_the_workers_warnings_are_raised_here_once(digits):
    """Warnings of validation (raised by the caller) and of training (raised in the
    workers) reach the caller once each, pointing at the call, as in one process."""
    X, y = digits

    def members():
        return [
            SGDMLPClassifier(**{**BASE, "batch_size": 5000}, learning_rate_init=lr)
            for lr in (0.01, 0.02, 0.03)
        ]

    found = {}
    for n_jobs in (None, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit_together(members(), X, y, n_jobs=n_jobs)
        found[n_jobs] = sorted(
            (w.category.__name__, str(w.message), w.filename) for w in caught
        )
    assert found[2] == found[None]
    assert (
        "ConvergenceWarning",
        "Stochastic Optimizer: Maximum iterations (4) reached and the optimization "
        "hasn't converged yet.",
        __file__,
    ) in found[2]
    assert {c for c, _, _ in found[2]} == {"UserWarning", "ConvergenceWarning"}


def test_under_a_thread_backend_all_trains_in_this_process(digits):
    """Inside a joblib worker (or under ``parallel_config(backend="threading")``)
    ``n_jobs`` would only add threads: everything trains here, warnings intact."""
    from joblib import parallel_config

    X, y = digits
    estimators = _members("learning_rate_init")
    for est in estimators:
        est.set_callbacks(RecordProcess())
    filters = list(warnings.filters)
    with parallel_config(backend="threading"):
        with pytest.warns(ConvergenceWarning):
            fit_together(estimators, X, y, n_jobs=2)
    assert {est.fitted_in_ for est in estimators} == {os.getpid()}
    assert warnings.filters == filters


class FailInWorker(RecordProcess):
    def on_fit_task_begin(self, estimator, context):
        if os.getpid() != self.parent:
            raise RuntimeError("a callback failed in the worker")

    def __init__(self):
        self.parent = os.getpid()


def test_a_failing_worker_leaves_every_member_as_it_was(digits):
    X, y = digits
    fitted = quietly(SGDMLPClassifier(**BASE).fit, X, y)
    before = [W.copy() for W in fitted.coefs_]
    kept_here = SGDMLPClassifier(**{**BASE, "random_state": np.random.RandomState(0)})
    generator_state = kept_here.random_state.get_state()[1].copy()
    estimators = [
        fitted,
        SGDMLPClassifier(**BASE).set_callbacks(FailInWorker()),
        kept_here,
    ]
    with pytest.raises(RuntimeError, match="a callback failed in the worker"):
        fit_together(estimators, X, y, n_jobs=2)
    assert not hasattr(estimators[1], "coefs_")
    assert not hasattr(kept_here, "coefs_")  # prepared, never trained: put back
    assert_array_equal(kept_here.random_state.get_state()[1], generator_state)
    for W, W_before in zip(fitted.coefs_, before, strict=True):
        assert_array_equal(W, W_before)


@pytest.mark.parametrize("n_jobs", [0, 1.5, "2", True])
def test_a_bad_n_jobs_is_named(digits, n_jobs):
    X, y = digits
    with pytest.raises(ValueError, match="n_jobs must be None or a nonzero int"):
        fit_together(_members("alpha"), X, y, n_jobs=n_jobs)


class SlowEpochs(RecordProcess):
    """Each epoch of a worker's member takes a while (a long fit to interrupt)."""

    def on_fit_task_end(self, estimator, context, **kwargs):
        time.sleep(0.2)


# Run in a fresh process with Python's own SIGINT handler: a real Ctrl-C (SIGINT to
# the process) lands in the fit, whatever the test process inherited.
CTRL_C_SCRIPT = """
import json, os, signal, threading, time, warnings
from sklearn.datasets import load_digits
from skmlp import SGDMLPClassifier, fit_together

warnings.simplefilter("ignore")
# Python's own Ctrl-C handler, as in a terminal: a process started in the background
# of a non-interactive shell (as CI scripts may be) inherits SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)


class SlowEpochs:
    def setup(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context, **kwargs):
        pass

    def on_fit_task_end(self, estimator, context, **kwargs):
        time.sleep(0.2)

    def teardown(self, estimator, context):
        pass


X, y = load_digits(return_X_y=True)
X = X / 16
base = dict(hidden_layer_sizes=(16, 8), batch_size=64, random_state=0)
estimators = [
    SGDMLPClassifier(**base, max_iter=200, n_iter_no_change=200, learning_rate_init=lr)
    for lr in (0.01, 0.02, 0.03, 0.04)
]
for est in estimators:
    est.set_callbacks(SlowEpochs())
threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()
start = time.perf_counter()
try:
    fit_together(estimators, X, y, n_jobs=2)
    raised = False
except KeyboardInterrupt:
    raised = True
took = time.perf_counter() - start
fitted = [hasattr(est, "coefs_") for est in estimators]
again = [SGDMLPClassifier(**base, max_iter=4, learning_rate_init=lr) for lr in (0.1, 0.2)]
fit_together(again, X, y, n_jobs=2)  # the pool is usable again at once
print(json.dumps(dict(raised=raised, took=took, fitted=fitted,
                      again=[hasattr(est, "coefs_") for est in again])))
"""


def test_ctrl_c_during_worker_fits_leaves_their_members_as_they_were(tmp_path):
    result = run([sys.executable, "-c", CTRL_C_SCRIPT], tmp_path, timeout=120)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["raised"], outcome  # the fits would take 40 s
    assert outcome["took"] < 20, outcome
    assert outcome["fitted"] == [False] * 4  # each member as it was
    assert outcome["again"] == [True, True]
