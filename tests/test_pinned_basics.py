"""Behaviours of the basic modules that a mutation run found unpinned: the callbacks'
modes, thresholds, defaults and messages; activations made or registered at run time
and their reprs; the layer protocol's defaults; metrics on outputs of any rank; the
optimizers' host fast path (packing, blocks) as a user sees it.

The callback tests drive the hooks as ``fit`` does (``on_train_begin``, then
``on_epoch_begin`` and ``on_epoch_end`` per epoch until ``net.stop_training``, then
``on_train_end``), with the monitored values scripted: what a callback decides
depends only on them.
"""

from __future__ import annotations

import functools
import math
import os
import re

import numpy as np
import pytest
from _util import host, put

import portanet as pn
from portanet import activations as A
from portanet import initializers
from portanet.backend import namespace_of
from portanet.testing import TOLERANCES, assert_close

# ---------------------------------------------------------------- callbacks ----


def _drive(cb, values, monitor="val_loss", net=None, lr=1.0, between=None):
    """Run ``cb`` through ``len(values)`` epochs (fewer if it stops training) whose logs
    hold ``monitor = values[epoch]``; ``between(epoch)`` runs before each epoch's end,
    where training would change the weights. Returns the learning rate after each epoch."""
    cb.net = net if net is not None else pn.Sequential([pn.Dense(2, 1)], seed=0)
    cb.optimizer = pn.SGD(lr=lr)
    cb.net.stop_training = False
    cb.on_train_begin({})
    lrs = []
    for epoch, value in enumerate(values):
        cb.on_epoch_begin(epoch, {})
        if between is not None:
            between(epoch)
        cb.on_epoch_end(epoch, {"loss": 0.5, monitor: value})
        lrs.append(cb.optimizer.lr)
        if cb.net.stop_training:
            break
    cb.on_train_end({})
    return lrs


def _epochs_run(cb, values, monitor="val_loss"):
    return len(_drive(cb, values, monitor))


def test_callbacks_resolve_the_mode_from_the_monitor_name():
    # "auto" is "max" for accuracies and "min" for anything else; explicit modes stand
    for monitor, mode, resolved in [("val_loss", "auto", "min"), ("loss", "auto", "min"),
                                    ("val_accuracy", "auto", "max"), ("acc", "auto", "max"),
                                    ("val_loss", "max", "max"), ("val_accuracy", "min", "min")]:
        for cb in (pn.EarlyStopping(monitor, mode=mode), pn.ReduceLROnPlateau(monitor, mode=mode),
                   pn.ModelCheckpoint("m.npz", monitor, mode=mode)):
            assert cb.mode == resolved, (type(cb).__name__, monitor, mode)
    for make in (pn.EarlyStopping, pn.ReduceLROnPlateau,
                 lambda **kw: pn.ModelCheckpoint("m.npz", **kw)):
        with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max', got 'MAX'"):
            make(mode="MAX")


def test_early_stopping_minimizes_losses_and_maximizes_accuracies():
    # a falling loss improves every epoch; so does a rising accuracy
    assert _epochs_run(pn.EarlyStopping(), [3.0, 2.0, 1.0, 0.5]) == 4
    assert _epochs_run(pn.EarlyStopping("val_accuracy"), [0.1, 0.2, 0.3, 0.4], "val_accuracy") == 4
    # a rising loss stops at once (patience 0); so does a falling accuracy
    assert _epochs_run(pn.EarlyStopping(), [1.0, 2.0, 3.0]) == 2
    assert _epochs_run(pn.EarlyStopping("val_accuracy"), [0.4, 0.3, 0.2], "val_accuracy") == 2
    # an explicit mode overrides the name: a loss to maximize, an accuracy to minimize
    assert _epochs_run(pn.EarlyStopping(mode="max"), [1.0, 2.0, 3.0]) == 3
    assert _epochs_run(pn.EarlyStopping(mode="min"), [1.0, 2.0, 3.0]) == 2
    assert _epochs_run(pn.EarlyStopping("val_accuracy", mode="min"), [0.4, 0.3, 0.2],
                       "val_accuracy") == 3


