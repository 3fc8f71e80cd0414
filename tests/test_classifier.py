"""Behaviour of SGDMLPClassifier: learning, determinism, oracles, sklearn habits."""

import pickle
import signal
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fitting import assert_same_weights, quiet_fit
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import clone, config_context
from sklearn.callback import ProgressBar, ScoringMonitor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skmlp import SGDMLPClassifier

FAST = dict(hidden_layer_sizes=(16,), batch_size=32, learning_rate_init=0.05)


# ----------------------------------------------------------------------- learning


# Learning rates that suit each pair on the digits (sigmoid units need larger steps).
LEARNING_RATES = {
    ("log_loss", "identity"): 0.1,
    ("log_loss", "logistic"): 0.2,
    ("log_loss", "tanh"): 0.1,
    ("log_loss", "relu"): 0.1,
    ("squared_error", "identity"): 0.1,
    ("squared_error", "logistic"): 0.5,
    ("squared_error", "tanh"): 0.2,
    ("squared_error", "relu"): 0.1,
}


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
def test_learns_digits(digits, activation, loss):
    X, y = digits
    lr = LEARNING_RATES[loss, activation]
    clf = SGDMLPClassifier(
        hidden_layer_sizes=(32,),
        activation=activation,
        loss=loss,
        learning_rate_init=lr,
        max_iter=30,
        random_state=0,
    )
    quiet_fit(clf, X, y)
    assert clf.score(X, y) > 0.93
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.history_.shape == (clf.n_iter_, 4)
    assert list(clf.history_.epoch) == list(range(1, clf.n_iter_ + 1))


def test_no_hidden_layer_is_logistic_regression(digits):
    X, y = digits
    clf = quiet_fit(
        SGDMLPClassifier(hidden_layer_sizes=(), max_iter=20, random_state=0), X, y
    )
    assert clf.n_layers_ == 2 and clf.coefs_[0].shape == (64, 10)
    assert clf.score(X, y) > 0.9


def test_seed_network_has_13002_parameters(rng):
    X = rng.random((50, 784))
    y = np.arange(50) % 10
    clf = quiet_fit(SGDMLPClassifier((16, 16), max_iter=1, random_state=0), X, y)
    n_params = sum(c.size for c in clf.coefs_) + sum(b.size for b in clf.intercepts_)
    assert n_params == 13002


def test_same_seed_same_weights_different_seed_different(digits):
    X, y = digits
    a = quiet_fit(SGDMLPClassifier(**FAST, max_iter=3, random_state=1), X, y)
    b = quiet_fit(SGDMLPClassifier(**FAST, max_iter=3, random_state=1), X, y)
    c = quiet_fit(SGDMLPClassifier(**FAST, max_iter=3, random_state=2), X, y)
    assert_same_weights(a, b, rtol=0)
    assert not np.allclose(a.coefs_[0], c.coefs_[0])


# ------------------------------------------------------------------- determinism


@pytest.mark.parametrize("k", [1, 4])
def test_fit_equals_k_partial_fits(digits, k):
    X, y = digits
    params = dict(**FAST, max_iter=k, random_state=0, tol=0, n_iter_no_change=100)
    fitted = quiet_fit(SGDMLPClassifier(**params), X, y)
    incremental = SGDMLPClassifier(**params)
    for _ in range(k):
        incremental.partial_fit(X, y, classes=np.unique(y))
    assert_same_weights(fitted, incremental, rtol=0)
    assert fitted.loss_curve_ == incremental.loss_curve_
    assert fitted.n_iter_ == incremental.n_iter_ == k
    assert fitted.t_ == incremental.t_ == k * X.shape[0]


def test_pickled_mid_training_continues_identically(digits):
    X, y = digits
    classes = np.unique(y)
    params = dict(**FAST, random_state=0)
    straight = SGDMLPClassifier(**params)
    for _ in range(6):
        straight.partial_fit(X, y, classes=classes)

    paused = SGDMLPClassifier(**params)
    for _ in range(3):
        paused.partial_fit(X, y, classes=classes)
    resumed = pickle.loads(pickle.dumps(paused))
    for _ in range(3):
        resumed.partial_fit(X, y)
    assert_same_weights(straight, resumed, rtol=0)


