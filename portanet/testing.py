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

from .backend import host_rng, to_numpy

__all__ = [
    "AGREEMENT_RTOL",
    "FINITE_DIFFERENCE_RTOL",
    "ORACLE_RTOL",
    "TOLERANCES",
    "assert_close",
    "compare_runs",
    "max_abs_diff",
    "norm_rel_diff",
    "train_reference_run",
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

#: Norm-relative bound for central differences (float64, h = 4e-6).
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


# ------------------------------------------------------ agreement runs ----


def train_reference_run(
    backend: Any, device: Any = None, dtype: str = "float64", steps: int = 100, seed: int = 0
) -> dict[str, Any]:
    """Train the reference network for ``steps`` Adam steps; the same on every backend.

    The network is ``Dense -> Dropout -> Dense -> ELU -> Dense -> Dense`` with
    GELU, tanh, SiLU and softplus units, trained with cross-entropy (label
    smoothing 0.05) and Adam on mini-batches of a seeded 4-class problem. Weights,
    dropout masks, data and batches all come from seeded host generators, so two
    backends that compute alike follow the same trajectory. The activations are
    smooth: at a relu kink, float32 rounding could flip a derivative from 0 to 1
    and send two otherwise agreeing runs apart.

    Parameters
    ----------
    backend : str or namespace module
        Anything :class:`~portanet.Sequential` takes as ``backend``.
    device : optional
        A device of that backend (None: its default).
    dtype : {"float32", "float64"}
    steps, seed : int

    Returns
    -------
    dict
        ``losses`` (a list of floats, one per step), ``state`` (final parameters as
        host NumPy arrays), ``initial_state`` and ``network`` (the trained
        :class:`~portanet.Sequential`, still on its backend and device).
    """
    from . import layers
    from .losses import CrossEntropy
    from .network import Sequential
    from .optim import Adam

    features, classes, n, batch = 6, 4, 96, 32
    data_rng = host_rng(seed + 1)
    x = data_rng.standard_normal((n, features))
    y = (x @ data_rng.standard_normal((features, classes))).argmax(axis=1)
    net = Sequential(
        [
            layers.Dense(features, 24, activation="gelu"),
            layers.Dropout(0.2),
            layers.Dense(24, 16, activation="tanh"),
            layers.ELU(),
            layers.Dense(16, 16, activation="silu"),
            layers.Dense(16, classes, activation=None),
        ],
        backend=backend,
        device=device,
        dtype=dtype,
        seed=seed,
    )
    initial_state = net.state_dict()
    loss = CrossEntropy(label_smoothing=0.05)
    opt = Adam(lr=1e-2)
    values = []
    for _ in range(steps):
        idx = data_rng.choice(n, size=batch, replace=False)
        values.append(net.train_step(x[idx], y[idx], loss, opt))  # stays on the device
    return {
        "losses": [float(to_numpy(v)) for v in values],
        "state": net.state_dict(),
        "initial_state": initial_state,
        "network": net,
    }


def compare_runs(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Norm-relative differences of two :func:`train_reference_run` results.

    Returns ``{"losses": ..., "weights": ...}``: the per-step loss curves as one
    vector, and the worst final parameter array.
    """
    weights = max(norm_rel_diff(run["state"][k], reference["state"][k]) for k in reference["state"])
    return {"losses": norm_rel_diff(run["losses"], reference["losses"]), "weights": weights}
