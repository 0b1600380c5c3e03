"""``cupy.linalg`` of the stand-in: the names CuPy 14.2 has, as NumPy computes them.

CuPy has no ``vector_norm``, ``matrix_norm``, ``svdvals`` or ``vecdot`` here, so
array-api-compat takes its own paths for those, as it does on a GPU.
"""

from __future__ import annotations

import numpy as _np
from numpy.linalg import LinAlgError

from .. import _device_function, matmul, matrix_transpose

__all__ = ["LinAlgError", "matmul", "matrix_transpose"]

for _name in ("cholesky", "cond", "det", "eig", "eigh", "eigvals", "eigvalsh", "inv", "lstsq",
              "matrix_power", "matrix_rank", "norm", "pinv", "qr", "slogdet", "solve", "svd",
              "tensorinv", "tensorsolve"):
    globals()[_name] = _device_function(_name, getattr(_np.linalg, _name))
    __all__.append(_name)
globals()["cross"] = _device_function("cross", _np.cross)
__all__.append("cross")
del _name