def test_a_model_pickled_by_an_earlier_version_loads_and_trains_on():
    """An estimator pickled at 89ec202, when the training state lived in
    ``skmlp._engine`` (MLflow models logged then are such pickles)."""
    from pathlib import Path

    from sklearn.datasets import load_iris

    data = Path(__file__).parent / "data"
    with open(data / "estimator_89ec202.pkl", "rb") as file:
        clf = pickle.load(file)
    X, y = load_iris(return_X_y=True)
    assert_allclose(clf.predict_proba(X), np.load(data / "estimator_89ec202_proba.npy"))
    assert clf.n_iter_ == 3 and len(clf.history_) == 3
    clf.partial_fit(X, y)
    assert clf.n_iter_ == 4 and list(clf.history_.epoch) == [1, 2, 3, 4]


def test_warnings_point_at_the_users_call(digits):
    X, y = digits
    clf = SGDMLPClassifier(**{**FAST, "batch_size": 5000}, max_iter=1, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(X, y)
    found = {w.category.__name__: (w.filename, str(w.message)) for w in caught}
    assert set(found) == {"UserWarning", "ConvergenceWarning"}
    assert {filename for filename, _ in found.values()} == {__file__}
    assert "batch_size=5000" in found["UserWarning"][1]


def test_warm_start_continues_like_one_long_fit(digits):
    X, y = digits
    params = dict(**FAST, random_state=0, tol=0, n_iter_no_change=100)
    long = quiet_fit(SGDMLPClassifier(**params, max_iter=6), X, y)
    warm = SGDMLPClassifier(**params, max_iter=3, warm_start=True)
    quiet_fit(warm, X, y)
    warm = pickle.loads(pickle.dumps(warm))
    quiet_fit(warm, X, y)
    assert_same_weights(long, warm, rtol=0)
    # as MLPClassifier: n_iter_ counts the epochs of the last fit, the curve all of them
    assert warm.n_iter_ == 3
    assert warm.loss_curve_ == long.loss_curve_
    assert list(warm.history_.epoch) == [1, 2, 3, 4, 5, 6]


def test_clone_is_unfitted_with_same_params(digits):
    X, y = digits
    clf = quiet_fit(SGDMLPClassifier(**FAST, max_iter=2, random_state=0), X, y)
    cloned = clone(clf)
    assert cloned.get_params() == clf.get_params()
    assert not hasattr(cloned, "coefs_")


# ------------------------------------------------------------------------ oracles


@pytest.mark.parametrize("n_classes", [2, 5])
def test_predict_proba_matches_sklearn_with_our_weights(digits, n_classes):
    X, y = digits
    mask = y < n_classes
    X, y = X[mask], y[mask]
    ours = quiet_fit(
        SGDMLPClassifier((20, 10), activation="tanh", max_iter=5, random_state=0), X, y
    )
    ref = quiet_fit(
        MLPClassifier((20, 10), activation="tanh", max_iter=1, random_state=1), X, y
    )
    ref.coefs_ = [c.copy() for c in ours.coefs_]
    ref.intercepts_ = [b.copy() for b in ours.intercepts_]
    assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=1e-10)
    assert_array_equal(ours.predict(X), ref.predict(X))


@pytest.mark.parametrize("n_classes", [2, 10])
@pytest.mark.parametrize("nesterov", [True, False])
def test_training_trajectory_matches_sklearn_sgd(digits, n_classes, nesterov):
    """Same initialisation, same batches, same update rule: same weights as
    MLPClassifier(solver="sgd") after several epochs (shuffle=False so both visit the
    batches in the same order; sklearn reshuffles differently from one epoch on)."""
    X, y = digits
    mask = y < n_classes
    params = dict(
        hidden_layer_sizes=(20, 10),
        activation="tanh",
        alpha=1e-3,
        batch_size=50,
        learning_rate_init=0.05,
        momentum=0.9,
        nesterovs_momentum=nesterov,
        max_iter=4,
        shuffle=False,
        random_state=3,
    )
    ours = quiet_fit(SGDMLPClassifier(**params), X[mask], y[mask])
    ref = quiet_fit(MLPClassifier(solver="sgd", **params), X[mask], y[mask])
    assert_same_weights(ours, ref, rtol=1e-9)
    assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-9)


