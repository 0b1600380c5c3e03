"""DLPack between torch CUDA and CuPy through portanet, checked by data pointers.

The interop phase of ``bench/gpu_check.sh``. On a CUDA machine with CuPy and a
CUDA build of torch, it checks that portanet moves arrays between the two by
DLPack, sharing device memory, rather than through the host:

1. a torch CUDA tensor given to a CuPy network (``net.as_input``) becomes a CuPy
   array at the tensor's address;
2. that network's output given to a torch network built with ``device="cuda"``
   becomes a tensor at the output's address, on ``cuda:0``;
3. the two networks (same seed) compute the same outputs, to float32 tolerance.

It prints one line per check and exits 0 when all hold, 1 when one fails, and 2
when it cannot run here (no CuPy GPU, or torch without CUDA)::

    python bench/gpu_interop.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

try:
    import portanet as pn
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import portanet as pn


def layers() -> list:
    return [pn.Dense(4, 5, activation="tanh"), pn.Dense(5, 3)]


def main() -> int:
    try:
        import cupy
        import torch

        pn.backend.get_namespace("cupy")  # raises, with CUDA's error, where CuPy has no GPU
        if not torch.cuda.is_available():
            raise RuntimeError(f"torch {torch.__version__} sees no CUDA GPU")
    except Exception as exc:
        print(f"interop: cannot run here: {type(exc).__name__}: {exc}")
        return 2

    batch = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    net = pn.Sequential(layers(), backend="cupy", dtype="float32", seed=0)
    tnet = pn.Sequential(layers(), backend="torch", device="cuda", dtype="float32", seed=0)
    t = torch.tensor(batch, device="cuda")
    a = net.as_input(t)
    out = net.forward(t)
    back = tnet.as_input(out)
    reference = tnet.forward(t)
    worst = float(np.max(np.abs(back.cpu().numpy() - reference.cpu().numpy())))
    checks = [
        ("torch cuda tensor -> cupy network: same memory",
         isinstance(a, cupy.ndarray) and a.data.ptr == t.data_ptr(),
         f"tensor {t.data_ptr():#x}, cupy input {a.data.ptr:#x}"),
        ('cupy output -> torch network on device="cuda": same memory, on cuda:0',
         back.data_ptr() == out.data.ptr and back.device == torch.device("cuda:0")
         and tnet.device == torch.device("cuda:0"),
         f"cupy output {out.data.ptr:#x}, tensor {back.data_ptr():#x} on {back.device}; "
         f"network device {tnet.device}"),
        ("cupy and torch networks agree", worst <= 1e-5,
         f"max |difference| {worst:.2e} (float32, tolerance 1e-5)"),
    ]
    for name, ok, detail in checks:
        print(f"interop: {'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
