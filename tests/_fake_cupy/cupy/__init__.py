"""A CuPy stand-in for CI: NumPy arithmetic on the host, behind CuPy's host-boundary rules.

CI has no GPU, so the real CuPy cannot run there and every CuPy code path in
portanet (and in array-api-compat's and array-api-extra's CuPy branches) would go
unexercised. This package is imported as ``cupy`` only when a test session asks for
it (``PORTANET_TEST_CUPY=emulated``, the nox session ``tests-cupy-emulated``;
``tests/conftest.py`` refuses if a real CuPy is installed). Its ``ndarray`` wraps a
NumPy array without subclassing it, and keeps CuPy 14.2's rules wherever data
crosses between host and device:

- ``__array__`` refuses implicit conversion (``numpy.asarray(x)`` raises TypeError);
  ``x.get()``, ``cupy.asnumpy(x)`` and DLPack towards the CPU are the ways out.
- A host array (``numpy.ndarray``, even 0-d) as an operand of a device operation
  raises ``TypeError: Unsupported type``, as CuPy's kernels do; Python and NumPy
  scalars are fine. Assigning a non-scalar host array to a basic slice raises
  ValueError, as in CuPy; ``cupy.asarray(host)`` and advanced-index assignment copy.
- Reading data on the host synchronizes with the device: ``get()``, ``item()``,
  ``tolist()``, ``bool``/``int``/``float``/``complex``, ``repr``/``str``/``format``,
  pickling, boolean-mask indexing (read or write), and every function whose output
  shape depends on the data (``nonzero``, ``argwhere``, ``unique``, ``compress``,
  one-argument ``where``, ...). Each declares a synchronization, so
  ``cupyx.allow_synchronize(False)`` raises ``cupyx.DeviceSynchronized`` there,
  where real CuPy raises it.
- ``from_dlpack`` refuses CPU exporters; ``__dlpack_device__`` reports CUDA.
- Reductions return 0-d arrays, never scalars; ``ndarray`` has no ``__index__``.
- ``cupy.cuda.Device`` objects compare by id, equal nothing else, and are
  unhashable; ``cupy.cuda.runtime`` can emulate a broken install
  (``PORTANET_EMULATED_CUDA_ERROR=cudaErrorInsufficientDriver``).

What it does not emulate: GPU arithmetic (results are NumPy's, bit for bit, not
cuBLAS's or CuPy's kernels'), kernels and their launch, memory (pools, limits,
out-of-memory), streams and asynchrony (work runs eagerly; synchronizing waits for
nothing), several GPUs' memory, and speed. A green run here proves host-boundary and
synchronization discipline and that the CuPy branches of portanet, array-api-compat
and array-api-extra run; it proves nothing about a GPU.
"""

from __future__ import annotations

import builtins
import warnings
from typing import Any

import numpy as _np

from . import _sync, cuda
from .cuda import runtime as _runtime

__version__ = "14.2.0+emulated"
#: Marks the stand-in: the real CuPy has no such attribute.
__portanet_emulated__ = True

_DL_CPU, _DL_CUDA, _DL_CUDA_MANAGED = 1, 2, 13
_SCALAR_TYPES = (int, float, complex, _np.generic)  # bool is an int
_NO_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
                "Please use `.get()` to construct a NumPy array explicitly.")


def _wrap(a: Any, dev: int | None = None) -> ndarray:
    out = object.__new__(ndarray)
    out._a = a if type(a) is _np.ndarray else _np.asarray(a)
    out._dev = _runtime.getDevice() if dev is None else dev
    return out


def _operand(x: Any) -> Any:
    """An operand of an elementwise kernel: a device array or a scalar."""
    if type(x) is ndarray:
        return x._a
    if isinstance(x, _SCALAR_TYPES):
        return x
    raise TypeError(f"Unsupported type {type(x)}")


def _arg(x: Any) -> Any:
    """An argument of a device function: device arrays unwrapped, host arrays refused."""
    t = type(x)
    if t is ndarray:
        return x._a
    if t is _np.ndarray:
        raise TypeError(f"Unsupported type {t}")
    if t is list or t is tuple:
        return t(_arg(i) for i in x)
    return x