# -------------------------------------------------------------- data and labels


def test_string_labels_and_pandas_input(digits):
    X, y = digits
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    labels = np.array(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
        ],
        dtype=object,
    )[y]
    clf = quiet_fit(
        SGDMLPClassifier(**FAST, max_iter=10, random_state=0), frame, labels
    )
    assert_array_equal(clf.feature_names_in_, frame.columns)
    assert set(clf.predict(frame)) <= set(labels)
    assert clf.score(frame, labels) > 0.9


def test_binary_labels(digits):
    X, y = digits
    labels = np.where(y % 2 == 0, "even", "odd")
    clf = quiet_fit(SGDMLPClassifier(**FAST, max_iter=10, random_state=0), X, labels)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    proba = clf.predict_proba(X)
    assert proba.shape == (len(y), 2)
    assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.score(X, labels) > 0.9


def test_sparse_input_gives_the_same_weights_as_dense(digits):
    X, y = digits
    dense = quiet_fit(SGDMLPClassifier(**FAST, max_iter=3, random_state=0), X, y)
    sparse = quiet_fit(
        SGDMLPClassifier(**FAST, max_iter=3, random_state=0), sp.csr_matrix(X), y
    )
    assert_same_weights(dense, sparse, rtol=1e-10)
    assert_allclose(dense.predict_proba(X), sparse.predict_proba(sp.csr_matrix(X)))


@pytest.mark.parametrize(
    "dtype, X_dtype, expected",
    [
        (None, np.float32, np.float32),
        (None, np.float64, np.float64),
        ("float64", np.float32, np.float64),
        ("float32", np.float64, np.float32),
    ],
)
def test_dtype(digits, dtype, X_dtype, expected):
    X, y = digits
    clf = quiet_fit(
        SGDMLPClassifier(**FAST, max_iter=2, random_state=0, dtype=dtype),
        X.astype(X_dtype),
        y,
    )
    assert all(c.dtype == expected for c in clf.coefs_ + clf.intercepts_)
    assert clf.predict_proba(X).dtype == expected


def test_squared_error_probabilities_sum_to_one(digits):
    X, y = digits
    clf = quiet_fit(
        SGDMLPClassifier(
            (16,),
            activation="logistic",
            loss="squared_error",
            learning_rate_init=0.5,
            max_iter=5,
            random_state=0,
        ),
        X,
        y,
    )
    proba = clf.predict_proba(X)
    assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X))
    assert_allclose(clf.predict_log_proba(X), np.log(proba))


