"""The fit loop: history, metrics, validation, callbacks, schedules, divergence, Ctrl-C, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _util import assert_on, host, put, record_need_input_grad, sigint_handler

import portanet as pn
from portanet.testing import AGREEMENT_RTOL, norm_rel_diff


def _blobs(n=120, seed=0):
    """Three Gaussian blobs in 4-D with integer labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], dtype=float)
    return centers[y] + rng.normal(scale=0.5, size=(n, 4)), y


def _classifier(xp=None, device=None, dropout=0.0, seed=0, dtype="float32"):
    layers = [pn.Dense(4, 16, activation="relu", init="he_normal")]
    if dropout:
        layers.append(pn.Dropout(dropout))
    layers.append(pn.Dense(16, 3))
    return pn.Sequential(layers, backend=xp, device=device, seed=seed, dtype=dtype)


def test_fit_learns_and_records_history(xp):
    xs, device = xp
    x, y = _blobs()
    net = _classifier(xs, device, dropout=0.1)
    history = net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=8,
                      batch_size=16, metrics=["accuracy"], validation_split=0.25, verbose=0)
    assert history.epoch == list(range(8))
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 8 for v in history.history.values())
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.9
    assert net.epoch == 8


def test_fit_matches_numpy(xp, dtype):
    xs, device = xp
    x, y = _blobs(64)
    runs = []
    for backend, dev in ((xs, device), ("numpy", None)):
        net = _classifier(backend, dev, dropout=0.2, seed=4, dtype=dtype)
        h = net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=3, batch_size=10,
                    metrics=["accuracy"], verbose=0)
        runs.append((h, net.state_dict()))
    (h, state), (ref_h, ref_state) = runs
    # 3 epochs of training: the table's bound for training runs (norm-relative)
    assert norm_rel_diff(h.history["loss"], ref_h.history["loss"]) <= AGREEMENT_RTOL[dtype]
    for k in ref_state:
        assert norm_rel_diff(state[k], ref_state[k]) <= AGREEMENT_RTOL[dtype], k


def test_evaluate_and_metrics_match_numpy_computation(xp):
    xs, device = xp
    x, y = _blobs(50)
    net = _classifier(xs, device)
    out = host(net.predict(x))
    logits = out.astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    log_p = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    result = net.evaluate(x, y, loss="cross_entropy", metrics=["accuracy"], batch_size=7)
    assert set(result) == {"loss", "accuracy"}
    np.testing.assert_allclose(result["loss"], -log_p[np.arange(50), y].mean(), rtol=1e-5)
    assert result["accuracy"] == pytest.approx((out.argmax(axis=1) == y).mean())
    reg = pn.Sequential([pn.Dense(4, 2)], backend=xs, device=device, seed=0)
    t = np.random.default_rng(1).normal(size=(50, 2))
    pred = host(reg.predict(x))
    r = reg.evaluate(x, t, loss="mse", metrics=["mse", "mae"])
    np.testing.assert_allclose([r["loss"], r["mse"], r["mae"]],
                               [((pred - t) ** 2).mean(), ((pred - t) ** 2).mean(),
                                np.abs(pred - t).mean()], rtol=1e-5)


def test_binary_accuracy_from_logits_and_probabilities():
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    net = pn.Sequential([pn.Dense(1, 1)], seed=0)
    net.load_state_dict({"0.weight": np.array([[1.0]]), "0.bias": np.array([-1.5])})
    y = np.array([[0.0], [1.0], [1.0], [1.0]])
    # logits -1.5, -0.5, 0.5, 1.5: thresholded at 0 -> 0, 0, 1, 1 -> 3 of 4 right
    assert net.evaluate(x, y, loss="bce_with_logits", metrics=["accuracy"])["accuracy"] == 0.75
    # as probabilities (MSE regression), thresholded at 0.5 -> 0, 0, 1, 1 as well
    net.load_state_dict({"0.weight": np.array([[0.5]]), "0.bias": np.array([-0.3])})
    # outputs -0.3, 0.2, 0.7, 1.2 -> 0, 0, 1, 1 -> 3 of 4 right
    assert net.evaluate(x, y, loss="mse", metrics=["accuracy"])["accuracy"] == 0.75


