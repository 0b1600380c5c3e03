"""Backends: names, defaults, devices, conversion in and out, and their errors."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest
from _util import assert_on, host

import portanet as pn
from portanet import backend as B


def test_available_backends_reports_every_known_backend():
    infos = {i.name: i for i in pn.available_backends()}
    assert list(infos) == ["numpy", "cupy", "torch", "jax", "array_api_strict"]
    assert infos["numpy"].installed and infos["numpy"].version == np.__version__
    assert infos["numpy"].devices == ["cpu"] and not infos["numpy"].gpu
    for info in infos.values():
        assert isinstance(info.installed, bool)
        if not info.installed:
            assert info.version is None and "pip install" in info.note


def test_get_namespace_by_name_and_module(xp):
    xs, _ = xp
    name = B.backend_name(xs)
    assert B.backend_name(B.get_namespace(name)) == name
    assert B.backend_name(B.get_namespace(xs)) == name
    assert B.backend_name(B.get_namespace(np)) == "numpy"


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'mxnet'; known backends are 'numpy'"):
        B.get_namespace("mxnet")
    with pytest.raises(TypeError, match="name or a namespace module"):
        B.get_namespace(3)
    with pytest.raises(ValueError, match="unsupported array namespace"):
        B.get_namespace(types.ModuleType("fake_xp"))


@pytest.mark.parametrize("name,extra", [("torch", "portanet[torch]"), ("jax", "portanet[jax]"),
                                        ("array_api_strict", "portanet[strict]"),
                                        ("cupy", "portanet[cuda13]")])
def test_missing_backend_names_the_extra(monkeypatch, name, extra):
    module = B.BACKENDS[name][0]
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=rf"backend '{name}' is not installed") as info:
        pn.Sequential([pn.Dense(2, 1)], backend=name)
    assert f'pip install "{extra}"' in str(info.value)


def test_missing_cupy_says_which_wheel_fits_which_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ImportError) as info:
        B.get_namespace("cupy")
    assert '"portanet[cuda13]" (NVIDIA driver R580 or newer)' in str(info.value)
    assert '"portanet[cuda12]" for an older driver' in str(info.value)


class CUDARuntimeError(RuntimeError):
    """Named as CuPy's, whose message is "cudaErrorX: what it means"."""


@pytest.mark.parametrize("error", [
    CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for "
                     "CUDA runtime version"),
    CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"),
    None,  # the runtime works but counts no device
])
def test_cupy_without_gpu_keeps_the_cuda_error(monkeypatch, error):
    fake = types.ModuleType("cupy")

    def device_count():
        if error is not None:
            raise error
        return 0

    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count))
    fake.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    cause = f"CUDARuntimeError: {error}" if error is not None else "CUDA reports 0 devices"
    for call in (lambda: B.get_namespace("cupy"), lambda: pn.set_backend("cupy")):
        with pytest.raises(RuntimeError, match="no GPU was found") as info:
            call()
        assert cause in str(info.value) and "\n" not in str(info.value)
    (cupy_info,) = [i for i in pn.available_backends() if i.name == "cupy"]
    assert not cupy_info.gpu and cause in cupy_info.note


def test_torch_cuda_resolves_to_an_indexed_device(monkeypatch):
    # A tensor's device is always indexed (cuda:0), and torch.device("cuda") != cuda:0:
    # an unindexed network device would never match its inputs' (no GPU needed here).
    torch = pytest.importorskip("torch")
    xt = B.get_namespace("torch")
    assert torch.device("cuda") != torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for spec in ("cuda", "cuda:0", torch.device("cuda"), torch.device("cuda", 0)):
        dev = B.resolve_device(xt, spec)
        assert dev == torch.device("cuda:0") and dev.index == 0, spec
    assert B.resolve_device(xt, "cuda:1") == torch.device("cuda:1")
    assert B.resolve_device(xt, "cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="torch found no CUDA GPU"):
        B.resolve_device(xt, torch.device("cuda"))


def test_default_backend_from_env_and_set_backend(monkeypatch):
    monkeypatch.setattr(B, "_default_backend", None)
    monkeypatch.delenv("PORTANET_BACKEND", raising=False)
    assert pn.get_backend() == "numpy"
    monkeypatch.setenv("PORTANET_BACKEND", "array_api_strict")
    pytest.importorskip("array_api_strict")
    assert pn.get_backend() == "array_api_strict"
    assert pn.Sequential([pn.Dense(2, 1)]).backend == "array_api_strict"
    pn.set_backend("numpy")
    assert pn.get_backend() == "numpy"
    assert pn.Sequential([pn.Dense(2, 1)]).backend == "numpy"
    monkeypatch.setenv("PORTANET_BACKEND", "nope")
    monkeypatch.setattr(B, "_default_backend", None)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        pn.get_backend()
    with pytest.raises(ValueError, match="unknown backend"):
        pn.set_backend("nope")


def test_device_strings(xp):
    xs, device = xp
    name = B.backend_name(xs)
    if name == "cupy":
        assert B.resolve_device(xs, "cuda") == B.resolve_device(xs, "cuda:0")
        with pytest.raises(ValueError, match="CUDA GPUs only"):
            B.resolve_device(xs, "cpu")
        return
    cpu = B.resolve_device(xs, "cpu")
    assert B.resolve_device(xs, None) is not None
    net = pn.Sequential([pn.Dense(2, 1)], backend=xs, device="cpu", seed=0)
    assert net.device == cpu
    if name == "array_api_strict":
        assert B.resolve_device(xs, "device1") == device.__class__("device1")
    if name in ("numpy", "array_api_strict"):
        with pytest.raises(ValueError, match="runs on the CPU only"):
            B.resolve_device(xs, "cuda:0")
    with pytest.raises(ValueError, match="not understood"):
        B.resolve_device(xs, "gpu0")


def test_device_objects_pass_through(xp):
    xs, device = xp
    assert B.resolve_device(xs, device) == device
    name = B.device_name(xs, device)  # a plain string that names the device
    assert isinstance(name, str) and B.resolve_device(xs, name) == device
    net = pn.Sequential([pn.Dense(2, 3)], backend=xs, device=device, seed=0)
    for p in net.parameters().values():
        assert_on(xs, device, p, "float32")


def test_to_numpy_from_every_kind_of_input(xp):
    xs, device = xp
    a = xs.asarray(np.arange(6, dtype=np.float32).reshape(2, 3), device=device)
    out = pn.to_numpy(a)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(pn.to_numpy([[1, 2]]), [[1, 2]])
    src = np.ones(3)
    copy = pn.to_numpy(src)
    copy[0] = 5
    assert src[0] == 1  # a copy, never a view


def test_lists_and_numpy_inputs_are_converted(xp, dtype):
    xs, device = xp
    net = pn.Sequential([pn.Dense(2, 1, init="zeros")], backend=xs, device=device, dtype=dtype)
    for x in ([[1, 2], [3, 4]], np.array([[1, 2], [3, 4]], dtype=np.int32),
              np.array([[1.0, 2.0], [3.0, 4.0]]), [[True, False], [False, True]]):
        out = net.predict(x)
        assert_on(xs, device, out, dtype, (2, 1))
        assert not host(out).any()


def test_float64_host_data_on_a_device_without_float64(xp):
    xs, device = xp
    out = B.to_array(np.ones((2, 2)), xs, device)
    assert_on(xs, device, out, shape=(2, 2))
    assert out.dtype in (xs.float32, xs.float64)