def test_sample_weight_zero_equals_dropping_samples(digits):
    """With shuffle off and one full batch, weight 0 is the same as no sample."""
    X, y = digits
    X, y = X[:300], y[:300]
    weight = np.ones(300)
    weight[::3] = 0
    params = dict(
        hidden_layer_sizes=(8,),
        batch_size=300,
        shuffle=False,
        max_iter=5,
        random_state=0,
        alpha=0.0,
    )
    weighted = quiet_fit(SGDMLPClassifier(**params), X, y, sample_weight=weight)
    keep = weight > 0
    dropped = quiet_fit(
        SGDMLPClassifier(**{**params, "batch_size": int(keep.sum())}), X[keep], y[keep]
    )
    assert_same_weights(weighted, dropped, rtol=1e-9)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_batches_of_zero_weight_are_skipped(digits, sparse):
    """Only the first 100 samples weigh: the other batches make no step, no NaN."""
    X, y = digits
    weight = np.zeros(X.shape[0])
    weight[:100] = 1.0
    params = dict(hidden_layer_sizes=(8,), batch_size=50, shuffle=False, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        weighted = SGDMLPClassifier(**params, max_iter=2).fit(
            sp.csr_matrix(X) if sparse else X, y, sample_weight=weight
        )
    assert not [w for w in caught if "diverged" in str(w.message)]
    first = SGDMLPClassifier(**params)
    for _ in range(2):
        first.partial_fit(X[:100], y[:100], classes=np.unique(y))
    assert_same_weights(weighted, first, rtol=1e-9)
    assert np.all(np.isfinite(weighted.loss_curve_))


# ----------------------------------------------------------------- stopping rules


def test_early_stopping_keeps_the_best_validation_epoch(digits):
    X, y = digits
    clf = quiet_fit(
        SGDMLPClassifier(
            **FAST, max_iter=50, early_stopping=True, n_iter_no_change=3, random_state=0
        ),
        X,
        y,
    )
    assert clf.n_iter_ < 50
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert "validation_score" in clf.history_.columns
    assert clf.best_loss_ is None


def test_training_stops_when_the_loss_stalls(digits):
    X, y = digits
    clf = SGDMLPClassifier(
        **FAST, max_iter=500, tol=10.0, n_iter_no_change=2, random_state=0
    ).fit(X, y)
    # the first epoch improves on inf; then n_iter_no_change + 1 epochs without
    # improvement (the same rule as MLPClassifier)
    assert clf.n_iter_ == 4


def test_adaptive_schedule_divides_the_learning_rate_by_5(digits):
    X, y = digits
    clf = quiet_fit(
        SGDMLPClassifier(
            **{**FAST, "learning_rate_init": 0.1},
            learning_rate="adaptive",
            tol=10.0,
            n_iter_no_change=1,
            max_iter=6,
            random_state=0,
        ),
        X,
        y,
    )
    rates = clf.history_.learning_rate.to_numpy()
    assert rates[0] == 0.1 and rates.min() < 0.1
    assert_allclose(sorted(set(rates), reverse=True)[:2], [0.1, 0.02])


def test_invscaling_schedule(digits):
    X, y = digits
    clf = quiet_fit(
        SGDMLPClassifier(
            **FAST, learning_rate="invscaling", max_iter=2, random_state=0
        ),
        X,
        y,
    )
    assert_allclose(
        clf._state.optimizer.learning_rate, 0.05 / (2 * X.shape[0] + 1) ** 0.5
    )


def test_divergence_warns_and_keeps_the_last_good_epoch(digits):
    X, y = digits
    params = dict(activation="identity", learning_rate_init=0.2, batch_size=64)
    clf = SGDMLPClassifier((16, 8), **params, max_iter=6, random_state=0)
    with pytest.warns(ConvergenceWarning, match="diverged in epoch 3: the loss became"):
        clf.fit(X, y)
    weights = clf.coefs_ + clf.intercepts_
    assert all(np.isfinite(w).all() for w in weights)
    assert clf.n_iter_ == len(clf.loss_curve_) == 2
    assert all(np.isfinite(clf.loss_curve_))
    assert np.isfinite(clf.predict_proba(X)).all()
    two = quiet_fit(
        SGDMLPClassifier((16, 8), **params, max_iter=2, random_state=0), X, y
    )
    assert_same_weights(clf, two, rtol=0)


def test_divergence_with_early_stopping_keeps_the_best_validation_epoch(digits):
    """As MLPClassifier ends (scikit-learn gh-29504): the best epoch by validation
    score, not the last good one."""
    X, y = digits
    params = dict(
        hidden_layer_sizes=(16, 8), activation="identity", batch_size=64,
        learning_rate_init=0.2, early_stopping=True, n_iter_no_change=50,
        random_state=0,
    )  # fmt: skip
    clf = SGDMLPClassifier(**params, max_iter=20)
    with pytest.warns(ConvergenceWarning, match="diverged in epoch"):
        clf.fit(X, y)
    good = clf.n_iter_
    scores = clf.validation_scores_
    assert good >= 2 and np.argmax(scores) < good - 1  # the last good one is not best
    reference = quiet_fit(SGDMLPClassifier(**params, max_iter=good), X, y)
    assert reference.validation_scores_ == scores
    assert_same_weights(clf, reference, rtol=0)  # both end on the best epoch


def test_divergence_in_the_first_epoch_raises_and_changes_nothing(digits):
    X, y = digits
    params = dict(activation="identity", max_iter=20, random_state=0)
    clf = SGDMLPClassifier((32,), learning_rate_init=50.0, **params)
    with pytest.raises(ValueError, match="diverged in its first epoch .* no model"):
        clf.fit(X * 16, y)
    assert not hasattr(clf, "coefs_")  # unfitted, as before the call
    fitted = quiet_fit(SGDMLPClassifier((32,), learning_rate_init=0.01, **params), X, y)
    before = [np.copy(w) for w in fitted.coefs_ + fitted.intercepts_]
    with pytest.raises(ValueError, match="diverged in its first epoch"):
        fitted.set_params(learning_rate_init=50.0).fit(X * 16, y)
    after = fitted.coefs_ + fitted.intercepts_
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert fitted.n_iter_ == len(fitted.loss_curve_) == 20


# -------------------------------------------------------------------- callbacks


class StopAfter:
    """A callback that stops training after a given number of epochs."""

    def __init__(self, epochs):
        self.epochs = epochs
        self.seen = []

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context):
        pass

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None):
        if context.task_name != "epoch":
            return False
        self.seen.append(fitted_estimator.n_iter_)
        return len(self.seen) >= self.epochs


