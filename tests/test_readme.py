"""The README's Python snippets run as written (on the session's CPU backend)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BACKEND = os.environ.get("PORTANET_TEST_BACKEND", "numpy")


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.skipif(BACKEND == "cupy", reason="the quickstart is checked on CPU backends")
def test_quickstart_trains_the_and_gate(tmp_path):
    code = _blocks()[0].replace('backend="numpy"', f'backend="{BACKEND}"')
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    rows = re.findall(r"^(\d) AND (\d) is (-?[\d.]+)$", out, flags=re.M)
    assert len(rows) == 4
    for i, j, value in rows:
        assert abs(float(value) - (int(i) & int(j))) < 0.05


def test_fit_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    code = _blocks()[1].replace("epochs=40", "epochs=2")
    namespace: dict = {}
    exec(compile("import portanet as pn\n" + code, "README fit snippet", "exec"), namespace)
    assert len(namespace["history"].history["val_accuracy"]) == 2
    assert (tmp_path / "history.png").exists()


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer. Maximum iterations")
def test_sklearn_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    code = next(block for block in _blocks() if "portanet.sklearn" in block)
    namespace: dict = {}
    exec(compile(code, "README scikit-learn snippet", "exec"), namespace)
    assert namespace["model"].score(namespace["x_te"], namespace["y_te"]) > 0.95
    assert (tmp_path / "digits_mlp.npz").exists()