def test_early_stopping_needs_a_strict_improvement_by_more_than_min_delta():
    # an equal value is no improvement, in either mode
    stop = pn.EarlyStopping(patience=1)
    assert _epochs_run(stop, [1.0, 1.0, 0.5]) == 2
    assert (stop.best_epoch, stop.stopped_epoch) == (0, 1)
    stop = pn.EarlyStopping("val_accuracy", patience=1)
    assert _epochs_run(stop, [0.5, 0.5, 0.9], "val_accuracy") == 2
    assert (stop.best_epoch, stop.stopped_epoch) == (0, 1)
    # min_delta: 0.25 better is not enough for 0.5; a worse value never counts
    stop = pn.EarlyStopping(patience=1, min_delta=0.5)
    assert _epochs_run(stop, [1.0, 0.75, 0.0]) == 2 and stop.best_epoch == 0
    stop = pn.EarlyStopping("val_accuracy", patience=1, min_delta=0.5)
    assert _epochs_run(stop, [1.0, 0.75, 2.0], "val_accuracy") == 2 and stop.best_epoch == 0
    stop = pn.EarlyStopping("val_accuracy", patience=1, min_delta=0.5)
    assert _epochs_run(stop, [1.0, 1.75, 0.0], "val_accuracy") == 3 and stop.best_epoch == 1


def test_early_stopping_defaults():
    stop = pn.EarlyStopping()
    assert (stop.monitor, stop.patience, stop.min_delta, stop.restore_best_weights, stop.mode) == (
        "val_loss", 0, 0.0, False, "min")
    assert stop.stopped_epoch is None and stop.best_epoch is None
    # min_delta 0: a tiny improvement counts
    assert _epochs_run(stop, [1.0, 0.999, 0.998, 0.997]) == 4
    assert stop.stopped_epoch is None and stop.best_epoch == 3  # it never stopped


def test_early_stopping_with_a_value_that_never_improves():
    # NaN is never better than anything: patience 2 stops after the second epoch, no best
    # epoch is recorded, and restore_best_weights has nothing to restore
    net = pn.Sequential([pn.Dense(2, 1)], seed=0)
    before = net.state_dict()
    stop = pn.EarlyStopping(patience=2, restore_best_weights=True)
    assert len(_drive(stop, [math.nan] * 5, net=net)) == 2
    assert stop.stopped_epoch == 1 and stop.best_epoch is None
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_early_stopping_restores_the_best_weights_only_when_asked(xp):
    xs, device = xp
    for kwargs, restored in (({}, False), ({"restore_best_weights": True}, True)):
        net = pn.Sequential([pn.Dense(2, 1)], backend=xs, device=device, seed=0)
        best = net.state_dict()
        changed = {k: v + 1.0 for k, v in best.items()}

        def train(epoch, net=net, changed=changed):
            if epoch == 1:
                net.load_state_dict(changed)

        stop = pn.EarlyStopping(patience=1, **kwargs)
        assert len(_drive(stop, [1.0, 2.0, 3.0], net=net, between=train)) == 2
        want = best if restored else changed
        for k, v in net.state_dict().items():
            np.testing.assert_array_equal(v, want[k], err_msg=f"{kwargs} {k}")


@pytest.mark.parametrize("make", [
    lambda: pn.EarlyStopping("val_acc"),
    lambda: pn.ReduceLROnPlateau("val_acc"),
    lambda: pn.ModelCheckpoint("m.npz", "val_acc", save_best_only=True),
], ids=["EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint"])
def test_a_callback_names_itself_when_the_monitored_value_is_missing(make):
    cb = make()
    name = type(cb).__name__
    with pytest.raises(KeyError, match=rf"{name}: monitored value 'val_acc' is not logged; "
                                       r"available: \['loss', 'val_loss'\]"):
        _drive(cb, [1.0], monitor="val_loss")


def test_model_checkpoint_defaults_save_every_epoch_with_log_keys_in_the_path(xp, tmp_path):
    xs, device = xp
    net = pn.Sequential([pn.Dense(2, 1)], backend=xs, device=device, seed=0)
    ckpt = pn.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.npz"))
    assert (ckpt.monitor, ckpt.save_best_only, ckpt.mode) == ("val_loss", False, "min")
    _drive(ckpt, [1.0, 2.0, 3.0], net=net)  # worse every epoch: saved all the same
    assert ckpt.saved == [str(tmp_path / f"m-0{e}-{e}.00.npz") for e in (1, 2, 3)]
    assert all((tmp_path / f"m-0{e}-{e}.00.npz").exists() for e in (1, 2, 3))


