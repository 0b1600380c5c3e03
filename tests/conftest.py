"""The one backend fixture: ``xp`` yields ``(xp, device)`` for the session's backend.

``PORTANET_TEST_BACKEND`` selects the backend (default ``numpy``). For
array-api-strict the fixture runs every test on ``CPU_DEVICE``, on
``device1`` (which catches arrays created on the wrong device) and on
``no_float64`` (float32 only).

A missing backend or GPU skips cleanly, unless ``PORTANET_TEST_REQUIRE_BACKEND=1``:
then the session stops before the first test, with the backend's error (for CuPy,
the CUDA error) in one line. ``bench/gpu_check.sh`` sets it, so that a broken GPU
cannot pass as a run of skips.

``PORTANET_TEST_CUPY=emulated`` puts the CuPy stand-in (``tests/_fake_cupy``) on the
path, for this process and its children, so that ``PORTANET_TEST_BACKEND=cupy``
runs without a GPU (nox session ``tests-cupy-emulated``). It refuses to run where a
real CuPy is installed: the stand-in never shadows it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path

# scikit-learn's array-API dispatch (tests/test_sklearn.py) needs scipy's array-API
# mode, which scipy reads once, when it is first imported: before anything imports it.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402
from _util import BACKEND, EMULATED_CUPY, REQUIRE_BACKEND, skip_or_fail  # noqa: E402
from hypothesis import settings  # noqa: E402

from portanet.backend import has_float64, to_numpy  # noqa: E402

# The same examples on every run: CI must not pass or fail by the luck of a draw.
settings.register_profile("portanet", derandomize=True, deadline=None)
settings.load_profile("portanet")

STRICT_DEVICES = ("CPU_DEVICE", "device1", "no_float64")
FAKE_CUPY_DIR = Path(__file__).resolve().parent / "_fake_cupy"

if BACKEND == "jax":
    os.environ.setdefault("JAX_ENABLE_X64", "1")


def _use_emulated_cupy() -> None:
    """Put the CuPy stand-in first on the path, here and for child processes."""
    loaded = sys.modules.get("cupy")
    if loaded is not None and not getattr(loaded, "__portanet_emulated__", False):
        raise pytest.UsageError(
            f"PORTANET_TEST_CUPY=emulated, but the real CuPy is imported already ({loaded.__file__})")
    spec = importlib.util.find_spec("cupy") if loaded is None else None
    if spec is not None and FAKE_CUPY_DIR not in Path(spec.origin or "").resolve().parents:
        raise pytest.UsageError(
            f"PORTANET_TEST_CUPY=emulated, but a real CuPy is installed ({spec.origin}): the "
            "stand-in never shadows it. Run the real session (nox -s tests-cupy), or emulate "
            "in an environment without CuPy (nox -s tests-cupy-emulated)")
    if str(FAKE_CUPY_DIR) not in sys.path:
        sys.path.insert(0, str(FAKE_CUPY_DIR))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(FAKE_CUPY_DIR) not in paths:  # subprocesses (the CLI, the examples) see it too
        os.environ["PYTHONPATH"] = os.pathsep.join([str(FAKE_CUPY_DIR), *filter(None, paths)])


def _thread_lock_for_tqdm() -> None:
    """tqdm's default write lock holds a multiprocessing lock, which forked processes
    share: one killed while it draws a bar (a mutmut worker past its time limit) would
    leave every later bar in every later fork waiting forever. A thread lock is copied
    by each fork instead."""
    try:
        import tqdm
    except ImportError:
        return
    tqdm.tqdm.set_lock(threading.RLock())


def pytest_configure(config: pytest.Config) -> None:
    _thread_lock_for_tqdm()
    if EMULATED_CUPY:
        _use_emulated_cupy()
    if REQUIRE_BACKEND:  # fail now, in one line, rather than skip every test
        try:
            xp, device = _load(STRICT_DEVICES[0] if BACKEND == "array_api_strict" else None)
        except pytest.fail.Exception as exc:
            raise pytest.UsageError(str(exc)) from None
        except ValueError as exc:  # an unknown backend name
            raise pytest.UsageError(f"PORTANET_TEST_BACKEND={BACKEND!r}: {exc}") from None
        try:  # the device computes: a sum that comes back to the host
            total = float(to_numpy(xp.sum(xp.ones(4, dtype=xp.float32, device=device))))
        except Exception as exc:
            raise pytest.UsageError(
                f"PORTANET_TEST_REQUIRE_BACKEND=1: backend {BACKEND!r} on {device!r} cannot "
                f"compute: {type(exc).__name__}: {exc}".replace("\n", " ")) from None
        if total != 4.0:
            raise pytest.UsageError(f"PORTANET_TEST_REQUIRE_BACKEND=1: backend {BACKEND!r} on "
                                    f"{device!r} summed four ones to {total}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under mutmut the package's source holds every mutant's function side by side, behind
    # trampolines: tests of the source's shape (import order, function length) read that,
    # not portanet, so they step aside. Behaviour tests run as always.
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    skip = pytest.mark.skip(reason="reads portanet's source, which mutmut rewrote")
    for item in items:
        if item.get_closest_marker("reads_source"):
            item.add_marker(skip)


def _params() -> list:
    if BACKEND == "array_api_strict":
        return [pytest.param(d, id=f"strict-{d}") for d in STRICT_DEVICES]
    return [pytest.param(None, id=BACKEND)]


def _load(device_name: str | None):
    import portanet.backend as B

    try:
        xp = B.get_namespace(BACKEND)
    except ImportError as exc:
        skip_or_fail(str(exc))  # "backend ... is not installed; install it with ..."
    except RuntimeError as exc:  # cupy without a GPU or a working driver: the CUDA error
        skip_or_fail(str(exc))
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
