"""Activations: values against independent NumPy formulas, derivatives, dtype/device kept."""

from __future__ import annotations

import numpy as np
import pytest
from _util import assert_on, host, put

import portanet as pn
from portanet import activations as A
from portanet.testing import assert_close


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


GELU_C = np.sqrt(2.0 / np.pi)

# name -> (activation, f, df) written independently in float64 NumPy
REFERENCE = {
    "identity": (A.identity, lambda x: x, lambda x: np.ones_like(x)),
    "relu": (A.relu, lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
    "leaky_relu": (A.LeakyReLU(0.1), lambda x: np.where(x > 0, x, 0.1 * x),
                   lambda x: np.where(x > 0, 1.0, 0.1)),
    "elu": (A.ELU(1.5), lambda x: np.where(x > 0, x, 1.5 * (np.exp(x) - 1)),
            lambda x: np.where(x > 0, 1.0, 1.5 * np.exp(x))),
    "sigmoid": (A.sigmoid, _sig, lambda x: _sig(x) * (1 - _sig(x))),
    "tanh": (A.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "softplus": (A.softplus, lambda x: np.log1p(np.exp(x)), _sig),
    "silu": (A.silu, lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
    "gelu": (A.gelu, lambda x: 0.5 * x * (1 + np.tanh(GELU_C * (x + 0.044715 * x**3))),
             None),
}


@pytest.fixture
def x_host():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, size=(7, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kinks at 0
    return x


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_values_match_numpy_formula(xp, dtype, x_host, name):
    act, f, _ = REFERENCE[name]
    xs, device = xp
    x = put(xs, device, x_host, dtype)
    y = act(x)
    assert_on(xs, device, y, dtype, x_host.shape)
    assert_close(y, f(x_host.astype(dtype).astype(np.float64)), dtype, scale=4)


@pytest.mark.parametrize("name", sorted(n for n in REFERENCE if REFERENCE[n][2] is not None))
def test_derivatives_match_numpy_formula(xp, dtype, x_host, name):
    act, _, df = REFERENCE[name]
    xs, device = xp
    x = put(xs, device, x_host, dtype)
    d = act.grad(x)
    assert_on(xs, device, d, dtype, x_host.shape)
    assert_close(d, df(x_host.astype(dtype).astype(np.float64)), dtype, scale=4)


def test_gelu_derivative_by_central_difference(xp, float64, x_host):
    xs, device = xp
    h = 1e-6
    x = put(xs, device, x_host, "float64")
    numeric = (host(A.gelu(x + h)) - host(A.gelu(x - h))) / (2 * h)
    np.testing.assert_allclose(host(A.gelu.grad(x)), numeric, rtol=1e-7, atol=1e-9)


def test_sigmoid_and_softplus_do_not_overflow(xp, dtype):
    xs, device = xp
    x = put(xs, device, [[-1e4, -100.0, 0.0, 100.0, 1e4]], dtype)
    s = host(A.sigmoid(x))
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s[0], [0.0, _sig(-100.0), 0.5, 1.0, 1.0], rtol=1e-6, atol=1e-40)
    sp = host(A.softplus(x))
    np.testing.assert_allclose(sp[0], [0.0, np.log1p(np.exp(-100.0)), np.log(2), 100, 1e4],
                               rtol=1e-6, atol=1e-40)


def test_softmax_rows_and_stability(xp, dtype):
    xs, device = xp
    logits = np.array([[1.0, 2.0, 3.0], [1e4, 0.0, -1e4], [-5.0, -5.0, -5.0]])
    y = A.softmax(put(xs, device, logits, dtype))
    assert_on(xs, device, y, dtype, (3, 3))
    e = np.exp(logits[0] - 3.0)
    expected = np.stack([e / e.sum(), [1.0, 0.0, 0.0], [1 / 3] * 3])
    assert_close(y, expected, dtype, scale=4)


def test_softmax_backward_is_jacobian_vector_product(xp, float64):
    xs, device = xp
    rng = np.random.default_rng(1)
    z, g = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    zs = put(xs, device, z, "float64")
    y = A.softmax(zs)
    got = A.softmax.backward(zs, y, put(xs, device, g, "float64"))
    p = host(y)
    expected = np.stack([(np.diag(p[i]) - np.outer(p[i], p[i])) @ g[i] for i in range(4)])
    assert_close(got, expected, "float64", scale=10)
    with pytest.raises(TypeError, match="no elementwise derivative"):
        A.softmax.grad(zs)


def test_custom_activation_pair_is_usable_in_dense(xp):
    xs, device = xp
    square = pn.Activation(lambda x: x * x, lambda x: 2.0 * x, name="square")
    net = pn.Sequential([pn.Dense(3, 2, activation=square)], backend=xs, device=device, seed=0)
    x = np.arange(6.0).reshape(2, 3)
    w, b = net.state_dict()["0.weight"], net.state_dict()["0.bias"]
    assert_close(net.predict(x), (x @ w + b) ** 2, "float32", scale=10)


@pytest.mark.parametrize("spec,expected", [
    ("relu", "relu"), ("leaky_relu", "leaky_relu"), ({"name": "elu", "alpha": 2.0}, "elu"),
    (None, "identity"), ("gelu", "gelu"), ("softmax", "softmax"),
])
def test_get_by_name_and_config(spec, expected):
    act = A.get(spec)
    assert act.name == expected
    assert A.get(act.config()).config() == act.config()


def test_unknown_activation_lists_known_names():
    with pytest.raises(ValueError, match="known activations are .*relu"):
        A.get("swishy")
    with pytest.raises(ValueError, match="bad parameters"):
        A.get({"name": "elu", "beta": 1})


def test_activation_layers_equal_functions(xp):
    xs, device = xp
    x = put(xs, device, np.linspace(-3, 3, 12).reshape(3, 4), "float32")
    for layer, act in [(pn.LeakyReLU(0.1), A.LeakyReLU(0.1)), (pn.Sigmoid(), A.sigmoid),
                       (pn.Tanh(), A.tanh), (pn.ReLU(), A.relu), (pn.ELU(), A.elu),
                       (pn.GELU(), A.gelu), (pn.SiLU(), A.silu), (pn.Softplus(), A.softplus),
                       (pn.Softmax(), A.softmax), (pn.Identity(), A.identity)]:
        np.testing.assert_array_equal(host(layer.forward(x)), host(act(x)))


@pytest.mark.parametrize("slope", [0.0, 0.1, 1.0, 2.5, -0.5])
def test_leaky_relu_any_slope(xp, slope, x_host):
    """Slopes in [0, 1] take the max(x, a x) path; others the where path."""
    xs, device = xp
    act = A.LeakyReLU(slope)
    x = put(xs, device, x_host, "float32")
    xf = x_host.astype(np.float32).astype(np.float64)
    assert_close(act(x), np.where(xf > 0, xf, slope * xf), "float32")
    g = put(xs, device, np.ones_like(x_host), "float32")
    assert_close(act.backward(x, act(x), g), np.where(xf > 0, 1.0, slope), "float32")


@pytest.mark.parametrize("slope", [0.01, 0.1, 0.3, 2.5, -0.5])
def test_leaky_relu_backward_is_bitwise_the_where_form(xp, dtype, slope):
    xs, device = xp
    rng = np.random.default_rng(7)
    x, g = rng.normal(size=(64, 33)), rng.normal(size=(64, 33))
    act = A.LeakyReLU(slope)
    got = host(act.backward(put(xs, device, x, dtype), None, put(xs, device, g, dtype)))
    gd = g.astype(dtype)
    expected = np.where(x.astype(dtype) > 0, gd, np.asarray(slope, dtype=dtype) * gd)
    np.testing.assert_array_equal(got, expected.astype(np.float64))
