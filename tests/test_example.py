"""examples/and_gate.py: the notebook rebuilt meets its 0.05 bound on the session's backend."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from _util import require_session_backend

from portanet.demo import train_and_gate

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKEND = os.environ.get("PORTANET_TEST_BACKEND", "numpy")


def test_and_gate_on_the_session_backend(xp):
    xs, device = xp
    predictions = train_and_gate(xs, device, progress=False)
    for value, target in zip(predictions, [0, 0, 0, 1]):
        assert abs(value - target) < 0.05


@pytest.mark.slow
def test_example_script_prints_the_truth_table():
    require_session_backend()
    env = {**os.environ, "JAX_ENABLE_X64": "0"}  # under the CuPy stand-in, its PYTHONPATH too
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "and_gate.py"),
                          "--backend", BACKEND], capture_output=True, text=True, env=env,
                         check=True, timeout=300).stdout
    lines = out.strip().splitlines()
    assert [line.split(" is ")[0] for line in lines] == ["0 AND 0", "0 AND 1", "1 AND 0", "1 AND 1"]
    for line, target in zip(lines, [0, 0, 0, 1]):
        assert abs(float(line.split(" is ")[1]) - target) < 0.05
