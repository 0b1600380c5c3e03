"""Data-parallel training under ``mpiexec``: equal to one process, faults that stop every
rank, Ctrl-C on one rank, checkpoints written once, the CLI.

Each test launches ``tests/_mpi_worker.py`` under ``mpiexec -n 2`` (or ``-n 1``) in a
subprocess with ``OMP_NUM_THREADS=1`` and a timeout, so a hung collective fails the test
instead of stalling CI. Skipped where mpi4py or mpiexec is missing (the ``mpi`` extra;
``nox -s tests-mpi`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import portanet as pn
from portanet.testing import norm_rel_diff

pytest.importorskip("mpi4py")
pytest.importorskip("sklearn")
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
if MPIEXEC is None:
    pytest.skip("mpiexec is not on PATH (pip install mpich)", allow_module_level=True)

pytestmark = pytest.mark.slow  # every test launches mpiexec
WORKER = Path(__file__).resolve().parent / "_mpi_worker.py"
TIMEOUT = 240  # seconds for any one launch: a hang fails, it does not stall CI


def launch(cfg: dict, ranks: int | None, tmp_path: Path, timeout: float = TIMEOUT,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run the worker under ``mpiexec -n ranks`` (``ranks=None``: a plain process)."""
    cfg = {"out": str(tmp_path), **cfg}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "JAX_ENABLE_X64": "1",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), *sys.path])}
    command = [sys.executable, str(WORKER), json.dumps(cfg)]
    if ranks is not None:
        command = [MPIEXEC, "-n", str(ranks), *command]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def result(tmp_path: Path, rank: int = 0) -> dict:
    with np.load(tmp_path / f"rank{rank}.npz") as f:
        return {k: f[k] for k in f.files}


def params(res: dict) -> dict:
    return {k: v for k, v in res.items() if k.startswith("param/")}


def compare(a: dict, b: dict) -> float:
    return max(norm_rel_diff(a[k], b[k]) for k in params(b))