def test_callback_can_stop_training(digits):
    X, y = digits
    callback = StopAfter(3)
    clf = SGDMLPClassifier(**FAST, max_iter=50, random_state=0).set_callbacks(callback)
    clf.fit(X, y)
    assert clf.n_iter_ == 3
    assert callback.seen == [1, 2, 3]


def test_scoring_monitor_records_one_score_per_epoch(digits):
    X, y = digits
    monitor = ScoringMonitor(scoring="accuracy")
    clf = SGDMLPClassifier(
        **FAST, max_iter=5, random_state=0, tol=0, n_iter_no_change=100
    ).set_callbacks(monitor)
    quiet_fit(clf, X, y)
    log = monitor.get_logs().data_as_pandas
    epochs = log[log.task_name == "epoch"]
    assert len(epochs) == 5
    assert epochs.accuracy.iloc[-1] == pytest.approx(clf.score(X, y))


def test_progress_bar_runs(digits, capsys):
    X, y = digits
    clf = SGDMLPClassifier(**FAST, max_iter=3, random_state=0).set_callbacks(
        ProgressBar()
    )
    quiet_fit(clf, X, y)
    assert clf.n_iter_ == 3
    out = capsys.readouterr().out
    assert "SGDMLPClassifier - fit" in out
    assert "100%" in out  # the bar ends full: every epoch was a step of the fit task


def test_keyboard_interrupt_leaves_the_last_complete_epoch(digits):
    """Ctrl-C in the middle of an epoch: the estimator is exactly as after the previous
    epoch, and training on from there gives the same weights as never stopping."""
    X, y = digits
    X, y = np.repeat(X, 4, axis=0), np.repeat(y, 4)  # longer epochs
    params = dict(
        hidden_layer_sizes=(64,),
        batch_size=8,
        random_state=0,
        tol=0,
        n_iter_no_change=1000,
    )

    class InterruptSoon(StopAfter):
        def on_fit_task_begin(self, estimator, context):
            if context.task_name == "epoch" and context.task_id == 2:
                signal.setitimer(signal.ITIMER_REAL, 0.02)

    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    try:
        clf = SGDMLPClassifier(**params, max_iter=1000).set_callbacks(
            InterruptSoon(10**6)
        )
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X, y)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert clf.n_iter_ == len(clf.loss_curve_) == len(clf.history_) >= 2
    reference = SGDMLPClassifier(**params)
    for _ in range(clf.n_iter_ + 1):
        reference.partial_fit(X, y, classes=np.unique(y))
    clf.partial_fit(X, y)
    assert_same_weights(clf, reference, rtol=0)


# ------------------------------------------------------------- sklearn habits


def test_grid_search_over_a_pipeline(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), SGDMLPClassifier(max_iter=5, random_state=0))
    grid = GridSearchCV(
        pipe,
        {
            "sgdmlpclassifier__hidden_layer_sizes": [(16,), (16, 16)],
            "sgdmlpclassifier__activation": ["relu", "logistic"],
            "sgdmlpclassifier__learning_rate_init": [0.01, 0.1],
        },
        cv=2,
        n_jobs=2,
        error_score="raise",
    )
    quiet_fit(grid, X, y)
    assert len(grid.cv_results_["params"]) == 8
    assert grid.best_score_ > 0.8
    restored = pickle.loads(pickle.dumps(grid.best_estimator_))
    assert_array_equal(restored.predict(X), grid.best_estimator_.predict(X))


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_X_is_refused(digits, bad):
    X, y = digits
    X = X.copy()
    X[3, 4] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        SGDMLPClassifier().fit(X, y)


