"""An epoch as one GPU graph: captured once per fit, replayed every epoch.

On a GPU, a mini-batch of a small network is ~30 tiny kernels, each launched from
Python: the epoch is bound by launches, not arithmetic. CUDA graphs record the kernels
of a whole epoch once and replay them with one call. The stacked step
(``Stack.epoch_sums``, for one network or a group) is written so that this is
possible: no value is read back to the host inside the epoch (the zero-weight skip is
a device-side select, the cost is summed on the device, the learning rates are a
device vector), and every batch has a static shape (a short last batch is its own
step). Each epoch copies its shuffle order into a static device buffer
and replays the graph.

The first epoch runs eagerly on a side stream (the warm-up CUDA graphs need: cuBLAS
handles, allocator pools); the second is captured and replayed, and so on. Where the
capture fails, the epoch runs eagerly from then on, after one warning.

CuPy refuses every cuBLAS call during a stream capture (``cublas.setStream`` raises
``NotImplementedError``, CuPy 13 and 14), and each layer is a matrix product. torch
captures cuBLAS. So a CuPy epoch is captured as torch kernels on the very same device
memory: ``torch_mirror`` wraps the CuPy arrays as torch tensors through DLPack (no
copy), and the weights the graph updates are the estimator's CuPy arrays. Without
torch, CuPy trains eagerly.
"""

import contextlib
import gc

from skmlp._data import to_numpy
from skmlp._warnings import warn


def graph_backend(xp, device):
    """``"torch"`` for torch CUDA tensors, ``"cupy"`` for CuPy arrays, else None."""
    name = getattr(xp, "__name__", "")
    if "torch" in name and getattr(device, "type", None) == "cuda":
        return "torch"
    if "cupy" in name:
        return "cupy"
    return None


def capture_backend(xp, device):
    """``graph_backend``, or None where the epoch cannot be captured: CuPy arrays
    without torch on CUDA to capture them (see the module's docstring)."""
    backend = graph_backend(xp, device)
    if backend == "cupy":
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
    return backend


def make_captured_epoch(run, to_device, prepare, eager=False):
    """A callable ``epoch(order)`` that replays ``run`` as one CUDA graph and returns
    its cost as a float, or a list of floats (one per network of a group).

    Parameters
    ----------
    run : callable
        ``run(order)`` enqueues one epoch and returns its summed cost as a device
        array: 0-d (then the epoch returns a float), or 1-d, one cost per network of
        a ``fit_together`` group (then a list of floats). It must not read device
        values back to the host.
    to_device : callable
        Moves a NumPy shuffle order to the device (run on the capturing stream).
    prepare : callable
        Called before each epoch on the capturing stream (it writes the learning
        rate into its device scalar).
    eager : bool, default=False
        Run ``run`` every epoch, with the same static order buffer and ``prepare``,
        instead of capturing it: the protocol of a captured epoch on any device,
        which is how it is tested without a GPU.
    """
    if eager:
        return _EagerEpoch(run, to_device, prepare)
    return _TorchGraph(run, to_device, prepare)


class _Graph:
    def __init__(self, run, to_device, prepare):
        self.run, self.to_device, self.prepare = run, to_device, prepare
        self.order, self.output, self.epochs, self.eager = None, None, 0, False

    def __call__(self, order):
        """Run one epoch in the order ``order`` (a NumPy array, or None)."""
        with self.stream_context():
            self.prepare()
            if order is not None and self.order is None:
                self.order = self.to_device(order)  # the static buffer
            elif order is not None:
                self.order[...] = self.to_device(order)
            if self.epochs > 0 and self.output is None and not self.eager:
                self._capture()
            if self.epochs == 0 or self.eager:  # warm-up, or capture failed
                cost = self.run(self.order)
            else:
                cost = self.replay()
        self.epochs += 1
        return self.read(cost)

    def _capture(self):
        try:
            self.output = self.capture()
        except Exception as exc:  # capture is an optimisation: fall back, once
            self.eager = True
            warn(
                f"Capturing the epoch as one GPU graph failed ({type(exc).__name__}: "
                f"{exc}); training goes on with the eager loop. Pass capture=False to "
                "SGDMLPClassifier to skip the attempt.",
                RuntimeWarning,
            )


class _TorchGraph(_Graph):
    def __init__(self, run, to_device, prepare):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        super().__init__(run, to_device, prepare)

    def stream_context(self):
        self.stream.wait_stream(self.torch.cuda.current_stream())
        return self.torch.cuda.stream(self.stream)

    def capture(self):
        # torch gives the graph a private memory pool: nothing outside it reuses the
        # graph's intermediate arrays between replays.
        self.graph = self.torch.cuda.CUDAGraph()
        # No garbage collection while capturing: collecting an older graph resets
        # it, which CUDA forbids during a capture ("operation not permitted when
        # stream is capturing"). torch collects right before the capture begins.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with self.torch.cuda.graph(self.graph, stream=self.stream):
                return self.run(self.order)
        finally:
            if collecting:
                gc.enable()

    def replay(self):
        self.graph.replay()
        return self.output

    def synchronize(self):
        """Wait for the epoch in flight (an interrupted replay may still run)."""
        self.stream.synchronize()

    def read(self, cost):
        self.torch.cuda.current_stream().wait_stream(self.stream)
        return cost.tolist()  # a float, or a list of them for a group's costs


class _EagerEpoch(_Graph):
    """``_Graph``'s protocol with every epoch run eagerly (see ``make_captured_epoch``)."""

    def __init__(self, run, to_device, prepare):
        super().__init__(run, to_device, prepare)
        self.eager = True

    def stream_context(self):
        return contextlib.nullcontext()

    def synchronize(self):
        pass

    def read(self, cost):
        return to_numpy(cost).tolist()


def torch_mirror():
    """``(mirror, torch namespace)``: ``mirror(array)`` is ``array`` (of any namespace
    that speaks DLPack, CuPy on a GPU) as a torch tensor on the same memory (no copy:
    writes reach the original), or None for None."""
    import torch
    from sklearn import config_context
    from sklearn.utils._array_api import get_namespace

    with config_context(array_api_dispatch=True):
        torch_xp, _ = get_namespace(torch.zeros(1))
    return (lambda a: None if a is None else torch.from_dlpack(a)), torch_xp
