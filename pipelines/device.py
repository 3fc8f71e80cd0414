"""Where a pipeline trains: NumPy on the CPU, or torch / CuPy through the array API.

The ``device`` setting of train, grid search and memorization:

=============  ===========================================================
``cpu``        NumPy on the CPU (the default)
``cuda``       torch on the current CUDA GPU (``cuda:1``: the second one)
``cupy``       CuPy on the current CUDA GPU (``cupy:1``: the second one)
``torch:cpu``  torch on the CPU: the GPU's code path on any machine
``auto``       ``cuda`` where torch sees a GPU, else ``cupy`` where CuPy
               does, else ``cpu``
=============  ===========================================================

Off NumPy, the training data and the evaluation sets move to the device once, the
fit runs under scikit-learn's array-API dispatch (so the preprocessing steps run
there too), and per-epoch evaluation stays there. The fitted pipeline comes back to
NumPy once, for the final metrics and the logged model, which then loads anywhere.
"""

import contextlib
import io
import os
import pickle
import sys
from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn.utils._array_api import _convert_to_numpy, get_namespace

CHOICES = "cpu, cuda, cuda:N, cupy, cupy:N, torch:cpu, auto"


class DeviceError(ValueError):
    """The requested device, or the library it needs, is not available."""


@dataclass(frozen=True)
class Device:
    """A resolved device: its canonical ``name`` (the run tag), the array
    ``library`` that trains there, and a human ``description``."""

    name: str
    library: str
    description: str

    @property
    def is_numpy(self):
        return self.library == "numpy"

    @property
    def is_gpu(self):
        return self.name.startswith(("cuda", "cupy"))

    def tags(self):
        """Run tags that say where a run trained."""
        return {"skmlp.device": self.name, "skmlp.device_name": self.description}

    def put(self, array):
        """``array`` (NumPy, or None) copied to this device (as it is on NumPy)."""
        if array is None or self.is_numpy:
            return array
        if np.asarray(array).dtype.kind not in "biuf":
            raise DeviceError(
                f"device={self.name} trains on numbers only; got an array of dtype "
                f"{np.asarray(array).dtype} (encode labels as integers, or use cpu)."
            )
        if self.library == "torch":
            import torch

            return torch.asarray(array, device=self._torch_device, copy=True)
        import cupy

        with cupy.cuda.Device(self._index):
            return cupy.asarray(array)

    def put_sets(self, sets):
        """``{name: (X, y)}`` with every array on this device; an array that appears
        under several names (the training set scored each epoch), or a view of all
        of it (``X[:]``), moves once."""
        moved = {}

        def put(array):
            key = _memory(array)
            if key not in moved:
                moved[key] = self.put(array)
            return moved[key]

        return {name: (put(X), put(y)) for name, (X, y) in sets.items()}

    @property
    def _torch_device(self):
        return self.name.removeprefix("torch:")

    @property
    def _index(self):
        return int(self.name.rpartition(":")[2])

    def dispatch(self):
        """The context a fit on this device runs in: off NumPy, scikit-learn's
        array-API dispatch (which needs SciPy's array-API mode) with the GPU current."""
        stack = contextlib.ExitStack()
        if self.is_numpy:
            return stack
        check_scipy_array_api()
        stack.enter_context(sklearn.config_context(array_api_dispatch=True))
        if self.library == "cupy":
            import cupy

            stack.enter_context(cupy.cuda.Device(self._index))
        elif self.name.startswith("cuda"):
            import torch

            stack.enter_context(torch.cuda.device(self._index))
        return stack


def _memory(array):
    """What identifies an array's values: a NumPy array by where and how it lies in
    memory (so a view of all of it matches), anything else by identity."""
    if isinstance(array, np.ndarray):
        interface = array.__array_interface__
        return interface["data"][0], array.shape, array.strides, array.dtype.str
    return id(array)


def check_scipy_array_api():
    """Raise a clear error where SciPy was imported without ``SCIPY_ARRAY_API=1``.

    ``pipelines/__init__.py`` sets it for the entry points; code that imports SciPy
    before ``pipelines`` must set it itself.
    """
    scipy_api = sys.modules.get("scipy._lib._array_api")
    enabled = getattr(scipy_api, "SCIPY_ARRAY_API", None) if scipy_api else None
    if os.environ.get("SCIPY_ARRAY_API") != "1" or enabled is False:
        raise DeviceError(
            "A device other than cpu needs SciPy's array-API mode, which SciPy reads "
            "when it is imported: set the environment variable SCIPY_ARRAY_API=1 "
            "before importing scipy or scikit-learn (the pipelines' entry points do "
            "it; in your own code, set it first), or use device=cpu."
        )


