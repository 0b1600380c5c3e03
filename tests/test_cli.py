"""The ``portanet`` command: demo, train, evaluate, backends, and one-line user errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from portanet.cli import main

BACKEND = os.environ.get("PORTANET_TEST_BACKEND", "numpy")
needs_sklearn = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("sklearn"), reason="needs the datasets extra"
)


def _truth_table(text: str) -> dict[tuple[int, int], float]:
    rows = re.findall(r"^(\d) AND (\d) is (-?[\d.]+)$", text, flags=re.M)
    return {(int(i), int(j)): float(v) for i, j, v in rows}


def test_demo_prints_the_truth_table_within_005(capsys):
    assert main(["demo", "--backend", "numpy"]) == 0
    table = _truth_table(capsys.readouterr().out)
    assert set(table) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for (i, j), value in table.items():
        assert abs(value - (i & j)) < 0.05


@needs_sklearn
@pytest.mark.slow
def test_train_digits_beats_97_percent_and_sklearn(capsys, tmp_path):
    model, plot = tmp_path / "model.npz", tmp_path / "history.png"
    assert main(["train", "--dataset", "digits", "--verbose", "0", "--save", str(model),
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))
    assert accuracy >= 0.97
    assert model.exists() and plot.read_bytes()[:4] == b"\x89PNG"

    # the same split and hidden sizes for scikit-learn's MLP
    from sklearn.neural_network import MLPClassifier

    from portanet.cli import load_dataset

    x_tr, y_tr, x_te, y_te = load_dataset("digits", 0)
    baseline = MLPClassifier(hidden_layer_sizes=(128, 64), random_state=0, max_iter=500)
    assert accuracy >= baseline.fit(x_tr, y_tr).score(x_te, y_te)

    assert main(["evaluate", str(model), "--dataset", "digits"]) == 0
    again = float(re.search(r"test accuracy: ([\d.]+)", capsys.readouterr().out).group(1))
    assert again == accuracy


def test_backends_table_with_numpy(capsys):
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["backend", "installed", "version", "devices", "GPU"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["numpy", "cupy", "torch", "jax", "array_api_strict"]
    assert lines[1].split()[1] == "yes"


@pytest.mark.slow
def test_backends_runs_with_only_numpy_installed(tmp_path):
    # Hide every optional backend from a fresh interpreter.
    hide = tmp_path / "sitecustomize.py"
    hide.write_text(
        "import sys\n"
        "for m in ('cupy', 'torch', 'jax', 'array_api_strict'):\n"
        "    sys.modules[m] = None\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    out = subprocess.run([sys.executable, "-m", "portanet", "backends"], env=env,
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows == {"numpy": "yes", "cupy": "no", "torch": "no", "jax": "no",
                    "array_api_strict": "no"}


@pytest.mark.parametrize("argv,match", [
    (["train", "--lr", "abc"], r"--lr: expected a number > 0, got 'abc' \(see portanet train "
                               r"--help\)$"),
    (["train", "--hidden", "12,x"], "--hidden: expected positive sizes like 128,64"),
    (["train", "--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["train", "--dropout", "1.5"], r"--dropout: expected a number in \[0, 1\), got '1.5'"),
    (["train", "--dropout", "abc"], r"--dropout: expected a number in \[0, 1\), got 'abc'"),
    (["train", "--epochs", "0"], "--epochs: expected an integer > 0, got '0'"),
    (["train", "--epoch", "3"], r"unrecognized arguments: --epoch 3 \(see portanet train"),
    (["train", "--backend", "tensorflow", "--dataset", "xor"], "unknown backend 'tensorflow'"),
    (["evaluate", "missing.npz"], "missing.npz"),
    (["frobnicate"], r"invalid choice.*\(see portanet --help\)"),
])
def test_user_mistakes_print_one_line_and_exit_2(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert re.search(match, err)


def test_a_foreign_file_is_a_one_line_error(capsys, tmp_path):
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bogus)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bogus.npz" in err


def test_missing_extra_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["train", "--dataset", "digits", "--verbose", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and 'pip install "portanet[datasets]"' in err


@pytest.mark.slow
def test_python_dash_m_and_console_script_entry():
    out = subprocess.run([sys.executable, "-m", "portanet", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("portanet ")
