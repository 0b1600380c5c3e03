"""Backends: names to array namespaces, devices, and moving data in and out.

This is the one module (with the host-side I/O and data code) that names a
concrete array library. Everything else receives ``xp``, the namespace that
:func:`get_namespace` resolves once, through ``array_api_compat``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import array_namespace

__all__ = [
    "BACKENDS",
    "HOST_DTYPES",
    "available_backends",
    "backend_name",
    "device_name",
    "get_backend",
    "get_namespace",
    "has_float64",
    "host_label_range",
    "host_rng",
    "host_zeros",
    "is_host_array",
    "is_host_data",
    "namespace_of",
    "resolve_device",
    "resolve_dtype",
    "set_backend",
    "size",
    "to_array",
    "to_numpy",
]

# name -> (module to import, pip extra that installs it)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "numpy": ("numpy", None),
    "cupy": ("cupy", "cuda13"),
    "torch": ("torch", "torch"),
    "jax": ("jax.numpy", "jax"),
    "array_api_strict": ("array_api_strict", "strict"),
}

_default_backend: str | None = None

#: How to install CuPy: the wheel must match the CUDA major version that the driver runs.
_CUPY_INSTALL_HINT = ('pip install "portanet[cuda13]" (NVIDIA driver R580 or newer), or '
                     '"portanet[cuda12]" for an older driver (R525 or newer)')


# ---------------------------------------------------------------- names ----


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        known = ", ".join(repr(n) for n in BACKENDS)
        raise ValueError(f"unknown backend {name!r}; known backends are {known}")
    return name


def _import_backend(name: str) -> ModuleType:
    module_name, extra = BACKENDS[_check_name(name)]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f'pip install "portanet[{extra}]"' if extra else "pip install numpy"
        if name == "cupy":
            hint = _CUPY_INSTALL_HINT
        raise ImportError(f"backend {name!r} is not installed; install it with {hint}") from exc
    if name == "cupy":
        _check_cuda(module)
    return module


def _cuda_device_count(cupy: ModuleType) -> tuple[int, str]:
    """The number of CUDA devices CuPy sees, and CUDA's error where it sees none."""
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # no driver, an old driver, no device, or a broken install
        return 0, f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return count, "" if count else "CUDA reports 0 devices"


def _check_cuda(cupy: ModuleType) -> None:
    """Raise ``RuntimeError`` with CUDA's own error unless CuPy sees a GPU."""
    count, error = _cuda_device_count(cupy)
    if not count:
        raise RuntimeError(
            f"backend 'cupy' is installed but no GPU was found ({error}): CuPy needs an "
            "NVIDIA GPU and a driver that runs its CUDA version (cupy-cuda13x: driver R580 "
            "or newer; cupy-cuda12x: R525 or newer)"
        )


def set_backend(name: str) -> None:
    """Set the default backend used when a network is built without ``backend=``.

    Parameters
    ----------
    name : str
        One of :data:`BACKENDS`. The backend must be importable.
    """
    _import_backend(name)
    global _default_backend
    _default_backend = name


def get_backend() -> str:
    """Return the default backend: :func:`set_backend`, else ``PORTANET_BACKEND``, else numpy."""
    if _default_backend is not None:
        return _default_backend
    return _check_name(os.environ.get("PORTANET_BACKEND", "numpy") or "numpy")


def get_namespace(backend: str | ModuleType | None = None) -> ModuleType:
    """Resolve a backend name or namespace module to an array-API namespace.

    Parameters
    ----------
    backend : str, module or None
        A name from :data:`BACKENDS`, an array namespace (``numpy``,
        ``array_api_strict``, ``array_api_compat.torch``, ...), or None for the
        default backend (:func:`get_backend`).

    Returns
    -------
    module
        The standard-compliant namespace (``array_api_compat`` wraps NumPy,
        CuPy and torch; JAX and array-api-strict are compliant as they are).
    """
    if backend is None:
        backend = get_backend()
    if isinstance(backend, str):
        module = _import_backend(backend)
        if backend == "jax":
            return module
    elif isinstance(backend, ModuleType):
        module = backend
    else:
        raise TypeError(
            f"backend must be a name or a namespace module, got {type(backend).__name__}"
        )
    name = backend_name(module)
    if name == "cupy":
        _check_cuda(importlib.import_module("cupy"))
    return _compat_namespace(name, module)


