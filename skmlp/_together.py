"""``fit_together``: several networks of one shape trained as one batched computation.

A sweep or the memorization experiment trains many networks of one shape on one ``X``.
Trained one at a time, each pays NumPy's (or the GPU's) fixed cost per call for every
mini-batch. Here the members of a group share every call instead: their weights are
stacked along a leading model axis and each layer is one batched product
(``np.matmul`` over the model axis).

Members whose ``random_state`` is the same integer draw the same shuffle order, so they
see the same mini-batches: their first layer is then ONE wide product,
``X_batch @ [W_1 | W_2 | ... | W_m]`` of shape (batch, m * n_units), and its gradient
one product ``X_batch^T @ [delta_1 | ... | delta_m]``. For a 784-16-16-10 network this
is where almost all the arithmetic is. The wide product saves calls, not arithmetic (on
the 2-core dev box's OpenBLAS, 100x784 @ 784x96 costs what six 784x16 products do);
the saving on a CPU is the per-call cost of everything else, shared by the group
(``benchmarks/bench_together.py``, which also times the two wide products alone: the
floor of a joint epoch). Wide NumPy networks are not stacked at all (``_joint``): their
members train side by side in threads instead, one per BLAS thread (``_side_by_side``).

Each member keeps its own ``Engine`` (``_engine.py``), built by the estimator itself, so
the validation, the random initialisation, the records, the stopping rule, divergence,
rollback and early stopping's best weights are those of ``est.fit``. Each epoch the
group's stacked parameters and velocities are packed from the members' flat buffers and
unpacked back into them at the end (two copies of the weights per epoch); each member's
epoch is then ended by its engine, its callbacks run by the same ``FitRun`` as in
``est.fit``, and a member that stops leaves the group.

On a GPU the joint epoch is bound by kernel launches, as one network's is: on torch
CUDA and CuPy it is captured as one CUDA graph (``_Group._captured_epoch``, with
``_capture.py``), whose stacked buffers persist while the group's members stay the
same; the learning rates are written into a device vector and the shuffle orders
into a static buffer before each replay.
"""

import contextlib
import dataclasses
import pickle
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed, effective_n_jobs
from joblib.parallel import get_active_backend
from sklearn import config_context
from sklearn.callback._callback_support import callback_management_context
from threadpoolctl import threadpool_info, threadpool_limits

from skmlp._capture import make_captured_epoch
from skmlp._classifier import FitRun
from skmlp._stacked import Stack

# Above this many parameters per network, a group on NumPy trains member by member
# (see ``_joint``): 784-128-10 has 101,770, 784-512-512-10 has 669,706.
NUMPY_JOINT_MAX_PARAMS = 2**17


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
        the per-call cost of a joint fit again, but the parts run at once: on the
        2-core dev box, 6 x 784-16-16-10 train 1.2-1.4x faster with ``n_jobs=2``,
        for about 0.3 s more per call and 2 s once, while the workers start
        (``benchmarks/bench_together.py``). Groups on other namespaces (torch,
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
    do; what a worker prints, ``verbose`` output included, goes to the terminal), and
    its warnings are raised here once all parts are fitted; if the call is
    interrupted or a worker fails, every estimator is left as it was before the call.
    A group's ``history_`` gives, as each member's ``seconds``, the wall time of the
    group's joint epoch. Sparse input, and groups of one, train each network by its
    own engine. On torch CUDA and CuPy, a group's epoch is captured as one CUDA graph
    and replayed (captured anew when a member leaves), unless a member has
    ``capture=False``.

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
                _put_back(member.estimator, member.before)
            raise
    _fit_groups(groups)
    return estimators


