"""Losses: values and gradients against NumPy formulas; shapes, dtypes and errors."""

from __future__ import annotations

import numpy as np
import pytest
from _util import assert_on, host, put

import portanet as pn
from portanet import losses as L
from portanet.testing import assert_close


def _log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _reference(name, p, t, **kw):
    """(value, grad) of each loss in float64 NumPy, written from the definitions."""
    n = p.size
    d = p - t
    if name == "mse":
        return (d**2).mean(), 2 * d / n
    if name == "mae":
        return np.abs(d).mean(), np.sign(d) / n
    if name == "huber":
        delta = kw["delta"]
        v = np.where(np.abs(d) <= delta, 0.5 * d**2, delta * (np.abs(d) - 0.5 * delta))
        return v.mean(), np.clip(d, -delta, delta) / n
    if name == "bce_with_logits":
        s = 1 / (1 + np.exp(-p))
        return (-(t * np.log(s) + (1 - t) * np.log(1 - s))).mean(), (s - t) / n
    raise KeyError(name)


@pytest.fixture
def pred_target():
    rng = np.random.default_rng(3)
    return rng.normal(size=(6, 3)), rng.normal(size=(6, 3))


@pytest.mark.parametrize("loss,name,kw", [
    (L.MSE(), "mse", {}), (L.MAE(), "mae", {}), (L.Huber(0.7), "huber", {"delta": 0.7}),
])
def test_regression_losses(xp, dtype, pred_target, loss, name, kw):
    xs, device = xp
    p, t = pred_target
    value, grad = _reference(name, p.astype(dtype).astype(float), t.astype(dtype).astype(float), **kw)
    pv, tv = put(xs, device, p, dtype), put(xs, device, t, dtype)
    v = loss.value(pv, tv)
    assert_on(xs, device, v, dtype, ())
    assert_close(v, value, dtype, scale=10)
    g = loss.grad(pv, tv)
    assert_on(xs, device, g, dtype, p.shape)
    assert_close(g, grad, dtype, scale=10)


@pytest.mark.parametrize("loss", [L.MAE(), L.Huber(0.5)], ids=["mae", "huber"])
def test_gradient_at_ties_infinities_and_nan(xp, dtype, loss):
    """sign and the Huber clip, written out without xp.sign/xp.clip (host syncs on CuPy),
    keep their values: 0 at a tie, the clipped value at +-inf, NaN where d is NaN."""
    xs, device = xp
    d = np.array([[0.0, -0.0, 2.0, -3.0, 0.25, np.inf, -np.inf, np.nan]])
    g = host(loss.grad(put(xs, device, d, dtype), put(xs, device, np.zeros_like(d), dtype)))
    bound = 1.0 if isinstance(loss, L.MAE) else 0.5
    want = np.clip(np.sign(d) if bound == 1.0 else d, -bound, bound) / d.size
    np.testing.assert_array_equal(g, want.astype(dtype))


def test_bce_with_logits(xp, dtype):
    xs, device = xp
    rng = np.random.default_rng(4)
    z, t = rng.normal(size=(8, 1)) * 3, rng.integers(0, 2, size=(8, 1)).astype(float)
    value, grad = _reference("bce_with_logits", z.astype(dtype).astype(float), t)
    zv, tv = put(xs, device, z, dtype), put(xs, device, t, dtype)
    assert_close(L.BCEWithLogits().value(zv, tv), value, dtype, scale=10)
    assert_close(L.BCEWithLogits().grad(zv, tv), grad, dtype, scale=10)


def test_bce_with_logits_is_stable_for_large_logits(xp, dtype):
    xs, device = xp
    zv = put(xs, device, [[1e4], [-1e4]], dtype)
    tv = put(xs, device, [[0.0], [1.0]], dtype)
    # log(1 + e^1e4) = 1e4 for each row
    assert_close(L.BCEWithLogits().value(zv, tv), 1e4, dtype)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("targets", ["labels", "probabilities"])
def test_cross_entropy(xp, dtype, smoothing, targets):
    xs, device = xp
    rng = np.random.default_rng(5)
    z = rng.normal(size=(5, 4)) * 2
    labels = np.array([0, 3, 1, 1, 2])
    probs = rng.dirichlet(np.ones(4), size=5)
    q_in = np.eye(4)[labels] if targets == "labels" else probs
    q = (1 - smoothing) * q_in + smoothing / 4
    zf = z.astype(dtype).astype(float)
    value = -(q * _log_softmax(zf)).sum() / 5
    grad = (np.exp(_log_softmax(zf)) - q) / 5
    t = put(xs, device, labels, "int64") if targets == "labels" else put(xs, device, probs, dtype)
    loss = L.CrossEntropy(label_smoothing=smoothing)
    zv = put(xs, device, z, dtype)
    v = loss.value(zv, t)
    assert_on(xs, device, v, dtype, ())
    assert_close(v, value, dtype, scale=10)
    assert_close(loss.grad(zv, t), grad, dtype, scale=10)


