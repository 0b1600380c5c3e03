"""Layers: Dense forward/backward against NumPy, Dropout, initializers, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _util import assert_on, host, put

import portanet as pn
from portanet import initializers
from portanet.testing import assert_close


def _net(xp, device, layers, dtype="float32", seed=0):
    xs, dev = xp, device
    return pn.Sequential(layers, backend=xs, device=dev, dtype=dtype, seed=seed)


@pytest.mark.parametrize("bias", [True, False])
def test_dense_forward_backward_match_numpy(xp, dtype, bias):
    xs, device = xp
    net = _net(xs, device, [pn.Dense(4, 3, activation="tanh", bias=bias)], dtype)
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    w = net.state_dict()["0.weight"].astype(np.float64)
    b = net.state_dict()["0.bias"].astype(np.float64) if bias else np.zeros(3)
    xd = x.astype(dtype).astype(np.float64)
    gd = g.astype(dtype).astype(np.float64)

    y = net.forward(put(xs, device, x, dtype), training=True)
    z = xd @ w + b
    assert_on(xs, device, y, dtype, (5, 3))
    assert_close(y, np.tanh(z), dtype, scale=10)

    dx = net.backward(put(xs, device, g, dtype))
    dz = gd * (1 - np.tanh(z) ** 2)
    assert_on(xs, device, dx, dtype, (5, 4))
    assert_close(dx, dz @ w.T, dtype, scale=10)
    grads = net.gradients()
    assert list(grads) == (["0.weight", "0.bias"] if bias else ["0.weight"])
    assert_on(xs, device, grads["0.weight"], dtype, (4, 3))
    assert_close(grads["0.weight"], xd.T @ dz, dtype, scale=10)
    if bias:
        assert_close(grads["0.bias"], dz.sum(axis=0), dtype, scale=10)


def test_dense_accepts_activation_layer_and_name(xp):
    xs, device = xp
    a = _net(xs, device, [pn.Dense(2, 3, activation=pn.LeakyReLU(0.1))])
    b = _net(xs, device, [pn.Dense(2, 3, activation={"name": "leaky_relu", "negative_slope": 0.1})])
    x = [[1.0, -2.0], [-3.0, 0.5]]
    np.testing.assert_array_equal(host(a.predict(x)), host(b.predict(x)))


def test_dense_rejects_wrong_width_with_clear_message(xp):
    xs, device = xp
    net = _net(xs, device, [pn.Dense(2, 100), pn.Dense(100, 1)])
    before = net.state_dict()
    with pytest.raises(ValueError, match=r"Dense\(2, 100\) \(layer 0\) expects a batch of shape "
                                         r"\(n, 2\), got \(4, 3\)"):
        net.forward(np.zeros((4, 3)))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_dense_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="positive int"):
        pn.Dense(bad, 3)


def test_chain_mismatch_is_caught_at_construction():
    with pytest.raises(ValueError, match=r"Dense\(50, 1\) \(layer 1\) expects 50 input features, "
                                         "but the layer before it gives 100"):
        pn.Sequential([pn.Dense(2, 100), pn.Dense(50, 1)])


def test_dropout_is_inverted_and_uses_the_host_rng(xp):
    xs, device = xp
    net = _net(xs, device, [pn.Dense(8, 8, init="he_normal"), pn.Dropout(0.25)], seed=3)
    x = np.ones((50, 8))
    evaluation = host(net.forward(x))
    np.testing.assert_array_equal(evaluation, host(net.forward(x, training=False)))
    y = host(net.forward(x, training=True))
    mask = host(net.layers[1]._mask)
    # kept entries are scaled by 1 / (1 - p); dropped ones are zero
    assert set(np.unique(mask)) <= {0.0, float(np.float32(1.0 / 0.75))}
    np.testing.assert_allclose(y, evaluation * mask, rtol=1e-6)
    assert 0.15 < (mask == 0).mean() < 0.35
    # the same seed draws the same mask, on any backend: compare with a NumPy network
    ref = pn.Sequential([pn.Dense(8, 8, init="he_normal"), pn.Dropout(0.25)], backend="numpy",
                        seed=3)
    ref.forward(x, training=True)
    np.testing.assert_array_equal(mask, host(ref.layers[1]._mask))
    # backward multiplies by the same mask
    g = net.backward(put(xs, device, np.ones((50, 8)), "float32"))
    assert g.shape == (50, 8)


def test_dropout_rejects_bad_p():
    for p in (-0.1, 1.0, "0.5", None):
        with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\)"):
            pn.Dropout(p)


@pytest.mark.parametrize("name,std", [
    ("he_normal", np.sqrt(2 / 400)), ("glorot_normal", np.sqrt(2 / 600)),
    ("lecun_normal", np.sqrt(1 / 400)), ("he_uniform", np.sqrt(6 / 400) / np.sqrt(3)),
    ("glorot_uniform", np.sqrt(6 / 600) / np.sqrt(3)),
])
def test_initializer_scales(name, std):
    w = initializers.get(name)(np.random.default_rng(0), (400, 200), 400, 200)
    assert w.shape == (400, 200)
    assert abs(w.std() / std - 1) < 0.03
    assert abs(w.mean()) < 0.01 * 3 * std + 1e-3


def test_notebook_normal_and_zeros_initializers():
    w = initializers.normal(1.0, 0.1)(np.random.default_rng(0), (300, 300), 300, 300)
    assert abs(w.mean() - 1.0) < 0.01 and abs(w.std() - 0.1) < 0.005
    assert not initializers.zeros(None, (3, 2), 3, 2).any()
    with pytest.raises(ValueError, match="known initializers"):
        initializers.get("orthogonal")
    net = pn.Sequential([pn.Dense(3, 2, init="zeros")], seed=0)
    assert not net.state_dict()["0.weight"].any()


def test_same_seed_same_weights_on_every_backend(xp, dtype):
    xs, device = xp
    layers = lambda: [pn.Dense(5, 7, activation="relu", init="he_uniform"), pn.Dense(7, 2)]  # noqa: E731
    net = _net(xs, device, layers(), dtype, seed=42)
    ref = pn.Sequential(layers(), backend="numpy", dtype=dtype, seed=42)
    for name, value in ref.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[name], value)
    other = pn.Sequential(layers(), backend="numpy", dtype=dtype, seed=43)
    assert not np.array_equal(other.state_dict()["0.weight"], ref.state_dict()["0.weight"])


# ------------------------------------------------------- Dense, directly ----


@pytest.mark.parametrize("args, name", [((0, 3), "in_features"), ((3, True), "out_features"),
                                        ((2.0, 3), "in_features")])
def test_dense_names_the_size_that_is_not_a_positive_int(args, name):
    with pytest.raises(ValueError, match=rf"^Dense: {name} must be a positive int, got "):
        pn.Dense(*args)


def test_dense_called_directly_and_its_backward_returns_the_input_gradient_by_default(xp, float64):
    xs, device = xp
    rng = np.random.default_rng(16)
    net = pn.Sequential([pn.Dense(4, 3, activation="tanh")], backend=xs, device=device,
                        dtype="float64", seed=0)
    state = net.state_dict()
    state["0.bias"] = rng.normal(size=3)
    net.load_state_dict(state)
    w, b, x_host = state["0.weight"], state["0.bias"], rng.normal(size=(5, 4))
    dense, x = net.layers[0], put(xs, device, x_host, "float64")
    y = dense.forward(x)
    want = np.tanh(x_host @ w + b)
    assert_close(y, want, "float64")
    g = rng.normal(size=(5, 3))
    dx = dense.backward(put(xs, device, g, "float64"))  # no need_input_grad argument: dL/dx
    assert_on(xs, device, dx, "float64", (5, 4))
    assert_close(dx, (g * (1.0 - want ** 2)) @ w.T, "float64")  # tanh' = 1 - tanh^2
    with pytest.raises(ValueError, match=r"expects input of shape \(n, 4\), got \(5, 4, 1\)"):
        dense.forward(put(xs, device, rng.normal(size=(5, 4, 1)), "float64"))


def test_forward_checked_evaluates_unless_told_to_train(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dense(4, 16), pn.Dropout(0.5), pn.Dense(16, 2)], backend=xs,
                        device=device, seed=0)
    x = net.as_input(np.random.default_rng(17).normal(size=(6, 4)))
    np.testing.assert_array_equal(host(net.forward_checked(x)), host(net.predict(x)))
    assert not np.array_equal(host(net.forward_checked(x, training=True)), host(net.predict(x)))


class _Draws:
    """A stand-in for the host RNG whose every uniform draw is ``value``."""

    def __init__(self, value):
        self.value = value

    def random(self, shape):
        return np.full(shape, self.value)


@pytest.mark.parametrize("across_ranks", [False, True])
def test_dropout_keeps_a_unit_whose_draw_equals_p(across_ranks):
    # keep iff u >= p, u uniform on [0, 1): P(keep) = 1 - p exactly (NumPy draws multiples
    # of 2**-53, so u == p happens for dyadic p such as 0.5)
    net = pn.Sequential([pn.Dropout(0.5)], input_shape=(3,), dtype="float64", seed=0)
    ctx = net.context
    ctx.rng = _Draws(0.5)
    if across_ranks:
        ctx.global_rows = (4, 1, 3)  # rows 1:3 of a global batch of 4
    y = net.forward(np.ones((2, 3)), training=True)
    np.testing.assert_array_equal(host(y), np.full((2, 3), 2.0))  # kept, scaled by 1/(1-p)
    ctx.rng = _Draws(0.5 - 2.0 ** -53)
    np.testing.assert_array_equal(host(net.forward(np.ones((2, 3)), training=True)), 0.0)