def _compat_namespace(name: str, module: ModuleType) -> ModuleType:
    if name in ("numpy", "cupy", "torch"):
        return importlib.import_module(f"array_api_compat.{name}")
    return module


def backend_name(xp: ModuleType) -> str:
    """Return the portanet name of a namespace (``"numpy"``, ``"torch"``, ...)."""
    checks = (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("jax", array_api_compat.is_jax_namespace),
        ("array_api_strict", array_api_compat.is_array_api_strict_namespace),
    )
    for name, check in checks:
        if check(xp):
            return name
    if getattr(xp, "__name__", "") in ("jax", "jax.numpy"):
        return "jax"
    known = ", ".join(repr(n) for n in BACKENDS)
    raise ValueError(f"unsupported array namespace {xp!r}; portanet supports {known}")


# --------------------------------------------------------------- devices ----


def resolve_device(xp: ModuleType, device: Any = None) -> Any:
    """Map ``device`` to a device object of ``xp``.

    ``None`` is the backend's default device. The strings ``"cpu"``, ``"cuda"``
    and ``"cuda:N"`` are mapped for each backend; the backend's own device
    objects pass through (array-api-strict also takes the names of its devices,
    such as ``"device1"``).
    """
    name = backend_name(xp)
    if isinstance(device, str):
        return _device_from_string(name, xp, device)
    if device is None:
        default = xp.__array_namespace_info__().default_device()
        if default is None and name == "jax":
            import jax

            default = jax.devices()[0]
        return _torch_indexed(default) if name == "torch" else default
    if name == "torch":  # torch lists exotic device types; any torch.device is fine
        return _torch_indexed(device)
    known = _devices(xp)
    if known and device not in known:
        raise ValueError(f"device {device!r} is not a device of backend {name!r}; it has {known}")
    return device


def device_name(xp: ModuleType, device: Any) -> str:
    """A string that :func:`resolve_device` maps back to ``device`` (of namespace ``xp``):
    ``"cpu"``, ``"cuda:1"``, ``"cpu:0"`` (JAX), ``"device1"`` (array-api-strict).

    It names a device without holding it, so that it can be pickled or written down.
    """
    name = backend_name(xp)
    if name == "jax":
        kind = "cpu" if device.platform == "cpu" else "cuda"
        return f"{kind}:{device.id}"
    if name == "cupy":
        return f"cuda:{device.id}"
    if name == "array_api_strict":
        return str(getattr(device, "_device", device))
    return str(device)


def _devices(xp: ModuleType) -> list[Any]:
    try:
        return [d for d in xp.__array_namespace_info__().devices() if d is not None]
    except Exception:
        return []


def _device_from_string(name: str, xp: ModuleType, spec: str) -> Any:
    kind, _, index_text = spec.partition(":")
    if kind not in ("cpu", "cuda") or (index_text and not index_text.isdigit()):
        if name == "array_api_strict":
            for dev in _devices(xp):
                if str(dev) == spec or getattr(dev, "_device", None) == spec:
                    return dev
        raise ValueError(f"device {spec!r} is not understood; use 'cpu', 'cuda' or 'cuda:N'")
    index = int(index_text or 0)
    if name in ("numpy", "array_api_strict"):
        if kind != "cpu":
            raise ValueError(f"backend {name!r} runs on the CPU only; got device {spec!r}")
        return xp.__array_namespace_info__().default_device()
    if name == "torch":
        import torch

        if kind == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {spec!r} asked for, but torch found no CUDA GPU")
        return _torch_indexed(torch.device(spec))
    if name == "jax":
        import jax

        try:
            devs = jax.devices("cpu" if kind == "cpu" else "gpu")
        except RuntimeError as exc:
            raise RuntimeError(f"device {spec!r} asked for, but JAX has none") from exc
        return _pick(devs, index, spec)
    # cupy
    import cupy

    if kind == "cpu":
        raise ValueError("backend 'cupy' runs on CUDA GPUs only; got device 'cpu'")
    return _pick([cupy.cuda.Device(i) for i in range(_cuda_device_count(cupy)[0])], index, spec)