def test_cross_entropy_is_stable_for_logits_of_1e4(xp, dtype):
    xs, device = xp
    z = put(xs, device, [[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype)
    t = put(xs, device, [0, 0], "int64")
    loss = L.CrossEntropy()
    v, g = host(loss.value(z, t)), host(loss.grad(z, t))
    assert np.isfinite(v) and np.all(np.isfinite(g))
    # row 0 is right with certainty (loss 0); row 1 is 2e4 + log 2 wrong
    assert_close(v, (2e4 + np.log(2)) / 2, dtype)
    assert_close(g, [[0, 0, 0], [-0.5, 0.25, 0.25]], dtype)


def test_shape_mismatch_is_an_error_not_a_broadcast(xp):
    xs, device = xp
    p = put(xs, device, np.zeros((4, 1)), "float32")
    with pytest.raises(ValueError, match=r"target shape \(4,\) does not match .*\(4, 1\)"):
        L.MSE().check_target(tuple(p.shape), put(xs, device, np.zeros(4), "float32"))
    with pytest.raises(ValueError, match="fits neither labels"):
        L.CrossEntropy().check_target((4, 3), put(xs, device, np.zeros((4, 2)), "float32"))


def test_custom_loss_pair(xp):
    xs, device = xp
    cube = pn.Loss(lambda p, t: xs.sum((p - t) ** 3), lambda p, t: 3 * (p - t) ** 2, name="cube")
    p, t = put(xs, device, [[2.0]], "float32"), put(xs, device, [[1.0]], "float32")
    assert float(host(cube(p, t))) == 1.0 and float(host(cube.grad(p, t))[0, 0]) == 3.0


def test_get_by_name():
    assert isinstance(L.get("mse"), L.MSE)
    assert isinstance(L.get("cross_entropy"), L.CrossEntropy)
    assert L.get({"name": "huber", "delta": 2.0}).delta == 2.0
    with pytest.raises(ValueError, match="known losses are"):
        L.get("hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        L.CrossEntropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match="delta"):
        L.Huber(0.0)


# ------------------------------------------------------------ weighted form ----

WEIGHTED = [("mse", {}), ("mae", {}), ("huber", {"delta": 0.5}), ("bce_with_logits", {}),
            ("cross_entropy", {}), ("cross_entropy", {"label_smoothing": 0.1})]


@pytest.mark.parametrize("name,kw", WEIGHTED, ids=lambda v: str(v) if v else "")
def test_a_weight_of_two_equals_a_repeated_row(xp, dtype, name, kw):
    """Weights [2, 1, 1, 0, 1, 3] give the value and gradient of the rows repeated that often."""
    xs, device = xp
    rng = np.random.default_rng(0)
    p = rng.normal(size=(6, 3))
    t = rng.integers(0, 3, size=6) if name == "cross_entropy" else rng.uniform(size=(6, 3))
    w = np.array([2.0, 1.0, 1.0, 0.0, 1.0, 3.0])
    rows = np.repeat(np.arange(6), w.astype(int))
    loss = L.get({"name": name, **kw})
    tt = put(xs, device, t, "int64" if t.dtype.kind == "i" else dtype)
    pp, ww = put(xs, device, p, dtype), put(xs, device, w, dtype)
    value = loss.value(pp, tt, ww)
    assert_on(xs, device, value, dtype, ())
    rp, rt = put(xs, device, p[rows], dtype), xs.take(tt, put(xs, device, rows, "int64"), axis=0)
    assert_close(value, loss.value(rp, rt), dtype)
    grad = host(loss.grad(pp, tt, ww))
    repeated = host(loss.grad(rp, rt))
    summed = np.zeros_like(grad)  # a repeated row's gradient is the sum over its copies
    np.add.at(summed, rows, repeated)
    assert_close(grad, summed, dtype)
    assert np.all(grad[3] == 0.0)  # weight 0: no gradient at all


def test_unit_weights_change_nothing_and_zero_weights_count_for_nothing(xp):
    xs, device = xp
    rng = np.random.default_rng(1)
    p, t = put(xs, device, rng.normal(size=(5, 2)), "float32"), put(xs, device,
                                                                    rng.normal(size=(5, 2)), "float32")
    ones, zeros = put(xs, device, np.ones(5), "float32"), put(xs, device, np.zeros(5), "float32")
    assert_close(pn.MSE().value(p, t, ones), pn.MSE().value(p, t), "float32")
    assert_close(pn.MSE().grad(p, t, ones), pn.MSE().grad(p, t), "float32")
    assert float(host(pn.MSE().value(p, t, zeros))) == 0.0  # not NaN: nothing to average
    assert np.all(host(pn.MSE().grad(p, t, zeros)) == 0.0)


def test_a_loss_without_a_per_sample_form_cannot_weight():
    plain = pn.Loss(lambda p, t: ((p - t) ** 2).sum(), lambda p, t: 2 * (p - t), name="sq")
    assert not plain.weighs_samples and pn.MSE().weighs_samples
    with pytest.raises(TypeError, match=r"loss 'sq' has no per-sample form.*per_sample="):
        plain.value(np.ones((2, 1)), np.zeros((2, 1)), np.ones(2))
    rows = pn.Loss(plain.f, plain.df, name="sq", per_sample=lambda p, t: ((p - t) ** 2)[:, 0])
    assert rows.value(np.ones((2, 1)), np.zeros((2, 1)), np.array([1.0, 3.0])) == 1.0


@pytest.mark.parametrize("name,kw", WEIGHTED + [("mse", {})], ids=lambda v: str(v) if v else "")
@pytest.mark.parametrize("weighted", [False, True])
def test_value_and_grad_equal_value_and_grad(xp, dtype, name, kw, weighted):
    """The fused call shares work but computes the same numbers as the two calls."""
    xs, device = xp
    rng = np.random.default_rng(2)
    p = rng.normal(scale=3.0, size=(7, 4))
    t = rng.integers(0, 4, size=7) if name == "cross_entropy" else rng.uniform(size=(7, 4))
    loss = L.get({"name": name, **kw})
    pp = put(xs, device, p, dtype)
    tt = put(xs, device, t, "int64" if t.dtype.kind == "i" else dtype)
    w = put(xs, device, rng.uniform(size=7), dtype) if weighted else None
    value, grad = loss.value_and_grad(pp, tt, w)
    assert_on(xs, device, value, dtype, ())
    assert_close(value, loss.value(pp, tt, w), dtype)
    assert_close(grad, loss.grad(pp, tt, w), dtype)