def _fit_groups(groups):
    """Train prepared groups in this process, callbacks managed as in ``fit``."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(config_context(skip_parameter_validation=True))
        for member in (member for group in groups for member in group):
            stack.enter_context(callback_management_context(member.estimator))
        for group in groups:
            _train(group)


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
    if member.engine.xp is not np or not isinstance(
        est.random_state, (int, np.integer)
    ):
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
        _put_back(member.estimator, member.before)
    fitted = Parallel(n_jobs=min(n_jobs, len(parts)))(
        delayed(_fit_part)(
            [m.estimator for m in part],
            X,
            [m.arguments[1] for m in part],
            [m.arguments[2] for m in part],
        )
        for part in parts
    )
    for part, (estimators, _) in zip(parts, fitted, strict=True):
        for member, est in zip(part, estimators, strict=True):
            _adopt(member.estimator, est)
    for _, caught in fitted:  # here, where the caller's filters apply
        for message, category in caught:
            warnings.warn(message, category, stacklevel=3)  # the fit_together call


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
    return estimators, [(str(w.message), w.category) for w in caught]


def _adopt(estimator, fitted):
    """``estimator`` takes the state of ``fitted``, its copy fitted in a worker,
    but keeps its own callbacks and parameters (objects the caller holds)."""
    own = {
        name: estimator.__dict__[name]
        for name in ("_skl_callbacks", *estimator.get_params(deep=False))
        if name in estimator.__dict__
    }
    estimator.__dict__.clear()
    estimator.__dict__.update(fitted.__dict__)
    estimator.__dict__.update(own)


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


@dataclasses.dataclass
class _Member:
    """One estimator in ``fit_together``: its engine, data and the call's arguments."""

    estimator: object
    engine: object  # the Engine built by the estimator's own ``_prepare``
    data: object  # TrainingData
    arguments: tuple  # (X, y, sample_weight) as the callbacks see them
    before: tuple  # the estimator as it was before the call (see ``_put_back``)
    run: object = None  # FitRun: callbacks and fitted attributes, as in ``_fit``

    def begin(self):
        """The fit begins, as in ``SGDMLPClassifier._fit``."""
        est = self.estimator
        self.run = FitRun(est, self.engine, *self.arguments, est.max_iter, False)

    def end_epoch(self, converged):
        """The epoch's callbacks; True when this member's fit ends (then finished)."""
        stopped = self.run.end_epoch(converged)
        if stopped or self.run.n_epochs == self.estimator.max_iter:
            self.run.finish(stopped, warn=True, stacklevel=6)  # the fit_together call
            return True
        return False


def _prepare(estimators, X, ys, weights):
    """Validate and initialise every estimator; on any error restore them all."""
    touched, members = [], []  # touched: (estimator, its state before), in order
    try:
        for index, (est, y, weight) in enumerate(
            zip(estimators, ys, weights, strict=True)
        ):
            touched.append((est, (dict(est.__dict__), _rng_state(est))))
            try:
                est._validate_params()
                with config_context(skip_parameter_validation=True):
                    engine, data = est._prepare(X, y, weight, False, None)
            except Exception as exc:
                named = _named(exc, index, est)
                if named is exc:
                    raise
                raise named from exc
            members.append(_Member(est, engine, data, (X, y, weight), touched[-1][1]))
    except BaseException:  # no estimator is left half-prepared
        for est, before in touched:
            _put_back(est, before)
        raise
    return members


def _put_back(estimator, before):
    """The estimator as it was: its attributes and its random generators' states."""
    attributes, generators = before
    estimator.__dict__.clear()
    estimator.__dict__.update(attributes)
    for generator, state in generators:
        generator.set_state(state)


def _rng_state(estimator):
    """``[(generator, state)]`` for the generators a fit draws from that belong to
    the estimator: its own (after a first fit) and a ``RandomState`` passed as its
    ``random_state`` (the first fit's)."""
    generators = [estimator.random_state]
    state = estimator.__dict__.get("_state")
    if state is not None:
        generators.append(state.random_state)
    return [
        (g, g.get_state())
        for g in {id(g): g for g in generators}.values()
        if isinstance(g, np.random.RandomState)
    ]