def _torch_indexed(device: Any) -> Any:
    """``torch.device("cuda")`` as the indexed device its tensors report (``cuda:0``).

    A tensor's device always has an index, and ``torch.device("cuda") != cuda:0``: an
    unindexed device would make every check of "already on the network's device" fail,
    and send DLPack imports from CuPy through the host.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} asked for, but torch found no CUDA GPU")
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _pick(devices: Sequence[Any], index: int, spec: str) -> Any:
    if index >= len(devices):
        raise ValueError(f"device {spec!r} does not exist; found {len(devices)} such device(s)")
    return devices[index]


# ---------------------------------------------------------------- dtypes ----


def resolve_dtype(xp: ModuleType, dtype: Any, device: Any = None) -> Any:
    """Map ``"float32"``/``"float64"`` (or a dtype of ``xp``) to a floating dtype of ``xp``."""
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        name = dtype
    else:
        name = next((n for n in ("float32", "float64") if getattr(xp, n) == dtype), None)
        if name is None:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if name == "float64":
        backend = backend_name(xp)
        if backend == "jax":
            import jax

            if not jax.config.read("jax_enable_x64"):
                raise ValueError(
                    "JAX computes in float64 only with x64 enabled: set JAX_ENABLE_X64=1 "
                    "or call jax.config.update('jax_enable_x64', True) before building"
                )
        if not has_float64(xp, device):
            raise ValueError(f"device {device!r} of backend {backend!r} has no float64")
    return getattr(xp, name)


# ------------------------------------------------------- moving data ----


def _is_array_api_array(x: Any) -> bool:
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, bool, complex))


def to_numpy(x: Any) -> np.ndarray:
    """Return a host NumPy copy of ``x`` (any supported array, a list, or a scalar)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.array(x, copy=True)
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy().copy()
    if _is_array_api_array(x):
        try:
            return np.array(np.from_dlpack(x), copy=True)
        except (BufferError, TypeError, RuntimeError, ValueError):
            return np.array(x, copy=True)
    return np.array(x, copy=True)


#: The one table of host dtypes: data is cast on the host to one of these before it
#: moves, so every backend (and a device without float64) receives identical values.
HOST_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("float32", "float64", "int64", "int32", "bool")
}


