"""Communicators for data-parallel training: MPI through mpi4py, NCCL through CuPy.

MPI launches the ranks and moves the bytes; portanet only decides what to send.
``comm = init()`` returns a communicator with ``rank``, ``size``, ``is_root`` and the
few collectives that training needs:

- ``allreduce(buf)``: the sum over ranks of one flat array, in its namespace;
- ``broadcast(buf)`` of an array, and ``broadcast_object`` of small host data;
- ``barrier()``.

Arrays reach MPI without a copy where MPI can read them (NumPy, torch CPU tensors,
through the buffer protocol or DLPack), through one host copy where it cannot (JAX,
array-api-strict), and CuPy arrays go through NCCL when it is there (its unique id
shared over MPI), else through the host. Without ``mpiexec`` (or without mpi4py) the
world has one rank, so the same script runs both ways.

A rank that raises must not leave the others waiting in a collective it will never
enter: while a world of more than one rank is open, an uncaught exception prints its
traceback on that rank and aborts the whole job (``MPI_Abort``), so every rank exits
with a non-zero status at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

from array_api_compat import device as device_of
from array_api_compat import is_writeable_array

from .backend import backend_name, namespace_of, to_array, to_numpy

__all__ = ["BACKENDS", "Communicator", "DataParallel", "MPICommunicator", "init"]

Array = Any

#: What ``init(backend=...)`` takes.
BACKENDS = ("auto", "mpi", "nccl", "single")


class Communicator:
    """A world of one rank: every collective returns its input (no MPI needed).

    Subclasses move the bytes. ``allreduce`` sums in place where the array is
    writeable and returns the result either way (rebind it: JAX arrays are new).
    """

    rank = 0
    size = 1
    kind = "single"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, buf: Array) -> Array:
        """The element-wise sum of ``buf`` (one flat array) over all ranks."""
        return buf

    def broadcast(self, buf: Array, root: int = 0) -> Array:
        """``root``'s ``buf`` on every rank (same shape and dtype on each)."""
        return buf

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Small host data (an RNG state, a config) from ``root``."""
        return obj

    def allreduce_host(self, values: list[float]) -> list[float]:
        """The sums over ranks of a few host floats."""
        return list(values)

    def same(self, value: float) -> bool:
        """Whether every rank holds the same ``value`` (a host float)."""
        return True

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        os._exit(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class MPICommunicator(Communicator):
    """Collectives over an mpi4py communicator (``MPI.COMM_WORLD`` by default); CuPy
    arrays go through NCCL when ``use_nccl`` and NCCL is available, else the host."""

    kind = "mpi"

    def __init__(self, mpi_comm: Any = None, use_nccl: bool = True):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._use_nccl = use_nccl
        self._nccl: Any = None

    # -- arrays ------------------------------------------------------------------
    def allreduce(self, buf: Array) -> Array:
        if self.size == 1:
            return buf
        if self._on_nccl(buf):
            return self._nccl.allreduce(buf)
        name = backend_name(namespace_of(buf))
        if _mpi_can_write(name, buf):  # NumPy, torch on the CPU: MPI sums in the array itself
            self.comm.Allreduce(self.MPI.IN_PLACE, buf)
            return buf
        host = to_numpy(buf)  # JAX, array-api-strict, CuPy without NCCL: one host copy
        self.comm.Allreduce(self.MPI.IN_PLACE, host)
        return to_array(host, namespace_of(buf), device_of(buf), buf.dtype)

    def broadcast(self, buf: Array, root: int = 0) -> Array:
        if self.size == 1:
            return buf
        if self._on_nccl(buf):
            return self._nccl.broadcast(buf, root)
        if _mpi_can_write(backend_name(namespace_of(buf)), buf):
            self.comm.Bcast(buf, root=root)
            return buf
        host = to_numpy(buf)
        self.comm.Bcast(host, root=root)
        return to_array(host, namespace_of(buf), device_of(buf), buf.dtype)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj if self.size == 1 else self.comm.bcast(obj, root=root)

    def allreduce_host(self, values: list[float]) -> list[float]:
        if self.size == 1:
            return list(values)
        import numpy as np

        buf = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf)
        return [float(v) for v in buf]

    def same(self, value: float) -> bool:
        if self.size == 1:
            return True
        import numpy as np

        buf = np.asarray([value, -value], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return bool(buf[0] == -buf[1])  # the largest equals the smallest

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def _on_nccl(self, buf: Array) -> bool:
        """Whether ``buf`` goes through NCCL: a contiguous float CuPy array, with NCCL
        wanted and there (anything else goes through the host)."""
        return (self._use_nccl and backend_name(namespace_of(buf)) == "cupy"
                and str(buf.dtype) in ("float32", "float64") and bool(buf.flags.c_contiguous)
                and self._nccl_comm() is not None)

    def _nccl_comm(self) -> Any:
        if self._nccl is None:
            self._nccl = _NCCL.create(self) or False
        return self._nccl or None


class _NCCL:
    """An NCCL communicator over the same ranks (one GPU per rank), its id sent over MPI."""

    def __init__(self, nccl: ModuleType, comm: Any, cupy: ModuleType):
        self.nccl, self.comm, self.cupy = nccl, comm, cupy

    @classmethod
    def create(cls, mpi: MPICommunicator) -> _NCCL | None:
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError:
            return None
        if not getattr(nccl, "available", False):
            return None
        uid = mpi.broadcast_object(nccl.get_unique_id() if mpi.is_root else None)
        return cls(nccl, nccl.NcclCommunicator(mpi.size, uid, mpi.rank), cupy)

    def allreduce(self, buf: Array) -> Array:
        """The sum over ranks, in place, on the current stream."""
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._kind(buf),
                            self.nccl.NCCL_SUM, self._stream())
        return buf

    def broadcast(self, buf: Array, root: int = 0) -> Array:
        """``root``'s ``buf`` on every rank, in place."""
        self.comm.bcast(buf.data.ptr, buf.size, self._kind(buf), root, self._stream())
        return buf

    def _kind(self, buf: Array) -> int:
        kinds = {"float32": self.nccl.NCCL_FLOAT32, "float64": self.nccl.NCCL_FLOAT64}
        if str(buf.dtype) not in kinds or not buf.flags.c_contiguous:
            raise TypeError(f"NCCL here sums contiguous float32 or float64 arrays, not {buf.dtype}")
        return kinds[str(buf.dtype)]

    def _stream(self) -> int:
        return self.cupy.cuda.get_current_stream().ptr