def _result(r: Any) -> Any:
    if isinstance(r, (_np.ndarray, _np.generic)):
        return _wrap(r)
    if isinstance(r, tuple):
        items = [_result(i) for i in r]
        return type(r)(*items) if hasattr(r, "_fields") else tuple(items)
    if isinstance(r, list):
        return [_result(i) for i in r]
    return r


def _call(np_func: Any, args: tuple, kwargs: dict) -> Any:
    a = [_arg(x) for x in args]
    k = {key: _arg(v) for key, v in kwargs.items()}
    with _np.errstate(all="ignore"):  # a GPU raises no floating-point warnings
        r = np_func(*a, **k)
    out = kwargs.get("out")
    if type(out) is ndarray and r is out._a:
        return out
    return _result(r)


def _device_function(name: str, np_func: Any, *, syncs: bool = False,
                     returns_array: bool = False) -> Any:
    def f(*args: Any, **kwargs: Any) -> Any:
        if syncs:  # the output's shape depends on the data: CuPy reads a count back
            _sync.declare()
        r = _call(np_func, args, kwargs)
        return _wrap(_np.asarray(r)) if returns_array and type(r) is not ndarray else r

    f.__name__ = f.__qualname__ = name
    f.__module__ = "cupy"
    f.__doc__ = f"The stand-in's ``cupy.{name}``: ``numpy.{name}`` on the wrapped arrays."
    return f


