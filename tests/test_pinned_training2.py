"""More behaviours a mutation run found unpinned, second round: ``portanet.training.fit``
and ``evaluate`` called with their own defaults (epochs, batch size, shuffling, the
divergence check's period and factor); the argument checks of ``fit`` and the names
their messages give; what ``fit`` leaves on the network and hands its callbacks; the
running loss over a first batch whose weights are all zero; the initializers'
building blocks; ``declared_shapes`` of a ``Dense`` that also has buffers.

The fits use a network whose prediction is 0 whatever its weights (zero inputs, no
bias), so that every loss is known by hand: ``mse`` of targets ``y`` is ``mean(y**2)``,
and the gradient is 0, so nothing changes between steps.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest
from _util import host, put
from test_pinned_training import _drawn, _on_terminal

import portanet as pn
from portanet import activations as A
from portanet import initializers, training
from portanet.callbacks import Callback
from portanet.testing import assert_close

# ------------------------------------------------------------------ helpers ----


def _zero_net(xp=None, device=None):
    """Dense(2, 1) without bias: on zero inputs it predicts 0, and its gradient is 0."""
    return pn.Sequential([pn.Dense(2, 1, bias=False)], backend=xp, device=device, seed=0)


def _spy_rows(net):
    """Record ``(first column of each batch's rows, training)`` of every forward pass."""
    seen = []
    real = net.forward_checked

    def spy(x, training=False):
        seen.append((host(x)[:, 0].tolist(), training))
        return real(x, training=training)

    net.forward_checked = spy
    return seen


class _Recorder(Callback):
    """Records the hooks ``fit`` calls and the logs it hands them."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs):
        self.calls.append(("train_begin", logs))

    def on_epoch_begin(self, epoch, logs):
        self.calls.append(("epoch_begin", logs))

    def on_train_end(self, logs):
        self.calls.append(("train_end", logs))


def _fit_args(n=4):
    return np.zeros((n, 2)), np.full((n, 1), 2.0)


# ------------------------------------------------------------ fit's defaults ----


def test_training_fit_defaults_one_shuffled_epoch_in_batches_of_32(xp, capsys):
    xs, device = xp
    net = _zero_net(xs, device)
    net.load_state_dict({"0.weight": np.zeros((2, 1))})  # predicts 0; lr 0 keeps it so
    seen = _spy_rows(net)
    x = np.zeros((40, 2))
    x[:, 0] = np.arange(40)  # the spy reads which rows each batch got
    history = training.fit(net, x, np.full((40, 1), 3.0), loss="mse", optimizer=pn.SGD(0.0))
    # epochs=1, initial_epoch=0: one epoch, numbered 0; loss mean(y**2) = 9
    assert history.epoch == [0] and history.history == {"loss": [9.0]}
    assert net.epoch == 1
    # batch_size=32: rows in batches of 32 and 8, every row once, shuffled
    assert [len(rows) for rows, _ in seen] == [32, 8]
    order = [r for rows, _ in seen for r in rows]
    assert sorted(order) == list(range(40)) and order != list(range(40))
    # verbose=1 off a terminal: one line per epoch on stderr, nothing on stdout
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["epoch 1/1  loss=9"]


def test_training_fit_checks_every_step_against_ten_thousand_times_the_start(capsys):
    # batch losses 1 then 10000.5: past 1e4 times the first (checked at every step), so
    # fit stops at the second step; a factor above 10000.5, or a check every other step
    # (the first check then sets the start), would let it pass
    y = np.concatenate([np.ones(32), np.full(8, math.sqrt(10000.5))])[:, None]
    net = _zero_net()
    with pytest.raises(training.TrainingDivergedError,
                       match=r"loss is 10000\.5 at epoch 1, step 2 ") as info:
        training.fit(net, np.zeros((40, 2)), y, loss="mse", optimizer=pn.SGD(0.1),
                     shuffle=False, verbose=0)
    assert (info.value.epoch, info.value.step) == (0, 1)
    # a factor of 10001 passes the same data
    history = training.fit(net, np.zeros((40, 2)), y, loss="mse", optimizer=pn.SGD(0.1),
                           shuffle=False, verbose=0, divergence_factor=10001.0)
    assert_close(history.history["loss"][0], (32 * 1.0 + 8 * 10000.5) / 40, "float32")


def test_training_evaluate_defaults_to_batches_of_256(xp):
    xs, device = xp
    net = _zero_net(xs, device)
    seen = _spy_rows(net)
    logs = training.evaluate(net, np.zeros((600, 2)), np.full((600, 1), 2.0), loss="mse")
    assert [(len(rows), t) for rows, t in seen] == [(256, False), (256, False), (88, False)]
    assert logs == {"loss": 4.0}


def test_across_ranks_every_rank_logs_the_means_over_all_ranks(xp, capsys):
    from test_data_parallel_threads import run_ranks

    xs, device = xp

    def fit(comm):
        net = _zero_net(xs, device)
        # batches of 2 rows split one per rank: rank 0 sees targets 1, rank 1 targets 3
        return net.fit(np.zeros((4, 2)), np.array([[1.0], [3.0], [1.0], [3.0]]), loss="mse",
                       optimizer=pn.SGD(0.1), batch_size=2, shuffle=False, verbose=2,
                       distributed=comm, metrics=["mae"],
                       validation_data=(np.zeros((1, 2)), np.full((1, 1), 3.0))).history

    # losses (1 + 9) / 2 and maes (1 + 3) / 2 over both ranks; the one validation row is
    # rank 0's: rank 1 has none, and its sums count as 0
    assert run_ranks(fit) == [{"loss": [5.0], "mae": [2.0], "val_loss": [9.0],
                               "val_mae": [3.0]}] * 2
    # only rank 0 reports, whatever verbose says
    out, err = capsys.readouterr()
    assert out.splitlines() == ["epoch 1/1  loss=5  mae=2  val_loss=9  val_mae=3"]
    assert err == ""


# ----------------------------------------------------------- fit's arguments ----


@pytest.mark.parametrize("name", ["epochs", "initial_epoch", "check_finite"])
@pytest.mark.parametrize("value", [-1, True, 1.0])
def test_fit_names_the_count_that_is_not_an_int_of_zero_or_more(name, value):
    kwargs = {"epochs": 3, name: value}
    with pytest.raises(ValueError, match=rf"^{name} must be an int >= 0, got {value!r}$"):
        _zero_net().fit(*_fit_args(), loss="mse", optimizer="sgd", verbose=0, **kwargs)


def test_fit_from_initial_epoch_equal_to_epochs_trains_nothing():
    net = _zero_net()
    before = host(net.parameters()["0.weight"])
    history = net.fit(*_fit_args(), loss="mse", optimizer="sgd", epochs=2, initial_epoch=2,
                      verbose=0)
    assert history.epoch == [] and history.history == {}
    np.testing.assert_array_equal(host(net.parameters()["0.weight"]), before)


@pytest.mark.parametrize("batch_size", [True, 2.5, 0])
def test_fit_refuses_a_batch_size_that_is_not_a_positive_int(batch_size):
    with pytest.raises(ValueError, match=rf"^batch_size must be a positive int or None, "
                                         rf"got {batch_size!r}$"):
        _zero_net().fit(*_fit_args(), loss="mse", optimizer="sgd", batch_size=batch_size,
                        verbose=0)


def test_fit_refuses_validation_data_that_is_not_a_pair():
    x, y = _fit_args()
    for bad in [(x, y, y), [x], x]:
        with pytest.raises(ValueError, match=r"^validation_data must be a pair \(x_val, y_val\)$"):
            _zero_net().fit(x, y, loss="mse", optimizer="sgd", verbose=0, validation_data=bad)


@pytest.mark.parametrize("split", [False, 1.0, 1, -0.1])
def test_fit_refuses_a_validation_split_outside_zero_to_one(split):
    with pytest.raises(ValueError,
                       match=rf"^validation_split must be a number in \[0, 1\), got {split!r}$"):
        _zero_net().fit(*_fit_args(), loss="mse", optimizer="sgd", verbose=0,
                        validation_split=split)


def test_a_validation_split_must_leave_rows_on_both_sides():
    # 10 rows: 0.05 leaves no validation row; 0.1 leaves one (rows 9), which is fine
    x, y = np.zeros((10, 2)), np.full((10, 1), 2.0)
    y[9] = 3.0
    with pytest.raises(ValueError, match=r"validation_split=0\.05 leaves an empty set for 10 "):
        _zero_net().fit(x, y, loss="mse", optimizer="sgd", verbose=0, validation_split=0.05)
    history = _zero_net().fit(x, y, loss="mse", optimizer="sgd", verbose=0,
                              validation_split=0.1)
    assert history.history == {"loss": [4.0], "val_loss": [9.0]}


def test_validation_x_of_the_wrong_shape_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"^validation x: Dense\(2, 1\) \(layer 0\) expects"):
        _zero_net().fit(*_fit_args(), loss="mse", optimizer="sgd", verbose=0,
                        validation_data=(np.zeros((3, 5)), np.zeros((3, 1))))


def test_fit_takes_one_metric_by_name():
    history = _zero_net().fit(*_fit_args(), loss="mse", optimizer="sgd", verbose=0,
                              metrics="mae")
    assert history.history == {"loss": [4.0], "mae": [2.0]}


@pytest.mark.parametrize("distributed", [None, False, True])
def test_fit_in_one_process_trains_alike_whatever_distributed_says(distributed):
    history = _zero_net().fit(*_fit_args(), loss="mse", optimizer="sgd", verbose=0,
                              distributed=distributed)
    assert history.history == {"loss": [4.0]}


# ------------------------------------------------- what fit leaves and hands ----


def test_callbacks_find_the_optimizer_on_the_network_from_the_start():
    seen = []

    class Peek(Callback):
        def on_train_begin(self, logs):
            seen.append(self.net.optimizer)

    net, opt = _zero_net(), pn.SGD(0.1)
    net.fit(*_fit_args(), loss="mse", optimizer=opt, verbose=0, callbacks=[Peek()])
    assert seen == [opt]
    # also when no step runs (resuming at the last epoch)
    net, opt = _zero_net(), pn.SGD(0.1)
    net.fit(*_fit_args(), loss="mse", optimizer=opt, epochs=1, initial_epoch=1, verbose=0)
    assert net.optimizer is opt


def test_fit_leaves_its_optimizer_on_the_network_and_training_not_stopped():
    net = _zero_net()
    net.stop_training = True  # left over from an earlier fit that a callback stopped
    opt = pn.SGD(0.1)
    history = net.fit(*_fit_args(), loss="mse", optimizer=opt, epochs=2, verbose=0)
    assert net.optimizer is opt
    assert net.stop_training is False
    assert history.interrupted is False and history.epoch == [0, 1]


def test_fit_hands_the_callbacks_empty_logs_at_train_and_epoch_begin_and_train_end():
    rec = _Recorder()
    _zero_net().fit(*_fit_args(), loss="mse", optimizer="sgd", epochs=2, verbose=0,
                    callbacks=[rec])
    assert rec.calls == [("train_begin", {}), ("epoch_begin", {}), ("epoch_begin", {}),
                         ("train_end", {})]


def test_the_running_loss_over_zero_weights_so_far_is_nan(monkeypatch):
    # rows of one with weights 0, 1, 1 and losses 4, 1, 9: after the first step the
    # weights so far sum to 0 (running loss NaN), then 1 (loss 1), then 2 (loss 5)
    term = _on_terminal(monkeypatch)
    clock = iter(range(1000))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))  # 1 s per reading
    history = _zero_net().fit(np.zeros((3, 2)), np.array([[2.0], [1.0], [3.0]]), loss="mse",
                              optimizer="sgd", batch_size=1, shuffle=False,
                              sample_weight=np.array([0.0, 1.0, 1.0]))
    assert history.history == {"loss": [5.0]}
    postfixes = [f.rsplit(", ", 1)[1] for f in _drawn(term.getvalue()) if ", " in f]
    assert postfixes == ["loss=nan", "loss=1", "loss=5", "loss=5"]
    assert sys.stderr is term


def test_the_bar_refreshes_the_running_loss_only_after_more_than_half_a_second(monkeypatch):
    # the clock reads 0, 0.5, 1.0, ...: a step at 0.5 s after the last refresh waits;
    # one at 1.0 s refreshes (and reads the clock again)
    term = _on_terminal(monkeypatch)
    clock = iter(range(1000))
    monkeypatch.setattr(time, "monotonic", lambda: 0.5 * next(clock))
    _zero_net().fit(np.zeros((4, 2)), np.array([[2.0], [1.0], [3.0], [1.0]]), loss="mse",
                    optimizer="sgd", batch_size=1, shuffle=False)
    # readings: bar made at 0; step 1 at 0.5 (waits); step 2 at 1.0 (refreshes with
    # loss (4 + 1) / 2, then reads 1.5); step 3 at 2.0 (waits); step 4 at 2.5 (refreshes
    # with (4 + 1 + 9 + 1) / 4, reads 3.0); the end shows the epoch's loss
    postfixes = [f.rsplit(", ", 1)[1] for f in _drawn(term.getvalue()) if ", " in f]
    assert postfixes == ["loss=2.5", "loss=2.5", "loss=3.75", "loss=3.75"]


# ------------------------------------------------------------- initializers ----
# The registered initializers ("he_normal", "glorot_uniform", ...) are built from these
# two helpers once, at import; the helpers are called here so that what they build is
# pinned (tests/test_layers.py checks the registered ones' spread statistically).


def test_the_normal_helper_scales_a_standard_normal_draw_by_std_of_the_fans():
    init = initializers._normal(lambda fan_in, fan_out: fan_in / fan_out)
    got = init(np.random.default_rng(1), (3, 4), 6, 4)
    np.testing.assert_array_equal(got, np.random.default_rng(1).standard_normal((3, 4)) * 1.5)


def test_the_uniform_helper_draws_between_minus_and_plus_the_limit_of_the_fans():
    init = initializers._uniform(lambda fan_in, fan_out: fan_in / fan_out)
    got = init(np.random.default_rng(2), (3, 4), 6, 4)
    assert got.shape == (3, 4)
    np.testing.assert_array_equal(got, np.random.default_rng(2).uniform(-1.5, 1.5, size=(3, 4)))
    assert got.min() < 0.0 < got.max()


def test_named_initializers_draw_the_documented_spread():
    rng = np.random.default_rng
    fan_in, fan_out, shape = 6, 3, (6, 3)
    for name, ref in [
        ("he_normal", rng(0).standard_normal(shape) * math.sqrt(2 / fan_in)),
        ("glorot_normal", rng(0).standard_normal(shape) * math.sqrt(2 / (fan_in + fan_out))),
        ("lecun_normal", rng(0).standard_normal(shape) * math.sqrt(1 / fan_in)),
        ("he_uniform", rng(0).uniform(-math.sqrt(6 / fan_in), math.sqrt(6 / fan_in), shape)),
        ("glorot_uniform", rng(0).uniform(-math.sqrt(6 / (fan_in + fan_out)),
                                          math.sqrt(6 / (fan_in + fan_out)), shape)),
    ]:
        got = initializers.get(name)(rng(0), shape, fan_in, fan_out)
        np.testing.assert_allclose(got, ref, rtol=1e-15, err_msg=name)


# -------------------------------------------------------------- activations ----


def test_leaky_relu_with_a_negative_slope_scales_zero_too(xp):
    # f(x) = x for x > 0 and a * x otherwise: at x = +0 that is a * 0, which is -0 for
    # a < 0 (IEEE 754), so the sign of the zero shows which side x = 0 took
    xs, device = xp
    f = A.LeakyReLU(-0.5)
    got = host(f(put(xs, device, [0.0, 2.0, -2.0], "float32")))
    np.testing.assert_array_equal(got, [0.0, 2.0, 1.0])
    assert np.signbit(got[0])


# ------------------------------------------------------------------ dropout ----


def test_dropout_defaults_to_half_and_takes_zero():
    assert pn.Dropout().p == 0.5 and repr(pn.Dropout()) == "Dropout(0.5)"
    assert pn.Dropout(0.0).p == 0.0 and pn.Dropout(0).p == 0.0
    with pytest.raises(ValueError, match=r"^Dropout: p must be a number in \[0, 1\), got 1\.0$"):
        pn.Dropout(1.0)


def test_dropout_of_zero_is_the_identity_and_draws_nothing_in_training(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dense(3, 3), pn.Dropout(0.0)], backend=xs, device=device, seed=0)
    x = np.arange(6.0).reshape(2, 3)
    before = net.rng.bit_generator.state
    np.testing.assert_array_equal(host(net.forward(x, training=True)), host(net.forward(x)))
    assert net.rng.bit_generator.state == before  # the next masks and shuffles are unchanged


def test_dropout_layer_forward_defaults_to_evaluation_and_passes_gradients_without_a_mask(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dropout(0.5)], backend=xs, device=device, seed=0, input_shape=(3,))
    layer = net.layers[0]
    g = put(xs, device, np.arange(6.0).reshape(2, 3), "float32")
    # a fresh layer has no mask: its gradient passes through
    np.testing.assert_array_equal(host(layer.backward(g)), host(g))
    before = net.rng.bit_generator.state
    np.testing.assert_array_equal(host(layer.forward(g)), host(g))  # training=False
    assert net.rng.bit_generator.state == before
    np.testing.assert_array_equal(host(layer.backward(g)), host(g))