def _named(exc, index, estimator):
    """``exc`` with a message naming the estimator (the same type where possible)."""
    message = f"fit_together: estimators[{index}] ({estimator!r}) cannot be fitted: "
    try:
        return type(exc)(message + str(exc))
    except Exception:  # an exception type that wants other arguments
        exc.add_note(message.rstrip(": "))
        return exc


def _group_key(member):
    est, engine, X = member.estimator, member.engine, member.data.X
    return (
        tuple(engine.params.shapes),
        est.activation,
        est.out_activation_,
        est.loss,
        engine.batch_size,
        str(X.dtype),
        est.shuffle,
        getattr(engine.xp, "__name__", str(engine.xp)),
        str(engine.device),
        sp.issparse(X),
        X.shape[0],
    )


def _groups(members):
    """Members that share a shape, in order of first appearance."""
    groups = {}
    for member in members:
        groups.setdefault(_group_key(member), []).append(member)
    return list(groups.values())


def _joint(members):
    """Whether a group trains jointly, rather than each member by its own engine.

    Not for sparse input, nor on NumPy for networks of more than
    ``NUMPY_JOINT_MAX_PARAMS`` parameters: those are bound by arithmetic and memory
    traffic, not by calls, and m stacked copies of their weights leave the caches
    (6 x 784-512-512-10: a joint epoch 11 % slower than 6 single ones in CPU time,
    measured on the 2-core dev box; 6 x 784-16-16-10: faster;
    benchmarks/bench_together.py).
    """
    engine = members[0].engine
    if len(members) < 2 or sp.issparse(members[0].data.X):
        return False
    return engine.xp is not np or engine.params.flat.shape[0] <= NUMPY_JOINT_MAX_PARAMS


def _train(members):
    """Train a group to the end: jointly, or each by its own engine."""
    joint = _joint(members)
    group = _Group(members) if joint else None
    n_threads = 1 if joint else _side_by_side(members)
    for member in members:
        member.begin()
    active = list(members)
    while active:
        for member in active:
            member.run.begin_epoch()
        try:
            if joint and len(active) > 1:
                stops = group.run_epoch(active)
            else:
                stops = _separate_epochs(active, n_threads)
        finally:
            for member in active:
                member.run.sync()
        active = [
            m for m, stop in zip(active, stops, strict=True) if not m.end_epoch(stop)
        ]


def _side_by_side(members):
    """How many members of a group that is not stacked train side by side: on NumPy,
    one per BLAS thread the caller allowed (each then gets one BLAS thread); else 1.

    A wide NumPy network is bound by arithmetic, and two networks on one BLAS thread
    each use two cores better than one network on two (OpenBLAS splits products of a
    mini-batch's size poorly); the Python work of a batch is small beside its products.
    """
    if members[0].engine.xp is not np or len(members) < 2:
        return 1
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return min(len(members), max(blas, default=1))


def _separate_epochs(active, n_threads):
    """One epoch of each member by its own engine, ``n_threads`` at a time.

    Each engine's epoch is its own computation, so the result is that of running
    them one after the other. If one fails or Ctrl-C comes, the others finish their
    epoch and every member is put back to its previous epoch, as in a joint epoch.
    """
    if n_threads < 2:
        return [m.engine.run_epoch(m.data) for m in active]
    saved = [m.engine._snapshot() for m in active]
    epochs = _Epochs()
    try:
        with threadpool_limits(limits=1), ThreadPoolExecutor(n_threads) as pool:
            futures = [pool.submit(epochs.run, m) for m in active]
            # Waits in short slices: a signal (Ctrl-C) caught by a worker thread
            # runs its handler only when this, the main thread, next runs Python.
            while wait(futures, timeout=0.01).not_done:
                pass
            return [future.result() for future in futures]
    except BaseException:
        epochs.stop()  # no epoch starts now; those running end first
        for member, state in zip(active, saved, strict=True):
            member.engine._restore(state)
        raise