def test_full_batch_and_verbose_two(capsys):
    x, y = _blobs(30)
    net = _classifier()
    net.fit(x, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=None, verbose=2)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch 1/2  loss=") and out[1].startswith("epoch 2/2")
    assert net.optimizer.step_count == 2


def test_progress_bar_runs(capsys):
    x, y = _blobs(30)
    _classifier().fit(x, y, loss="cross_entropy", optimizer="adam", epochs=1, verbose=1)
    assert "epoch 1/1" in capsys.readouterr().err


def test_bad_fit_arguments_change_nothing():
    x, y = _blobs(30)
    net = _classifier()
    before = net.state_dict()
    for kwargs, match in [
        ({"epochs": 2, "initial_epoch": 3}, "initial_epoch"),
        ({"batch_size": 0}, "batch_size"),
        ({"validation_split": 1.5}, "validation_split"),
        ({"verbose": 5}, "verbose"),
        ({"metrics": ["f1"]}, "unknown metric"),
    ]:
        with pytest.raises(ValueError, match=match):
            net.fit(x, y, loss="cross_entropy", optimizer="adam", **kwargs)
    with pytest.raises(ValueError, match="y has 29 rows but x has 30"):
        net.fit(x, y[:29], loss="cross_entropy", optimizer="adam")
    for k, v in before.items():
        np.testing.assert_array_equal(net.state_dict()[k], v)


# --------------------------------------------------------------- callbacks ----


def test_early_stopping_restores_best_weights():
    x, y = _blobs(60)
    net = _classifier()
    seen = {}

    class Spy(pn.training.Callback):
        def on_epoch_end(self, epoch, logs):
            seen[epoch] = self.net.state_dict()

    stop = pn.EarlyStopping(monitor="loss", patience=2, min_delta=10.0, restore_best_weights=True)
    history = net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=20, verbose=0,
                      callbacks=[Spy(), stop])
    # nothing improves by 10, so it stops after epoch 0 + patience 2
    assert history.epoch == [0, 1, 2] and stop.stopped_epoch == 2 and stop.best_epoch == 0
    for k, v in seen[0].items():
        np.testing.assert_array_equal(net.state_dict()[k], v)


def test_early_stopping_unknown_monitor_is_clear():
    x, y = _blobs(20)
    with pytest.raises(KeyError, match="'val_loss' is not logged"):
        _classifier().fit(x, y, loss="cross_entropy", optimizer="adam", verbose=0,
                          callbacks=[pn.EarlyStopping()])


def test_model_checkpoint_saves_best_only(tmp_path):
    x, y = _blobs(60)
    net = _classifier()
    ckpt = pn.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}.npz"), monitor="val_loss",
                              save_best_only=True)
    net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=4, verbose=0,
            validation_split=0.2, callbacks=[ckpt])
    assert ckpt.saved and all(os.path.exists(p) for p in ckpt.saved)
    last = pn.load(ckpt.saved[-1])
    assert last.epoch == int(ckpt.saved[-1][-6:-4])


def test_schedules():
    assert pn.StepLR(2, gamma=0.5)(5, 1.0) == 0.25
    assert pn.ExponentialLR(0.9)(2, 1.0) == pytest.approx(0.81)
    cos = pn.CosineAnnealing(total_steps=110, warmup_steps=10, eta_min=0.1)
    assert cos(0, 1.0) == pytest.approx(0.1) and cos(9, 1.0) == pytest.approx(1.0)
    assert cos(10, 1.0) == pytest.approx(1.0) and cos(60, 1.0) == pytest.approx(0.55)
    assert cos(110, 1.0) == pytest.approx(0.1) and cos(500, 1.0) == pytest.approx(0.1)


