"""Backend agreement: 100 seeded training steps on the session's backend against NumPy.

The run itself is :func:`portanet.testing.train_reference_run` (Dense, Dropout,
several activations, cross-entropy, Adam), which ``bench/agreement.py`` uses
too. Per-step losses and final weights must match the NumPy run to
``AGREEMENT_RTOL[dtype]`` (norm-relative). On JAX, whose arrays are immutable,
this runs the optimizer's rebinding path and Dropout's fresh-array path.
"""

from __future__ import annotations

import functools
import math

import array_api_compat
import pytest

from portanet.testing import AGREEMENT_RTOL, compare_runs, train_reference_run

STEPS = 100


@functools.cache
def numpy_run(dtype: str) -> dict:
    return train_reference_run("numpy", None, dtype, steps=STEPS, seed=0)


def test_training_agrees_with_numpy(xp, dtype):
    xp_, device = xp
    run = train_reference_run(xp_, device, dtype, steps=STEPS, seed=0)
    reference = numpy_run(dtype)

    net = run["network"]
    for name, p in net.parameters().items():  # trained where it was asked to train
        assert array_api_compat.array_namespace(p) == array_api_compat.array_namespace(
            xp_.zeros(1, device=device)
        ), name
        assert array_api_compat.device(p) == device, name
        assert p.dtype == getattr(xp_, dtype), name

    assert len(run["losses"]) == STEPS and all(math.isfinite(v) for v in run["losses"])
    assert run["losses"][-1] < 0.5 * run["losses"][0]  # it learned something
    changed = max(
        float(abs(run["state"][k] - run["initial_state"][k]).max()) for k in run["state"]
    )
    assert changed > 0.1  # the parameters really moved (rebinding on JAX included)

    diffs = compare_runs(run, reference)
    tol = AGREEMENT_RTOL[dtype]
    assert diffs["losses"] <= tol, f"per-step losses differ from NumPy's by {diffs['losses']:.3g}"
    assert diffs["weights"] <= tol, f"final weights differ from NumPy's by {diffs['weights']:.3g}"


def test_reference_run_is_deterministic():
    a = train_reference_run("numpy", None, "float64", steps=5, seed=3)
    b = train_reference_run("numpy", None, "float64", steps=5, seed=3)
    c = train_reference_run("numpy", None, "float64", steps=5, seed=4)
    assert compare_runs(a, b) == {"losses": 0.0, "weights": 0.0}
    assert compare_runs(a, c)["weights"] > 1e-3  # the seed matters


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_run_detects_a_different_trajectory(dtype):
    """The comparison is sharp: weights moved by 1e-3 in one array fail it."""
    reference = numpy_run(dtype)
    other = train_reference_run("numpy", None, dtype, steps=STEPS, seed=0)
    assert compare_runs(other, reference) == {"losses": 0.0, "weights": 0.0}
    net = other["network"]
    p = net.parameters()["0.weight"]
    net.parameters()["0.weight"] = p + 1e-3
    other["state"] = net.state_dict()
    assert compare_runs(other, reference)["weights"] > AGREEMENT_RTOL[dtype]
