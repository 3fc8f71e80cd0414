"""What training keeps: records, counters, flat parameters, and the chunks of an epoch.

The weights and biases of every layer live in one flat array (weights first, layer by
layer; ``FlatParams``), so that a momentum update, a snapshot, a restore or a copy of
the best weights is one operation on one array; each layer's ``W`` and ``b`` are views
of it. ``TrainingState`` is what one call leaves for the next (it is pickled with the
estimator).
"""

import dataclasses
import math
import os
from typing import NamedTuple

import numpy as np

from skmlp._capture import graph_backend
from skmlp._data import namespace

# What a fit holds at its peak beyond its data (``memory_needed``; measured by
# benchmarks/bench_memory.py and tests/test_state.py): arrays the size of the weights
# (parameters, velocity, step, scratch, the epoch's snapshot of parameters and velocity;
# one more with early stopping, the best weights), and the batch's activations: one set
# of buffers per batch size (a short last batch has its own) and the backward pass's
# temporaries.
WEIGHT_COPIES = 6
ACTIVATION_TEMPORARIES = 1.2

# Rows gathered at once: a few MiB for MNIST, so a chunk stays in cache while its
# batches are used, and one gather replaces many.
CHUNK_ROWS = 1024


class EpochRecord(NamedTuple):
    """What one epoch leaves: ``loss_curve_``, ``history_``... derive from these."""

    epoch: int
    loss: float
    learning_rate: float
    seconds: float
    validation_score: float | None = None


@dataclasses.dataclass
class TrainingState:
    """What training keeps from one call to the next (pickled with the estimator).

    ``records`` holds one ``EpochRecord`` per epoch ever run; the estimator's
    ``loss_curve_``, ``validation_scores_`` and ``history_`` derive from it.
    """

    optimizer: object  # SGDOptimizer: learning rate and the flat velocity
    random_state: np.random.RandomState  # shuffling (and the validation split)
    records: list = dataclasses.field(default_factory=list)
    t: int = 0  # training samples seen
    no_improvement_count: int = 0
    best_loss: float | None = None
    best_validation_score: float | None = None


@dataclasses.dataclass
class StoppingRule:
    """When to stop: MLPClassifier's rule (``tol``, ``n_iter_no_change``, adaptive)."""

    tol: float
    n_iter_no_change: float
    early_stopping: bool
    verbose: bool = False


class TrainingData(NamedTuple):
    """The arrays of a fit: training inputs and targets, and the validation set."""

    X: object  # (n_samples, n_features), array or sparse matrix
    Y: object  # (n_samples, n_outputs), targets in the output encoding
    sample_weight: object = None  # (n_samples,) or None
    validation: tuple | None = None  # (X_val, y_indices_val, sample_weight_val)


def chunks(n_samples, batch_size):
    """The epoch's chunks and their batches: ``[(chunk, [batch, ...]), ...]``.

    ``chunk`` is a slice of the epoch's rows (of the shuffle order), about
    ``CHUNK_ROWS`` long and a whole number of batches; each ``batch`` a slice of the
    chunk's rows. The last batch of the epoch may be short.
    """
    chunk_rows = max(1, CHUNK_ROWS // batch_size) * batch_size
    result = []
    for begin in range(0, n_samples, chunk_rows):
        end = min(begin + chunk_rows, n_samples)
        batches = [
            slice(start, min(start + batch_size, end - begin))
            for start in range(0, end - begin, batch_size)
        ]
        result.append((slice(begin, end), batches))
    return result


def init_params(layer_units, activation, random_state, dtype, xp, device, fit=None):
    """Glorot-uniform weights and biases, drawn exactly as MLPClassifier does.

    The memory the training will need is checked first (``check_memory``, with
    ``fit``: its ``(n_samples, batch_size, early_stopping)``), so an impossible size
    fails at once, before anything is allocated.
    """
    check_memory(layer_units, dtype, xp, device, *(fit or (1, 1, False)))
    factor = 2.0 if activation == "logistic" else 6.0
    coefs, intercepts = [], []
    for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:], strict=False):
        bound = math.sqrt(factor / (fan_in + fan_out))
        coef = random_state.uniform(-bound, bound, (fan_in, fan_out))
        intercept = random_state.uniform(-bound, bound, fan_out)
        coefs.append(xp.asarray(coef, dtype=dtype, device=device))
        intercepts.append(xp.asarray(intercept, dtype=dtype, device=device))
    return coefs, intercepts


def memory_needed(layer_units, itemsize, n_samples, batch_size, early_stopping):
    """Bytes a fit holds at its peak beyond its data: copies of the weights, and the
    activations of a batch (see ``WEIGHT_COPIES``)."""
    sizes = zip(layer_units[:-1], layer_units[1:], strict=False)
    n_params = sum(fan_in * fan_out + fan_out for fan_in, fan_out in sizes)
    rows = max(1, min(200 if batch_size == "auto" else batch_size, n_samples))
    batch_sizes = 1 if n_samples % rows == 0 else 2  # a short last batch: its own
    activations = rows * sum(layer_units[1:]) * itemsize
    weights = (WEIGHT_COPIES + bool(early_stopping)) * n_params * itemsize
    return weights + (batch_sizes + ACTIVATION_TEMPORARIES) * activations


