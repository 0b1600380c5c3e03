"""Tolerances and comparisons for checking one backend against another.

This is the one place where portanet writes down how closely backends must
agree. Comparisons run on host copies in float64.

==========================  ===========  ===========
what                        float64      float32
==========================  ===========  ===========
one op (elementwise rtol)   1e-12        1e-5
100 training steps (norm)   1e-10        1e-4
gradients vs torch autograd 1e-10        -
finite differences (norm)   1e-6         -
==========================  ===========  ===========
"""

from __future__ import annotations

from typing import Any

from .backend import to_numpy

__all__ = [
    "AGREEMENT_RTOL",
    "FINITE_DIFFERENCE_RTOL",
    "ORACLE_RTOL",
    "TOLERANCES",
    "assert_close",
    "max_abs_diff",
    "norm_rel_diff",
]

#: Elementwise tolerances for a single computation, by dtype name.
TOLERANCES: dict[str, dict[str, float]] = {
    "float64": {"rtol": 1e-12, "atol": 1e-12},
    "float32": {"rtol": 1e-5, "atol": 1e-6},
}

#: Norm-relative bound after 100 seeded training steps, backend vs NumPy.
AGREEMENT_RTOL: dict[str, float] = {"float64": 1e-10, "float32": 1e-4}

#: Norm-relative bound for gradients and optimizer trajectories vs torch.
ORACLE_RTOL: dict[str, float] = {"float64": 1e-10, "float32": 1e-5}

#: Norm-relative bound for central differences (float64, h = 1e-6).
FINITE_DIFFERENCE_RTOL = 1e-6


def _host64(a: Any) -> Any:
    return to_numpy(a).astype("float64")


def norm_rel_diff(actual: Any, desired: Any) -> float:
    """``||a - b|| / ||b||`` (2-norm over all elements); ``||a - b||`` when ``b`` is zero."""
    a, b = _host64(actual), _host64(desired)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    diff = float(((a - b) ** 2).sum() ** 0.5)
    scale = float((b**2).sum() ** 0.5)
    return diff / scale if scale > 0 else diff


def max_abs_diff(actual: Any, desired: Any) -> float:
    a, b = _host64(actual), _host64(desired)
    return float(abs(a - b).max()) if a.size else 0.0


def assert_close(actual: Any, desired: Any, dtype: str, *, scale: float = 1.0, err_msg: str = "") -> None:
    """Assert ``|a - b| <= atol + rtol |b|`` elementwise, with the tolerances of ``dtype``.

    ``scale`` multiplies both tolerances, for results of several ops.
    """
    tol = TOLERANCES[dtype]
    a, b = _host64(actual), _host64(desired)
    if a.shape != b.shape:
        raise AssertionError(f"{err_msg} shapes differ: {a.shape} vs {b.shape}")
    bound = scale * (tol["atol"] + tol["rtol"] * abs(b))
    bad = ~(abs(a - b) <= bound)  # NaN anywhere counts as a mismatch
    if bad.any():
        worst = float((abs(a - b) - bound).max())
        raise AssertionError(
            f"{err_msg} {int(bad.sum())} of {a.size} elements differ beyond "
            f"rtol={scale * tol['rtol']:g}, atol={scale * tol['atol']:g} "
            f"(worst excess {worst:.3g}; max abs diff {max_abs_diff(a, b):.3g})"
        )