class _Epochs:
    """The side-by-side epochs of ``_separate_epochs``, counted as they run.

    A Ctrl-C whose handler runs inside the pool's ``submit`` (in ``Thread.start``,
    once the worker already runs) leaves a worker the pool does not wait for: the
    members are put back only once ``stop`` has seen every epoch end, whatever the
    pool knows (seen once in CI: a rollback racing with an epoch).
    """

    def __init__(self):
        self._turns = threading.Condition()
        self._running, self._stopped = 0, False

    def run(self, member):
        """(In a worker.) ``member``'s epoch, unless ``stop`` came first."""
        with self._turns:
            if self._stopped:
                return None
            self._running += 1
        try:
            return member.engine.run_epoch(member.data)
        finally:
            with self._turns:
                self._running -= 1
                self._turns.notify_all()

    def stop(self):
        """Start no more epochs; wait for the running ones to end."""
        with self._turns:
            self._stopped = True
            self._turns.wait_for(lambda: self._running == 0)


class _Group:
    """Members of one shape, trained jointly; the training data shared once.

    Members are ordered so that those with the same ``X`` and the same integer
    ``random_state`` (hence the same shuffle orders) are neighbours: each run of them
    is a "stream" whose first layer is one wide product.
    """

    def __init__(self, members):
        first = members[0]
        self.xp, self.device = first.engine.xp, first.engine.device
        self.batch_size = first.engine.batch_size
        self.loss_kwargs = first.engine.loss_kwargs
        self.capture = _capture_mode(members)
        self.mirrored = _mirrored(members)  # a CuPy group, captured as torch kernels
        self._captured = None  # (key, stack, graph) of the captured epoch
        inputs = []  # distinct training inputs: equal arrays are stored once
        for member in members:
            X = member.data.X
            same = [i for i, other in enumerate(inputs) if _equal(X, other, self.xp)]
            if not same:
                inputs.append(X)
            member.X = inputs[same[0]] if same else X
            member.input_index = same[0] if same else len(inputs) - 1

    def run_epoch(self, members):
        """One joint epoch of ``members``; each engine's ``end_epoch`` verdict."""
        start, given = time.perf_counter(), members
        members = sorted(members, key=_stream_key)
        saved = [m.engine._snapshot() for m in members]
        try:
            orders = [_draw_order(m) for m in members]
            streams = _streams(members, orders)
            if self.capture is not None:
                costs = self._captured_epoch(members, orders, streams)
            else:
                stack = Stack([m.engine for m in members], self.xp, self.loss_kwargs)
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    costs = stack.epoch(
                        [m.X for m in members],
                        [m.data.Y for m in members],
                        [m.data.sample_weight for m in members],
                        [self._device_order(order) for order in orders],
                        streams,
                        self.batch_size,
                    )
                stack.unpack()
            seconds = time.perf_counter() - start
            verdicts = {
                id(m): m.engine.end_epoch(cost / m.X.shape[0], m.data, seconds, s)
                for m, cost, s in zip(members, costs, saved, strict=True)
            }
        except BaseException:  # Ctrl-C...: every member back to its last epoch
            if self._captured is not None:  # an interrupted replay may still run
                self._captured[2].synchronize()
            for member, state in zip(members, saved, strict=True):
                member.engine._restore(state)
            raise
        return [verdicts[id(m)] for m in given]

    def _captured_epoch(self, members, orders, streams):
        """One joint epoch as one GPU graph, captured while the members and their
        streams stay the same (a member that stops leaves: the next epoch is
        captured anew). The graph's stack and the engines agree after every epoch
        (``unpack``); a member is rolled back only when it stops (divergence) or
        when the whole fit ends (an exception), so the stack is never stale."""
        key = (tuple(id(m) for m in members), tuple(streams))
        if self._captured is None or self._captured[0] != key:
            self._captured = None  # the old graph's memory goes first
            xp, mirror = self.xp, None
            arrays = [(m.X, m.data.Y, m.data.sample_weight) for m in members]
            if self.mirrored:  # CuPy refuses cuBLAS calls during a capture
                mirror, xp = _torch_mirror()
                arrays = [tuple(map(mirror, a)) for a in arrays]
            Xs, Ys, weights = (list(column) for column in zip(*arrays, strict=True))
            engines = [m.engine for m in members]
            stack = Stack(engines, xp, self.loss_kwargs, capturable=True, mirror=mirror)
            stream_of = [s for s, (b, e) in enumerate(streams) for _ in range(b, e)]
            batch_size = self.batch_size  # no reference to self: see Engine._make_graph

            def run(order):  # order: one row per stream, or None
                rows = [None if order is None else order[s] for s in stream_of]
                return stack.epoch_sums(Xs, Ys, weights, rows, streams, batch_size)

            device = Xs[0].device
            graph = make_captured_epoch(
                run,
                to_device=lambda order: xp.asarray(order, device=device),
                prepare=stack.write_learning_rates,
                eager=self.capture == "eager",
            )
            self._captured = (key, stack, graph)
        _, stack, graph = self._captured
        order = None
        if orders[0] is not None:
            order = np.stack([orders[begin] for begin, _ in streams])
        costs = graph(order)
        stack.unpack()
        return costs

    def _device_order(self, order):
        if order is None or self.xp is np:
            return order
        return self.xp.asarray(order, device=self.device)


