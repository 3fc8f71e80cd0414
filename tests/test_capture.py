"""``torch_mirror``: a step of one namespace run as torch kernels on the same memory.

On a GPU it is how a CuPy epoch is captured (CuPy refuses cuBLAS calls during a stream
capture; torch captures them). Here it is run on the CPU, NumPy arrays mirrored as torch
CPU tensors: the mirrored step must update the NumPy arrays themselves, exactly as the
step run on them directly does.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from skmlp._capture import capture_backend, torch_mirror
from skmlp._engine import BackpropStep, FlatParams, epoch_cost
from skmlp._optimizers import SGDOptimizer

torch = pytest.importorskip("torch")


def _step(sample_weight_sum_zero=False):
    rng = np.random.default_rng(0)
    sizes = (20, 8, 3)
    coefs = [rng.uniform(-0.5, 0.5, s) for s in zip(sizes, sizes[1:], strict=False)]
    intercepts = [rng.uniform(-0.5, 0.5, b) for b in sizes[1:]]
    params = FlatParams(coefs, intercepts, np)
    optimizer = SGDOptimizer([params.flat], 0.1, "constant", 0.9, True, 0.5, np)
    scalars = (np.asarray(0.1), np.asarray(0.9))
    kwargs = dict(
        activation="relu", out_activation="softmax", loss="log_loss", alpha=1e-3
    )
    return BackpropStep(params, optimizer, loss_kwargs=kwargs, xp=np, scalars=scalars)


def _data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(130, 20))
    Y = np.eye(3)[rng.integers(0, 3, 130)]
    weight = rng.uniform(0.5, 2.0, 130)
    weight[:32] = 0.0  # the first batch weighs nothing: skipped on the device
    return X, Y, weight, rng.permutation(130)


def test_mirrored_step_updates_the_original_arrays_as_the_step_itself():
    X, Y, weight, order = _data()
    direct, mirrored_source = _step(), _step()
    cost = epoch_cost(X, Y, weight, order, 32, direct, np)

    tensors, mirrored, xp = torch_mirror((X, Y, weight), mirrored_source)
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    mirrored_cost = epoch_cost(*tensors, torch.asarray(order), 32, mirrored, xp)

    # the torch kernels wrote into the NumPy buffers of the mirrored step's source
    assert_allclose(mirrored_source.params.flat, direct.params.flat, rtol=1e-12)
    assert_allclose(
        mirrored_source.optimizer.velocities[0],
        direct.optimizer.velocities[0],
        rtol=1e-12,
    )
    assert_allclose(float(mirrored_cost), float(cost), rtol=1e-12)
    assert not np.allclose(mirrored_source.params.flat, _step().params.flat)


def test_mirrored_scalars_are_the_original_scalars():
    source = _step()
    _, mirrored, _ = torch_mirror((), source)
    mirrored.scalars[0][...] = 0.5  # the learning rate a replay reads
    assert float(source.scalars[0]) == 0.5


def test_no_capture_on_the_cpu():
    assert capture_backend(np, "cpu") is None
    assert capture_backend(torch, torch.device("cpu")) is None