def _host_numeric(x: Any, what: str) -> np.ndarray:
    """Turn lists, scalars and NumPy arrays into a numeric NumPy array, or raise TypeError."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{what} must be a numeric array; could not convert it: {exc}") from exc
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what} must hold numbers, got an array of dtype {a.dtype}")
    return a


def _dtype_name(xp: ModuleType, dtype: Any) -> str:
    """The :data:`HOST_DTYPES` name of a dtype of ``xp`` (or of a name)."""
    if isinstance(dtype, str) and dtype in HOST_DTYPES:
        return dtype
    for name in HOST_DTYPES:
        if dtype == getattr(xp, name, None):
            return name
    raise ValueError(f"unsupported dtype {dtype!r}; portanet moves {', '.join(HOST_DTYPES)}")


def to_array(
    x: Any, xp: ModuleType, device: Any, dtype: Any = None, *, what: str = "input",
    copy: bool = False,
) -> Any:
    """Move ``x`` onto ``xp``'s ``device`` (as ``dtype`` if given): the one way onto a device.

    Parameters
    ----------
    x : array, list or scalar
        Host data (a Python list or scalar, a NumPy array, e.g. drawn from the
        host RNG) or an array of any supported namespace.
    xp : module
        The target namespace.
    device
        A device of ``xp``.
    dtype : dtype of ``xp``, or a name from :data:`HOST_DTYPES`, optional
        The result's dtype; None keeps ``x``'s (float64 host data becomes float32
        on a device without float64).
    what : str
        How ``x`` is named in error messages.
    copy : bool
        Never share memory with ``x`` (parameters are updated in place, so they
        must not alias a caller's array).

    Host data is cast on the host, so every backend receives identical values.
    Arrays of another namespace go through DLPack where that works, and through
    a host copy where it does not (e.g. GPU to CPU).
    """
    if isinstance(x, (np.ndarray, np.generic)) or not _is_array_api_array(x):
        return _host_to_device(_host_numeric(x, what), xp, device, dtype, copy)
    if array_api_compat.is_torch_array(x):
        x = x.detach()  # portanet computes its own gradients: never join torch's graph
    if backend_name(array_namespace(x)) == backend_name(xp):
        out = x
    else:
        out = _from_dlpack(x, xp, device)  # shares memory with x (and may be read-only)
        if out is None:  # another device, or no DLPack: copy through the host
            return _host_to_device(_host_numeric(to_numpy(x), what), xp, device, dtype, False)
    if not _is_numeric(xp, out.dtype):
        raise TypeError(f"{what} must hold numbers, got an array of dtype {out.dtype}")
    shared = True
    if array_api_compat.device(out) != device:
        out = array_api_compat.to_device(out, device)
        shared = False
    if dtype is not None:
        dtype = getattr(xp, _dtype_name(xp, dtype))
        if out.dtype != dtype:
            out = xp.astype(out, dtype)
            shared = False
    if copy and shared:
        out = xp.asarray(out, copy=True)
    return out


def _host_to_device(host: np.ndarray, xp: ModuleType, device: Any, dtype: Any,
                    copy: bool) -> Any:
    if dtype is not None:
        target = HOST_DTYPES[_dtype_name(xp, dtype)]
    elif host.dtype == np.float64 and not has_float64(xp, device):
        target = HOST_DTYPES["float32"]  # e.g. array-api-strict's no_float64 device
    else:
        target = host.dtype
    cast = host.astype(target, copy=copy)  # copies when it casts, or when asked to
    if backend_name(xp) == "jax":
        # jnp.asarray compiles (and dispatches) a dtype conversion and a copy for every new
        # shape; device_put moves the host bytes as they are, already in the right dtype.
        import jax

        return jax.device_put(cast, device)
    return xp.asarray(cast, device=device)


def host_label_range(y: Any) -> tuple[int, int] | None:
    """``(min, max)`` of integer labels given as host data (lists, NumPy arrays); None for
    arrays of an array library, which are never read back: on a GPU (or any device) that
    would stall it, and a training step must not (DESIGN.md, principle 8)."""
    if _is_array_api_array(y) and not isinstance(y, (np.ndarray, np.generic)):
        return None
    a = np.asarray(y)
    if a.size == 0 or a.dtype.kind not in "iu":
        return None
    return int(a.min()), int(a.max())


def has_float64(xp: ModuleType, device: Any = None) -> bool:
    """Whether ``device`` of ``xp`` supports float64 (array-api-strict's ``no_float64`` does not)."""
    try:
        return "float64" in xp.__array_namespace_info__().dtypes(device=device)
    except Exception:  # a namespace without the inspection API: assume it does
        return True


def size(x: Any) -> int:
    """The number of elements of ``x`` as a Python int (``x.size`` is a method on torch
    and may be None in the standard)."""
    return math.prod(x.shape)


def _is_numeric(xp: ModuleType, dtype: Any) -> bool:
    return xp.isdtype(dtype, ("bool", "integral", "real floating"))


def _from_dlpack(x: Any, xp: ModuleType, device: Any) -> Any:
    try:
        out = xp.from_dlpack(x)
    except Exception:  # DLPack refused: another device, or an old exporter
        return None
    return out if array_api_compat.device(out) == device else None


def host_rng(seed: int | None = None) -> np.random.Generator:
    """The seeded host generator that draws weights, shuffles and dropout masks."""
    return np.random.default_rng(seed)


def host_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A float64 host array of zeros (cast to the network's dtype when moved)."""
    return np.zeros(shape)


# --------------------------------------------------- per-array lookups ----

_NAMESPACE_BY_TYPE: dict[type, ModuleType] = {}


def namespace_of(x: Any) -> ModuleType:
    """``array_namespace(x)``, memoized by the array's type.

    Math code asks for the namespace of its inputs on every call; the full
    lookup costs microseconds, which add up to much of a small network's step.
    """
    xp = _NAMESPACE_BY_TYPE.get(type(x))
    if xp is None:
        xp = array_namespace(x)
        _NAMESPACE_BY_TYPE[type(x)] = xp
    return xp


def is_host_array(x: Any) -> bool:
    """Whether ``x`` lives in host memory (NumPy, or torch/JAX/strict arrays on the CPU)."""
    if isinstance(x, np.ndarray):
        return True
    if array_api_compat.is_cupy_array(x):
        return False
    if array_api_compat.is_torch_array(x):
        return x.device.type == "cpu"
    dev = array_api_compat.device(x)
    return getattr(dev, "platform", "cpu") == "cpu" if not isinstance(dev, str) else dev == "cpu"


def is_plain_array(x: Any) -> bool:
    """False for subclasses of NumPy's array (``np.matrix``, masked arrays), whose
    operators do not follow the array API (``*`` is a matrix product for ``np.matrix``)."""
    return type(x) is np.ndarray or not isinstance(x, np.ndarray)


def is_host_data(x: Any) -> bool:
    """Whether reading ``x`` costs no device sync: lists, scalars, NumPy arrays, and
    arrays of any namespace in host memory."""
    return not _is_array_api_array(x) or is_host_array(x)


# ------------------------------------------------------------ inventory ----


@dataclass
class BackendInfo:
    """What :func:`available_backends` reports about one backend."""

    name: str
    installed: bool
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    gpu: bool = False
    extra: str | None = None
    note: str = ""


def available_backends() -> list[BackendInfo]:
    """Report every known backend: installed or not, version, devices, GPU found.

    Nothing is imported that is not installed, and a missing GPU is not an error.
    """
    return [_inspect(name) for name in BACKENDS]


def _inspect(name: str) -> BackendInfo:
    module_name, extra = BACKENDS[name]
    top = module_name.split(".")[0]
    info = BackendInfo(name=name, installed=False, extra=extra)
    if importlib.util.find_spec(top) is None:
        info.note = f'pip install "portanet[{extra}]"' if extra else ""
        return info
    try:
        module = importlib.import_module(top)
    except Exception as exc:  # installed but broken
        info.note = f"import failed: {exc}"
        return info
    info.installed = True
    info.version = getattr(module, "__version__", None)
    try:
        if name == "cupy":
            count, error = _cuda_device_count(module)
            info.devices = [f"cuda:{i}" for i in range(count)]
            info.gpu = count > 0
            if not count:
                info.note = f"no GPU found: {error}"
        elif name == "torch":
            info.devices = ["cpu"] + [f"cuda:{i}" for i in range(module.cuda.device_count())]
            info.gpu = module.cuda.is_available()
        elif name == "jax":
            info.devices = [str(d) for d in module.devices()]
            info.gpu = any(d.platform == "gpu" for d in module.devices())
        elif name == "array_api_strict":
            info.devices = [getattr(d, "_device", str(d))
                            for d in module.__array_namespace_info__().devices()]
        else:
            info.devices = ["cpu"]
    except Exception as exc:
        info.note = f"device query failed: {exc}"
    return info
