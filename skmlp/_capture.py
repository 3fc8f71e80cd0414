"""An epoch as one GPU graph: captured once per fit, replayed every epoch.

On a GPU, a mini-batch of a small network is ~30 tiny kernels, each launched from
Python: the epoch is bound by launches, not arithmetic. CUDA graphs record the kernels
of a whole epoch once and replay them with one call. ``epoch_cost`` is written so that
this is possible: no value is read back to the host inside the epoch (the zero-weight
skip is a device-side select, the cost is summed on the device, the learning rate and
the momentum are 0-d device arrays), and every batch has a static shape (a short last
batch is its own step). Each epoch copies its shuffle order into a static device buffer
and replays the graph.

The first epoch runs eagerly on a side stream (the warm-up CUDA graphs need: cuBLAS
handles, allocator pools); the second is captured and replayed, and so on. Where the
capture fails, the epoch runs eagerly from then on, after one warning.
"""

import warnings


def graph_backend(xp, device):
    """``"torch"`` for torch CUDA tensors, ``"cupy"`` for CuPy arrays, else None."""
    name = getattr(xp, "__name__", "")
    if "torch" in name and getattr(device, "type", None) == "cuda":
        return "torch"
    if "cupy" in name:
        return "cupy"
    return None


def make_captured_epoch(backend, run, order, prepare):
    """A callable ``epoch(order) -> float`` that replays ``run`` as one graph.

    Parameters
    ----------
    backend : {"torch", "cupy"}
    run : callable
        ``run(order)`` enqueues one epoch and returns its summed cost as a 0-d device
        array. It must not read device values back to the host.
    order : array of shape (n_samples,) or None
        The first epoch's order; its buffer is reused by every later epoch.
    prepare : callable
        Called before each epoch on the capturing stream (it writes the learning
        rate into its device scalar).
    """
    graph_type = _TorchGraph if backend == "torch" else _CupyGraph
    return graph_type(run, order, prepare)


class _Graph:
    def __init__(self, run, order, prepare):
        self.run, self.prepare = run, prepare
        self.order = None if order is None else order * 1  # the static buffer
        self.epochs, self.output, self.eager = 0, None, False

    def __call__(self, order):
        with self.stream_context():
            self.prepare()
            if order is not None:
                self.order[...] = order
            if self.epochs == 0 or self.eager:  # warm-up, or capture failed
                cost = self.run(self.order)
            else:
                if self.output is None:
                    self._capture()
                cost = self.replay()
        self.epochs += 1
        return self.read(cost)

    def _capture(self):
        try:
            self.output = self.capture()
        except Exception as exc:  # capture is an optimisation: fall back, once
            self.eager = True
            warnings.warn(
                f"Capturing the epoch as one GPU graph failed ({type(exc).__name__}: "
                f"{exc}); training goes on with the eager loop. Pass capture=False to "
                "SGDMLPClassifier to skip the attempt.",
                RuntimeWarning,
                stacklevel=5,
            )


class _TorchGraph(_Graph):
    def __init__(self, run, order, prepare):
        import torch

        self.torch = torch
        torch.cuda.synchronize()
        self.stream = torch.cuda.Stream()
        super().__init__(run, order, prepare)

    def stream_context(self):
        self.stream.wait_stream(self.torch.cuda.current_stream())
        return self.torch.cuda.stream(self.stream)

    def capture(self):
        self.graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(self.graph, stream=self.stream):
            return self.run(self.order)

    def replay(self):
        self.graph.replay()
        return self.output

    def read(self, cost):
        self.torch.cuda.current_stream().wait_stream(self.stream)
        return float(cost)


class _CupyGraph(_Graph):
    def __init__(self, run, order, prepare):
        import cupy

        cupy.cuda.Device().synchronize()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        super().__init__(run, order, prepare)

    def stream_context(self):
        return self.stream

    def capture(self):
        self.stream.begin_capture()
        try:
            output = self.run(self.order)
        finally:
            self.graph = self.stream.end_capture()
        return output

    def replay(self):
        self.graph.launch(self.stream)
        return self.output

    def read(self, cost):
        self.stream.synchronize()
        return float(cost)
