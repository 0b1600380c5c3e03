"""More behaviours of the model modules that a mutation run found unpinned (after
``test_pinned_model.py``): every built-in loss's name, Huber's default delta, the
cross-entropy's row-wise shift (large logits in one row leave the others finite), the
per-sample losses of predictions with more than two axes; ``Sequential.fit`` and
``evaluate``'s defaults (batch sizes, the progress line, the divergence factor) and the
arguments they pass on; AdamW's defaults and ``eps_hat``.

Expected values are worked out by hand from the formulas in the docstrings, never
read off portanet's output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _util import host, put

import portanet as pn
from portanet import losses as L
from portanet.layers import ActivationLayer
from portanet.testing import assert_close

# -------------------------------------------------------------------- losses ----


def test_every_built_in_loss_is_known_by_its_own_name():
    for cls, name in ((L.MSE, "mse"), (L.MAE, "mae"), (L.Huber, "huber"),
                      (L.BCEWithLogits, "bce_with_logits"), (L.CrossEntropy, "cross_entropy")):
        loss = cls()
        assert loss.name == name and loss.config()["name"] == name, cls
        assert type(L.get(name)) is cls and type(L.get(loss.config())) is cls, name


def test_huber_delta_is_one_by_default(xp, dtype):
    xs, device = xp
    huber = L.Huber()
    assert huber.delta == 1.0 and huber.config() == {"name": "huber", "delta": 1.0}
    # |d| = 0.5 and 3: 0.5^2 / 2 = 0.125, and 1 * (3 - 0.5) = 2.5
    pred, target = put(xs, device, [[0.5], [3.0]], dtype), put(xs, device, [[0.0], [0.0]], dtype)
    assert_close(huber.value(pred, target), (0.125 + 2.5) / 2, dtype)


def test_cross_entropy_shifts_each_row_by_its_own_maximum(xp, dtype):
    # one row of logits near 1e4 and one near 0: shifted by a maximum over all rows, the
    # second row's exponentials underflow to 0 and its log-softmax to -inf
    xs, device = xp
    z = put(xs, device, [[1.0e4, 1.0e4 - 1.0], [0.0, 1.0]], dtype)
    labels = put(xs, device, [0, 1], "int64")
    # each row picks its larger logit, 1 above the other: -log(1 / (1 + e^-1))
    want = math.log1p(math.exp(-1.0))
    ce = L.CrossEntropy()
    assert_close(ce.value(z, labels), want, dtype)
    assert_close(ce.per_sample(z, labels), [want, want], dtype)
    value, _ = ce.value_and_grad(z, labels)
    assert_close(value, want, dtype)


def test_per_sample_losses_of_predictions_with_more_axes(xp, dtype):
    # the loss of a sample is the mean over all of its elements, whatever their shape
    xs, device = xp
    pred = np.arange(16.0).reshape(2, 2, 2, 2) / 4.0
    target = np.zeros_like(pred)
    pa, ta = put(xs, device, pred, dtype), put(xs, device, target, dtype)
    rows = pred.reshape(2, -1)
    for loss, want in ((L.MSE(), (rows**2).mean(axis=1)), (L.MAE(), rows.mean(axis=1))):
        got = loss.per_sample(pa, ta)
        assert tuple(got.shape) == (2,), loss
        assert_close(got, want, dtype, err_msg=loss.name)
        w = put(xs, device, [3.0, 1.0], dtype)
        assert_close(loss.value(pa, ta, sample_weight=w), (3 * want[0] + want[1]) / 4, dtype)


def test_a_loss_is_of_the_predictions_dtype_whatever_the_targets_and_weights(xp, float64):
    # float32 predictions with float64 targets (or weights): the sums are float64 on
    # every backend, and the loss is cast back to the predictions' float32
    xs, device = xp
    pred = put(xs, device, [[0.5, -1.0], [2.0, 0.0]], "float32")
    targets = np.array([[0.25, 0.75], [1.0, 0.0]])
    probs, probs32 = put(xs, device, targets, float64), put(xs, device, targets, "float32")
    w = put(xs, device, [1.0, 3.0], float64)
    for loss in (L.MSE(), L.MAE(), L.Huber(), L.BCEWithLogits(), L.CrossEntropy()):
        value, _ = loss.value_and_grad(pred, probs)
        weighted = loss.value(pred, probs32, sample_weight=w)
        for got in (value, loss.value(pred, probs), weighted):
            assert tuple(got.shape) == () and got.dtype == xs.float32, loss.name


class _Half:
    """A loss function object with no ``__name__``."""

    def __call__(self, pred, target):
        return _target_mean(pred, target) / 2


def test_a_loss_is_named_after_its_function_unless_named():
    assert L.Loss(_target_mean, _no_grad).name == "_target_mean"
    assert L.Loss(_target_mean, _no_grad, name="mine").name == "mine"
    assert L.Loss(_Half(), _no_grad).name == "loss"  # no __name__ to take
    assert L.Loss(_Half(), _no_grad).config() == {"name": "loss"}


def test_cross_entropy_takes_label_smoothing_up_to_one(xp, dtype):
    # label_smoothing=1: the target is uniform over the classes, whatever the labels,
    # and the loss is the mean over classes of -log softmax: log 2 for equal logits
    xs, device = xp
    ce = L.CrossEntropy(label_smoothing=1.0)
    assert ce.label_smoothing == 1.0
    z = put(xs, device, [[0.0, 0.0], [3.0, 3.0]], dtype)
    assert_close(ce.value(z, put(xs, device, [0, 1], "int64")), math.log(2.0), dtype)
    with pytest.raises(ValueError, match=r"^CrossEntropy: label_smoothing must be in \[0, 1\], got 1\.5$"):
        L.CrossEntropy(label_smoothing=1.5)


# ---------------------------------------------------------------- Sequential ----


class _Batches(ActivationLayer):
    """The identity as a layer that records the rows of each forward, by mode."""

    def __init__(self):
        super().__init__("identity")
        self.rows = {True: [], False: []}

    def forward(self, x, training=False):
        self.rows[bool(training)].append(int(x.shape[0]))
        return super().forward(x, training)


def _recording_net(xs, device, dtype="float32"):
    rec = _Batches()
    net = pn.Sequential([pn.Dense(2, 1), rec], backend=xs, device=device, dtype=dtype, seed=0)
    return net, rec


def test_fit_takes_batches_of_32_rows_and_one_progress_line_by_default(xp, capsys):
    xs, device = xp
    net, rec = _recording_net(xs, device)
    x, y = np.zeros((40, 2)), np.zeros((40, 1))
    net.fit(x, y, loss="mse", optimizer="sgd", shuffle=False)
    assert rec.rows[True] == [32, 8]
    out, err = capsys.readouterr()
    # verbose=1 where stderr is no terminal: one line per epoch on stderr, none on stdout
    assert out == "" and err.startswith("epoch 1/1  loss=")


def test_fit_passes_the_validation_data_on(xp):
    xs, device = xp
    net, rec = _recording_net(xs, device)
    x, y = np.zeros((4, 2)), np.zeros((4, 1))
    history = net.fit(x, y, loss="mse", optimizer="sgd", batch_size=4, verbose=0,
                      validation_data=(np.zeros((3, 2)), np.zeros((3, 1))))
    assert set(history.history) == {"loss", "val_loss"}
    assert rec.rows == {True: [4], False: [3]}


def _target_mean(pred, target):
    """A loss that is the mean of the targets, whatever the prediction."""
    return pn.backend.namespace_of(target).mean(target)


def _no_grad(pred, target):
    return pn.backend.namespace_of(pred).zeros_like(pred)


def test_fit_calls_a_loss_ten_thousand_times_its_start_diverged_by_default(xp):
    xs, device = xp
    net, _ = _recording_net(xs, device)
    loss = L.Loss(_target_mean, _no_grad, name="target_mean")
    x = np.zeros((2, 2))
    # the first batch's loss, 1, is the reference; the second's is 10000.5 > 1e4 * 1
    y = np.array([[1.0], [10000.5]])
    with pytest.raises(pn.TrainingDivergedError,
                       match=r"^training diverged: loss is 10000\.5 at epoch 1, step 2 "):
        net.fit(x, y, loss=loss, optimizer="sgd", batch_size=1, shuffle=False, verbose=0)
    # 10000 is not past 1e4 times 1
    net.fit(x, np.array([[1.0], [10000.0]]), loss=loss, optimizer="sgd", batch_size=1,
            shuffle=False, verbose=0)


def test_evaluate_takes_batches_of_256_rows_by_default(xp):
    xs, device = xp
    net, rec = _recording_net(xs, device)
    x, y = np.ones((300, 2)), np.zeros((300, 1))
    want = host(net.predict(x))
    logs = net.evaluate(x, y, loss="mse")
    assert rec.rows[False] == [300, 256, 44]  # predict's one batch, then evaluate's two
    assert_close(logs["loss"], float(np.mean(want**2)), "float32")
    rec.rows[False].clear()
    net.evaluate(x, y, loss="mse", batch_size=100)
    assert rec.rows[False] == [100, 100, 100]


def test_array_view_shows_the_parameters_by_default_and_counts_assignments(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dense(2, 3), pn.BatchNorm(3), pn.Dense(3, 1)], backend=xs,
                        device=device, seed=0)
    view = pn.network.ArrayView(net.layers)
    # the batch norm's running statistics are buffers, not in the view
    assert list(view) == list(net.parameters()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert view.version == 0 and net.parameters().version == 0
    for count in (1, 2, 3):
        view["0.bias"] = put(xs, device, [float(count)] * 3, "float32")
        assert view.version == count
    assert_close(net.parameters()["0.bias"], [3.0, 3.0, 3.0], "float32")


# ---------------------------------------------------------------- optimizers ----


def test_adamw_defaults():
    opt = pn.AdamW()
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay, opt.amsgrad, opt.eps_hat) == (
        1e-3, (0.9, 0.999), 1e-8, 1e-2, False, False)
    assert opt.config() == {"lr": 1e-3, "clip_norm": None, "clip_value": None,
                            "initial_lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                            "weight_decay": 1e-2, "amsgrad": False, "eps_hat": False}


def test_adamw_passes_eps_hat_on(xp, dtype):
    # one step from m = v = 0 with g = 1e-3: m = 1e-4, v = 1e-9. With eps_hat, eps is
    # added to sqrt(v) after the bias correction sqrt(1 - 0.999) ~ 0.0316 is folded into
    # the step size: step = lr sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps)
    xs, device = xp
    g, eps, lr = 1e-3, 1e-4, 0.1
    m, v = 0.1 * g, 0.001 * g * g
    c2 = math.sqrt(1 - 0.999)
    for eps_hat, eps_t in ((False, eps * c2), (True, eps)):
        assert pn.AdamW(eps_hat=eps_hat).eps_hat is eps_hat
        params = {"w": put(xs, device, [1.0], dtype)}
        opt = pn.AdamW(lr=lr, eps=eps, weight_decay=0.0, eps_hat=eps_hat)
        opt.step(params, {"w": put(xs, device, [g], dtype)})
        step = lr * c2 / (1 - 0.9) * m / (math.sqrt(v) + eps_t)
        assert_close(params["w"], [1.0 - step], dtype, err_msg=f"eps_hat={eps_hat}")


def test_optimizer_lr_from_a_schedule_config_or_schedule_and_its_checks():
    sgd = pn.SGD(lr={"name": "step", "step_size": 2, "initial_lr": 0.4})
    assert type(sgd.schedule) is pn.StepLR and sgd.lr == 0.4
    # the rate before the first step is the schedule's at step 0
    assert pn.SGD(lr=pn.ExponentialLR(0.5, initial_lr=1.0)).lr == 1.0
    assert pn.SGD(lr=0.1, initial_lr=0.3).initial_lr == 0.3
    with pytest.raises(ValueError, match=r"^initial_lr must be > 0, got -1$"):
        pn.SGD(lr=0.1, initial_lr=-1)
    with pytest.raises(ValueError, match=r"^clip_value must be > 0, got -1$"):
        pn.SGD(lr=0.1, clip_value=-1)


def test_a_new_network_has_completed_no_epoch_and_is_not_stopped(xp):
    xs, device = xp
    net, _ = _recording_net(xs, device)
    assert net.epoch == 0 and net.stop_training is False
    history = net.fit(np.zeros((2, 2)), np.zeros((2, 1)), loss="mse", optimizer="sgd",
                      epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and net.epoch == 2


def test_an_optimizer_steps_with_its_schedules_rate_at_each_step(xp, dtype):
    xs, device = xp
    params = {"w": put(xs, device, [0.0], dtype)}
    opt = pn.SGD(lr=pn.ExponentialLR(0.5, initial_lr=1.0))
    for _ in range(3):
        opt.step(params, {"w": put(xs, device, [1.0], dtype)})
    assert opt.lr == 0.25  # the rate of the last step, step 2
    assert_close(params["w"], [-(1.0 + 0.5 + 0.25)], dtype)


def test_input_shape_must_be_positive_ints():
    for bad in [(), (2.5,), (True,), (2, 0)]:
        with pytest.raises(ValueError, match=r"^input_shape must be a tuple of positive ints, got "):
            pn.Sequential([pn.Dense(2, 1)], backend="numpy", input_shape=bad)


def test_inputs_and_targets_are_named_in_errors(xp):
    xs, device = xp
    net, _ = _recording_net(xs, device)
    with pytest.raises(ValueError, match=r"^x: .* expects a batch of shape \(n, 2\), got \(3, 5\)$"):
        net.predict(np.zeros((3, 5)))
    with pytest.raises(TypeError, match=r"^x must hold numbers"):
        net.predict(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match=r"^y must hold numbers"):
        net.evaluate(np.zeros((1, 2)), np.array([["a"]]), loss="mse")
    # one row is a batch like any other
    assert set(net.evaluate(np.zeros((1, 2)), np.zeros((1, 1)), loss="mse")) == {"loss"}
