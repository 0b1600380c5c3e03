"""Convolution, pooling, reshaping, normalization and residual blocks on every backend.

Each layer is checked three ways: against an independent NumPy reference written
with loops (values), against central differences in float64 (gradients), and
against NumPy on the session's backend (agreement at the dtype's tolerance). The
PyTorch autograd oracle for the same layers is in ``test_image_oracle.py``.

With ``PORTANET_GRADCHECK_REPORT=file.json`` the worst finite-difference disagreement of
each gradient test is written to that file (the README's "Convolutional networks" figures).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _util import WorstReport, assert_on, host, put
from test_gradcheck import central_differences

import portanet as pn
from portanet.layers import conv as conv_module
from portanet.testing import FINITE_DIFFERENCE_RTOL, assert_close, norm_rel_diff

# ------------------------------------------------------ NumPy references ----


def reference_conv(x, w, b, stride, padding, dilation):
    """Cross-correlation with loops over output positions: float64, torch's semantics."""
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, padding, dilation
    xp_ = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    o, c, kh, kw = w.shape
    ho = (xp_.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp_.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp_[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out + (0.0 if b is None else b[None, :, None, None])


def reference_pool(x, kernel, stride, padding, kind):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if kind == "max" else 0.0
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    ho = (xp_.shape[2] - kh) // sh + 1
    wo = (xp_.shape[3] - kw) // sw + 1
    out = np.zeros(x.shape[:2] + (ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = xp_[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = window.max(axis=(2, 3)) if kind == "max" else window.mean(axis=(2, 3))
    return out


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding, kernel, dilation):
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple((t // 2, t - t // 2) for t in total)
    return ((padding, padding), (padding, padding))


# ------------------------------------------------------------ the configs ----

CONV_GRID = [
    dict(kernel=k, stride=s, padding=p, dilation=d, bias=b)
    for k, s, p, d, b in itertools.product((1, 3, 5), (1, 2), (0, 1, "same"), (1, 2),
                                           (True, False))
    if not (p == "same" and s == 2)
]


def _image(rng, n=2, c=3, h=11, w=9):
    return rng.normal(size=(n, c, h, w))


def _single(layer, xs, device, dtype, input_shape):
    return pn.Sequential([layer], backend=xs, device=device, dtype=dtype, seed=0,
                         input_shape=input_shape)


# ------------------------------------------------------------------ values ----


@pytest.mark.parametrize("cfg", CONV_GRID[::3], ids=str)
def test_conv_matches_the_loop_reference(xp, float64, cfg):
    xs, device = xp
    rng = np.random.default_rng(0)
    x = _image(rng, n=1)
    layer = pn.Conv2D(3, 4, cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
                      dilation=cfg["dilation"], bias=cfg["bias"])
    net = _single(layer, xs, device, "float64", x.shape[1:])
    w = net.state_dict()["0.weight"]
    b = net.state_dict()["0.bias"] + rng.normal(size=4) if cfg["bias"] else None
    if cfg["bias"]:
        net.load_state_dict({"0.weight": w, "0.bias": b})
    y = net.predict(put(xs, device, x, "float64"))
    expected = reference_conv(x, w, b, (cfg["stride"],) * 2,
                              _pads(cfg["padding"], (cfg["kernel"],) * 2, (cfg["dilation"],) * 2),
                              (cfg["dilation"],) * 2)
    assert_on(xs, device, y, "float64", expected.shape)
    assert_close(y, expected, "float64", scale=10)


@pytest.mark.parametrize("kind,kernel,stride,padding", [
    ("max", 2, None, 0), ("max", 3, 2, 1), ("max", (2, 3), (1, 2), (1, 1)), ("max", 1, 2, 0),
    ("max", 2, 1, 0), ("avg", 2, None, 0), ("avg", 3, 2, 1), ("avg", (3, 2), 1, (1, 0)),
])
def test_pooling_matches_the_loop_reference(xp, dtype, kind, kernel, stride, padding):
    xs, device = xp
    x = _image(np.random.default_rng(1), n=2, c=2, h=7, w=8)
    cls = pn.MaxPool2D if kind == "max" else pn.AvgPool2D
    layer = cls(kernel, stride=stride, padding=padding)
    net = _single(layer, xs, device, dtype, x.shape[1:])
    y = net.predict(put(xs, device, x, dtype))
    xd = x.astype(dtype).astype(np.float64)
    # the reference reads the arguments as given (stride defaults to the kernel), not as
    # the layer stored them
    expected = reference_pool(xd, _pair(kernel), _pair(kernel if stride is None else stride),
                              _pair(padding), kind)
    assert_on(xs, device, y, dtype, expected.shape)
    assert_close(y, expected, dtype, scale=4)


def test_global_pool_flatten_and_reshape(xp, dtype):
    xs, device = xp
    x = _image(np.random.default_rng(2), n=3, c=4, h=5, w=6)
    xd = x.astype(dtype).astype(np.float64)
    gap = _single(pn.GlobalAvgPool2D(), xs, device, dtype, x.shape[1:])
    assert_close(gap.predict(put(xs, device, x, dtype)), xd.mean(axis=(2, 3)), dtype, scale=4)
    flat = _single(pn.Flatten(), xs, device, dtype, x.shape[1:])
    np.testing.assert_array_equal(host(flat.predict(put(xs, device, x, dtype))), xd.reshape(3, -1))
    back = _single(pn.Reshape((4, -1)), xs, device, dtype, (120,))
    assert tuple(back.predict(put(xs, device, x.reshape(3, -1), dtype)).shape) == (3, 4, 30)


# ------------------------------------------------------ finite differences ----


def gradcheck(net, x, max_entries=24, seed=0):
    """``{name: norm-relative difference}`` of the analytic gradients of
    ``L = sum(y * g)`` (g random) against central differences, for ``x`` and every parameter."""
    xp, device = net.xp, net.device
    rng = np.random.default_rng(seed)
    x_dev = xp.asarray(x, device=device)
    y = net.forward(x_dev, training=True)
    g = rng.normal(size=tuple(y.shape))
    g_dev = xp.asarray(g, device=device)
    analytic = {"x": host(net.backward(g_dev)), **{k: host(v) for k, v in net.gradients().items()}}
    state = net.state_dict()  # buffers too: training-mode forwards must not drift them

    def loss(p_name, p_host):
        net.load_state_dict({**state, p_name: p_host} if p_name != "x" else state)
        inp = xp.asarray(p_host if p_name == "x" else x, device=device)
        return float(np.sum(host(net.forward(inp, training=True)) * g))

    diffs = {}
    for name in ["x", *net.parameters()]:
        at = x if name == "x" else state[name]
        idx = np.arange(at.size)
        if at.size > max_entries:
            idx = np.sort(rng.choice(at.size, max_entries, replace=False))
        fd = central_differences(lambda a, name=name: loss(name, a), at, idx)
        diffs[name] = norm_rel_diff(analytic[name].reshape(-1)[idx], fd)
    net.load_state_dict(state)
    return diffs


#: The worst norm-relative difference per test function (``PORTANET_GRADCHECK_REPORT``).
REPORT = WorstReport("PORTANET_GRADCHECK_REPORT")


@pytest.fixture(scope="module", autouse=True)
def gradcheck_report():
    yield
    REPORT.write()


def _assert_gradcheck(net, x):
    diffs = gradcheck(net, x)
    REPORT.record(*diffs.values())
    bad = {k: v for k, v in diffs.items() if not v <= FINITE_DIFFERENCE_RTOL}
    assert not bad, bad


@pytest.mark.parametrize("cfg", CONV_GRID[1::4], ids=str)
def test_conv_gradients_by_finite_differences(xp, float64, cfg):
    xs, device = xp
    x = _image(np.random.default_rng(3), n=2, c=2, h=11, w=10)
    layer = pn.Conv2D(2, 3, cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
                      dilation=cfg["dilation"], bias=cfg["bias"])
    _assert_gradcheck(_single(layer, xs, device, "float64", x.shape[1:]), x)


@pytest.mark.parametrize("make", [
    lambda: pn.MaxPool2D(2), lambda: pn.MaxPool2D(3, stride=2, padding=1),
    lambda: pn.MaxPool2D(1, stride=2),
    lambda: pn.AvgPool2D(3, stride=1, padding=1), lambda: pn.AvgPool2D((2, 3), stride=(2, 1)),
    lambda: pn.GlobalAvgPool2D(), lambda: pn.Flatten(), lambda: pn.Reshape((-1, 3)),
    lambda: pn.BatchNorm(2), lambda: pn.BatchNorm(2, affine=False), lambda: pn.LayerNorm((7, 6)),
    lambda: pn.LayerNorm((2, 7, 6), elementwise_affine=False),
], ids=["max2", "max3s2p1", "max1s2", "avg3p1", "avg23", "gap", "flatten", "reshape", "bn", "bn-noaffine",
        "ln", "ln-noaffine"])
def test_pool_norm_and_reshape_gradients_by_finite_differences(xp, float64, make):
    xs, device = xp
    x = _image(np.random.default_rng(4), n=3, c=2, h=7, w=6)  # distinct values: no max ties
    net = _single(make(), xs, device, "float64", x.shape[1:])
    _randomize_affine(net, np.random.default_rng(5))
    _assert_gradcheck(net, x)


def _randomize_affine(net, rng):
    state = net.state_dict()
    for name in net.parameters():
        state[name] = rng.normal(1.0, 0.5, size=state[name].shape)
    net.load_state_dict(state)


def test_batchnorm_on_vectors_and_in_eval_mode_by_finite_differences(xp, float64):
    xs, device = xp
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 4))
    net = _single(pn.BatchNorm(4), xs, device, "float64", (4,))
    _randomize_affine(net, rng)
    _assert_gradcheck(net, x)
    state = net.state_dict()
    state["0.running_mean"], state["0.running_var"] = rng.normal(size=4), rng.uniform(0.5, 2, 4)
    net.load_state_dict(state)
    g = rng.normal(size=(5, 4))
    net.forward(put(xs, device, x, "float64"), training=False)
    dx = host(net.backward(put(xs, device, g, "float64")))
    expected = g * state["0.weight"] / np.sqrt(state["0.running_var"] + 1e-5)
    assert_close(dx, expected, "float64", scale=4)


def test_residual_gradients_by_finite_differences(xp, float64):
    xs, device = xp
    x = _image(np.random.default_rng(7), n=2, c=2, h=6, w=5)
    block = pn.Residual([pn.Conv2D(2, 3, 3, padding=1), pn.Tanh(), pn.Conv2D(3, 3, 1)],
                        projection=pn.Conv2D(2, 3, 1, bias=False))
    net = pn.Sequential([block, pn.Residual([pn.BatchNorm(3), pn.SiLU()])], backend=xs,
                        device=device, dtype="float64", seed=0, input_shape=x.shape[1:])
    assert list(net.parameters())[:3] == ["0.layers.0.weight", "0.layers.0.bias",
                                          "0.layers.2.weight"]
    assert "0.projection.weight" in net.parameters() and "1.layers.0.weight" in net.parameters()
    assert list(net.buffers()) == ["1.layers.0.running_mean", "1.layers.0.running_var"]
    _assert_gradcheck(net, x)


# --------------------------------------------------- agreement with NumPy ----


AGREEMENT_NETS = {
    "conv-pool": lambda: [pn.Conv2D(2, 4, 3, padding=1), pn.ReLU(), pn.MaxPool2D(2),
                          pn.Conv2D(4, 3, (2, 3), stride=(1, 2), dilation=(2, 1), padding="valid"),
                          pn.AvgPool2D(2, stride=1, padding=1), pn.Flatten(), pn.Dense(18, 3)],
    # No bias before BatchNorm: its gradient is 0 up to rounding, which Adam would amplify.
    "bn-residual": lambda: [pn.Conv2D(2, 3, 3, padding="same", bias=False), pn.BatchNorm(3),
                            pn.Residual([pn.Conv2D(3, 3, 3, padding=1), pn.GELU()]),
                            pn.GlobalAvgPool2D(), pn.LayerNorm(3), pn.Dense(3, 3)],
}


@pytest.mark.parametrize("name", sorted(AGREEMENT_NETS))
def test_image_networks_agree_with_numpy(xp, dtype, name):
    xs, device = xp
    rng = np.random.default_rng(8)
    x, y = _image(rng, n=6, c=2, h=8, w=8), rng.integers(0, 3, size=6)
    nets = [pn.Sequential(AGREEMENT_NETS[name](), backend=b, device=d, dtype=dtype, seed=1,
                          input_shape=(2, 8, 8)) for b, d in ((xs, device), ("numpy", None))]
    opts = [pn.Adam(1e-2), pn.Adam(1e-2)]
    for _ in range(3):
        values = [net.train_step(x, y, "cross_entropy", opt) for net, opt in zip(nets, opts)]
    assert_on(xs, device, values[0], dtype, ())
    assert_close(values[0], values[1], dtype, scale=100)
    for key, ref in nets[1].state_dict().items():
        assert_on(xs, device, ({**nets[0].parameters(), **nets[0].buffers()})[key], dtype)
        assert_close(nets[0].state_dict()[key], ref, dtype, scale=100, err_msg=key)
    assert_close(nets[0].predict(x), nets[1].predict(x), dtype, scale=100)


# ------------------------------------------------------- chunks and ties ----


def test_chunked_convolution_equals_one_chunk(monkeypatch):
    rng = np.random.default_rng(9)
    x, g = _image(rng, n=5, c=2, h=7, w=7), rng.normal(size=(5, 3, 7, 7))

    def run():
        net = _single(pn.Conv2D(2, 3, 3, padding=1), "numpy", None, "float64", (2, 7, 7))
        y = host(net.forward(x, training=True))
        return y, host(net.backward(g)), {k: host(v) for k, v in net.gradients().items()}

    monkeypatch.setattr(conv_module, "COLUMN_BUDGET", 100)
    assert len(net_chunks(5)) == 1  # columns kept from forward for backward
    whole = run()
    monkeypatch.setattr(conv_module, "COLUMN_BUDGET", 2)  # 2 x input: chunks of 1 sample
    assert len(net_chunks(5)) == 5
    chunked = run()
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-13)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-13)
    for k in whole[2]:
        np.testing.assert_allclose(chunked[2][k], whole[2][k], rtol=1e-12)


def net_chunks(n):
    layer = pn.Conv2D(2, 3, 3, padding=1)
    return layer._chunks(n, (7, 7), np.zeros((n, 2, 7, 7)))


def test_column_buffer_stays_within_the_budget():
    layer = pn.Conv2D(1, 6, 5)  # LeNet's first layer: 25 taps, 24 x 24 outputs of 28 x 28
    chunks = layer._chunks(128, (24, 24), np.zeros((128, 1, 28, 28)))
    per_chunk = max(hi - lo for lo, hi in chunks) * 25 * 24 * 24
    assert per_chunk <= conv_module.COLUMN_BUDGET * 128 * 28 * 28 < 25 * 24 * 24 * 128
    assert [lo for lo, _ in chunks] == sorted({lo for lo, _ in chunks}) and chunks[-1][1] == 128


def test_max_pool_gives_a_tie_to_the_first_maximum(xp):
    xs, device = xp
    x = np.zeros((1, 1, 2, 4))
    x[0, 0] = [[1.0, 5.0, 2.0, 2.0], [5.0, 0.0, 2.0, 2.0]]  # ties in both windows
    net = _single(pn.MaxPool2D(2), xs, device, "float32", (1, 2, 4))
    net.forward(put(xs, device, x, "float32"), training=True)
    dx = host(net.backward(put(xs, device, [[[[10.0, 20.0]]]], "float32")))
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 10.0, 20.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


# -------------------------------------------------------- bad arguments ----


@pytest.mark.parametrize("make,match", [
    (lambda: pn.Conv2D(0, 4, 3), r"Conv2D: in_channels must be a positive int, got 0"),
    (lambda: pn.Conv2D(1, 4, 0), r"Conv2D: kernel_size must be an int positive .*got 0"),
    (lambda: pn.Conv2D(1, 4, 2.5), r"Conv2D: kernel_size .*got 2.5"),
    (lambda: pn.Conv2D(1, 4, (3, 3, 3)), r"Conv2D: kernel_size .*got \(3, 3, 3\)"),
    (lambda: pn.Conv2D(1, 4, 3, stride=0), r"Conv2D: stride must be .*got 0"),
    (lambda: pn.Conv2D(1, 4, 3, padding=-1), r"Conv2D: padding must be an int >= 0 .*got -1"),
    (lambda: pn.Conv2D(1, 4, 3, padding="full"), r"Conv2D: padding must be an int, a pair, "
                                                 r"'valid' or 'same', got 'full'"),
    (lambda: pn.Conv2D(1, 4, 3, dilation=(1, 0)), r"Conv2D: dilation .*got \(1, 0\)"),
    (lambda: pn.Conv2D(1, 4, 3, stride=2, padding="same"),
     r"Conv2D: padding='same' needs stride 1, got stride \(2, 2\)"),
    (lambda: pn.MaxPool2D(2, padding=2), r"MaxPool2D: padding must be at most half the kernel"),
    (lambda: pn.AvgPool2D(0), r"AvgPool2D: kernel_size must be an int positive"),
    (lambda: pn.BatchNorm(3, momentum=1.5), r"BatchNorm: momentum must be a number in \[0, 1\], "
                                            r"got 1.5"),
    (lambda: pn.BatchNorm(3, momentum=-0.1), r"BatchNorm: momentum .*got -0.1"),
    (lambda: pn.BatchNorm(0), r"BatchNorm: num_features must be a positive int, got 0"),
    (lambda: pn.LayerNorm((4, 0)), r"LayerNorm: normalized_shape .*got \(4, 0\)"),
    (lambda: pn.Reshape((2, -1, -1)), r"Reshape: shape must be positive ints"),
    (lambda: pn.Residual([]), r"Residual: layers must be a non-empty list"),
])
def test_bad_arguments_name_the_layer(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("layers,shape,match", [
    (lambda: [pn.Conv2D(1, 4, 3)], (64,), r"Conv2D\(1, 4, kernel_size=\(3, 3\)\) \(layer 0\) "
                                          r"expects images of shape \(1, H, W\) per sample, but "
                                          r"the layer before it gives \(64,\)"),
    (lambda: [pn.Conv2D(3, 4, 3)], (1, 8, 8), r"expects images of shape \(3, H, W\).*\(1, 8, 8\)"),
    (lambda: [pn.Conv2D(1, 4, 5, padding=1)], (1, 2, 9),
     r"\(layer 0\): its \(5, 5\) kernel .* larger than the padded input \(2, 9\)"),
    (lambda: [pn.Conv2D(1, 4, 3, dilation=3)], (1, 6, 6), r"larger than the padded input"),
    (lambda: [pn.Conv2D(1, 2, 3), pn.ReLU(), pn.Dense(72, 10)], (1, 8, 8),
     r"Dense\(72, 10\) \(layer 2\) expects 72 features per sample, but the layer before it "
     r"gives samples of shape \(2, 6, 6\): put a Flatten\(\) before it"),
    (lambda: [pn.Conv2D(1, 2, 3), pn.Flatten(), pn.Dense(70, 10)], (1, 8, 8),
     r"Dense\(70, 10\) \(layer 2\) expects 70 input features, but the layer before it gives 72"),
    (lambda: [pn.MaxPool2D(3)], (1, 2, 2), r"MaxPool2D\(\(3, 3\)\) \(layer 0\): its \(3, 3\) window"),
    (lambda: [pn.BatchNorm(3)], (4, 5, 5), r"BatchNorm\(3\) \(layer 0\) expects samples of shape "
                                           r"\(3,\) or \(3, H, W\)"),
    (lambda: [pn.LayerNorm(5)], (4, 6), r"LayerNorm\(\(5,\)\) \(layer 0\) normalizes trailing"),
    (lambda: [pn.Reshape((7, -1))], (12,), r"Reshape\(\(7, -1\)\) \(layer 0\) cannot give samples"),
    (lambda: [pn.Residual([pn.Conv2D(2, 3, 1)])], (2, 4, 4),
     r"Residual.* \(layer 0\): its layers give samples of shape \(3, 4, 4\), but its input is "
     r"\(2, 4, 4\).*projection="),
])
def test_shapes_are_checked_when_the_network_is_built(layers, shape, match):
    with pytest.raises(ValueError, match=match):
        pn.Sequential(layers(), input_shape=shape)


def test_a_network_whose_layers_fix_no_image_size_takes_any(xp):
    xs, device = xp

    def layers():
        return [pn.Conv2D(1, 2, 3), pn.MaxPool2D(2), pn.AvgPool2D(2, stride=1),
                pn.GlobalAvgPool2D(), pn.Dense(2, 3)]

    net = pn.Sequential(layers(), backend=xs, device=device, seed=0)
    assert net.input_shape == (1, None, None) and net.output_shape == (3,)  # sizes unknown
    for size in (8, 13):
        x = np.random.default_rng(size).normal(size=(2, 1, size, size))
        y = net.predict(x)
        assert_on(xs, device, y, "float32", (2, 3))
        sized = pn.Sequential(layers(), backend=xs, device=device, seed=0,
                              input_shape=(1, size, size))
        np.testing.assert_array_equal(host(y), host(sized.predict(x)))  # the same weights


def test_unknown_sizes_are_checked_at_the_first_batch(xp):
    xs, device = xp
    net = pn.Sequential([pn.Conv2D(1, 2, 5), pn.Flatten(), pn.Dense(32, 3)], backend=xs,
                        device=device, seed=0)  # input (1, ?, ?): sizes come with the data
    assert net.input_shape == (1, None, None)
    before = net.state_dict()
    with pytest.raises(ValueError, match=r"Dense\(32, 3\) \(layer 2\) expects 32 input features, "
                                         r"but the layer before it gives 50"):
        net.train_step(np.zeros((2, 1, 9, 9)), [0, 1], "cross_entropy", pn.SGD(0.1))
    with pytest.raises(ValueError, match=r"x: Conv2D.* expects a batch of shape \(n, 1, \?, \?\), "
                                         r"got \(2, 3, 8, 8\)"):
        net.predict(np.zeros((2, 3, 8, 8)))
    for k, v in before.items():
        np.testing.assert_array_equal(net.state_dict()[k], v)
    assert tuple(net.predict(np.zeros((2, 1, 8, 8))).shape) == (2, 3)


def test_batchnorm_needs_more_than_one_value_per_channel_in_training():
    net = pn.Sequential([pn.BatchNorm(3)], seed=0, input_shape=(3,))
    with pytest.raises(ValueError, match=r"BatchNorm\(3\) \(layer 0\) needs more than one value"):
        net.forward(np.ones((1, 3)), training=True)
    assert net.predict(np.ones((1, 3))).shape == (1, 3)  # evaluation uses the running statistics
