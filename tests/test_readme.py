"""The README's Python snippets run as written: every block, in order, in one namespace.

They run in a fresh interpreter (a snippet registers names, which must not leak into
other tests), in a temporary folder, with the session's backend as the default backend
(``PORTANET_BACKEND``: CuPy where a GPU, or the CuPy stand-in, is there; the blocks name it
only in comments).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
from _util import require_session_backend

pytestmark = pytest.mark.slow  # a fresh interpreter runs the README
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BACKEND = os.environ.get("PORTANET_TEST_BACKEND", "numpy")


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_the_blocks_it_should():
    code = blocks()
    assert len(code) >= 5
    assert 'backend="cupy"' not in "".join(code).replace('# or backend="cupy"', "")


@pytest.fixture(scope="module")
def run_all(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    require_session_backend()  # the blocks run on it as the default backend (a subprocess)
    folder = tmp_path_factory.mktemp("readme")
    script = folder / "readme.py"
    script.write_text("\n\n".join(blocks()))
    env = {**os.environ, "PORTANET_BACKEND": BACKEND, "JAX_ENABLE_X64": "1",
           "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=folder, env=env, timeout=900)
    assert out.returncode == 0, f"the README's code failed:\n{out.stderr[-3000:]}"
    return folder, out.stdout


def test_every_python_block_runs_in_order(run_all):
    folder, out = run_all
    assert (folder / "history.png").exists() and (folder / "model.npz").exists()
    assert "total parameters:" in out  # the CNN's summary


def test_the_quickstart_prints_the_and_table(run_all):
    _, out = run_all
    rows = re.findall(r"^(\d) AND (\d) is (-?[\d.]+)$", out, flags=re.M)
    assert len(rows) == 4
    for i, j, value in rows:
        assert abs(float(value) - (int(i) & int(j))) < 0.05
        assert not value.startswith("-")  # no "-0.00000"
