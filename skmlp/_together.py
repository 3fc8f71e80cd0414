"""``fit_together``: several networks of one shape trained as one computation.

A sweep or the memorization experiment trains many networks of one shape on one ``X``.
Trained one at a time, each pays NumPy's (or the GPU's) fixed cost per call for every
mini-batch. Here the members of a group share every call instead: the training loop
(``_loop.train``) runs a group as it runs a single network, its weights stacked along a
leading model axis (``_stacked.py``). Members whose ``random_state`` is the same integer
draw the same shuffle order, so they see the same mini-batches: their first layer is
then one wide product, ``X_batch @ [W_1 | W_2 | ... | W_m]``.

This module prepares the members (each by its own estimator, as ``fit`` would), groups
them by shape, and with ``n_jobs`` shares the groups out among joblib workers.
"""

import contextlib
import pickle
import warnings

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed, effective_n_jobs
from joblib.parallel import get_active_backend
from sklearn import config_context
from sklearn.callback._callback_support import callback_management_context

from skmlp._classifier import SGDMLPClassifier
from skmlp._loop import train
from skmlp._member import adopt
from skmlp._warnings import warn
from skmlp._workers import loky_backend, remove_dead_leftovers


def fit_together(estimators, X, y, *, sample_weight=None, n_jobs=None):
    """Fit several ``SGDMLPClassifier`` on one ``X``, networks of one shape jointly.

    Each estimator ends exactly as ``est.fit(X, y_i, sample_weight=w_i)`` alone
    would leave it (weights equal up to float rounding; the same ``n_iter_``,
    ``loss_curve_``, ``history_`` and ``classes_``, and the same callbacks called):
    this is a pure speed-up.

    Estimators are grouped by shape: layer sizes, activation, output activation,
    loss, batch size, dtype, ``shuffle``, namespace and device, and number of training
    rows (with early stopping, those left after the validation split). The members of
    a group are trained as one computation, whatever their ``learning_rate_init``,
    schedule, ``momentum``, ``nesterovs_momentum``, ``alpha``, ``random_state``,
    ``max_iter``, stopping rule, labels and sample weights; a member that stops
    leaves the group while the others go on. Members with the same integer
    ``random_state`` see the same mini-batches, and their first layer is one wide
    product: give a sweep one ``random_state`` for the largest saving.

    Parameters
    ----------
    estimators : sequence of SGDMLPClassifier
        The estimators to fit, each at most once in the sequence.
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Training data, shared by all the estimators.
    y : array-like of shape (n_samples,), or a list of them
        Class labels: one array for all, or a list or tuple of one per estimator.
    sample_weight : array-like of shape (n_samples,), a list of them, or None
        Sample weights: None, one array for all, or one (or None) per estimator.
    n_jobs : int or None, default=None
        How many processes train, as in scikit-learn: None is 1 (unless in a
        ``joblib.parallel_config`` context), -1 all CPUs. With more than one, every
        group on NumPy is split into up to ``n_jobs`` parts, each part trained
        jointly in a worker process of joblib (``X`` memory-mapped where it is
        over 1 MB, the BLAS threads shared out among the workers). A part pays
        the per-call cost of a joint fit again, but the parts run at once, after
        the workers start (``benchmarks/bench_together.py`` measures the
        trade). Groups on other namespaces (torch,
        CuPy), members not seeded by an int (None draws from NumPy's global
        generator, a ``RandomState`` is the caller's own) and members that cannot
        be pickled (a callback may not) train in this process; so does everything
        under a joblib backend of threads, as inside a joblib worker.

    Returns
    -------
    estimators : list of SGDMLPClassifier
        The estimators, fitted.

    Notes
    -----
    Every estimator is validated and initialised before any training: one that cannot
    be fitted (an invalid parameter, bad labels) raises an error naming it, and every
    estimator is then left as it was. With ``n_jobs > 1``, a member trained in a
    worker runs its callbacks there, on a copy, as in scikit-learn's own parallel
    fits (callbacks that report to this process, such as ``ScoringMonitor``, still
    do; a callback with a method ``adopt_copy(copy)`` is given its copy from the
    worker once the member is fitted, to take what it recorded there; what a
    worker prints, ``verbose`` output included, goes to the terminal), and
    its warnings are raised here once all parts are fitted; if the call is
    interrupted or a worker fails, every estimator is left as it was before the call.
    Under joblib's default backend (loky), the workers end within a second of this
    process, however it ends (``kill -9`` and an unhandled SIGTERM included), and
    the next call removes the memory maps that a killed one left in ``/dev/shm``.
    A group's ``history_`` gives, as each member's ``seconds``, the wall time of the
    group's joint epoch. Groups of wide networks on NumPy train side by side in
    threads instead of stacked (see ``_loop.py``). On torch CUDA and CuPy, a group's
    epoch is captured as one CUDA graph and replayed (captured anew when a member
    leaves), unless a member has ``capture=False``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skmlp import SGDMLPClassifier, fit_together
    >>> X, y = load_digits(return_X_y=True)
    >>> sweep = [
    ...     SGDMLPClassifier((32,), learning_rate_init=lr, max_iter=20, random_state=0)
    ...     for lr in (0.01, 0.03, 0.1)
    ... ]
    >>> [clf.n_iter_ for clf in fit_together(sweep, X / 16, y)]
    [20, 20, 20]
    """
    estimators = list(estimators)
    for index, est in enumerate(estimators):
        if not isinstance(est, SGDMLPClassifier):
            raise TypeError(
                f"fit_together: estimators[{index}] is {est!r}, not an "
                "SGDMLPClassifier; fit_together trains skmlp's networks only."
            )
    if len({id(est) for est in estimators}) < len(estimators):
        raise ValueError("fit_together: an estimator appears more than once.")
    ys = _per_member(y, len(estimators), "y")
    weights = _per_member(sample_weight, len(estimators), "sample_weight")
    if n_jobs is not None and (
        not isinstance(n_jobs, (int, np.integer))
        or isinstance(n_jobs, bool)
        or not n_jobs
    ):
        raise ValueError(
            f"fit_together: n_jobs must be None or a nonzero int, got {n_jobs!r}."
        )
    n_jobs = effective_n_jobs(n_jobs) if _worker_processes() else 1
    members = _prepare(estimators, X, ys, weights)
    groups, parts = _share_out(_groups(members), n_jobs)
    if parts:
        try:
            _fit_in_workers(parts, X, n_jobs)
        except BaseException:  # the members kept here never started: as they were
            for member in (member for group in groups for member in group):
                member.put_back()
            raise
    _fit_groups(groups)
    _raise_failures(estimators, members)
    return estimators