def test_model_checkpoint_save_best_only_follows_the_mode(tmp_path):
    def saved(values, monitor=None, **kwargs):
        path = str(tmp_path / "{epoch}.npz")
        ckpt = (pn.ModelCheckpoint(path, save_best_only=True, **kwargs) if monitor is None
                else pn.ModelCheckpoint(path, monitor, save_best_only=True, **kwargs))
        _drive(ckpt, values, monitor or "val_loss")
        return [int(os.path.basename(p).split(".")[0]) for p in ckpt.saved]

    # the default monitor, val_loss, minimized; any improvement counts, an equal value not
    assert saved([1.0, 0.9, 0.95, 0.9, 0.89]) == [1, 2, 5]
    assert saved([0.5, 0.4, 0.6, 0.7], "val_accuracy") == [1, 3, 4]
    assert saved([0.5, 0.4, 0.6, 0.7], "val_loss", mode="max") == [1, 3, 4]
    assert saved([0.5, 0.4, 0.6, 0.3], "val_accuracy", mode="min") == [1, 2, 4]


def test_learning_rate_scheduler_calls_a_plain_function_with_the_epoch():
    # a function has no ``per``: it is a schedule over epochs, called with (epoch, initial_lr)
    seen = []

    def halve(epoch, initial_lr):
        seen.append((epoch, initial_lr))
        return initial_lr * 0.5**epoch

    sched = pn.LearningRateScheduler(halve)
    assert sched.per == "epoch"
    lrs = _drive(sched, [1.0, 1.0, 1.0, 1.0], lr=0.8)
    assert lrs == [0.8, 0.4, 0.2, 0.1] and seen == [(0, 0.8), (1, 0.8), (2, 0.8), (3, 0.8)]


def test_reduce_lr_on_plateau_rejects_a_factor_outside_0_1():
    for factor in (0.0, 1.0, 1.5, -0.5):
        with pytest.raises(ValueError, match=r"factor must be in \(0, 1\), got "):
            pn.ReduceLROnPlateau(factor=factor)
    pn.ReduceLROnPlateau(factor=0.999)


def test_reduce_lr_on_plateau_defaults():
    plateau = pn.ReduceLROnPlateau()
    assert (plateau.monitor, plateau.factor, plateau.patience, plateau.min_delta,
            plateau.min_lr, plateau.mode) == ("val_loss", 0.1, 10, 1e-4, 0.0, "min")
    # val_loss falls by 1e-3 for three epochs (each more than min_delta 1e-4), then stays
    # flat: the tenth flat epoch cuts the rate by 10
    lrs = _drive(plateau, [1.0, 0.999, 0.998, 0.997] + [0.997] * 11)
    assert lrs[:13] == [1.0] * 13 and lrs[13] == pytest.approx(0.1) and lrs[14] == lrs[13]