# ------------------------------------------------------------- buffers ----


def _mpi_can_write(name: str, buf: Array) -> bool:
    """Whether MPI can read and write ``buf`` in place: a contiguous, writeable NumPy array
    (buffer protocol) or a contiguous torch tensor on the CPU (DLPack)."""
    if name == "numpy":
        return is_writeable_array(buf) and bool(buf.flags["C_CONTIGUOUS"])
    if name == "torch":
        return buf.device.type == "cpu" and buf.is_contiguous() and not buf.requires_grad
    return False


# -------------------------------------------------- data-parallel fit ----


class DataParallel:
    """What ``fit(distributed=comm)`` does beyond one process, on any communicator.

    Every rank holds the whole data set and the same seeded RNG, so all draw the same
    shuffles; each takes its contiguous share of every *global* batch (:meth:`rows`).
    Each rank backpropagates its share of the global batch's mean loss; its gradients are
    packed into one flat buffer with that share of the loss and summed over ranks in one
    allreduce (:meth:`reduce`): the gradient a single process would compute.
    """

    def __init__(self, comm: Communicator):
        self.comm = comm
        self._packed: Array | None = None  # the last step's packed buffer, written again

    def rows(self, lo: int, hi: int) -> tuple[int, int]:
        """This rank's contiguous rows of the global batch ``lo:hi`` (the first ranks take
        one more where the batch does not split evenly; a share may be empty)."""
        base, extra = divmod(hi - lo, self.comm.size)
        start = lo + self.comm.rank * base + min(self.comm.rank, extra)
        return start, start + base + (self.comm.rank < extra)

    def start(self, net: Any, optimizer: Any) -> None:
        """Give every rank rank 0's parameters, buffers, optimizer state and RNG, and check."""
        comm = self.comm
        for view in (net.parameters(), net.buffers()):
            for name in view:
                view[name] = comm.broadcast(view[name])
        for arrays in optimizer.state.values():
            for name in arrays:
                arrays[name] = comm.broadcast(arrays[name])
        optimizer.step_count = comm.broadcast_object(optimizer.step_count)
        net.rng.bit_generator.state = comm.broadcast_object(net.rng.bit_generator.state)
        self.verify(net, optimizer)

    def verify(self, net: Any, optimizer: Any) -> None:
        """Raise ``RuntimeError`` unless every rank holds the same parameters, buffers and
        optimizer state (one checksum each, compared across ranks)."""
        for what, arrays in (("parameters", dict(net.parameters())), ("buffers", dict(net.buffers())),
                             ("optimizer state", {f"{s}/{n}": a for s, d in optimizer.state.items()
                                                  for n, a in d.items()})):
            if not self.comm.same(_checksum(arrays)):
                raise RuntimeError(f"distributed training: the ranks' {what} differ (rank "
                                   f"{self.comm.rank} of {self.comm.size}); they must start alike")

    def reduce(self, grads: dict[str, Array], loss: Array) -> tuple[dict, Array]:
        """Sum ``grads`` and ``loss`` (each rank's share of the global batch's) over ranks in
        one allreduce of one packed buffer; returns the global gradients (views of the summed
        buffer) and the global batch's mean loss (0-d)."""
        xp = namespace_of(loss)
        names = list(grads)
        parts = [xp.reshape(grads[k], (-1,)) for k in names]
        buf = self.comm.allreduce(self._pack(xp, [*parts, xp.reshape(loss, (1,))]))
        out, start = {}, 0
        for name, part in zip(names, parts):
            stop = start + part.shape[0]
            out[name] = xp.reshape(buf[start:stop], grads[name].shape)
            start = stop
        return out, buf[-1]

    def _pack(self, xp: Any, parts: list[Array]) -> Array:
        """``concat(parts)``, written into the previous step's buffer where that one fits and
        can be written: a new buffer of a large model's gradients each step costs more than
        the copy (its pages are touched for the first time). The gradients :meth:`reduce`
        returned last time are views of that buffer; a step has used them by then."""
        buf, size = self._packed, sum(p.shape[0] for p in parts)
        if (buf is None or buf.shape[0] != size or namespace_of(buf) is not xp
                or any(p.dtype != buf.dtype for p in parts)
                or device_of(buf) != device_of(parts[0])):
            buf = xp.concat(parts)
            self._packed = buf if is_writeable_array(buf) else None
            return buf
        start = 0
        for part in parts:
            buf[start:start + part.shape[0]] = part
            start += part.shape[0]
        return buf

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (a Ctrl-C on one stops them all)."""
        return self.comm.allreduce_host([1.0 if flag else 0.0])[0] > 0.0


def _checksum(arrays: dict[str, Array]) -> float:
    """A cheap fingerprint of some arrays: the sum of each one's weighted sum, on the host."""
    total = 0.0
    for i, a in enumerate(arrays.values()):
        xp = namespace_of(a)
        total += (i + 1.0) * float(to_numpy(xp.sum(a * a) + xp.sum(a)))
    return total


