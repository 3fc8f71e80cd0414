"""The training loop: epochs of a group of members, a single network being a group of one.

``train(members)`` is the one epoch driver behind ``fit``, ``partial_fit`` and
``fit_together``. Each epoch it draws every member's shuffle order, snapshots every
member, runs the epoch through a runner, and lets each member judge its epoch
(divergence, records, stopping) and call its callbacks; a member whose call ends leaves
the group, and the runner is chosen anew for those left. If the epoch fails or is
interrupted (Ctrl-C), every member is put back to its previous epoch.

Runners, chosen by ``make_runner``:

- ``NumpyRunner``: one network on dense NumPy input, the specialised step of
  ``_numpy_sgd.py`` (2-D buffers: where a single network's CPU speed comes from);
- ``StackedRunner``: everything else (groups, torch, CuPy, array-api-strict, sparse
  input), the stacked step of ``_stacked.py``; on torch CUDA and CuPy the epoch is
  captured as one GPU graph (``_capture.py``) and replayed while the group stays the
  same;
- ``SideBySide``: a group of wide networks on NumPy (dense or sparse), bound by
  arithmetic rather than calls: each member by its own runner, one thread per BLAS
  thread.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_info, threadpool_limits

from skmlp._capture import make_captured_epoch, torch_mirror
from skmlp._numpy_sgd import NumpyStep
from skmlp._stacked import Stack

# Above this many parameters per network, a group on NumPy trains side by side rather
# than stacked (see ``make_runner``): 784-128-10 has 101,770, 784-512-512-10 669,706.
NUMPY_JOINT_MAX_PARAMS = 2**17


def train(members):
    """Train ``members`` (of one shape) to the end of their calls.

    Parameters
    ----------
    members : list of Member
        Prepared members (``SGDMLPClassifier._member``); one for ``fit``.
    """
    for member in members:
        member.begin()
    inputs = shared_inputs(members)
    active, runner = list(members), None
    while active:
        if runner is None or runner.members != active:
            runner = make_runner(active, inputs)
        for member in active:
            member.begin_epoch()
        try:
            converged = run_epoch(runner, active)
        finally:
            for member in active:
                member.sync()
        active = [
            member
            for member, stop in zip(active, converged, strict=True)
            if not member.end_epoch(stop)
        ]


def run_epoch(runner, members):
    """One epoch of ``members`` through ``runner``; each member's verdict (True: its
    training stops). On any exception every member is back at its previous epoch."""
    start = time.perf_counter()
    saved = [member.snapshot() for member in members]
    try:
        orders = [member.draw_order() for member in members]
        with _float_errors_ignored():  # overflow is judged as divergence, in words
            costs = runner.epoch(members, orders)
        seconds = time.perf_counter() - start
        return [
            member.judge(cost / member.n_samples, seconds, state)
            for member, cost, state in zip(members, costs, saved, strict=True)
        ]
    except BaseException:  # Ctrl-C, SIGTERM turned into an exception, MemoryError...
        runner.settle()
        for member, state in zip(members, saved, strict=True):
            member.restore(state)
        raise


def _float_errors_ignored():
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def make_runner(members, inputs=None):
    """The runner for an epoch of ``members``: see the module's docstring.

    ``inputs`` is ``shared_inputs(members)`` (or of a group they belong to).
    """
    first, inputs = members[0], inputs or shared_inputs(members)
    if len(members) == 1 and first.xp is np and not first.sparse:
        return NumpyRunner(members)
    wide = first.params.flat.shape[0] > NUMPY_JOINT_MAX_PARAMS
    if len(members) > 1 and first.xp is np and wide:
        runners = [make_runner([member], inputs) for member in members]
        return SideBySide(members, runners, _side_by_side(members))
    return StackedRunner(members, inputs)


def shared_inputs(members):
    """``{id(member): (X, index)}``: each member's training input, equal inputs
    given as one array (the first seen) and one index, in order of first
    appearance. Computed once per ``train``: a full comparison may run on a device."""
    inputs, shared = [], {}
    for member in members:
        X = member.data.X
        same = [i for i, other in enumerate(inputs) if _equal(X, other, member.xp)]
        if not same:
            inputs.append(X)
        index = same[0] if same else len(inputs) - 1
        shared[id(member)] = (inputs[index], index)
    return shared


class NumpyRunner:
    """Epochs of one network on dense NumPy input (``NumpyStep``)."""

    def __init__(self, members):
        (member,) = self.members = list(members)
        if member.numpy_step is None:  # kept: its buffers serve every epoch
            member.numpy_step = NumpyStep(
                member.params, member.optimizer, **member.loss_kwargs
            )

    def epoch(self, members, orders):
        (member,), (order,), data = members, orders, members[0].data
        step = member.numpy_step
        return [
            step.epoch(data.X, data.Y, data.sample_weight, order, member.batch_size)
        ]

    def settle(self):
        pass


def _side_by_side(members):
    """How many members of a wide NumPy group train at once: one per BLAS thread the
    caller allowed (each then gets one BLAS thread).

    A wide NumPy network is bound by arithmetic, and two networks on one BLAS thread
    each use two cores better than one network on two (OpenBLAS splits products of a
    mini-batch's size poorly); the Python work of a batch is small beside its products.
    """
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return min(len(members), max(blas, default=1))


class SideBySide:
    """Epochs of wide NumPy networks, each by its own runner, ``n_threads`` at a
    time; the result is that of running them one after the other."""

    def __init__(self, members, runners, n_threads):
        self.members, self.runners, self.n_threads = list(members), runners, n_threads
        self._epochs = None

    def epoch(self, members, orders):
        pairs = list(zip(self.runners, members, orders, strict=True))
        if self.n_threads < 2:
            return [runner.epoch([m], [o])[0] for runner, m, o in pairs]
        self._epochs = epochs = _Epochs()
        with threadpool_limits(limits=1), ThreadPoolExecutor(self.n_threads) as pool:
            futures = [pool.submit(epochs.run, *pair) for pair in pairs]
            # Waits in short slices: a signal (Ctrl-C) caught by a worker thread
            # runs its handler only when this, the main thread, next runs Python.
            while wait(futures, timeout=0.01).not_done:
                pass
            return [future.result() for future in futures]

    def settle(self):
        """No epoch starts now; those running end first (then the rollback)."""
        if self._epochs is not None:
            self._epochs.stop()


class _Epochs:
    """The side-by-side epochs of one ``SideBySide.epoch``, counted as they run.

    A Ctrl-C whose handler runs inside the pool's ``submit`` (in ``Thread.start``,
    once the worker already runs) leaves a worker the pool does not wait for: the
    members are put back only once ``stop`` has seen every epoch end, whatever the
    pool knows.
    """

    def __init__(self):
        self._turns = threading.Condition()
        self._running, self._stopped = 0, False

    def run(self, runner, member, order):
        """(In a worker.) ``member``'s epoch, unless ``stop`` came first."""
        with self._turns:
            if self._stopped:
                return None
            self._running += 1
        try:
            with _float_errors_ignored():  # per thread: NumPy's state is
                return runner.epoch([member], [order])[0]
        finally:
            with self._turns:
                self._running -= 1
                self._turns.notify_all()

    def stop(self):
        """Start no more epochs; wait for the running ones to end."""
        with self._turns:
            self._stopped = True
            self._turns.wait_for(lambda: self._running == 0)


