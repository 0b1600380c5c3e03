"""Interop: arrays of one library fed to a network of another are converted.

A network takes NumPy arrays, lists and the arrays of any supported library,
and converts them to its own namespace, device and dtype. Values must come
through unchanged (up to the dtype cast), and outputs are arrays of the
network's namespace. Each test skips cleanly where a library is missing.
"""

from __future__ import annotations

import importlib

import array_api_compat
import numpy as np
import pytest
from _util import BACKEND, needs_real_cuda, skip_or_fail

import portanet as pn
from portanet.backend import to_numpy
from portanet.testing import assert_close


def layers() -> list:
    return [pn.Dense(4, 5, activation="tanh"), pn.Dense(5, 3)]


def numpy_net(dtype: str = "float64") -> pn.Sequential:
    return pn.Sequential(layers(), backend="numpy", dtype=dtype, seed=0)


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(6, 4))


def _cupy_with_gpu():
    """CuPy with a GPU (or the stand-in); skips without, and fails without it in a cupy
    session under PORTANET_TEST_REQUIRE_BACKEND=1."""
    try:
        cupy = importlib.import_module("cupy")
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no GPU")
    except Exception as exc:  # not installed, no driver, no device
        reason = f"cupy with a GPU is not available: {type(exc).__name__}: {exc}"
        skip_or_fail(reason) if BACKEND == "cupy" else pytest.skip(reason)
    return cupy


def _torch_with_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        needs_real_cuda("a torch CUDA tensor")
    return torch


# --------------------------------------------------- into a NumPy network ----


@pytest.mark.parametrize("torch_dtype", ["float32", "float64"])
def test_torch_tensor_into_numpy_network(batch, torch_dtype):
    torch = pytest.importorskip("torch")
    net = numpy_net()
    t = torch.tensor(batch, dtype=getattr(torch, torch_dtype))
    a = net.as_input(t)
    assert isinstance(a, np.ndarray) and a.dtype == np.float64
    np.testing.assert_array_equal(a, batch.astype(torch_dtype).astype(np.float64))
    out = net.forward(t)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, net.forward(batch.astype(torch_dtype)))


def test_torch_tensor_that_requires_grad_into_numpy_network(batch):
    torch = pytest.importorskip("torch")
    net = numpy_net()
    t = torch.tensor(batch, dtype=torch.float64, requires_grad=True)  # DLPack refuses it
    np.testing.assert_array_equal(net.forward(t), net.forward(batch))


def test_torch_labels_into_numpy_network(batch):
    torch = pytest.importorskip("torch")
    net = numpy_net()
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    y = net.as_target(labels, 6, pn.CrossEntropy())
    assert isinstance(y, np.ndarray) and y.dtype.kind == "i"  # labels stay integral
    np.testing.assert_array_equal(y, [0, 2, 1, 1, 0, 2])
    loss_t = net.train_step(torch.tensor(batch), labels, "cross_entropy", pn.SGD(lr=0.0))
    loss_np = net.train_step(batch, labels.numpy(), "cross_entropy", pn.SGD(lr=0.0))
    assert float(loss_t) == float(loss_np)


def test_jax_array_into_numpy_network(batch):
    jnp = pytest.importorskip("jax.numpy")
    net = numpy_net()
    j = jnp.asarray(batch.astype(np.float32))  # float32 works with or without x64
    a = net.as_input(j)
    assert isinstance(a, np.ndarray) and a.dtype == np.float64
    np.testing.assert_array_equal(a, batch.astype(np.float32).astype(np.float64))
    out = net.forward(j)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, net.forward(batch.astype(np.float32)))


def test_cupy_array_into_numpy_network(batch):
    cupy = _cupy_with_gpu()
    net = numpy_net()
    c = cupy.asarray(batch)
    a = net.as_input(c)
    assert isinstance(a, np.ndarray) and a.dtype == np.float64
    np.testing.assert_array_equal(a, batch)
    np.testing.assert_array_equal(net.forward(c), net.forward(batch))


def test_host_data_into_a_cupy_network_and_out_through_get(batch):
    """Host data reaches a CuPy network by a host-to-device copy; the output leaves it
    through .get() only (CuPy refuses implicit conversion)."""
    cupy = _cupy_with_gpu()
    net = pn.Sequential(layers(), backend="cupy", dtype="float64", seed=0)
    out = net.forward(batch)
    assert isinstance(out, cupy.ndarray)
    with pytest.raises(TypeError):
        np.asarray(out)  # no implicit conversion, as CuPy
    np.testing.assert_allclose(to_numpy(out), numpy_net().forward(batch), rtol=1e-12)


