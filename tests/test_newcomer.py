"""What a new user met, each made a test: the command line's split, Ctrl-C, messages and
help, progress output off a terminal, offline MNIST, the examples and the bench scripts."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import portanet as pn
from portanet.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
needs_sklearn = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("sklearn"), reason="needs the datasets extra")


def _accuracy(text: str) -> float:
    return float(re.search(r"test accuracy: ([\d.]+)", text).group(1))


# ---------------------------------------------------------- the data split ----


@needs_sklearn
def test_evaluate_reuses_the_recorded_split_and_refuses_another(capsys, tmp_path):
    model = tmp_path / "m.npz"
    assert main(["train", "--dataset", "digits", "--epochs", "3", "--verbose", "0",
                 "--save", str(model), "--seed", "0"]) == 0
    trained = _accuracy(capsys.readouterr().out)
    info = pn.io.read_metadata(model)["info"]
    assert info == {"dataset": "digits", "split_seed": 0, "test_size": 0.2,
                    "validation_split": 0.1, "model": "mlp", "label_smoothing": 0.1,
                    "interrupted": False, "epochs": 3}
    assert main(["evaluate", str(model)]) == 0  # the dataset and seed come from the file
    out = capsys.readouterr().out
    assert _accuracy(out) == trained and "360 test samples of digits, split seed 0" in out
    assert main(["evaluate", str(model), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "trained on the split of seed 0; --seed 1 would test on rows it trained on" in err
    assert main(["evaluate", str(model), "--dataset", "spirals"]) == 2
    assert "was trained on 'digits', not 'spirals'" in capsys.readouterr().err


@needs_sklearn
def test_train_validates_on_training_rows_and_tests_once(monkeypatch, capsys):
    seen = {}
    real_fit, real_evaluate = pn.Sequential.fit, pn.Sequential.evaluate

    def fit(self, x, y, **kwargs):
        seen["fit"] = (len(x), kwargs.get("validation_data"), kwargs["validation_split"])
        return real_fit(self, x, y, **kwargs)

    def evaluate(self, x, y, **kwargs):
        seen.setdefault("evaluate", []).append(len(x))
        return real_evaluate(self, x, y, **kwargs)

    monkeypatch.setattr(pn.Sequential, "fit", fit)
    monkeypatch.setattr(pn.Sequential, "evaluate", evaluate)
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--verbose", "0"]) == 0
    assert seen["fit"] == (1437, None, 0.1)  # validation: the last 10% of the training rows
    assert seen["evaluate"] == [360]  # the test rows, once, at the end
    out = capsys.readouterr().out
    assert "test loss" in out and "(with label smoothing 0.1)" in out  # one definition, named


def _sigint_as_in_a_terminal():
    """Ctrl-C's default disposition in the child, even where this process inherited SIGINT
    ignored (under nohup or in a background job), which the child would keep."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@needs_sklearn