def check_memory(layer_units, dtype, xp, device, n_samples, batch_size, early_stopping):
    """Raise MemoryError, naming the need, if training cannot fit in memory."""
    itemsize = xp.finfo(dtype).bits // 8
    needed = memory_needed(layer_units, itemsize, n_samples, batch_size, early_stopping)
    available = _available_bytes(xp, device)
    if available is not None and needed > available:
        raise MemoryError(
            f"A network of layer sizes {list(layer_units)}, trained in batches of "
            f"{batch_size} (of {n_samples} samples), needs about "
            f"{needed / 2**30:.1f} GiB for its weights and activations, but only "
            f"{available / 2**30:.1f} GiB of memory is available. Use smaller "
            "hidden_layer_sizes or batch_size, or dtype='float32'."
        )


def _available_bytes(xp, device):
    """Free memory where the arrays live (None when it cannot be told): on the CPU
    the least of the machine's available memory, the cgroup's room (a container's
    limit) and the address space left under ``ulimit -v``."""
    backend = graph_backend(xp, device)
    if backend == "torch":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    if backend == "cupy":
        import cupy

        return cupy.cuda.Device().mem_info[0]
    found = [_meminfo_available(), _cgroup_room(), _address_space_left()]
    found = [value for value in found if value is not None]
    return min(found) if found else None


def _meminfo_available():
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_room():
    """The cgroup's memory limit less its usage (v2, then v1), None if unlimited."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit) as file_limit, open(usage) as file_usage:
                text = file_limit.read().strip()
                used = int(file_usage.read().strip())
        except (OSError, ValueError):
            continue
        if text == "max" or int(text) >= 2**60:  # v1 writes "unlimited" as ~2**63
            return None
        return max(0, int(text) - used)
    return None


def _address_space_left():
    """``ulimit -v`` less the address space this process maps, None if unlimited."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return None
    return max(0, soft - mapped)


class FlatParams:
    """Weights then biases of every layer, in one flat array of length ``n_params``.

    Parameters
    ----------
    coefs, intercepts : lists of arrays
        The layers' weights and biases, copied into the flat array.
    xp : array namespace
    """

    def __init__(self, coefs, intercepts, xp):
        arrays = list(coefs) + list(intercepts)
        self.xp, self.n_coefs = xp, len(coefs)
        self.shapes = [tuple(a.shape) for a in arrays]
        self.flat = xp.concat([xp.reshape(a, (-1,)) for a in arrays])
        self.n_coef_values = sum(math.prod(s) for s in self.shapes[: self.n_coefs])

    def views(self, flat=None):
        """Arrays shaped like the layers' (views of ``flat`` where ``xp`` gives views)."""
        return views(self.flat if flat is None else flat, self.shapes, self.xp)

    def layers(self):
        """``(coefs, intercepts)``: the current weights and biases, layer by layer."""
        arrays = self.views()
        return arrays[: self.n_coefs], arrays[self.n_coefs :]


def views(flat, shapes, xp):
    """Consecutive arrays of ``shapes``, views of the 1-D ``flat``."""
    arrays, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        arrays.append(xp.reshape(flat[offset : offset + size], shape))
        offset += size
    return arrays


class TrainingRecordsMixin:
    """The fitted attributes that derive from the ``TrainingState`` in ``_state``:
    never out of date, even after an interrupted fit."""

    @property
    def history_(self):
        """One row per epoch: epoch, loss, learning_rate, seconds[, validation_score].

        Returns
        -------
        history : pandas.DataFrame
            Built from the per-epoch records, so it is never out of date, even after an
            interrupted fit.
        """
        import pandas as pd  # only here: the estimator itself does not need pandas

        columns = list(EpochRecord._fields)
        if not self.early_stopping:
            columns.remove("validation_score")
        return pd.DataFrame(self._records, columns=EpochRecord._fields)[columns]

    @property
    def loss_curve_(self):
        """Mean cost of each epoch, from the per-epoch records."""
        return [record.loss for record in self._records]

    @property
    def loss_(self):
        """Mean cost of the last epoch (None before the first)."""
        return self._records[-1].loss if self._records else None

    @property
    def validation_scores_(self):
        """Validation accuracy of each epoch (None without early stopping)."""
        scores = [record.validation_score for record in self._records]
        return scores if self.early_stopping else None

    @property
    def t_(self):
        """Number of training samples seen."""
        return self._fitted_state.t

    @property
    def best_loss_(self):
        """Lowest epoch cost (None with early stopping)."""
        return self._fitted_state.best_loss

    @property
    def best_validation_score_(self):
        """Best validation accuracy (None without early stopping)."""
        return self._fitted_state.best_validation_score

    @property
    def _records(self):
        return self._fitted_state.records

    @property
    def _random_state(self):
        return self._fitted_state.random_state

    @property
    def _fitted_state(self):
        if "_state" not in self.__dict__:
            raise AttributeError("This attribute exists once the model is fitted.")
        return self._state

    def _reconstruction_attributes(self):
        """Copies of the state a callback's ``fitted_estimator`` needs to predict."""
        return {
            "coefs_": [_copy(c) for c in self.coefs_],
            "intercepts_": [_copy(b) for b in self.intercepts_],
            "n_iter_": self.n_iter_,
            "_state": dataclasses.replace(self._state, records=list(self._records)),
        }


def _copy(array):
    xp, _ = namespace(array)
    return xp.asarray(array, copy=True)
