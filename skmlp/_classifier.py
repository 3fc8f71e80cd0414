"""SGDMLPClassifier: validation, initialisation and the orchestration of a fit.

The math lives in ``_backprop.py`` (pure functions, the reference) and in the batch
steps (``_numpy_sgd.py``, ``_stacked.py``); the epochs in ``_loop.py``, which trains
members (``_member.py``). This module turns scikit-learn inputs into arrays, initialises
the network and hands the loop one member: a single network is a group of one.
"""

from numbers import Integral, Real

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.callback import CallbackSupportMixin
from sklearn.utils import check_random_state
from sklearn.utils._array_api import check_same_namespace
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from skmlp._backprop import forward_pass
from skmlp._data import (
    batch_size_for,
    check_classes,
    decode,
    encode,
    layer_sizes,
    namespace,
    split_data,
    targets,
    validate_training_data,
)
from skmlp._loop import train
from skmlp._losses import LOSSES
from skmlp._member import Member, estimator_state, put_back
from skmlp._optimizers import SGDOptimizer
from skmlp._state import (
    FlatParams,
    StoppingRule,
    TrainingData,
    TrainingRecordsMixin,
    TrainingState,
    init_params,
)


class SGDMLPClassifier(
    TrainingRecordsMixin, CallbackSupportMixin, ClassifierMixin, BaseEstimator
):
    """Multilayer perceptron classifier trained by mini-batch SGD and backpropagation.

    The forward pass and the backpropagation are skmlp's own, written against the
    array API: NumPy by default, and with ``sklearn.set_config(array_api_dispatch=True)``
    torch or CuPy arrays train on their own device. Parameter and attribute names are
    those of :class:`sklearn.neural_network.MLPClassifier` wherever the meaning is the
    same.

    Parameters
    ----------
    hidden_layer_sizes : array-like of int, default=(100,)
        Number of units of each hidden layer; ``()`` gives no hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Activation of the hidden layers.
    loss : {"log_loss", "squared_error"}, default="log_loss"
        Cost function. ``"log_loss"``: softmax outputs (one logistic output for binary
        problems) and cross-entropy. ``"squared_error"``: sigmoid outputs and the
        quadratic cost, squared differences to the one-hot target summed over the outputs
        and averaged over the samples (the cost of 3Blue1Brown's series).
    alpha : float, default=1e-4
        Strength of the L2 penalty ``alpha / (2 n) * sum ||W||^2`` (as in MLPClassifier).
    batch_size : int or "auto", default="auto"
        Mini-batch size; ``"auto"`` is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Step-size schedule. ``"invscaling"``: ``learning_rate_init / (t + 1) ** power_t``
        with ``t`` the number of samples seen; ``"adaptive"``: divided by 5 each time the
        loss stalls for ``n_iter_no_change`` epochs.
    learning_rate_init : float, default=0.01
        Initial step size.
    power_t : float, default=0.5
        Exponent of the ``"invscaling"`` schedule.
    momentum : float, default=0.9
        Momentum of the gradient-descent updates, in [0, 1].
    nesterovs_momentum : bool, default=True
        Whether to use Nesterov's momentum.
    max_iter : int, default=200
        Number of epochs (passes over the training data) of ``fit``.
    shuffle : bool, default=True
        Whether to shuffle the samples at every epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation, the shuffling and the validation split. The
        generator is created once, at initialisation, so that ``fit`` with
        ``max_iter=k`` and ``k`` calls of ``partial_fit`` give the same weights.
    tol : float, default=1e-4
        Improvement of the loss (or validation score) below which an epoch counts as no
        improvement.
    n_iter_no_change : int or inf, default=10
        Number of epochs without improvement after which training stops (or the
        adaptive schedule lowers the step size).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data, stop on its accuracy and
        keep the weights of the best epoch.
    validation_fraction : float, default=0.1
        Fraction of the training data held out for early stopping, in (0, 1).
    warm_start : bool, default=False
        Continue from the current weights and optimizer state on the next ``fit``.
    verbose : bool, default=False
        Print the loss of each epoch.
    dtype : {"float32", "float64"} or None, default=None
        Precision of the weights and of the training arithmetic. None keeps float32
        input in float32 and uses float64 otherwise.
    capture : bool, default=True
        On torch CUDA tensors and CuPy arrays, capture the epoch once per ``fit`` as
        one CUDA graph and replay it every epoch (the first epoch, eager, warms up):
        the eager loop's weights up to float rounding. False: every epoch eager.

    Attributes
    ----------
    classes_ : array of shape (n_classes,)
        Class labels.
    coefs_ : list of arrays
        ``coefs_[i]`` is the weight matrix from layer ``i`` to layer ``i + 1``.
    intercepts_ : list of arrays
        ``intercepts_[i]`` is the bias vector of layer ``i + 1``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when ``X`` has string column names.
    n_layers_ : int
        Number of layers, input and output included.
    n_outputs_ : int
        Number of output units (1 for binary problems).
    out_activation_ : str
        Output activation, ``"softmax"`` or ``"logistic"``.
    n_iter_ : int
        Number of epochs the last ``fit`` ran (a warm-started ``fit`` counts only its
        own, as in MLPClassifier); each ``partial_fit`` adds one. ``loss_curve_`` and
        ``history_`` keep every epoch since the weights were initialised.
    t_ : int
        Number of training samples seen.
    loss_ : float
        Mean cost of the last epoch (L2 term included).
    loss_curve_ : list of float
        Mean cost of each epoch.
    best_loss_ : float or None
        Lowest epoch cost (None with early stopping).
    validation_scores_ : list of float or None
        Validation accuracy of each epoch (None without early stopping).
    best_validation_score_ : float or None
        Best validation accuracy (None without early stopping).
    history_ : pandas.DataFrame
        One row per epoch: ``epoch``, ``loss``, ``learning_rate``, ``seconds`` and, with
        early stopping, ``validation_score``.

    Notes
    -----
    For one mini-batch of ``n`` samples, the output delta is ``(A - Y) / n`` for the
    cross-entropy and ``2 (A - Y) A (1 - A) / n`` for the quadratic cost; each layer then
    gets ``dC/dW = a_prev^T delta`` and passes back ``delta W^T * f'(a_prev)``, the chain
    rule dC/dw = a^(L-1) f'(z^(L)) dC/da^(L) of the series, vectorised over the batch.

    Training diverged when an epoch's mean cost or a weight is not finite, or when the
    cost exceeds 1e6 times that of guessing (``log(n_classes)`` for the cross-entropy,
    ``n_outputs / 4`` for the quadratic cost): the data term is bounded, so such a cost
    means weights grown without bound, which float64 can carry for many epochs. The
    rule holds on every path (NumPy, sparse, array API, GPU graphs). The last good
    epoch's weights are kept (with early stopping: the best validation epoch's) and a
    ConvergenceWarning says so; with no good epoch yet, the call raises a ValueError.
    A ``fit`` or ``partial_fit`` that raises leaves the estimator exactly as it was;
    one interrupted mid-epoch (Ctrl-C) keeps its completed epochs.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skmlp import SGDMLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = SGDMLPClassifier(hidden_layer_sizes=(32,), max_iter=30, random_state=0)
    >>> clf.fit(X / 16, y).score(X / 16, y) > 0.95
    True
    """

    _parameter_constraints: dict = {
        "hidden_layer_sizes": [
            "array-like",
            Interval(Integral, 1, None, closed="left"),
        ],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "loss": [StrOptions(set(LOSSES))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
        ],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [
            Interval(Integral, 1, None, closed="left"),
            Options(Real, {np.inf}),
        ],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "dtype": [StrOptions({"float32", "float64"}), None],
        "capture": ["boolean"],
    }

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        loss="log_loss",
        alpha=1e-4,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.01,
        power_t=0.5,
        momentum=0.9,
        nesterovs_momentum=True,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        warm_start=False,
        verbose=False,
        dtype=None,
        capture=True,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.loss = loss
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.warm_start = warm_start
        self.verbose = verbose
        self.dtype = dtype
        self.capture = capture

    # ------------------------------------------------------------------ public API

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train for ``max_iter`` epochs, or until the stopping criterion is met.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample in the cost. A mini-batch whose weights sum to 0
            has no mean cost and is skipped (no step).

        Returns
        -------
        self : SGDMLPClassifier
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train for one epoch over ``(X, y)``; ``n_iter_`` grows by one.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels, all of them in ``classes``.
        classes : array-like of shape (n_classes,), default=None
            Every class of the problem. Required on the first call, optional later
            (it must then be the same).
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample in the cost. A mini-batch whose weights sum to 0
            has no mean cost and is skipped (no step).

        Returns
        -------
        self : SGDMLPClassifier
            The estimator, trained one more epoch.
        """
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Probability of each class.

        With ``loss="squared_error"`` the sigmoid outputs are normalised to sum to one.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        proba : array of shape (n_samples, n_classes)
            Class probabilities, columns in the order of ``classes_``.
        """
        return self._proba(X, "predict_proba")

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        log_proba : array of shape (n_samples, n_classes)
            Log of the class probabilities.
        """
        proba = self._proba(X, "predict_log_proba")
        xp, _ = namespace(proba)
        return xp.log(proba)

    def predict(self, X):
        """Predict the class of each sample.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        y : array of shape (n_samples,)
            Predicted labels.
        """
        output, xp = self._output(X, "predict")
        if self.n_outputs_ == 1:
            indices = xp.astype(output[:, 0] > 0.5, xp.int64)
        else:
            indices = xp.argmax(output, axis=1)
        return decode(indices, self.classes_, xp)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.array_api_support = True
        tags.classifier_tags.multi_label = False
        return tags

    def _proba(self, X, method):
        output, xp = self._output(X, method)
        if self.n_outputs_ == 1:
            return xp.concat([1.0 - output, output], axis=1)
        if self.out_activation_ == "softmax":
            return output
        output = xp.clip(output, min=xp.finfo(output.dtype).eps)
        return output / xp.sum(output, axis=1, keepdims=True)

    @property
    def _first_coef(self):
        # The array that check_same_namespace compares predict's input with.
        return self.coefs_[0]

    def _output(self, X, method):
        check_is_fitted(self)
        check_same_namespace(X, self, attribute="_first_coef", method=method)
        X = validate_data(
            self, X, reset=False, accept_sparse="csr", dtype=self.coefs_[0].dtype
        )
        xp, _ = namespace(X)
        activations = forward_pass(
            X,
            self.coefs_,
            self.intercepts_,
            activation=self.activation,
            out_activation=self.out_activation_,
            xp=xp,
        )
        return activations[-1], xp

    def _initialize(self, X, xp, device):
        """Create the random generator, the weights and the training state."""
        random_state = check_random_state(self.random_state)
        n_classes = self.classes_.shape[0]
        self.n_outputs_ = 1 if n_classes == 2 else n_classes
        layer_units = [X.shape[1], *layer_sizes(self.hidden_layer_sizes)]
        layer_units.append(self.n_outputs_)
        self.n_layers_ = len(layer_units)
        self.out_activation_ = (
            "logistic" if n_classes == 2 else LOSSES[self.loss].out_activation
        )
        fit = (X.shape[0], self.batch_size, self.early_stopping)
        self.coefs_, self.intercepts_ = init_params(
            layer_units, self.activation, random_state, X.dtype, xp, device, fit
        )
        optimizer = SGDOptimizer(
            [FlatParams(self.coefs_, self.intercepts_, xp).flat],
            learning_rate_init=self.learning_rate_init,
            lr_schedule=self.learning_rate,
            momentum=self.momentum,
            nesterov=self.nesterovs_momentum,
            power_t=self.power_t,
            xp=xp,
        )
        self._state = TrainingState(
            optimizer,
            random_state,
            best_loss=None if self.early_stopping else np.inf,
            best_validation_score=-np.inf if self.early_stopping else None,
        )
        self.n_iter_ = 0

    def _fit(self, X, y, sample_weight, *, incremental, classes=None):
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True.")
        train([member := self._member(X, y, sample_weight, incremental, classes)])
        member.raise_failure()
        return self

    def _member(self, X, y, sample_weight, incremental, classes, validate=False):
        """This estimator's training in one call, for ``_loop.train``: validated
        (``validate``: the parameters too), initialised; a failure changes nothing."""
        before = estimator_state(self)
        try:
            if validate:
                self._validate_params()
            with config_context(skip_parameter_validation=True):
                member = self._prepare(X, y, sample_weight, incremental, classes)
        except BaseException:  # a failed call leaves the estimator as it was
            put_back(self, before)
            raise
        member.before = before
        return member

    def _prepare(self, X, y, sample_weight, incremental, classes):
        """Validate, initialise where needed, build the member and its data."""
        arguments = (X, y, sample_weight)
        first_call = not ((incremental or self.warm_start) and hasattr(self, "coefs_"))
        dtype = self.dtype if first_call else self.coefs_[0].dtype
        X, y, sample_weight = validate_training_data(
            self, X, y, sample_weight, dtype=dtype, reset=first_call
        )
        xp, device = namespace(X)
        if incremental and first_call and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        known = None if first_call else self.classes_
        self.classes_ = check_classes(y, classes, known, incremental, xp, device)
        y_indices = encode(y, self.classes_, xp)
        if first_call:
            self._initialize(X, xp, device)
        validation = None
        if self.early_stopping:
            fraction, random_state = self.validation_fraction, self._random_state
            (X, y_indices, sample_weight), validation = split_data(
                X, y_indices, sample_weight, fraction, random_state
            )
        Y = targets(y_indices, self.classes_.shape[0], X.dtype, xp, device)
        params = FlatParams(self.coefs_, self.intercepts_, xp)
        self.coefs_, self.intercepts_ = params.layers()
        return Member(
            self,
            params,
            self._state,
            data=TrainingData(X, Y, sample_weight, validation),
            loss_kwargs={
                "activation": self.activation,
                "out_activation": self.out_activation_,
                "loss": self.loss,
                "alpha": self.alpha,
            },  # fmt: skip
            batch_size=batch_size_for(self.batch_size, X.shape[0]),
            shuffle=self.shuffle,
            stopping=StoppingRule(
                self.tol, self.n_iter_no_change, self.early_stopping, self.verbose
            ),
            xp=xp,
            device=device,
            capture=self.capture and not incremental,
            epochs=1 if incremental else self.max_iter,
            incremental=incremental,
            arguments=arguments,
        )