def test_negative_sample_weights_are_refused_as_sklearn_does(digits):
    X, y = digits
    weight = np.ones(X.shape[0])
    weight[3] = -0.5
    clf = quiet_fit(SGDMLPClassifier(**FAST, max_iter=2, random_state=0), X, y)
    before = [np.copy(w) for w in clf.coefs_]
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        clf.partial_fit(X, y, sample_weight=weight)
    assert clf.n_iter_ == 2
    assert all(np.array_equal(a, b) for a, b in zip(before, clf.coefs_, strict=True))


def test_empty_X_is_refused():
    with pytest.raises(ValueError, match="0 sample"):
        SGDMLPClassifier().fit(np.empty((0, 3)), [])


def test_wrong_number_of_features_at_predict(digits):
    X, y = digits
    clf = quiet_fit(SGDMLPClassifier(**FAST, max_iter=1), X, y)
    with pytest.raises(ValueError, match="64 features"):
        clf.predict(X[:, :10])


def test_single_class_is_refused(digits):
    X, _ = digits
    with pytest.raises(ValueError, match="at least 2 classes"):
        SGDMLPClassifier().fit(X, np.zeros(len(X)))


def test_multilabel_targets_are_refused(digits):
    X, y = digits
    Y = np.stack([y % 2, y % 3 == 0], axis=1)
    with pytest.raises(ValueError, match="1d array"):
        SGDMLPClassifier().fit(X, Y)


def test_partial_fit_needs_classes_first(digits):
    X, y = digits
    with pytest.raises(ValueError, match="classes must be passed"):
        SGDMLPClassifier().partial_fit(X, y)


def test_partial_fit_refuses_unknown_labels(digits):
    X, y = digits
    clf = SGDMLPClassifier(**FAST).partial_fit(X, y, classes=np.arange(10))
    with pytest.raises(ValueError, match=r"labels \[11\] that are not in classes"):
        clf.partial_fit(X[:5], np.array([1, 2, 11, 3, 4]))


def test_partial_fit_refuses_changed_classes(digits):
    X, y = digits
    clf = SGDMLPClassifier(**FAST).partial_fit(X, y, classes=np.arange(10))
    with pytest.raises(ValueError, match="not the same as on the first call"):
        clf.partial_fit(X, y, classes=np.arange(11))


