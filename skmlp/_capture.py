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


def make_captured_epoch(backend, run, to_device, prepare):
    """A callable ``epoch(order) -> float`` that replays ``run`` as one graph.

    Parameters
    ----------
    backend : {"torch", "cupy"}
    run : callable
        ``run(order)`` enqueues one epoch and returns its summed cost as a 0-d device
        array. It must not read device values back to the host.
    to_device : callable
        Moves a NumPy shuffle order to the device (run on the capturing stream).
    prepare : callable
        Called before each epoch on the capturing stream (it writes the learning
        rate into its device scalar).
    """
    graph_type = _TorchGraph if backend == "torch" else _CupyGraph
    return graph_type(run, to_device, prepare)


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
            warnings.warn(
                f"Capturing the epoch as one GPU graph failed ({type(exc).__name__}: "
                f"{exc}); training goes on with the eager loop. Pass capture=False to "
                "SGDMLPClassifier to skip the attempt.",
                RuntimeWarning,
                stacklevel=6,
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
        with self.torch.cuda.graph(self.graph, stream=self.stream):
            return self.run(self.order)

    def replay(self):
        self.graph.replay()
        return self.output

    def read(self, cost):
        self.torch.cuda.current_stream().wait_stream(self.stream)
        return float(cost)


class _CupyGraph(_Graph):
    def __init__(self, run, to_device, prepare):
        import cupy

        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        # The graph's own memory pool, as torch does: blocks the captured kernels use
        # are never handed to arrays made between replays (snapshots, best weights).
        self.pool = cupy.cuda.MemoryPool()
        super().__init__(run, to_device, prepare)

    def stream_context(self):
        # this stream does not wait for the legacy default stream by itself
        self.stream.wait_event(self.cupy.cuda.get_current_stream().record())
        return self.stream

    def capture(self):
        with self.cupy.cuda.using_allocator(self.pool.malloc):
            self.stream.begin_capture()  # relaxed mode: the pool may still grow
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