class StackedRunner:
    """Epochs of members of one shape as one stacked computation (``Stack``).

    Members are ordered so that those with the same ``X`` and the same integer
    ``random_state`` (hence the same shuffle orders) are neighbours: each run of them
    is a "stream" whose first layer is one wide product. On torch CUDA and CuPy the
    epoch is one captured GPU graph, whose stack persists while the members and their
    streams stay the same.
    """

    def __init__(self, members, inputs):
        self.members = list(members)
        first = members[0]
        self.xp, self.device = first.xp, first.device
        self.batch_size, self.loss_kwargs = first.batch_size, first.loss_kwargs
        self.capture = _capture_mode(members)
        self.mirrored = _mirrored(members)  # a CuPy group, captured as torch kernels
        self._captured = None  # (key, stack, graph) of the captured epoch
        self.inputs = inputs  # id(member) -> (X, index): see ``shared_inputs``

    def epoch(self, members, orders):
        """Each member's summed cost, in the order of ``members``."""
        position = {id(m): i for i, m in enumerate(members)}
        pairs = sorted(zip(members, orders, strict=True), key=self._stream_key)
        members, orders = [m for m, _ in pairs], [o for _, o in pairs]
        streams = self._streams(members, orders)
        if self.capture is not None:
            costs = self._captured_epoch(members, orders, streams)
        else:
            stack = Stack(members, self.xp, self.loss_kwargs)
            costs = stack.epoch(
                [self._X(m) for m in members],
                [m.data.Y for m in members],
                [m.data.sample_weight for m in members],
                [self._device_order(order) for order in orders],
                streams,
                self.batch_size,
            )
            stack.unpack()
        result = [None] * len(members)
        for member, cost in zip(members, costs, strict=True):
            result[position[id(member)]] = cost
        return result

    def settle(self):
        """An interrupted replay may still run: wait for it."""
        if self._captured is not None:
            self._captured[2].synchronize()

    def _captured_epoch(self, members, orders, streams):
        """One epoch as one GPU graph, captured while the members and their streams
        stay the same. The graph's stack and the members agree after every epoch
        (``unpack``); a member is rolled back only when it stops (divergence) or
        when the whole fit ends (an exception), so the stack is never stale."""
        key = (tuple(id(m) for m in members), tuple(streams))
        if self._captured is None or self._captured[0] != key:
            self._captured = None  # the old graph's memory goes first
            stack, graph = self._capture(members, streams)
            self._captured = (key, stack, graph)
        _, stack, graph = self._captured
        order = None
        if orders[0] is not None:
            order = np.stack([orders[begin] for begin, _ in streams])
        costs = graph(order)
        stack.unpack()
        return [costs] if isinstance(costs, float) else costs

    def _capture(self, members, streams):
        """``(stack, graph)``: the stacked buffers and the captured epoch."""
        xp, mirror = self.xp, None
        arrays = [(self._X(m), m.data.Y, m.data.sample_weight) for m in members]
        if self.mirrored:  # CuPy refuses cuBLAS calls during a capture
            mirror, xp = torch_mirror()
            arrays = [tuple(map(mirror, a)) for a in arrays]
        Xs, Ys, weights = (list(column) for column in zip(*arrays, strict=True))
        stack = Stack(members, xp, self.loss_kwargs, capturable=True, mirror=mirror)
        stream_of = [s for s, (b, e) in enumerate(streams) for _ in range(b, e)]
        batch_size = self.batch_size  # the closures hold no reference to self: the
        # graph is then freed with the runner, not later by the garbage collector

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
        return stack, graph

    def _X(self, member):
        """The member's training input, equal inputs as one array."""
        return self.inputs[id(member)][0]

    def _device_order(self, order):
        if order is None or self.xp is np:
            return order
        return self.xp.asarray(order, device=self.device)

    def _stream_key(self, pair):
        member = pair[0]
        seed = member.estimator.random_state
        seed = seed if isinstance(seed, (int, np.integer)) else -1 - id(member)
        return (self.inputs[id(member)][1], int(seed))

    def _streams(self, members, orders):
        """Runs of neighbouring members that see the same batches: ``[(begin, end)]``."""
        bounds = [0]
        for i in range(1, len(members)):
            a, b = orders[i - 1], orders[i]
            same_order = (a is None and b is None) or (
                a is not None and b is not None and np.array_equal(a, b)
            )
            same_input = self._X(members[i]) is self._X(members[i - 1])
            if not (same_input and same_order):
                bounds.append(i)
        bounds.append(len(members))
        return list(zip(bounds[:-1], bounds[1:], strict=True))


def _capture_mode(members):
    """``"graph"`` where an epoch is captured as one GPU graph: torch CUDA tensors or
    CuPy arrays (with torch to capture them), every member with ``capture=True``;
    else None (an eager epoch).

    ``"eager"`` (set by tests) runs the captured epoch's code eagerly on any device.
    """
    if all(m.backend in ("torch", "cupy") for m in members):
        return "graph"
    return None


def _mirrored(members):
    """Whether the captured epoch runs as torch kernels on the memory of other
    arrays: CuPy's (see ``_capture.py``)."""
    return members[0].backend == "cupy"


def _equal(a, b, xp):
    if a is b:
        return True
    if sp.issparse(a) or sp.issparse(b):
        return (
            sp.issparse(a)
            and sp.issparse(b)
            and a.shape == b.shape
            and ((a != b).nnz == 0)
        )
    if a.shape != b.shape or not bool(xp.all(a[:1, ...] == b[:1, ...])):
        return False  # early stopping's splits differ at once: no full comparison
    return bool(xp.all(a == b))
