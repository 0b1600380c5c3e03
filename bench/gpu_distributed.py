"""Data-parallel training on the GPU, for bench/gpu_check.sh's ``nccl`` and ``staged`` phases.

    python bench/gpu_distributed.py nccl            # one rank: NCCL's own collectives
    mpiexec -n 2 python bench/gpu_distributed.py staged   # two ranks on one GPU, via the host

``nccl`` makes a one-rank NCCL communicator (its unique id shared over MPI, as with
more ranks) and checks its allreduce and broadcast on CuPy arrays in place, then
that ``fit(distributed=...)`` through it (packing, allreduce, broadcast) equals a plain
``fit`` bitwise.

``staged`` trains one CuPy network on two ranks that share one GPU (two NCCL ranks
cannot, so ``init(backend="mpi")`` stages the gradients through the host), and rank
0 compares it with a single-process CuPy run of the same global batches: float64
weights to 1e-12 relative, as the CPU tests require.

Each prints one line that starts with its phase name and says ``ok`` or ``FAILED``,
and exits non-zero on failure. The data are synthetic (the GPU machine has no
scikit-learn). On the CuPy stand-in (PORTANET_TEST_CUPY=emulated) ``nccl`` reports
that NCCL is not there and exits 0, and ``staged`` runs as on a GPU.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import portanet as pn
from portanet.backend import to_numpy

RTOL = 1e-12  # float64 after 3 epochs, as tests/test_distributed.py


def data(rows: int = 600, features: int = 32, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features))
    y = (x[:, :classes] + 0.3 * rng.standard_normal((rows, classes))).argmax(axis=1)
    return x, y


def train(comm: pn.distributed.Communicator | None) -> dict[str, np.ndarray]:
    x, y = data()
    net = pn.Sequential([pn.Dense(32, 64, activation="relu"), pn.Dropout(0.2),
                         pn.Dense(64, 5)], backend="cupy", dtype="float64", seed=0)
    net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=3, batch_size=37,
            verbose=0, distributed=comm)
    return {k: to_numpy(v) for k, v in net.parameters().items()}


def worst(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]) / (np.abs(b[k]) + 1e-300))) for k in b)


class _OneRankNCCL(pn.distributed.Communicator):
    """One rank whose array collectives go through NCCL (an MPI world of one rank
    would return its buffers untouched): fit's packing, allreduce and broadcast run."""

    def __init__(self, nccl_comm):
        self.nccl_comm = nccl_comm

    def allreduce(self, buf):
        return self.nccl_comm.allreduce(buf)

    def broadcast(self, buf, root=0):
        return self.nccl_comm.broadcast(buf, root)


def nccl() -> int:
    import cupy

    comm = pn.distributed.init("mpi")  # a one-rank world; NCCL is made by hand below
    nccl_comm = pn.distributed._NCCL.create(comm)
    if nccl_comm is None:
        print("nccl: NCCL is not available in this CuPy (cupy.cuda.nccl): nothing to check"
              + ("" if getattr(cupy, "__portanet_emulated__", False) else " FAILED"))
        return 0 if getattr(cupy, "__portanet_emulated__", False) else 1
    t0 = time.perf_counter()
    for dtype in (cupy.float32, cupy.float64):
        buf = cupy.arange(1 << 20, dtype=dtype)
        ptr = buf.data.ptr
        out = nccl_comm.allreduce(buf)
        out = nccl_comm.broadcast(out, 0)
        cupy.cuda.get_current_stream().synchronize()
        if out.data.ptr != ptr or not bool((out == cupy.arange(1 << 20, dtype=dtype)).all()):
            print(f"nccl: FAILED: a one-rank allreduce/broadcast changed a {dtype.__name__} buffer")
            return 1
    ms = 1e3 * (time.perf_counter() - t0)
    same = worst(train(_OneRankNCCL(nccl_comm)), train(None))
    ok = same == 0.0
    print(f"nccl: {'ok' if ok else 'FAILED'}: one-rank NCCL allreduce and broadcast of 2^20 "
          f"float32 and float64 in place ({ms:.1f} ms with set-up); fit on it vs plain fit: "
          f"worst relative difference {same:.1e} (must be 0)")
    return 0 if ok else 1


def staged() -> int:
    comm = pn.distributed.init("mpi")
    if comm.size != 2:
        print(f"staged: FAILED: run under mpiexec -n 2 (this world has {comm.size} rank)")
        return 1
    params = train(comm)
    if not comm.is_root:
        return 0
    diff = worst(params, train(None))
    ok = diff <= RTOL
    print(f"staged: {'ok' if ok else 'FAILED'}: 2 ranks on one GPU through the host vs 1 "
          f"process, 3 epochs, global batch 37, float64: worst relative difference "
          f"{diff:.1e} (bound {RTOL:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    phases = {"nccl": nccl, "staged": staged}
    if len(sys.argv) != 2 or sys.argv[1] not in phases:
        sys.exit(f"usage: python {sys.argv[0]} {{{','.join(phases)}}}")
    sys.exit(phases[sys.argv[1]]())