def resolve_device(setting="cpu"):
    """The :class:`Device` for a ``device`` setting; :class:`DeviceError` if it is
    unknown or missing here (naming the missing GPU or library)."""
    setting = str(setting).strip().lower()
    if setting == "cpu":
        return Device("cpu", "numpy", "CPU (NumPy)")
    if setting == "auto":
        return _auto()
    if setting == "torch:cpu":
        _import("torch", setting, "pip install torch")
        return Device("torch:cpu", "torch", "CPU (torch)")
    kind, _, index = setting.partition(":")
    if kind in ("cuda", "cupy") and (index == "" or index.isdigit()):
        return _torch_cuda(setting, index) if kind == "cuda" else _cupy(setting, index)
    raise DeviceError(f"Unknown device={setting!r}; one of {CHOICES}.")


def _import(module, setting, install):
    try:
        return __import__(module)
    except ImportError as exc:
        raise DeviceError(
            f"device={setting} needs the {module} package, which is not installed "
            f"({exc}). Install it ({install}) or use device=cpu."
        ) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a CuPy built for another CUDA
        raise DeviceError(
            f"device={setting} needs the {module} package, which is installed but "
            f"fails to import ({type(exc).__name__}: {exc}). Use device=cpu."
        ) from exc


def _torch_cuda(setting, index):
    torch = _import("torch", setting, "a CUDA build from https://pytorch.org")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(
            f"device={setting}: torch {torch.__version__} sees no CUDA GPU "
            f"(torch.cuda.is_available() is False; built for CUDA "
            f"{torch.version.cuda or 'none: a CPU-only build'}). Use device=cpu, "
            "device=torch:cpu, or device=auto (a GPU only where there is one)."
        )
    number = int(index) if index else torch.cuda.current_device()
    if number >= count:
        raise DeviceError(f"device={setting}: torch sees only {count} CUDA GPU(s).")
    return Device(f"cuda:{number}", "torch", torch.cuda.get_device_name(number))


def _cupy(setting, index):
    cupy = _import("cupy", setting, "pip install cupy-cuda12x or cupy-cuda13x")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        count, reason = 0, str(exc)
    else:
        reason = "no device"
    number = int(index) if index else 0
    if number >= count:
        raise DeviceError(
            f"device={setting}: CuPy {cupy.__version__} sees {count} CUDA GPU(s) "
            f"({reason}). Use device=cpu or device=auto."
        )
    name = cupy.cuda.runtime.getDeviceProperties(number)["name"]
    return Device(f"cupy:{number}", "cupy", _text(name))


def _text(name):
    return name.decode() if isinstance(name, bytes) else str(name)


def _auto():
    """A GPU where one exists (torch first, then CuPy), else NumPy on the CPU."""
    for setting in ("cuda", "cupy"):
        with contextlib.suppress(DeviceError):
            return resolve_device(setting)
    return resolve_device("cpu")


def accuracy(predicted, y):
    """Fraction of ``predicted == y``, computed where the arrays are (one number
    comes back to the host)."""
    xp, _ = get_namespace(predicted, y)
    correct = xp.sum(xp.astype(predicted == y, xp.int64))
    return int(correct) / y.shape[0]


class _NumpyPickler(pickle.Pickler):
    """Pickles every torch tensor or CuPy array as the NumPy array of its values."""

    def reducer_override(self, obj):
        array_type = type(
            obj
        )  # an array's, not a class's (classes have __dlpack__ too)
        if issubclass(array_type, np.ndarray | np.generic | type):
            return NotImplemented
        if not hasattr(array_type, "__dlpack__"):
            return NotImplemented
        with sklearn.config_context(array_api_dispatch=True):
            xp, _ = get_namespace(obj)
            return np.asarray, (_convert_to_numpy(obj, xp),)


def to_numpy(estimator):
    """A copy of a fitted ``estimator`` (a Pipeline too) whose arrays are NumPy arrays,
    wherever they sit in it: it predicts on NumPy input, and pickles and loads on a
    machine without a GPU. Callbacks that cannot be pickled must be removed first.
    """
    buffer = io.BytesIO()
    _NumpyPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(estimator)
    buffer.seek(0)
    return pickle.load(buffer)