@pytest.mark.slow
def test_ctrl_c_in_train_says_where_saves_only_if_asked_and_exits_130(tmp_path):
    def run(extra):
        proc = subprocess.Popen([sys.executable, "-m", "portanet", "train", "--dataset", "digits",
                                 "--epochs", "400", "--verbose", "2", *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=tmp_path, preexec_fn=_sigint_as_in_a_terminal)
        proc.stdout.readline()  # the header: training has started
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err

    code, out, err = run([])
    assert code == 130
    assert re.search(r"interrupted in epoch (\d+) of 400 \(\d+ completed\); no test result", err)
    assert "test accuracy" not in out and not list(tmp_path.iterdir())
    code, out, err = run(["--save", str(tmp_path / "m.npz")])
    assert code == 130
    done = int(re.search(r"an interrupted run: (\d+) of 400 epochs", err).group(1))
    info = pn.io.read_metadata(tmp_path / "m.npz")
    assert info["info"]["interrupted"] is True and info["epoch"] == done


# ------------------------------------------------------- messages and help ----


def _subparser(name):
    return next(a for a in build_parser()._actions if a.dest == "command").choices[name]


@pytest.mark.parametrize("command", ["demo", "train", "evaluate"])
def test_every_option_is_described_with_its_default(command):
    sub = _subparser(command)
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no description"
    text = " ".join(sub.format_help().split())  # lines wrap where the terminal ends
    assert "(default: 0.003)" in text or command != "train"
    assert "(default: 0.05)" in text or command != "train"


def test_bare_portanet_lists_the_commands(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    for command in ("demo", "train", "evaluate", "backends"):
        assert command in err


def test_a_wrong_backend_is_reported_before_the_data_loads(monkeypatch, capsys):
    import portanet.cli as cli

    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: pytest.fail("data loaded first"))
    assert main(["train", "--backend", "tensorflow"]) == 2
    assert "unknown backend 'tensorflow'" in capsys.readouterr().err


@needs_sklearn
def test_clip_norm_reaches_the_optimizer(tmp_path):
    model = tmp_path / "m.npz"
    assert main(["train", "--dataset", "xor", "--epochs", "1", "--verbose", "0",
                 "--clip-norm", "0.5", "--save", str(model)]) == 0
    assert pn.io.read_metadata(model)["optimizer"]["config"]["clip_norm"] == 0.5


def test_the_divergence_message_points_to_the_flags_that_exist(capsys):
    assert main(["train", "--dataset", "xor", "--epochs", "2", "--verbose", "0",
                 "--lr", "1e9", "--optimizer", "sgd", "--schedule", "constant"]) == 1
    err = capsys.readouterr().err.strip()
    assert "diverged" in err and "--clip-norm" in err and "\n" not in err


# --------------------------------------------------------- progress output ----


def test_off_a_terminal_the_progress_is_one_line_per_epoch(capsys):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)), rng.integers(0, 2, size=64)
    net = pn.Sequential([pn.Dense(3, 2)], seed=0)
    net.fit(x, y, loss="cross_entropy", optimizer="adam", epochs=3, batch_size=8, verbose=1,
            metrics=["accuracy"])
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", f"{e}/3"] for e in (1, 2, 3)]
    assert all("loss=" in line and "accuracy=" in line for line in lines)


def test_the_demo_bar_counts_every_step(monkeypatch):
    import tqdm.auto

    from portanet import demo

    shown = []

    class Recorder:
        def __init__(self, total, desc, disable):
            self.n = 0

        def set_description(self, text, refresh=True):
            shown.append(self.n)

        def update(self, k):
            self.n += k

        def close(self):
            shown.append(self.n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    net = pn.Sequential([pn.Dense(2, 4), pn.Dense(4, 1)], seed=0)
    demo._train(net, np.ones((4, 2)), np.ones((4, 1)), pn.SGD(0.1), 120, "SGD", True)
    assert shown == [0, 50, 100, 119, 120]  # not stuck at 0 until the end


def test_the_truth_table_never_prints_minus_zero(capsys):
    from portanet.demo import print_truth_table

    print_truth_table([-1e-7, 3e-7, -0.0, 0.99999])
    out = capsys.readouterr().out
    assert "-0.00000" not in out and out.count("0.00000") == 3


# ------------------------------------------------------------ offline MNIST ----


def test_offline_mnist_says_where_to_put_the_files_and_leaves_nothing(tmp_path):
    cache = tmp_path / "new" / "cache"
    with pytest.raises(OSError, match=r"put the four files .*train-images-idx3-ubyte.gz.* into "
                                      r".*cache by hand .*PORTANET_CACHE_DIR"):
        pn.datasets.mnist(cache, mirror="http://127.0.0.1:9/", timeout=2)
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------- examples, bench ----


@pytest.mark.parametrize("backend", ["tensorflow", "cupy"])
@pytest.mark.slow
def test_examples_report_a_missing_backend_in_one_line(backend):
    pytest.importorskip("numpy")
    if backend == "cupy":
        try:
            pn.get_namespace("cupy")
            pytest.skip("CuPy works here")
        except (ImportError, RuntimeError):
            pass
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "and_gate.py"), "--backend",
                          backend], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.slow
def test_agreement_writes_results_only_when_asked(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import agreement
    finally:
        sys.path.remove(str(ROOT / "bench"))
    numpy_only = [c for c in agreement.configurations() if c[0] == "numpy"]
    monkeypatch.setattr(agreement, "configurations", lambda gpu_only=False: numpy_only)
    assert agreement.main(["--steps", "2", "--out", str(tmp_path)]) == 0
    assert not list(tmp_path.iterdir())
    agreement.main(["--steps", "2", "--out", str(tmp_path), "--write"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agreement.json", "agreement.md"]
    assert json.loads((tmp_path / "agreement.json").read_text())["steps"] == 2