def test_partial_fit_refuses_early_stopping(digits):
    X, y = digits
    with pytest.raises(ValueError, match="early_stopping"):
        SGDMLPClassifier(early_stopping=True).partial_fit(X, y, classes=np.arange(10))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"activation": "softplus"}, "activation"),
        ({"loss": "hinge"}, "loss"),
        ({"learning_rate_init": 0.0}, "learning_rate_init"),
        ({"momentum": 1.5}, "momentum"),
        ({"batch_size": 0}, "batch_size"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"dtype": "float16"}, "dtype"),
        ({"hidden_layer_sizes": [16, 0]}, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": [16, 2.5]}, "hidden_layer_sizes"),
    ],
)
def test_invalid_hyperparameters(digits, params, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        SGDMLPClassifier(**params).fit(X, y)


def test_predict_before_fit(digits):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SGDMLPClassifier().predict(digits[0])


# ------------------------------------------------------------ array API backends


@pytest.mark.parametrize("namespace", ["array_api_strict", "torch"])
def test_array_api_backend_matches_numpy(digits, namespace):
    xp = pytest.importorskip(namespace)
    X, y = digits
    params = dict(**FAST, max_iter=3, random_state=0, dtype="float64")
    reference = quiet_fit(SGDMLPClassifier(**params), X, y)
    with config_context(array_api_dispatch=True):
        clf = quiet_fit(SGDMLPClassifier(**params), xp.asarray(X), xp.asarray(y))
        proba = clf.predict_proba(xp.asarray(X))
        predicted = clf.predict(xp.asarray(X))
    assert type(proba) is type(xp.asarray(X))
    for ours, ref in zip(clf.coefs_, reference.coefs_, strict=False):
        assert_allclose(np.asarray(ours), ref, rtol=1e-9, atol=1e-12)
    assert_allclose(
        np.asarray(proba), reference.predict_proba(X), rtol=1e-9, atol=1e-12
    )
    assert_array_equal(np.asarray(predicted), reference.predict(X))


# ------------------------------------------------------- failed calls, warm start


def _fitted(digits):
    X, y = digits
    return quiet_fit(SGDMLPClassifier(**FAST, max_iter=2, random_state=0), X, y)


def _assert_unchanged(clf, before, X):
    assert_array_equal(clf.predict(X), before["predict"])
    assert_array_equal(clf.classes_, before["classes_"])
    assert clf.n_iter_ == before["n_iter_"] and clf.loss_curve_ == before["curve"]
    assert_same_weights(clf, before["clf"], rtol=0)


def _state(clf, X):
    return dict(
        predict=clf.predict(X),
        classes_=clf.classes_.copy(),
        n_iter_=clf.n_iter_,
        curve=list(clf.loss_curve_),
        clf=pickle.loads(pickle.dumps(clf)),
    )


def test_refit_with_one_class_leaves_the_fitted_model(digits):
    X, y = digits
    clf = _fitted(digits)
    before = _state(clf, X)
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit(X, np.zeros(len(X)))
    _assert_unchanged(clf, before, X)


def test_failed_validation_split_leaves_the_model_unfitted(digits):
    from sklearn.exceptions import NotFittedError

    X, y = digits
    clf = SGDMLPClassifier(early_stopping=True, validation_fraction=0.01)
    with pytest.raises(ValueError, match="validation set is too small|test_size"):
        clf.fit(X[:20], y[:20] % 2)
    with pytest.raises(NotFittedError):
        clf.predict(X)
    assert not [name for name in vars(clf) if name.endswith("_")]


def test_absurd_size_fails_up_front_and_leaves_the_fitted_model(digits):
    X, y = digits
    clf = _fitted(digits)
    before = _state(clf, X)
    clf.set_params(hidden_layer_sizes=(10**6, 10**6))  # 10^12 weights: terabytes
    with pytest.raises(MemoryError, match=r"needs about [\d.]+ GiB .* available"):
        clf.fit(X, y)
    _assert_unchanged(clf, before, X)


def test_warm_start_refuses_other_classes(digits):
    X, y = digits
    clf = _fitted(digits).set_params(warm_start=True)
    before = _state(clf, X)
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has"):
        clf.fit(X[y < 5], y[y < 5])
    _assert_unchanged(clf, before, X)


def test_n_iter_counts_each_fit_and_partial_fit_adds_one(digits):
    X, y = digits
    clf = SGDMLPClassifier(**FAST, max_iter=2, warm_start=True, random_state=0)
    quiet_fit(clf, X, y)
    quiet_fit(clf, X, y)
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 4
    clf.partial_fit(X, y)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 5
    assert list(clf.history_.epoch) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("data", ["dense", "sparse", "torch"])
def test_divergence_with_finite_numbers_in_float64(digits, data):
    """lr=1e6 in float64: losses of 1e38 and more, all finite; caught at epoch 1,
    before any good epoch: the fit raises."""
    X, y = digits
    params = dict(hidden_layer_sizes=(32,), learning_rate_init=1e6, max_iter=10)
    clf = SGDMLPClassifier(**params, random_state=0, dtype="float64")
    if data == "torch":
        torch = pytest.importorskip("torch")
        X, y = torch.asarray(X.copy()), torch.asarray(y.copy())
    elif data == "sparse":
        X = sp.csr_matrix(X)
    with config_context(array_api_dispatch=data == "torch"):
        with pytest.raises(ValueError, match="diverged in its first epoch"):
            clf.fit(X, y)
    assert not hasattr(clf, "coefs_")  # left as it was: unfitted