@pytest.fixture
def dirs(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    return one, two


# ------------------------------------------------------------------- equality ----


@pytest.mark.parametrize("cfg,rtol", [
    ({"dtype": "float64"}, 1e-12),
    ({"dtype": "float32"}, 1e-4),
    ({"dtype": "float64", "batch": 37}, 1e-12),  # an uneven split: 19 and 18 rows
    ({"dtype": "float64", "batch": 1797 // 2 + 1, "epochs": 2}, 1e-12),  # last batch of 1 row
    ({"dtype": "float64", "net": "dropout-bn"}, 1e-10),
    ({"dtype": "float64", "net": "cnn", "epochs": 1, "optimizer": "sgd"}, 1e-10),
], ids=["f64", "f32", "uneven", "empty-share", "dropout-bn", "cnn"])
def test_two_ranks_equal_one_process(cfg, rtol, dirs):
    one, two = dirs
    launch({**cfg, "distributed": False}, None, one)
    launch(cfg, 2, two)
    single, rank0, rank1 = result(one), result(two, 0), result(two, 1)
    for name, value in params(rank0).items():  # the ranks hold identical parameters
        np.testing.assert_array_equal(rank1[name], value, err_msg=name)
    assert compare(rank0, single) <= rtol
    np.testing.assert_allclose(rank0["loss"], single["loss"], rtol=max(rtol, 1e-12))
    np.testing.assert_allclose(rank0["accuracy"], single["accuracy"], rtol=1e-12)
    assert int(rank0["steps"]) == int(single["steps"])


@pytest.mark.parametrize("backend", ["torch", "jax", "array_api_strict"])
def test_other_backends_across_two_ranks(backend, dirs):
    pytest.importorskip({"array_api_strict": "array_api_strict"}.get(backend, backend))
    one, two = dirs
    cfg = {"dtype": "float64", "backend": backend, "epochs": 1}
    launch({**cfg, "distributed": False}, None, one)
    launch(cfg, 2, two)
    assert compare(result(two), result(one)) <= 1e-12


def test_one_rank_under_mpiexec_equals_a_plain_run_bitwise(dirs):
    one, two = dirs
    launch({"net": "dropout-bn", "distributed": False}, None, one)
    launch({"net": "dropout-bn"}, 1, two)
    for name, value in params(result(one)).items():
        np.testing.assert_array_equal(result(two)[name], value, err_msg=name)


# --------------------------------------------------------------------- faults ----


@pytest.mark.parametrize("fault", ["raise", "bad_data", "exit", "kill"])
def test_a_failing_rank_stops_every_rank_within_60_seconds(fault, tmp_path):
    start = time.monotonic()
    out = launch({"fault": fault, "epochs": 50}, 2, tmp_path, timeout=120, check=False)
    elapsed = time.monotonic() - start
    assert out.returncode != 0
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (tmp_path / "rank0.npz").exists()  # rank 0 did not finish training alone
    if fault in ("raise", "bad_data"):
        assert out.stderr.count("Traceback") == 1, out.stderr  # printed once, by that rank
        assert "rank 1 of 2 raised" in out.stderr
        message = "injected failure" if fault == "raise" else "expects a batch of shape"
        assert message in out.stderr


def test_ctrl_c_on_one_rank_stops_both_at_a_step_boundary(tmp_path):
    launch({"fault": "sigint", "epochs": 5}, 2, tmp_path)
    rank0, rank1 = result(tmp_path, 0), result(tmp_path, 1)
    assert bool(rank0["interrupted"]) and bool(rank1["interrupted"])
    assert int(rank0["steps"]) == int(rank1["steps"]) == 3  # steps 0..2, then the stop
    for name, value in params(rank0).items():
        np.testing.assert_array_equal(rank1[name], value, err_msg=name)


# ------------------------------------------------- checkpoints, resume, output ----


def test_checkpoints_are_written_once_and_resume_under_mpiexec(tmp_path):
    ckpt = tmp_path / "ckpt-{epoch}.npz"
    half = tmp_path / "half"
    half.mkdir()
    launch({"epochs": 2, "checkpoint": str(ckpt), "save": str(tmp_path / "m.npz")}, 2, half)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.npz")) == ["ckpt-1.npz", "ckpt-2.npz"]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    launch({"epochs": 3, "resume": str(tmp_path / "m.npz")}, 2, resumed)
    straight = tmp_path / "straight"
    straight.mkdir()
    launch({"epochs": 3}, 2, straight)
    for name, value in params(result(straight)).items():
        np.testing.assert_array_equal(result(resumed)[name], value, err_msg=name)


def test_only_rank_0_prints_progress(tmp_path):
    out = launch({"epochs": 1, "verbose": 2}, 2, tmp_path)
    assert out.stdout.count("epoch 1/1") == 1


def test_the_cli_trains_across_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "portanet", "train", "--dataset", "digits", "--epochs", "3",
            "--verbose", "0", "--dtype", "float64"]
    two = subprocess.run([MPIEXEC, "-n", "2", *argv, "--distributed", "--save",
                          str(tmp_path / "m.npz")], env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("test accuracy") == 1 and "2 ranks" in two.stdout
    one = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)

    def accuracy(out):
        return float(out.stdout.split("test accuracy: ")[1].split()[0])

    assert accuracy(two) == accuracy(one)  # the same training, split over two ranks
    assert pn.io.read_metadata(tmp_path / "m.npz")["epoch"] == 3


def test_init_without_mpiexec_is_a_one_rank_world():
    comm = pn.distributed.init()
    assert (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    x = np.arange(4.0)
    assert comm.allreduce(x) is x
    parallel = pn.distributed.DataParallel(pn.distributed.Communicator())
    assert parallel.rows(10, 15) == (10, 15)
    with pytest.raises(ValueError, match="backend must be one of"):
        pn.distributed.init("gloo")


def test_rows_split_a_batch_contiguously():
    class Fake(pn.distributed.Communicator):
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

    shares = [pn.distributed.DataParallel(Fake(r, 3)).rows(100, 111) for r in range(3)]
    assert shares == [(100, 104), (104, 108), (108, 111)]
    shares = [pn.distributed.DataParallel(Fake(r, 3)).rows(0, 2) for r in range(3)]
    assert shares == [(0, 1), (1, 2), (2, 2)]  # the last rank holds no row, and still joins