def test_learning_rate_scheduler_sets_lr_per_epoch_and_per_step():
    x, y = _blobs(40)
    lrs = []

    class Spy(pn.training.Callback):
        def on_epoch_end(self, epoch, logs):
            lrs.append(self.optimizer.lr)

    opt = pn.SGD(lr=0.1)
    _classifier().fit(x, y, loss="cross_entropy", optimizer=opt, epochs=4, verbose=0,
                      callbacks=[pn.LearningRateScheduler(pn.StepLR(2, 0.1)), Spy()])
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01])
    opt = pn.Adam(lr=1.0)
    cos = pn.CosineAnnealing(total_steps=8, warmup_steps=2)
    _classifier().fit(x, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=10,
                      verbose=0, callbacks=[pn.LearningRateScheduler(cos)])
    assert opt.step_count == 8 and opt.lr == pytest.approx(cos(8, 1.0))


def test_reduce_lr_on_plateau():
    x, y = _blobs(40)
    opt = pn.Adam(lr=1e-2)
    plateau = pn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100.0)
    _classifier().fit(x, y, loss="cross_entropy", optimizer=opt, epochs=3, verbose=0,
                      callbacks=[plateau])
    # epoch 0 sets the best; epochs 1 and 2 do not improve by 100 -> halved twice
    assert opt.lr == pytest.approx(2.5e-3)


# -------------------------------------------------------- divergence, ^C ----


def test_divergence_raises_and_restores_the_last_finite_step(xp):
    xs, device = xp
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 1)) * 10
    make = lambda: pn.Sequential([pn.Dense(4, 32, activation="relu"), pn.Dense(32, 1)],  # noqa: E731
                                 backend=xs, device=device, seed=0)
    net = make()
    with pytest.raises(pn.TrainingDivergedError, match="learning rate 1000") as info:
        net.fit(x, y, loss="mse", optimizer=pn.SGD(lr=1e3), epochs=5, batch_size=None,
                shuffle=False, verbose=0)
    err = info.value
    assert err.epoch >= 0 and err.lr == 1e3
    state = net.state_dict()
    assert all(np.all(np.isfinite(v)) for v in state.values())
    # the parameters are those after the updates that preceded the bad step
    twin, opt = make(), pn.SGD(lr=1e3)
    for _ in range(err.epoch + err.step - 1):
        twin.train_step(x, y, "mse", opt)
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(state[k], v)
    assert net.optimizer.step_count == opt.step_count


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_stops_at_a_step_boundary():
    x, y = _blobs(80)
    net = _classifier()

    class PressCtrlC(pn.training.Callback):
        def on_batch_end(self, step, logs):
            if logs["epoch"] == 1 and step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    opt = pn.Adam(1e-2)
    with sigint_handler():
        history = net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=5, batch_size=10,
                          verbose=0, callbacks=[PressCtrlC()])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert history.interrupted and history.epoch == [0]
    assert opt.step_count == 8 + 3  # a full epoch, then steps 0-2 of the second
    assert all(np.all(np.isfinite(v)) for v in net.state_dict().values())


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_an_ignored_sigint_stays_ignored_during_fit():
    # Under nohup or in a background job SIGINT is ignored: fit must not take it over.
    x, y = _blobs(40)
    net = _classifier()

    class SendSigint(pn.training.Callback):
        def on_batch_end(self, step, logs):
            os.kill(os.getpid(), signal.SIGINT)

    with sigint_handler(signal.SIG_IGN):
        history = net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=2,
                          batch_size=10, verbose=0, callbacks=[SendSigint()])
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert not history.interrupted and history.epoch == [0, 1]


