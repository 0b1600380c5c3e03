"""Bugs an independent review found; each test failed before its fix."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
from _util import host, sigint_handler

import portanet as pn
from portanet.cli import main


def _big_net(backend="numpy"):
    # 300 x 300 weights take the blockwise update path on host backends.
    return pn.Sequential([pn.Dense(300, 300, activation="tanh"), pn.Dense(300, 2)],
                         backend=backend, seed=0)


def _data(n=8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 300)), rng.integers(0, 2, size=n)


@pytest.mark.slow
def test_moving_from_jax_gives_writeable_parameters_and_state():
    pytest.importorskip("jax")
    x, y = _data()
    net, opt = _big_net("jax"), pn.Adam()
    net.train_step(x, y, "cross_entropy", opt)
    net.to("numpy")
    net.train_step(x, y, "cross_entropy", opt)  # was: ValueError: output array is read-only
    assert opt.step_count == 2


def test_parameters_never_alias_the_callers_torch_tensors():
    torch = pytest.importorskip("torch")
    x, y = _data()
    net = _big_net()
    given = {k: torch.from_numpy(v.copy()) for k, v in net.state_dict().items()}
    kept = {k: v.clone() for k, v in given.items()}
    net.load_state_dict(given)
    net.train_step(x, y, "cross_entropy", pn.Adam())
    for k in given:
        assert torch.equal(given[k], kept[k])


def test_torch_inputs_that_require_grad_do_not_join_autograd():
    torch = pytest.importorskip("torch")
    x, y = _data()
    net = _big_net("torch")
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    net.train_step(xt, y, "cross_entropy", pn.Adam())
    net.train_step(xt, y, "cross_entropy", pn.Adam())
    assert not any(p.requires_grad for p in net.parameters().values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # JAX may be loaded; unused here
def test_training_works_in_a_forked_child():
    x, y = _data()
    net, opt = _big_net(), pn.Adam()
    net.train_step(x, y, "cross_entropy", opt)
    pid = os.fork()
    if pid == 0:  # child: once deadlocked on a thread pool the parent had started
        signal.alarm(60)
        net.train_step(x, y, "cross_entropy", opt)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_the_same_layer_twice_is_rejected():
    d = pn.Dense(3, 3)
    with pytest.raises(ValueError, match="appears twice"):
        pn.Sequential([d, d])


def test_zero_rows_are_rejected():
    net = pn.Sequential([pn.Dense(3, 2)], seed=0)
    with pytest.raises(ValueError, match="no rows"):
        net.train_step(np.zeros((0, 3)), np.zeros(0, dtype=int), "cross_entropy", pn.Adam())
    with pytest.raises(ValueError, match="no rows"):
        net.evaluate(np.zeros((0, 3)), np.zeros((0, 2)), loss="mse")


def test_float_labels_for_cross_entropy_are_rejected():
    net = pn.Sequential([pn.Dense(3, 6)], seed=0)
    with pytest.raises(TypeError, match="must be integers"):
        net.train_step(np.zeros((2, 3)), np.array([0.0, 5.0]), "cross_entropy", pn.Adam())


def test_optimizer_state_is_checked_and_copied():
    x, y = _data()
    net, opt = _big_net(), pn.Adam()
    net.train_step(x, y, "cross_entropy", opt)
    state = opt.state_dict()
    kept = state["state"]["0.weight"]["exp_avg"].copy()
    fresh = pn.Adam()
    fresh.load_state_dict(state)
    net.train_step(x, y, "cross_entropy", fresh)
    np.testing.assert_array_equal(state["state"]["0.weight"]["exp_avg"], kept)
    bad = pn.Adam()
    state["state"]["0.bias"]["exp_avg"] = np.zeros(7)
    bad.load_state_dict(state)
    with pytest.raises(ValueError, match=r"'exp_avg' of '0.bias' has shape \(7,\)"):
        net.train_step(x, y, "cross_entropy", bad)
    assert bad.step_count == 1  # unchanged by the failed step


@pytest.mark.parametrize("seed,err", [(-1, ValueError), ("a", TypeError), (1.5, TypeError),
                                      ([1, 2], TypeError)])
def test_seed_is_validated(seed, err):
    with pytest.raises(err, match="seed must be a non-negative int"):
        pn.Sequential([pn.Dense(2, 1)], seed=seed)
    assert pn.Sequential([pn.Dense(2, 1)], seed=np.int64(3)).seed == 3


def test_save_refuses_what_load_cannot_rebuild(tmp_path):
    square = pn.Activation(lambda x: x * x, lambda x: 2.0 * x, name="square")
    net = pn.Sequential([pn.Dense(2, 2, activation=square)], seed=0)
    with pytest.raises(ValueError, match="cannot be saved"):
        net.save(str(tmp_path / "m.npz"))
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="no such directory"):
        pn.Sequential([pn.Dense(2, 2)]).save(str(tmp_path / "missing" / "m.npz"))


def test_tampered_sizes_fail_before_anything_is_built(tmp_path, monkeypatch):
    from portanet import io

    net = pn.Sequential([pn.Dense(2, 3), pn.Dense(3, 1)], seed=0)
    path = str(tmp_path / "m.npz")
    net.save(path)
    real_read = io._read

    def tampered(p):
        meta, arrays = real_read(p)
        meta["network"]["layers"][1]["out_features"] = 10**13
        return meta, arrays

    monkeypatch.setattr(io, "_read", tampered)
    with pytest.raises(pn.CheckpointError, match="do not match the architecture"):
        pn.load(path)


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "xor", "--epochs", "1", "--save", "/nonexistent-dir/m.npz"],
    ["evaluate", "/etc/passwd/x"],
    ["evaluate", "x" * 5000],
])
def test_cli_os_errors_are_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err


def test_interrupt_during_the_last_step_keeps_the_epoch():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.integers(0, 2, size=20)
    net = pn.Sequential([pn.Dense(3, 2)], seed=0)

    class PressOnLastStep(pn.training.Callback):
        def on_batch_end(self, step, logs):
            if step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    if sys.platform == "win32":
        pytest.skip("needs POSIX signals")
    with sigint_handler():
        h = net.fit(x, y, loss="cross_entropy", optimizer="adam", epochs=3, batch_size=10,
                    verbose=0, callbacks=[PressOnLastStep()])
    assert h.interrupted and h.epoch == [0] and net.epoch == 1
    assert net.optimizer.step_count == 2
    assert np.isfinite(host(net.predict(x))).all()


def test_custom_activation_and_loss_without_a_name_take_the_function_name():
    # was: TypeError: getattr expected at most 3 arguments, got 4
    def cube(x):
        return x * x * x

    def cube_grad(x):
        return 3.0 * x * x

    def sq_err(p, t):
        return pn.losses.MSE._f(p, t)

    def sq_err_grad(p, t):
        return pn.losses.MSE._df(p, t)

    assert pn.activations.Activation(cube, cube_grad).name == "cube"
    assert pn.activations.Activation(lambda x: x, lambda x: x).name == "<lambda>"
    assert pn.losses.Loss(sq_err, sq_err_grad).name == "sq_err"
    net = pn.Sequential([pn.Dense(2, 3, activation=pn.activations.Activation(cube, cube_grad)),
                         pn.Dense(3, 1)], backend="numpy", seed=0)
    loss = pn.losses.Loss(sq_err, sq_err_grad)
    before = float(net.evaluate([[1.0, 2.0]], [[0.5]], loss=loss)["loss"])
    for _ in range(20):
        net.train_step([[1.0, 2.0]], [[0.5]], loss, pn.SGD(0.01))
    assert float(net.evaluate([[1.0, 2.0]], [[0.5]], loss=loss)["loss"]) < before