# ------------------------------------------- torch CUDA <-> CuPy, by DLPack ----


def test_torch_cuda_tensor_into_cupy_network_and_back_shares_memory(batch):
    """DLPack, not the host: the CuPy array views the tensor's memory, and the output
    goes on into a torch network on device="cuda" (cuda:0, issue 14) without a copy."""
    cupy = _cupy_with_gpu()
    torch = _torch_with_cuda()
    net = pn.Sequential(layers(), backend="cupy", dtype="float32", seed=0)
    t = torch.tensor(batch, dtype=torch.float32, device="cuda")
    a = net.as_input(t)
    assert isinstance(a, cupy.ndarray) and a.data.ptr == t.data_ptr()
    out = net.forward(t)
    tnet = pn.Sequential(layers(), backend="torch", device="cuda", dtype="float32", seed=0)
    assert tnet.device == torch.device("cuda:0")
    back = tnet.as_input(out)
    assert isinstance(back, torch.Tensor) and back.device == torch.device("cuda:0")
    assert back.data_ptr() == out.data.ptr
    np.testing.assert_array_equal(back.cpu().numpy(), out.get())
    assert_close(tnet.forward(t), out.get(), "float32", scale=4.0)  # same seed, same net


# ---------------------------------------------------- into a torch network ----


@pytest.mark.parametrize("np_dtype", ["float32", "float64"])
def test_numpy_array_into_torch_network(batch, np_dtype):
    torch = pytest.importorskip("torch")
    net = pn.Sequential(layers(), backend="torch", dtype="float64", seed=0)
    x = batch.astype(np_dtype)
    a = net.as_input(x)
    assert isinstance(a, torch.Tensor)
    assert a.dtype == torch.float64 and a.device == net.device
    np.testing.assert_array_equal(a.numpy(), x.astype(np.float64))
    out = net.forward(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    # same weights (same seed) give the same outputs as the NumPy network
    assert_close(out, numpy_net().forward(x), "float64")


def test_list_into_torch_network():
    torch = pytest.importorskip("torch")
    net = pn.Sequential(layers(), backend="torch", dtype="float32", seed=0)
    a = net.as_input([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float32
    np.testing.assert_array_equal(a.numpy(), [[1, 2, 3, 4], [5, 6, 7, 8]])


# ------------------------------------- into the session's backend network ----


def _foreign_arrays(batch: np.ndarray) -> dict:
    """The batch as an array of every installed library (float32, as every one has it)."""
    x = batch.astype(np.float32)
    arrays = {"numpy": x, "list": x.tolist()}
    try:
        import torch

        arrays["torch"] = torch.tensor(x)
    except ImportError:
        pass
    try:
        import jax.numpy as jnp

        arrays["jax"] = jnp.asarray(x)
    except ImportError:
        pass
    try:
        import array_api_strict as strict

        arrays["array_api_strict"] = strict.asarray(x)
    except ImportError:
        pass
    return arrays


def test_foreign_arrays_into_session_network(xp, batch):
    xp_, device = xp
    net = pn.Sequential(layers(), backend=xp_, device=device, dtype="float32", seed=0)
    reference = to_numpy(net.forward(batch.astype(np.float32)))
    expected_ns = array_api_compat.array_namespace(xp_.zeros(1, device=device))
    for name, x in _foreign_arrays(batch).items():
        a = net.as_input(x)
        assert array_api_compat.array_namespace(a) == expected_ns, name
        assert array_api_compat.device(a) == device, name
        assert a.dtype == xp_.float32, name
        np.testing.assert_array_equal(to_numpy(a), batch.astype(np.float32), err_msg=name)
        out = net.forward(x)
        assert array_api_compat.device(out) == device, name
        np.testing.assert_array_equal(to_numpy(out), reference, err_msg=name)


def test_session_arrays_out_to_numpy(xp, batch):
    xp_, device = xp
    net = pn.Sequential(layers(), backend=xp_, device=device, dtype="float32", seed=0)
    out = pn.to_numpy(net.forward(batch))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (6, 3)
    assert_close(out, numpy_net("float32").forward(batch), "float32", scale=4.0)
