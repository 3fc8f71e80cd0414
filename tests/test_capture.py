"""``torch_mirror``: the stacked step run as torch kernels on another namespace's memory.

On a GPU it is how a CuPy epoch is captured (CuPy refuses cuBLAS calls during a stream
capture; torch captures them). Here it is run on the CPU, NumPy arrays mirrored as torch
CPU tensors: the mirrored step must update the NumPy arrays themselves, exactly as the
step run on them directly does.
"""

import types

import numpy as np
import pytest
from numpy.testing import assert_allclose

from skmlp._capture import capture_backend, torch_mirror
from skmlp._optimizers import SGDOptimizer
from skmlp._stacked import Stack
from skmlp._state import FlatParams

torch = pytest.importorskip("torch")

KWARGS = dict(activation="relu", out_activation="softmax", loss="log_loss", alpha=1e-3)


def _member():
    rng = np.random.default_rng(0)
    sizes = (20, 8, 3)
    coefs = [rng.uniform(-0.5, 0.5, s) for s in zip(sizes, sizes[1:], strict=False)]
    intercepts = [rng.uniform(-0.5, 0.5, b) for b in sizes[1:]]
    params = FlatParams(coefs, intercepts, np)
    optimizer = SGDOptimizer([params.flat], 0.1, "constant", 0.9, True, 0.5, np)
    return types.SimpleNamespace(params=params, optimizer=optimizer, loss_kwargs=KWARGS)


def _data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(130, 20))
    Y = np.eye(3)[rng.integers(0, 3, 130)]
    weight = rng.uniform(0.5, 2.0, 130)
    weight[:32] = 0.0  # the first batch weighs nothing: skipped on the device
    return X, Y, weight, rng.permutation(130)


@pytest.mark.parametrize("n_members", [1, 2])
def test_mirrored_step_updates_the_original_arrays_as_the_step_itself(n_members):
    X, Y, weight, order = _data()
    direct = [_member() for _ in range(n_members)]
    source = [_member() for _ in range(n_members)]
    arguments = ([X] * n_members, [Y] * n_members, [weight] * n_members)
    stack = Stack(direct, np, KWARGS, capturable=True)
    stack.write_learning_rates()
    streams = [(0, n_members)]
    cost = stack.epoch_sums(*arguments, [order] * n_members, streams, 32)
    stack.unpack()

    mirror, xp = torch_mirror()
    tensors = [[mirror(a) for a in column] for column in arguments]
    assert all(isinstance(t, torch.Tensor) for column in tensors for t in column)
    mirrored = Stack(source, xp, KWARGS, capturable=True, mirror=mirror)
    mirrored.write_learning_rates()
    order = torch.asarray(order)
    mirrored_cost = mirrored.epoch_sums(*tensors, [order] * n_members, streams, 32)
    mirrored.unpack()

    # the torch kernels wrote into the NumPy buffers of the mirrored members
    for ours, theirs in zip(source, direct, strict=True):
        assert_allclose(ours.params.flat, theirs.params.flat, rtol=1e-12)
        assert_allclose(
            ours.optimizer.velocities[0], theirs.optimizer.velocities[0], rtol=1e-12
        )
        assert not np.allclose(ours.params.flat, _member().params.flat)
    assert_allclose(mirrored_cost.numpy(), cost, rtol=1e-12)


def test_a_stack_of_one_shares_the_members_buffers():
    member = _member()
    stack = Stack([member], np, KWARGS)
    assert np.shares_memory(stack.flat, member.params.flat)
    assert np.shares_memory(stack.velocity_flat, member.optimizer.velocities[0])


def test_no_capture_on_the_cpu():
    assert capture_backend(np, "cpu") is None
    assert capture_backend(torch, torch.device("cpu")) is None