def test_reduce_lr_on_plateau_counts_patience_from_the_last_improvement_and_reduction():
    plateau = pn.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0)
    # epoch 0 sets the best, 1 improves; 2-3 are flat (cut), 4-5 flat (cut), 6 improves,
    # 7 flat, 8 flat (cut)
    lrs = _drive(plateau, [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    # accuracies are maximized: rising values never cut
    plateau = pn.ReduceLROnPlateau("val_accuracy", factor=0.5, patience=1)
    assert _drive(plateau, [0.1, 0.2, 0.3], "val_accuracy") == [1.0, 1.0, 1.0]
    # a value that is NaN from the start never improves: cut after each `patience` epochs
    plateau = pn.ReduceLROnPlateau(factor=0.5, patience=2)
    assert _drive(plateau, [math.nan] * 5) == [1.0, 0.5, 0.5, 0.25, 0.25]


# -------------------------------------------------------------- activations ----


@pytest.fixture
def registered():
    """Register activations for one test; unregister them (and their aliases) after."""
    names = []

    def register(name, *args, **kwargs):
        names.append((name, kwargs.get("aliases", ())))
        return A.register(name, *args, **kwargs)

    yield register
    for name, aliases in names:
        A.REGISTRY._factories.pop(name, None)
        for alias in aliases:
            A.REGISTRY._aliases.pop(alias, None)


def test_register_takes_the_derivative_of_the_input_unless_told_otherwise(registered, xp):
    xs, device = xp
    x = put(xs, device, [-2.0, 0.5, 3.0], "float32")
    # f(x) = x^2 with f' = 2x of the input ...
    square = registered("pinned_square", lambda x: x * x, lambda x: 2.0 * x)
    assert not square.df_of_output
    np.testing.assert_array_equal(host(square.grad(x)), [-4.0, 1.0, 6.0])
    # ... and f(x) = e^x with f' = y of the output
    exp = registered("pinned_exp", lambda x: namespace_of(x).exp(x), lambda y: y,
                     df_of_output=True, aliases=("pinned_exp_alias",))
    assert exp.df_of_output
    assert_close(exp.grad(x), np.exp([-2.0, 0.5, 3.0]), "float32")
    g = put(xs, device, [1.0, 2.0, 3.0], "float32")
    assert_close(exp.backward(x, exp(x), g), np.exp([-2.0, 0.5, 3.0]) * [1.0, 2.0, 3.0], "float32")
    # both are known by name, the second by its alias too
    assert A.get("pinned_square") is square and A.get("pinned_exp") is exp
    assert A.get("pinned_exp_alias") is exp and "pinned_exp_alias" not in A.names()


def test_activation_repr_and_forward():
    x = np.array([-1.0, 2.0])
    assert repr(A.relu) == "Activation('relu')"
    assert repr(A.ELU(0.5)) == "Activation('elu', alpha=0.5)"
    assert repr(A.LeakyReLU(0.2)) == "Activation('leaky_relu', negative_slope=0.2)"
    np.testing.assert_array_equal(A.relu.forward(x), [0.0, 2.0])
    np.testing.assert_array_equal(A.ELU(2.0).forward(x), [2.0 * np.expm1(-1.0), 2.0])


def test_an_activation_of_a_callable_without_a_name_is_called_activation():
    act = A.Activation(functools.partial(np.multiply, 2.0), lambda x: 2.0 + 0.0 * x)
    assert act.name == "activation" and act.config() == {"name": "activation"}
    assert not act.df_of_output
    np.testing.assert_array_equal(act(np.array([1.5])), [3.0])
    assert A.Activation(np.tanh, lambda y: 1.0 - y * y).name == "tanh"  # a ufunc has its name


def test_leaky_relu_for_every_slope(xp, float64):
    xs, device = xp
    x = [-np.inf, -2.0, -0.5, 0.0, 0.5, 3.0, np.inf]
    xa = put(xs, device, x, float64)
    assert A.LeakyReLU().negative_slope == 0.01  # torch's default
    with np.errstate(invalid="ignore"):  # 0 * -inf is NaN, in the formula as in torch
        for slope in (0.0, 0.01, 0.5, 1.0, 1.5, -0.2):
            want = np.where(np.array(x) > 0, x, slope * np.array(x))
            got = host(A.LeakyReLU(slope)(xa))
            np.testing.assert_array_equal(got, want, err_msg=f"negative_slope={slope}")


class _Clipped(A.Activation):
    """An activation with two parameters, as a user might write one."""

    def __init__(self, low=-1.0, high=1.0):
        self.low, self.high = low, high
        super().__init__(self._f, self._df, name="clipped")

    def _f(self, x):
        return namespace_of(x).clip(x, self.low, self.high)

    def _df(self, x):
        xp = namespace_of(x)
        return xp.astype((x > self.low) & (x < self.high), x.dtype)

    def config(self):
        return {"name": self.name, "low": self.low, "high": self.high}


def test_reprs_list_every_parameter_of_an_activation():
    act = _Clipped(-0.5, 2.0)
    assert repr(act) == "Activation('clipped', low=-0.5, high=2.0)"
    assert repr(pn.ActivationLayer(act)) == "ActivationLayer('clipped', low=-0.5, high=2.0)"


def test_elu_default_alpha_is_one(xp):
    xs, device = xp
    elu = A.ELU()
    assert elu.config() == {"name": "elu", "alpha": 1.0}
    assert_close(elu(put(xs, device, [-1.0, 0.0, 2.0], "float32")), [np.expm1(-1.0), 0.0, 2.0],
                 "float32")


def test_a_new_softmax_is_the_softmax(xp):
    xs, device = xp
    fresh = type(A.softmax)()  # built now, as the module built A.softmax
    assert fresh.name == "softmax" and fresh.config() == {"name": "softmax"}
    assert repr(fresh) == "Activation('softmax')"
    x = put(xs, device, [[1.0, 2.0, 3.0]], "float32")
    assert_close(fresh(x), host(A.softmax(x)), "float32")
    with pytest.raises(TypeError, match="softmax has no elementwise derivative; use backward"):
        fresh.grad(x)


def test_softmax_backward_reduces_over_the_last_axis_of_any_rank(xp, float64):
    xs, device = xp
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    want = y * (g - (g * y).sum(axis=-1, keepdims=True))  # the Jacobian-vector product
    xa, ga = put(xs, device, x, float64), put(xs, device, g, float64)
    got = A.softmax.backward(xa, A.softmax(xa), ga)
    assert_close(got, want, float64)
    layer = pn.ActivationLayer("softmax")
    assert_close(layer(xa), y, float64)
    assert_close(layer.backward(ga), want, float64)
    assert layer.backward(ga, need_input_grad=False) is None  # the first layer's case


# ------------------------------------------------------------------ layers ----


class _Recorder(pn.Layer):
    """A layer without config() of its own that records how it was called."""

    keeps_shape = True

    def forward(self, x, training=False):
        self.calls = [*getattr(self, "calls", []), training]
        return x * 2.0


def test_calling_a_layer_forwards_the_input_and_the_training_flag(xp):
    xs, device = xp
    layer = _Recorder()
    x = put(xs, device, [1.0, -3.0], "float32")
    np.testing.assert_array_equal(host(layer(x)), [2.0, -6.0])
    layer(x, training=True)
    layer(x, False)
    assert layer.calls == [False, True, False]
    assert layer.config() == {"type": "_Recorder"}


def test_activation_layer_spellings():
    # LeakyReLU() leaks 0.01, as torch.nn.LeakyReLU; Identity() passes the input through
    leaky = pn.LeakyReLU()
    assert leaky.config() == {"type": "ActivationLayer",
                              "activation": {"name": "leaky_relu", "negative_slope": 0.01}}
    np.testing.assert_allclose(leaky(np.array([-2.0, 3.0])), [-0.02, 3.0])
    assert pn.Identity().activation is A.identity


def test_format_shape_of_an_unknown_shape():
    assert pn.layers.format_shape(None) == "(unknown)"
    assert pn.layers.format_shape((3, None), batch="b") == "(b, 3, ?)"


def test_dense_subclass_with_buffers_declares_them():
    class Counting(pn.Dense):
        def buffer_shapes(self):
            return {"seen": (1,)}

    layer = Counting(3, 2)
    assert layer.declared_shapes("params") == {"weight": (3, 2), "bias": (2,)}
    assert layer.declared_shapes("buffers") == {"seen": (1,)}
    assert pn.Dense(3, 2).declared_shapes("buffers") == {}
    assert pn.Dense(3, 2, bias=False).declared_shapes("buffers") == {}


# ----------------------------------------------------------------- metrics ----


@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 3, 4), (5,)], ids=["rows", "images", "1-d"])
def test_mse_and_mae_metrics_are_means_over_every_output(xp, float64, shape):
    xs, device = xp
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=shape), rng.normal(size=shape)
    pa, ta = put(xs, device, pred, float64), put(xs, device, target, float64)
    d = (pred - target).reshape(shape[0], -1)
    for name, per_row in (("mse", (d * d).mean(axis=1)), ("mae", np.abs(d).mean(axis=1))):
        total = pn.metrics.get(name, pn.MSE()).total(pa, ta)
        assert total.shape == ()
        assert_close(total, per_row.sum(), float64)