def test_history_plot(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = _blobs(40)
    h = _classifier().fit(x, y, loss="cross_entropy", optimizer="adam", epochs=2, verbose=0,
                          metrics=["accuracy"], validation_split=0.25)
    path = h.plot(str(tmp_path / "h.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------ exact resume ----

RESUME = textwrap.dedent("""
    import sys
    import numpy as np
    import portanet as pn
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=90)
    x = rng.normal(size=(90, 4)) + np.eye(4)[y] * 2
    mode, path = sys.argv[1], sys.argv[2]
    def make():
        return pn.Sequential([pn.Dense(4, 16, activation="relu"), pn.Dropout(0.3),
                              pn.Dense(16, 3)], backend="numpy", seed=7)
    kw = dict(loss="cross_entropy", batch_size=8, verbose=0)
    if mode == "straight":
        net = make()
        net.fit(x, y, optimizer=pn.Adam(1e-2), epochs=4, **kw)
        np.savez(path, **net.state_dict())
    elif mode == "first":
        net, opt = make(), pn.Adam(1e-2)
        net.fit(x, y, optimizer=opt, epochs=2, **kw)
        net.save(path, optimizer=opt)
    else:
        net, opt = pn.load(path, return_optimizer=True)
        net.fit(x, y, optimizer=opt, epochs=4, initial_epoch=net.epoch, **kw)
        np.savez(path + ".out.npz", **net.state_dict())
""")


@pytest.mark.slow
def test_exact_resume_in_a_new_process_is_bitwise(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    straight, ckpt = str(tmp_path / "straight.npz"), str(tmp_path / "ckpt.npz")

    def run(*args):
        subprocess.run([sys.executable, str(script), *args], check=True,
                       env={**os.environ, "PORTANET_BACKEND": "numpy"})

    run("straight", straight)
    run("first", ckpt)
    run("resume", ckpt)
    a, b = np.load(straight), np.load(ckpt + ".out.npz")
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])  # bitwise, not approximately


# ------------------------------------------------------------- sample weights ----


def _weighted_data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.integers(0, 3, size=12)
    w = rng.integers(0, 4, size=12).astype(float)
    return x, y, w


def _tiny_net(xs=None, device=None, dtype="float64"):
    return pn.Sequential([pn.Dense(4, 8, activation="tanh"), pn.Dense(8, 3)], backend=xs,
                         device=device, dtype=dtype, seed=0)


def test_fit_with_integer_weights_equals_fit_on_repeated_rows(xp, float64):
    """Full batches: a weight k is the row k times, in every step and in the logged loss."""
    xs, device = xp
    x, y, w = _weighted_data()
    rows = np.repeat(np.arange(12), w.astype(int))
    weighted, repeated = _tiny_net(xs, device), _tiny_net(xs, device)
    h1 = weighted.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=5,
                      batch_size=None, sample_weight=w, verbose=0)
    h2 = repeated.fit(x[rows], y[rows], loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=5,
                      batch_size=None, verbose=0)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-12)
    for name, value in repeated.state_dict().items():
        np.testing.assert_allclose(weighted.state_dict()[name], value, rtol=1e-10, atol=1e-12)
    plain = _tiny_net(xs, device)
    plain.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=5, batch_size=None,
              verbose=0)
    assert not np.allclose(plain.state_dict()["1.bias"], weighted.state_dict()["1.bias"])


def test_weights_move_with_their_rows_when_shuffled():
    """fit equals train_step on the batches of the same shuffle, each with its rows' weights."""
    x, y, w = _weighted_data()
    net, ref = _tiny_net(), _tiny_net()
    net.fit(x, y, loss="cross_entropy", optimizer=pn.SGD(0.1), epochs=2, batch_size=5,
            sample_weight=w, verbose=0)
    opt = pn.SGD(0.1)
    for _ in range(2):
        order = ref.rng.permutation(12)  # the draw fit makes from the same generator
        for lo in range(0, 12, 5):
            idx = order[lo:lo + 5]
            ref.train_step(x[idx], y[idx], "cross_entropy", opt, sample_weight=w[idx])
    for name, value in ref.state_dict().items():
        np.testing.assert_allclose(net.state_dict()[name], value, rtol=1e-12, atol=1e-15)
    moved = _tiny_net()
    moved.fit(x, y, loss="cross_entropy", optimizer=pn.SGD(0.1), epochs=2, batch_size=5,
              sample_weight=w[::-1], verbose=0)  # the weights no longer on their rows
    assert not np.allclose(moved.state_dict()["1.bias"], net.state_dict()["1.bias"])