# ----------------------------------------------------------------- init ----

_WORLD: Communicator | None = None


def init(backend: str = "auto") -> Communicator:
    """The communicator of this process's world (made once; later calls return it).

    Parameters
    ----------
    backend : {"auto", "mpi", "nccl", "single"}
        ``"auto"``: MPI when mpi4py is installed (a one-rank world without
        ``mpiexec``), with NCCL for CuPy arrays where NCCL is available; a
        single-process communicator when mpi4py is missing. ``"mpi"``: MPI, never
        NCCL. ``"nccl"``: MPI, and NCCL required for CuPy arrays. ``"single"``:
        one rank, no MPI.
    """
    global _WORLD
    if backend not in BACKENDS:
        raise ValueError(f"distributed.init: backend must be one of {BACKENDS}, got {backend!r}")
    if _WORLD is not None and (backend == "auto" or _WORLD.kind == _kind(backend)):
        return _WORLD
    if backend == "single":
        _WORLD = Communicator()
        return _WORLD
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        if backend == "auto":
            _WORLD = Communicator()
            return _WORLD
        raise ImportError('distributed training over MPI needs mpi4py: pip install '
                          '"portanet[mpi]"') from exc
    _WORLD = MPICommunicator(use_nccl=backend != "mpi")
    if backend == "nccl" and _NCCL.create(_WORLD) is None:
        raise RuntimeError("distributed.init: backend 'nccl' asked for, but CuPy's NCCL is "
                           "not available")
    if _WORLD.size > 1:
        _abort_on_uncaught(_WORLD)
    return _WORLD


def _kind(backend: str) -> str:
    return "single" if backend == "single" else "mpi"


def _abort_on_uncaught(comm: Communicator) -> None:
    """Print an uncaught exception once, on the rank that raised it, then abort every rank:
    the others would otherwise wait forever in a collective this rank never enters."""
    previous: Callable[..., Any] = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
        else:
            sys.stderr.write(f"portanet: rank {comm.rank} of {comm.size} raised; aborting "
                             "every rank\n" + "".join(traceback.format_exception(kind, value, tb)))
            sys.stderr.flush()
        comm.abort(1)

    sys.excepthook = hook