def test_mse_metric_of_a_convolutional_network_equals_its_mse_loss(xp, float64):
    xs, device = xp
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2, 4, 4)), rng.normal(size=(6, 3, 4, 4))
    net = pn.Sequential([pn.Conv2D(2, 3, 3, padding=1)], input_shape=(2, 4, 4), backend=xs,
                        device=device, dtype=float64, seed=0)
    result = net.evaluate(x, y, loss="mse", metrics=["mse", "mae"], batch_size=4)
    pred = host(net.predict(x))
    tol = TOLERANCES[float64]
    assert result["mse"] == pytest.approx(result["loss"], rel=tol["rtol"] * 10)  # two summation orders
    assert result["mae"] == pytest.approx(np.abs(pred - y).mean(), rel=tol["rtol"] * 10)


def test_accuracy_against_labels_probabilities_and_binary_targets(xp):
    xs, device = xp
    f32 = lambda a: put(xs, device, a, "float32")  # noqa: E731
    acc = pn.metrics.Accuracy()
    assert acc.from_logits  # predictions are logits unless told otherwise
    pred = f32([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 1.0]])
    guessed = [0, 1, 2, 0]
    assert float(acc.total(pred, put(xs, device, [0, 1, 1, 2], "int64"))) == 2.0
    # probability targets: their argmax per row is the label
    one_hot = np.eye(3)[[0, 2, 2, 0]]
    assert float(acc.total(pred, f32(one_hot))) == 3.0
    soft = np.full((4, 3), 0.1) + 0.7 * np.eye(3)[guessed]
    assert float(acc.total(pred, f32(soft))) == 4.0
    # binary: a logit is positive above 0, a probability above 0.5; targets above 0.5;
    # a tie at the threshold is the negative class, for predictions and targets alike
    logits = f32([[0.3], [-0.2], [0.0], [2.0]])
    targets = f32([[1.0], [0.0], [0.0], [0.5]])
    assert float(acc.total(logits, targets)) == 3.0  # the last row: 2.0 is positive, 0.5 not
    probs = pn.metrics.Accuracy(from_logits=False)
    assert float(probs.total(f32([[0.3], [0.5], [0.7]]), f32([[0.0], [0.0], [1.0]]))) == 3.0
    assert float(acc.total(f32([[0.3], [0.5], [0.7]]), f32([[0.0], [0.0], [1.0]]))) == 1.0


