"""The one backend fixture: ``xp`` yields ``(xp, device)`` for the session's backend.

``PORTANET_TEST_BACKEND`` selects the backend (default ``numpy``). For
array-api-strict the fixture runs every test on ``CPU_DEVICE``, on
``device1`` (which catches arrays created on the wrong device) and on
``no_float64`` (float32 only). A missing backend or GPU skips cleanly.
"""

from __future__ import annotations

import os

# scikit-learn's array-API dispatch (tests/test_sklearn.py) needs scipy's array-API
# mode, which scipy reads once, when it is first imported: before anything imports it.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from portanet.backend import has_float64  # noqa: E402

# The same examples on every run: CI must not pass or fail by the luck of a draw.
settings.register_profile("portanet", derandomize=True, deadline=None)
settings.load_profile("portanet")

BACKEND = os.environ.get("PORTANET_TEST_BACKEND", "numpy")

STRICT_DEVICES = ("CPU_DEVICE", "device1", "no_float64")

if BACKEND == "jax":
    os.environ.setdefault("JAX_ENABLE_X64", "1")


def _params() -> list:
    if BACKEND == "array_api_strict":
        return [pytest.param(d, id=f"strict-{d}") for d in STRICT_DEVICES]
    return [pytest.param(None, id=BACKEND)]


def _load(device_name: str | None):
    import portanet.backend as B

    try:
        xp = B.get_namespace(BACKEND)
    except ImportError as exc:
        pytest.skip(f"backend {BACKEND!r} is not installed: {exc}")
    except RuntimeError as exc:  # cupy without a GPU
        pytest.skip(str(exc))
    if BACKEND == "array_api_strict":
        import array_api_strict

        # Hold portanet to the 2024.12 standard named in DESIGN.md.
        array_api_strict.set_array_api_strict_flags(api_version="2024.12")
        device = array_api_strict.Device(device_name)
    elif BACKEND == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        device = B.resolve_device(xp, None)
    else:
        device = B.resolve_device(xp, None)
    return xp, device


@pytest.fixture(params=_params())
def xp(request):
    """``(xp, device)`` of the session's backend."""
    return _load(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request, xp):
    """A floating dtype name; float64 is skipped where the device lacks it."""
    if request.param == "float64" and not has_float64(*xp):
        pytest.skip("this device has no float64")
    return request.param


@pytest.fixture
def float64(xp):
    """Skip on devices without float64 (array-api-strict's no_float64)."""
    if not has_float64(*xp):
        pytest.skip("this device has no float64")
    return "float64"