def _capture_mode(members):
    """``"graph"`` where a joint epoch is captured as one GPU graph: torch CUDA
    tensors or CuPy arrays (with torch to capture them), every member with
    ``capture=True``; else None (an eager joint epoch).

    ``"eager"`` (set by tests) runs the captured epoch's code eagerly on any device.
    """
    if all(m.engine._backend in ("torch", "cupy") for m in members):
        return "graph"
    return None


def _mirrored(members):
    """Whether the group's captured epoch runs as torch kernels on the memory of
    other arrays: CuPy's (as one network's does, ``_capture.py``)."""
    return members[0].engine._backend == "cupy"


def _torch_mirror():
    """``(mirror, torch namespace)``: ``mirror(array)`` is ``array`` (of any
    namespace that speaks DLPack) as a torch tensor on the same memory, or None."""
    import torch
    from sklearn.utils._array_api import get_namespace

    with config_context(array_api_dispatch=True):
        torch_xp, _ = get_namespace(torch.zeros(1))
    return (lambda a: None if a is None else torch.from_dlpack(a)), torch_xp


def _equal(a, b, xp):
    if a is b:
        return True
    if a.shape != b.shape or not bool(xp.all(a[:1, ...] == b[:1, ...])):
        return False  # early stopping's splits differ at once: no full comparison
    return bool(xp.all(a == b))


def _stream_key(member):
    seed = member.estimator.random_state
    seed = seed if isinstance(seed, (int, np.integer)) else -1 - id(member)
    return (member.input_index, int(seed))


def _draw_order(member):
    """The epoch's shuffle order, drawn as ``Engine.epoch`` draws it."""
    engine = member.engine
    if not engine.shuffle:
        return None
    return engine.state.random_state.permutation(member.X.shape[0])


def _streams(members, orders):
    """Runs of neighbouring members that see the same batches: ``[(begin, end)]``."""
    bounds = [0]
    for i in range(1, len(members)):
        a, b = orders[i - 1], orders[i]
        same_order = (a is None and b is None) or (
            a is not None and b is not None and np.array_equal(a, b)
        )
        if not (members[i].X is members[i - 1].X and same_order):
            bounds.append(i)
    bounds.append(len(members))
    return list(zip(bounds[:-1], bounds[1:], strict=True))