def test_accuracy_refuses_predictions_that_are_not_rows_of_classes():
    acc = pn.metrics.Accuracy()
    for shape in [(4,), (4, 1, 3), (2, 1, 3, 3)]:
        with pytest.raises(ValueError, match=r"accuracy needs predictions of shape \(n, classes\) "
                                             rf"or \(n, 1\), got {re.escape(str(shape))}"):
            acc.total(np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32))
    x = np.zeros((4, 1, 3, 3))
    net = pn.Sequential([pn.Conv2D(1, 1, 1)], input_shape=(1, 3, 3), seed=0)
    with pytest.raises(ValueError, match=r"accuracy needs predictions .* got \(4, 1, 3, 3\)"):
        net.evaluate(x, np.zeros((4, 1, 3, 3)), loss="bce_with_logits", metrics=["accuracy"])


# ------------------------------------------------------ the optimizers' fast path ----


def test_after_the_first_step_small_host_parameters_are_updated_in_place():
    # The first step may put the parameters into new arrays (views of one buffer); after
    # that, an array taken from ``params`` sees every later update.
    params = {"w": np.ones((3, 2)), "b": np.zeros(2)}
    opt = pn.Adam(lr=0.1)
    grads = {"w": np.full((3, 2), 0.5), "b": np.array([1.0, -1.0])}
    opt.step(params, grads)
    w, b = params["w"], params["b"]
    after_one = w.copy(), b.copy()
    opt.step(params, grads)
    assert params["w"] is w and params["b"] is b
    # Adam's second step moves each parameter by about lr against its gradient's sign
    np.testing.assert_allclose(w, after_one[0] - 0.1, rtol=1e-3)
    np.testing.assert_allclose(b, after_one[1] - [0.1, -0.1], rtol=1e-3, atol=1e-3)


def test_a_parameter_added_or_replaced_between_steps_is_updated():
    params = {"w": np.ones(4)}
    opt = pn.SGD(lr=0.5)
    opt.step(params, {"w": np.ones(4)})
    params["b"] = np.zeros(2)  # a new parameter
    opt.step(params, {"w": np.ones(4), "b": np.array([2.0, -2.0])})
    np.testing.assert_array_equal(params["w"], [0.0] * 4)
    np.testing.assert_array_equal(params["b"], [-1.0, 1.0])
    params["w"] = np.full(4, 10.0)  # an array replaced by the user
    opt.step(params, {"w": np.ones(4), "b": np.zeros(2)})
    np.testing.assert_array_equal(params["w"], [9.5] * 4)
    np.testing.assert_array_equal(params["b"], [-1.0, 1.0])


def test_a_0d_parameter_beside_a_large_one_is_updated():
    # too many elements to pack: a large array is updated block by block, a 0-d one whole
    big = 70_000
    params = {"w": np.zeros(big), "s": np.asarray(1.0)}
    opt = pn.SGD(lr=0.5, momentum=0.5)
    for _ in range(2):
        opt.step(params, {"w": np.ones(big), "s": np.asarray(2.0)})
    # momentum buffer: 2, then 0.5 * 2 + 2 = 3; s = 1 - 0.5 * 2 - 0.5 * 3
    assert params["s"].shape == () and float(params["s"]) == -1.5
    np.testing.assert_array_equal(params["w"], np.full(big, -0.5 - 0.75))


# ------------------------------------------------------------- initializers ----


def test_normal_initializer_defaults_to_the_standard_normal():
    init = initializers.normal()
    assert init.__name__ == "normal(0.0, 1.0)"
    got = init(np.random.default_rng(0), (4, 5), 4, 5)
    np.testing.assert_array_equal(got, np.random.default_rng(0).normal(0.0, 1.0, size=(4, 5)))