def test_weighted_validation_split_and_evaluate():
    x, y, w = _weighted_data()
    w[-3:] = [1.0, 0.0, 5.0]
    net = _tiny_net()
    h = net.fit(x, y, loss="cross_entropy", optimizer=pn.SGD(0.1), epochs=1, batch_size=4,
                validation_split=0.25, sample_weight=w, verbose=0)
    rows = np.array([9, 11, 11, 11, 11, 11])
    expected = net.evaluate(x[rows], y[rows], loss="cross_entropy")["loss"]
    assert h.history["val_loss"][0] == pytest.approx(expected, rel=1e-12)
    got = net.evaluate(x[9:], y[9:], loss="cross_entropy", sample_weight=w[9:])["loss"]
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("bad,match", [
    (np.ones(11), r"sample_weight must have shape \(12,\), one weight per sample, got shape \(11,\)"),
    (np.ones((12, 1)), r"sample_weight must have shape \(12,\)"),
    (np.r_[np.ones(11), np.nan], "sample_weight must be finite"),
    (np.r_[np.ones(11), -1.0], "sample_weight must be >= 0"),
    (np.zeros(12), "at least one non-zero weight; all weights are zero"),
])
def test_bad_sample_weights_are_named_and_change_nothing(bad, match):
    x, y, _ = _weighted_data()
    net = _tiny_net()
    before = net.state_dict()
    with pytest.raises(ValueError, match=match):
        net.fit(x, y, loss="cross_entropy", optimizer="adam", sample_weight=bad, verbose=0)
    with pytest.raises(ValueError, match=match):
        net.train_step(x, y, "cross_entropy", pn.Adam(), sample_weight=bad)
    for name, value in before.items():
        np.testing.assert_array_equal(net.state_dict()[name], value)


def test_weights_that_are_not_numbers_or_a_loss_that_cannot_weight_are_type_errors():
    x, y, w = _weighted_data()
    net = _tiny_net()
    with pytest.raises(TypeError, match=r"^sample_weight must be a numeric array; could not "):
        net.train_step(x, y, "cross_entropy", pn.SGD(0.1), sample_weight=[[1.0], [1.0, 2.0]])  # ragged
    with pytest.raises(TypeError, match=r"^sample_weight must hold numbers, got an array of "):
        net.train_step(x, y, "cross_entropy", pn.SGD(0.1), sample_weight=w.astype(str))
    plain = pn.Loss(lambda p, t: ((p - t) ** 2).sum(), lambda p, t: 2 * (p - t), name="sq")
    with pytest.raises(TypeError, match=r"^loss 'sq' has no per-sample form, so it cannot "):
        net.train_step(x, np.eye(3)[y], plain, pn.SGD(0.1), sample_weight=w)


def test_train_step_takes_weights(xp):
    xs, device = xp
    x, y, w = _weighted_data()
    rows = np.repeat(np.arange(12), w.astype(int))
    a, b = _tiny_net(xs, device, "float32"), _tiny_net(xs, device, "float32")
    va = a.train_step(put(xs, device, x, "float32"), y, "cross_entropy", pn.SGD(0.1),
                      sample_weight=put(xs, device, w, "float32"))
    vb = b.train_step(x[rows], y[rows], "cross_entropy", pn.SGD(0.1))
    assert_on(xs, device, va, "float32", ())
    np.testing.assert_allclose(host(va), host(vb), rtol=1e-5)
    np.testing.assert_allclose(a.state_dict()["0.weight"], b.state_dict()["0.weight"], rtol=1e-4,
                               atol=1e-6)


def test_a_training_step_never_asks_the_first_layer_for_the_input_gradient(monkeypatch):
    # dL/dx of the first layer would be thrown away; for a convolution it is the whole
    # col2im, so train_step and fit must not ask for it
    asked = record_need_input_grad(monkeypatch, pn.Conv2D)
    net = pn.Sequential([pn.Conv2D(1, 2, 3), pn.ReLU(), pn.Conv2D(2, 2, 3), pn.Flatten(),
                         pn.Dense(8, 3)], input_shape=(1, 6, 6), seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 1, 6, 6)), rng.integers(0, 3, size=8)
    net.train_step(x, y, "cross_entropy", pn.SGD(0.1))
    assert asked == [True, False]  # the second convolution, then the first
    net.fit(x, y, loss="cross_entropy", optimizer="sgd", batch_size=4, verbose=0)
    assert asked == [True, False] * 3