def _raise_failures(estimators, members):
    """Members whose fit would have raised (diverged before any good epoch): each
    put back as it was, one error naming them all; the others stay fitted."""
    failed = [m for m in members if m.failure is not None]
    for member in failed:
        member.put_back()
    if failed:
        index = {id(est): i for i, est in enumerate(estimators)}
        raise ValueError(
            "fit_together: the other estimators were fitted, but not "
            + "; ".join(
                f"estimators[{index[id(m.estimator)]}]: {m.failure}" for m in failed
            )
        )


def _fit_groups(groups):
    """Train prepared groups in this process, callbacks managed as in ``fit``."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(config_context(skip_parameter_validation=True))
        for member in (member for group in groups for member in group):
            stack.enter_context(callback_management_context(member.estimator))
        for group in groups:
            train(group)


def _worker_processes():
    """Whether joblib's active backend runs tasks in other processes (loky, the
    default): under a thread or sequential backend, as inside a joblib worker,
    ``n_jobs`` would only add threads fighting for the GIL."""
    backend, _ = get_active_backend()
    return not getattr(backend, "uses_threads", False)


def _share_out(groups, n_jobs):
    """``(groups for this process, parts for workers)``: with ``n_jobs > 1``, each
    group on NumPy is cut into up to ``n_jobs`` parts of about equal size, given to
    the parts with the fewest members so far; members are sorted by seed first, so
    that members with one ``random_state`` (which share the wide product) stay
    together where the balance allows."""
    if n_jobs < 2:
        return groups, []
    local, parts = [], [[] for _ in range(n_jobs)]
    for group in groups:
        sent = [_movable(m) for m in group]
        movable = [m for m, send in zip(group, sent, strict=True) if send]
        if not all(sent):
            local.append([m for m, send in zip(group, sent, strict=True) if not send])
        if not movable:
            continue
        movable.sort(key=lambda m: int(m.estimator.random_state))
        for run in np.array_split(np.arange(len(movable)), min(n_jobs, len(movable))):
            min(parts, key=len).extend(movable[i] for i in run)
    parts = [part for part in parts if part]
    if len(parts) < 2:  # nothing to share: all in this process
        return groups, []
    return local, parts


def _movable(member):
    """Whether a member may train in a worker: on NumPy, seeded by an int (None is
    NumPy's global generator and a ``RandomState`` the caller's own: state of
    this process), and picklable (a callback may not be)."""
    est = member.estimator
    if member.xp is not np or not isinstance(est.random_state, (int, np.integer)):
        return False
    try:
        pickle.dumps(est)
    except Exception:
        return False
    return True


def _fit_in_workers(parts, X, n_jobs):
    """Fit each part in a joblib worker, from its estimators as they were before
    this call; then copy each fitted member back and raise the workers' warnings
    here (if a part fails, no member of any part is copied back)."""
    for member in (member for part in parts for member in part):
        member.put_back()
    remove_dead_leftovers()  # memory maps of earlier calls whose process was killed
    # loky's workers outlive a parent killed with -9 (or by an unhandled SIGTERM):
    # these end with it (skmlp/_workers.py).
    fitted = Parallel(n_jobs=min(n_jobs, len(parts)), backend=loky_backend())(
        delayed(_fit_part)(
            [m.estimator for m in part],
            X,
            [m.arguments[1] for m in part],
            [m.arguments[2] for m in part],
        )
        for part in parts
    )
    for part, (estimators, _, failures) in zip(parts, fitted, strict=True):
        for member, est, failure in zip(part, estimators, failures, strict=True):
            if failure is None:
                adopt(member.estimator, est)
            else:  # left as it was (put back above); raised with the others
                member.failure = ValueError(failure)
    for _, caught, _ in fitted:  # here, where the caller's filters apply
        for message, category in caught:
            warn(message, category)  # at the fit_together call


def _fit_part(estimators, X, ys, weights):
    """(In a worker process.) One part of ``fit_together``, fitted there; the
    warnings of its training are returned, to be raised in the calling process
    (those of validation were raised there already)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        members = _prepare(estimators, X, ys, weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit_groups(_groups(members))
    failures = [None if m.failure is None else str(m.failure) for m in members]
    return estimators, [(str(w.message), w.category) for w in caught], failures


def _per_member(values, n_members, name):
    """One entry per estimator: ``values`` itself for all, or its items one each."""
    if isinstance(values, (list, tuple)) and all(
        v is None or isinstance(v, (list, tuple)) or getattr(v, "ndim", 0) >= 1
        for v in values
    ):
        if len(values) != n_members:
            raise ValueError(
                f"fit_together: {name} has {len(values)} entries for {n_members} "
                "estimators; give one array for all, or one per estimator."
            )
        return list(values)
    return [values] * n_members


def _prepare(estimators, X, ys, weights):
    """Each estimator's member (``SGDMLPClassifier._member``); on any error every
    estimator is put back as it was."""
    members = []
    try:
        for index, (est, y, weight) in enumerate(
            zip(estimators, ys, weights, strict=True)
        ):
            try:
                members.append(est._member(X, y, weight, False, None, validate=True))
            except Exception as exc:
                named = _named(exc, index, est)
                if named is exc:
                    raise
                raise named from exc
    except BaseException:  # no estimator is left half-prepared
        for member in members:
            member.put_back()
        raise
    return members


def _named(exc, index, estimator):
    """``exc`` with a message naming the estimator (the same type where possible)."""
    message = f"fit_together: estimators[{index}] ({estimator!r}) cannot be fitted: "
    try:
        return type(exc)(message + str(exc))
    except Exception:  # an exception type that wants other arguments
        exc.add_note(message.rstrip(": "))
        return exc


def _group_key(member):
    """What a group shares: the shape of the networks and of the training data."""
    X = member.data.X
    return (
        tuple(member.params.shapes),
        member.loss_kwargs["activation"],
        member.loss_kwargs["out_activation"],
        member.loss_kwargs["loss"],
        member.batch_size,
        str(X.dtype),
        member.shuffle,
        getattr(member.xp, "__name__", str(member.xp)),
        str(member.device),
        sp.issparse(X),
        X.shape[0],
    )


def _groups(members):
    """Members that share a shape, in order of first appearance."""
    groups = {}
    for member in members:
        groups.setdefault(_group_key(member), []).append(member)
    return list(groups.values())
