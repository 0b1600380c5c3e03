"""The test matrix: one pytest session per backend, plus lint (and bench on demand).

``pip install nox && nox`` runs every test session and lint. The cupy session
skips, before installing anything, where no CUDA GPU is found.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

nox.options.sessions = [
    "tests-numpy",
    "tests-array_api_strict",
    "tests-torch",
    "tests-jax",
    "tests-cupy",
    "lint",
]
nox.options.reuse_existing_virtualenvs = True

# torch>=2.1 is what portanet needs. CI pins the CPU wheel that lies on its disk,
# so that the matrix does not pull a multi-GB CUDA build; override it at will.
TORCH_SPEC = os.environ.get("PORTANET_TORCH_SPEC", "torch==2.13.0")
CUPY_EXTRA = os.environ.get("PORTANET_CUPY_EXTRA", "cuda12")


def _pytest(session: nox.Session, backend: str, *extras: str) -> None:
    session.install("-e", f".[{','.join(('test', 'datasets', 'sklearn', 'plot') + extras)}]")
    # One BLAS/OpenMP thread: on a small shared CI machine torch's thread pool and
    # OpenBLAS slow each other down badly, and the tests time nothing.
    env = {"PORTANET_TEST_BACKEND": backend, "JAX_ENABLE_X64": "1", "OMP_NUM_THREADS": "1"}
    # Exit code 5 means pytest collected nothing: say so rather than fail, so a
    # backend whose tests all skip is visible without breaking the matrix.
    code = session.run("pytest", "-q", *session.posargs, env=env, success_codes=[0, 5])
    if code == 5:
        session.warn(f"pytest collected no tests for backend {backend!r}")


@nox.session(name="tests-numpy")
def tests_numpy(session: nox.Session) -> None:
    """Also installs pandas, for scikit-learn's DataFrame checks and feature_names_in_."""
    session.install("pandas")
    _pytest(session, "numpy")


@nox.session(name="tests-array_api_strict")
def tests_array_api_strict(session: nox.Session) -> None:
    """Runs every test on strict's CPU_DEVICE, device1 and no_float64 devices."""
    _pytest(session, "array_api_strict", "strict")


@nox.session(name="tests-torch")
def tests_torch(session: nox.Session) -> None:
    """Also runs the torch autograd and torch.optim oracle tests."""
    session.install(TORCH_SPEC)
    _pytest(session, "torch", "torch")


@nox.session(name="tests-jax")
def tests_jax(session: nox.Session) -> None:
    _pytest(session, "jax", "jax")


def _cuda_gpu_found() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


@nox.session(name="tests-cupy")
def tests_cupy(session: nox.Session) -> None:
    """Skips (before installing anything) where no CUDA GPU is found."""
    if not _cuda_gpu_found():
        session.skip("no CUDA GPU found (nvidia-smi -L lists none): skipping the cupy tests")
    # Torch too, for the cupy <-> torch interop and torch-CUDA reference checks.
    session.install(TORCH_SPEC)
    _pytest(session, "cupy", CUPY_EXTRA, "torch")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "portanet", "tests", "bench", "examples", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """The CPU subset of the training-step benchmark; on demand only (``nox -s bench``).

    Runs ``bench/train_step.py --quick`` (a few minutes on 2 cores) and writes
    ``bench/results/<machine-tag>/quick/``. Arguments after ``--`` go to the
    script, e.g. ``nox -s bench -- --frameworks portanet-numpy,torch``.
    """
    session.install(TORCH_SPEC)
    session.install("-e", ".[torch,jax,strict,plot]", "threadpoolctl")
    session.run("python", "bench/train_step.py", "--quick", *session.posargs)