class ufunc:
    """An elementwise function: device arrays and scalars in, a device array out."""

    def __init__(self, np_ufunc: _np.ufunc):
        self._u = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout

    def __repr__(self) -> str:
        return f"<ufunc '{self.__name__}'>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        a = [_operand(x) for x in args]
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_out(o) for o in out) if isinstance(out, tuple) else _out(out)
        with _np.errstate(all="ignore"):
            r = self._u(*a, **kwargs)
        if out is not None and not isinstance(out, tuple) and r is out._a:
            return out
        return _result(r)

    def _method(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _call(getattr(self._u, method), args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("reduce", *args, **kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("accumulate", *args, **kwargs)

    def reduceat(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("reduceat", *args, **kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("outer", *args, **kwargs)

    def at(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("at", *args, **kwargs)


def _out(o: Any) -> Any:
    if type(o) is not ndarray:
        raise TypeError(f"out must be a cupy.ndarray, got {type(o)}")
    return o._a


# ------------------------------------------------------------------ ndarray --

def _index(key: Any) -> tuple[Any, bool]:
    """The NumPy key for ``key``, and whether it holds a boolean mask (which syncs)."""
    items = key if isinstance(key, tuple) else (key,)
    out, mask = [], False
    for k in items:
        if type(k) is ndarray:
            mask = mask or k._a.dtype == _np.bool_
            out.append(k._a)
        elif isinstance(k, (_np.ndarray, list)):  # CuPy copies host indices to the device
            arr = _np.asarray(k)
            mask = mask or arr.dtype == _np.bool_
            out.append(k)
        elif isinstance(k, (builtins.bool, _np.bool_)):
            mask = True
            out.append(k)
        else:
            out.append(k)
    return (tuple(out) if isinstance(key, tuple) else out[0]), mask


def _binary(name: str, reflected: bool = False) -> Any:
    def op(self: ndarray, other: Any) -> Any:
        if type(other) is not ndarray and not isinstance(other, (*_SCALAR_TYPES, _np.ndarray)):
            return NotImplemented
        u = globals()[name]
        return u(other, self) if reflected else u(self, other)

    return op


def _inplace(name: str) -> Any:
    def op(self: ndarray, other: Any) -> Any:
        if type(other) is not ndarray and not isinstance(other, (*_SCALAR_TYPES, _np.ndarray)):
            return NotImplemented
        globals()[name](self, other, out=self)
        return self

    return op


def _compare(name: str) -> Any:
    def op(self: ndarray, other: Any) -> Any:
        if isinstance(other, _np.ndarray) and other.ndim == 0:
            other = other.item()  # as CuPy's __richcmp__ does
        if type(other) is not ndarray and not isinstance(other, (*_SCALAR_TYPES, _np.ndarray)):
            return NotImplemented
        return globals()[name](self, other)

    return op


def _unary(name: str) -> Any:
    def op(self: ndarray) -> Any:
        return globals()[name](self)

    return op


def _method(name: str, syncs: bool = False) -> Any:
    def m(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        if syncs:
            _sync.declare()
        return _call(getattr(self._a, name), args, kwargs)

    m.__name__ = name
    return m


class _MemoryPointer:
    """``ndarray.data``: the address of the first element (a host address here)."""

    def __init__(self, ptr: int, device_id: int):
        self.ptr, self.device_id = ptr, device_id

    @property
    def device(self) -> cuda.Device:
        return cuda.Device(self.device_id)


class ndarray:
    """A device array: a NumPy array behind CuPy's rules (see the module docstring)."""

    __slots__ = ("_a", "_dev")
    __array_priority__ = 100.0
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None,
                 order: str = "C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("the stand-in's ndarray takes no memptr or strides")
        self._a = _np.empty(shape, dtype=dtype, order=order)
        self._dev = _runtime.getDevice()

    # -- attributes --------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @shape.setter
    def shape(self, value: Any) -> None:
        self._a.shape = value

    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _wrap(self._a.T, self._dev))
    mT = property(lambda self: _wrap(self._a.mT, self._dev))
    real = property(lambda self: _wrap(self._a.real, self._dev))
    imag = property(lambda self: _wrap(self._a.imag, self._dev))

    @property
    def device(self) -> cuda.Device:
        return cuda.Device(self._dev)

    @property
    def data(self) -> _MemoryPointer:
        return _MemoryPointer(self._a.__array_interface__["data"][0], self._dev)

    # -- the host boundary ---------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        raise TypeError(_NO_IMPLICIT)

    def get(self, stream: Any = None, order: str = "C", out: Any = None,
            blocking: bool = True) -> _np.ndarray:
        """Copy to the host: a synchronization."""
        _sync.declare()
        if out is not None:
            if not isinstance(out, _np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            out[...] = self._a
            return out
        return _np.array(self._a, order=order, copy=True)

    def set(self, arr: Any, stream: Any = None) -> None:
        """Copy a host array of the same shape and dtype in (no synchronization)."""
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("Shape or dtype mismatch")
        self._a[...] = arr

    def item(self) -> Any:
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().item()

    def tolist(self) -> Any:
        return self.get().tolist()

    def __bool__(self) -> bool:
        if self.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False, but "
                          "in future this will result in an error.", DeprecationWarning, stacklevel=2)
            return False
        if self.size == 1:
            return builtins.bool(self.get())
        raise ValueError("The truth value of an array with more than one element is ambiguous. "
                         "Use a.any() or a.all()")

    def __int__(self) -> int:
        return int(self.get())

    def __float__(self) -> float:
        return float(self.get())

    def __complex__(self) -> complex:
        return complex(self.get())

    def __repr__(self) -> str:
        return repr(self.get())

    def __str__(self) -> str:
        return str(self.get())

    def __format__(self, spec: str) -> str:
        return format(self.get(), spec)

    def __reduce__(self) -> Any:
        return array, (self.get(),)

    def __copy__(self) -> ndarray:
        return self.copy()

    def __deepcopy__(self, memo: Any) -> ndarray:
        return self.copy()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DL_CUDA, self._dev)

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Any = None) -> Any:
        if dl_device is not None and tuple(dl_device) == (_DL_CPU, 0):
            # As CuPy: a copy to the host, exported from there.
            host = self.get()
            return host.__dlpack__(max_version=max_version) if max_version else host.__dlpack__()
        raise BufferError("the CuPy stand-in cannot export device memory through DLPack to "
                          "another library: it has no GPU (cupy.from_dlpack of a stand-in "
                          "array works, and shares memory)")

    def __array_ufunc__(self, np_ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method not in ("__call__", "outer", "at", "reduce", "accumulate", "reduceat"):
            return NotImplemented
        func = globals().get(np_ufunc.__name__)
        if not isinstance(func, ufunc):
            return NotImplemented
        inout = inputs + tuple(kwargs.get("out", ()))
        if "out" in kwargs:
            if len(kwargs["out"]) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            kwargs["out"] = kwargs["out"][0]
        for x in inout:
            if type(x) is not ndarray and not isinstance(x, (*_SCALAR_TYPES, _np.ndarray)):
                return NotImplemented
        if method != "__call__":
            return getattr(func, method)(*inputs, **kwargs)
        return func(*inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        import sys

        module: Any = sys.modules[__name__]
        try:
            for part in func.__module__.split(".")[1:]:
                module = getattr(module, part)
            ours = getattr(module, func.__name__)
        except AttributeError:
            return NotImplemented
        if not builtins.all(issubclass(t, (ndarray, _np.ndarray)) for t in types):
            return NotImplemented
        return ours(*args, **kwargs)

    # -- containers and indexing -------------------------------------------------
    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self) -> Any:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __getitem__(self, key: Any) -> ndarray:
        k, mask = _index(key)
        if mask:  # CuPy counts the mask's true values on the host
            _sync.declare()
        r = self._a[k]
        if not isinstance(r, _np.ndarray):  # a 0-d view, as CuPy returns, not a scalar
            keys = k if isinstance(k, tuple) else (k,)
            r = self._a[(*keys, Ellipsis)] if Ellipsis not in keys else _np.asarray(r)
        return _wrap(r, self._dev)

    def __setitem__(self, key: Any, value: Any) -> None:
        k, mask = _index(key)
        keys = k if isinstance(k, tuple) else (k,)
        advanced = mask or builtins.any(isinstance(i, (_np.ndarray, list)) for i in keys)
        if mask:
            _sync.declare()
        if type(value) is ndarray:
            value = value._a
        elif not advanced and not isinstance(value, _SCALAR_TYPES):
            # CuPy fills a basic slice from a host value: only a scalar will do (gh-2079)
            if _np.asarray(value).shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a[k] = value

    def fill(self, value: Any) -> None:
        if type(value) is ndarray:
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            value = value._a
        elif _np.asarray(value).shape != ():
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a.fill(value)

    # -- methods -------------------------------------------------------------------
    def astype(self, dtype: Any, order: str = "K", casting: Any = None, subok: Any = None,
               copy: bool = True) -> ndarray:
        r = self._a.astype(dtype, order=order, copy=copy)
        return self if r is self._a else _wrap(r, self._dev)

    def copy(self, order: str = "C") -> ndarray:
        return _wrap(self._a.copy(order=order), self._dev)

    def reshape(self, *shape: Any, order: str = "C") -> ndarray:
        return _wrap(self._a.reshape(*shape, order=order), self._dev)

    def view(self, *args: Any, **kwargs: Any) -> ndarray:
        return _wrap(self._a.view(*args, **kwargs), self._dev)

    def sort(self, axis: int = -1) -> None:
        self._a.sort(axis=axis)

    def nonzero(self) -> tuple[ndarray, ...]:
        return nonzero(self)  # noqa: F821 (made below)

    for _name in ("all", "any", "argmax", "argmin", "argpartition", "argsort", "clip", "conj",
                  "conjugate", "cumprod", "cumsum", "diagonal", "dot", "flatten", "max", "mean",
                  "min", "prod", "ptp", "ravel", "repeat", "round", "squeeze", "std", "sum",
                  "swapaxes", "take", "trace", "transpose", "var"):
        locals()[_name] = _method(_name)

    # -- operators -----------------------------------------------------------------
    for _name, _u in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"),
                      ("truediv", "true_divide"), ("floordiv", "floor_divide"),
                      ("mod", "remainder"), ("pow", "power"), ("matmul", "matmul"),
                      ("and", "bitwise_and"), ("or", "bitwise_or"), ("xor", "bitwise_xor"),
                      ("lshift", "left_shift"), ("rshift", "right_shift"),
                      ("divmod", "divmod")):
        locals()[f"__{_name}__"] = _binary(_u)
        locals()[f"__r{_name}__"] = _binary(_u, reflected=True)
        if _name != "divmod":
            locals()[f"__i{_name}__"] = _inplace(_u)
    for _name, _u in (("lt", "less"), ("le", "less_equal"), ("eq", "equal"),
                      ("ne", "not_equal"), ("gt", "greater"), ("ge", "greater_equal")):
        locals()[f"__{_name}__"] = _compare(_u)
    for _name, _u in (("neg", "negative"), ("pos", "positive"), ("abs", "absolute"),
                      ("invert", "invert")):
        locals()[f"__{_name}__"] = _unary(_u)
    del _name, _u


# ---------------------------------------------------------------- namespace --

# Dtypes, scalar types and constants: CuPy uses NumPy's own.
bool = _np.bool_
for _name in """bool_ byte cdouble complex64 complex128 complexfloating csingle double dtype e
        euler_gamma finfo float16 float32 float64 floating generic half iinfo inexact inf int8 int16
        int32 int64 int_ intc integer intp nan newaxis number pi short signedinteger single ubyte
        uint uint8 uint16 uint32 uint64 uintc uintp unsignedinteger ushort""".split():
    globals()[_name] = getattr(_np, _name)

_UFUNCS = """abs absolute acos acosh add arccos arccosh arcsin arcsinh arctan arctan2 arctanh asin
asinh atan atan2 atanh bitwise_and bitwise_count bitwise_invert bitwise_left_shift bitwise_not
bitwise_or bitwise_right_shift bitwise_xor cbrt ceil conj conjugate copysign cos cosh deg2rad degrees
divide divmod equal exp exp2 expm1 fabs float_power floor floor_divide fmax fmin fmod frexp gcd greater
greater_equal heaviside hypot invert isfinite isinf isnan lcm ldexp left_shift less less_equal log
log10 log1p log2 logaddexp logaddexp2 logical_and logical_not logical_or logical_xor matmul maximum
minimum mod modf multiply negative nextafter not_equal positive pow power rad2deg radians reciprocal
remainder right_shift rint sign signbit sin sinh sqrt square subtract tan tanh true_divide trunc"""

# Functions of device arrays (host arrays refused), whose output shape the inputs fix.
_FUNCTIONS = """all amax amin angle any append argmax argmin argpartition argsort around
array_split astype atleast_1d atleast_2d atleast_3d average broadcast_arrays broadcast_to choose clip
column_stack concat concatenate copy corrcoef count_nonzero cov cross cumprod cumsum cumulative_prod
cumulative_sum diag diagflat diagonal diff digitize dot dsplit dstack einsum empty_like expand_dims
fix flip fliplr flipud full_like hsplit hstack imag inner interp isclose iscomplex isin isneginf
isposinf isreal kron matrix_transpose max mean median meshgrid min moveaxis nan_to_num nanargmax
nanargmin nancumprod nancumsum nanmax nanmean nanmedian nanmin nanprod nanstd nansum nanvar ones_like
outer pad partition percentile permute_dims prod ptp put_along_axis quantile ravel real repeat reshape
resize roll rollaxis rot90 round searchsorted select sort split squeeze stack std sum swapaxes take
take_along_axis tensordot tile trace transpose trapezoid tril triu var vdot vsplit vstack zeros_like
arange empty eye full identity indices linspace logspace ones tri tril_indices triu_indices
diag_indices zeros
isdtype result_type can_cast promote_types issubdtype min_scalar_type common_type broadcast_shapes
shape ndim size isscalar iscomplexobj isrealobj may_share_memory shares_memory"""

# Functions whose output shape depends on the data: CuPy reads a count back to the host.
_SYNCING = """nonzero argwhere flatnonzero extract compress unique unique_all unique_counts
unique_inverse unique_values trim_zeros setdiff1d intersect1d union1d setxor1d bincount"""

for _name in _UFUNCS.split():
    globals()[_name] = ufunc(getattr(_np, _name))
for _name in _FUNCTIONS.split():
    globals()[_name] = _device_function(_name, getattr(_np, _name))
for _name in _SYNCING.split():
    globals()[_name] = _device_function(_name, getattr(_np, _name), syncs=True)
for _name in ("allclose", "array_equal", "array_equiv"):  # CuPy returns 0-d arrays
    globals()[_name] = _device_function(_name, getattr(_np, _name), returns_array=True)
del _name


def where(condition: Any, x: Any = None, y: Any = None) -> Any:
    """``where(c, x, y)`` selects elementwise; ``where(c)`` is ``nonzero(c)`` (a sync)."""
    if x is None and y is None:
        return nonzero(condition)  # noqa: F821 (made above)
    if x is None or y is None:
        raise ValueError("Must provide both 'x' and 'y' or neither.")
    return _call(_np.where, (condition, x, y), {})


# ------------------------------------------------- creation and the host boundary --

def _host_data(obj: Any) -> Any:
    if type(obj) is ndarray:
        return obj._a
    if isinstance(obj, (list, tuple)) and builtins.any(type(i) is ndarray for i in obj):
        return _np.stack([_host_data(i) for i in obj])  # CuPy stacks device arrays on the device
    return obj


def array(obj: Any, dtype: Any = None, copy: Any = True, order: str = "K", subok: bool = False,
          ndmin: int = 0, blocking: bool = False) -> ndarray:
    """A device array from device or host data (a host-to-device copy for host data)."""
    if type(obj) is ndarray and copy is not True:
        if dtype is None or _np.dtype(dtype) == obj.dtype:
            return obj
    if copy is False and type(obj) is not ndarray:
        raise ValueError("Unable to avoid copy while creating an array as requested")
    data = _host_data(obj)
    a = _np.array(data, dtype=dtype, copy=True, order=order, ndmin=ndmin)
    return _wrap(a)


def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    return array(a, dtype=dtype, copy=None, order=order or "K")


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    out = asarray(a, dtype=dtype)
    return out if out._a.flags.c_contiguous else _wrap(_np.ascontiguousarray(out._a), out._dev)


asanyarray = asarray


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None,
            blocking: bool = True) -> _np.ndarray:
    """Copy a device array to the host (a synchronization); host data passes through."""
    if type(a) is ndarray:
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    return _np.asarray(a, order=order)


def get_array_module(*args: Any) -> Any:
    import sys

    return sys.modules[__name__] if builtins.any(type(a) is ndarray for a in args) else _np


def from_dlpack(x: Any, *, device: Any = None, copy: Any = None) -> ndarray:
    """Import through DLPack, as CuPy 14.2: CUDA exporters only; CPU ones are refused."""
    if not hasattr(x, "__dlpack_device__"):
        raise TypeError("the CuPy stand-in does not import bare DLPack capsules")
    dev_type, dev_id = x.__dlpack_device__()
    if device is not None:
        raise NotImplementedError("from_dlpack() does not support device yet.")
    if dev_type in (_DL_CUDA, _DL_CUDA_MANAGED):
        if type(x) is not ndarray:
            raise BufferError("the CuPy stand-in has no GPU: it cannot import another library's "
                              "CUDA memory")
        return _wrap(x._a.copy() if copy else x._a, dev_id)  # shares memory unless copy=True
    if dev_type == _DL_CPU:
        raise TypeError("CPU arrays cannot be directly imported to CuPy. "
                        "Use `cupy.array(numpy.from_dlpack(input))` instead.")
    raise TypeError(f"Unsupported array type: {dev_type}")


def is_available() -> bool:
    return cuda.is_available()


class _MemoryPool:
    """The default memory pool: the stand-in allocates nothing on a device."""

    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        return None


_POOL = _MemoryPool()


def get_default_memory_pool() -> _MemoryPool:
    return _POOL


def get_default_pinned_memory_pool() -> _MemoryPool:
    return _POOL


from . import fft, linalg  # noqa: E402, F401  (they wrap the functions above)

__all__ = [n for n in list(globals()) if not n.startswith("_")
           and n not in ("annotations", "builtins", "warnings", "Any")]
