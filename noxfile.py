"""The test matrix: one pytest session per backend, plus lint (and bench on demand).

``pip install nox && nox`` runs every test session and lint. The cupy session
skips, before installing anything, where no CUDA GPU is found (and fails instead
under ``PORTANET_TEST_REQUIRE_BACKEND=1``); ``tests-cupy-emulated`` runs the cupy
backend's tests on the CuPy stand-in of ``tests/_fake_cupy``, everywhere.
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
    "tests-cupy-emulated",
    "tests-mpi",
    "lint",
]
nox.options.reuse_existing_virtualenvs = True

# torch>=2.1 is what portanet needs. CI pins the CPU wheel that lies on its disk,
# so that the matrix does not pull a multi-GB CUDA build; override it at will.
TORCH_SPEC = os.environ.get("PORTANET_TORCH_SPEC", "torch==2.13.0")
# cupy-cuda13x pairs with current NVIDIA drivers (R580 and newer); set
# PORTANET_CUPY_EXTRA=cuda12 where the driver is older (R525 and newer).
CUPY_EXTRA = os.environ.get("PORTANET_CUPY_EXTRA", "cuda13")
REQUIRE_BACKEND = os.environ.get("PORTANET_TEST_REQUIRE_BACKEND", "") not in ("", "0")


def _pytest(session: nox.Session, backend: str, *extras: str, env: dict | None = None) -> None:
    session.install("-e", f".[{','.join(('test', 'datasets', 'sklearn', 'plot') + extras)}]")
    # One BLAS/OpenMP thread: on a small shared CI machine torch's thread pool and
    # OpenBLAS slow each other down badly, and the tests time nothing.
    env = {"PORTANET_TEST_BACKEND": backend, "JAX_ENABLE_X64": "1", "OMP_NUM_THREADS": "1",
           **(env or {})}
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
    """The real CuPy on a CUDA GPU. Skips (before installing anything) where no GPU is
    found, or fails there under ``PORTANET_TEST_REQUIRE_BACKEND=1``, which pytest then
    also sees: a missing or broken GPU fails the session instead of skipping its tests."""
    if not _cuda_gpu_found():
        message = "no CUDA GPU found (nvidia-smi -L lists none)"
        if REQUIRE_BACKEND:
            session.error(f"PORTANET_TEST_REQUIRE_BACKEND=1: {message}")
        session.skip(f"{message}: skipping the cupy tests")
    # Torch too, for the cupy <-> torch interop and torch-CUDA reference checks.
    session.install(TORCH_SPEC)
    _pytest(session, "cupy", CUPY_EXTRA, "torch")


@nox.session(name="tests-cupy-emulated")
def tests_cupy_emulated(session: nox.Session) -> None:
    """The whole suite on the cupy backend, run on the CuPy stand-in (tests/_fake_cupy).

    CuPy is not installed: ``PORTANET_TEST_CUPY=emulated`` puts a NumPy-backed ``cupy``
    module on the path that keeps CuPy's rules at the host boundary (and the tests
    refuse to run where a real CuPy is installed).

    What it proves: host-boundary and synchronization discipline (no implicit
    conversion, no host array in a device operation, no host read, boolean mask or
    data-dependent shape inside ``train_step`` under ``cupyx.allow_synchronize(False)``),
    and that the CuPy code paths of portanet, array-api-compat and array-api-extra run.
    What it does not: GPU arithmetic (the numbers are NumPy's), kernels, device memory,
    streams and asynchrony, several GPUs, or speed. Tests that need real CUDA (torch
    CUDA tensors, DLPack between libraries on the device) skip, saying so.
    """
    # torch CPU tensors and JAX arrays into CuPy networks: the host path, and the
    # interop tests that need those libraries, so that only real-CUDA tests skip.
    session.install(TORCH_SPEC)
    _pytest(session, "cupy", "torch", "jax", env={"PORTANET_TEST_CUPY": "emulated"})


@nox.session(name="tests-mpi")
def tests_mpi(session: nox.Session) -> None:
    """Data-parallel training under ``mpiexec -n 2`` (and ``-n 1``), against one process.

    Installs the ``mpi`` extra (mpi4py and the MPICH wheel, whose ``mpiexec`` runs as
    root without flags), torch and array-api-strict for their MPI paths; each launch has
    a timeout, so a hung collective fails a test instead of stalling CI.
    """
    session.install(TORCH_SPEC)
    session.install("-e", ".[test,datasets,mpi,strict,torch]")
    session.run("pytest", "-q", "tests/test_distributed.py", *session.posargs,
                env={"OMP_NUM_THREADS": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "portanet", "tests", "bench", "examples", "noxfile.py")


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing on demand: ``nox -s mutation`` (hours on 2 cores; see README).

    mutmut (configured in pyproject.toml's ``[tool.mutmut]``) plants one change at a
    time in the math, training and checkpoint modules and runs, on the numpy backend
    without torch (what ``tests-numpy`` sees), the tests that execute the mutated
    function, fastest first, until one fails. Then ``.ci/mutation_report.py`` prints the
    score, leaving out the mutants triaged as equivalent in tests/mutation_triage/,
    and lists every survivor not triaged yet (exit status 1 if any).

    ``-- resume`` continues the last run (mutmut checks again only the mutants not yet
    checked and those of changed functions); ``-- report`` prints the report of the
    last run; other arguments go to ``mutmut run`` (e.g. ``-- --max-children 1``).
    """
    session.install("-e", ".[test,datasets,plot]", "mutmut==3.8.1")
    args = [a for a in session.posargs if a not in ("resume", "report")]
    if "report" not in session.posargs:
        if "resume" not in session.posargs:
            shutil.rmtree("mutants", ignore_errors=True)  # a fresh run, not mutmut's cache
        if not any(a.startswith("--max-children") for a in args):
            args = ["--max-children", str(os.cpu_count() or 2), *args]
        # mutmut forks its workers from a process whose joblib pool (a scikit-learn test
        # with n_jobs=2) they would wait on forever: run joblib's jobs in-process instead.
        session.run("mutmut", "run", *args,
                    env={"OMP_NUM_THREADS": "1", "PORTANET_TEST_BACKEND": "numpy",
                         "JOBLIB_MULTIPROCESSING": "0"})
    session.run("python", ".ci/mutation_report.py")  # fails while survivors are untriaged


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
