"""Pinned behaviour of the image layers (convolution, pooling, reshaping, residual blocks,
normalization): what the mutation run found no test for.

Each test states a behaviour a user can observe: values and gradients against plain
NumPy loops (rectangular windows, asymmetric and ``"same"`` padding, chunked batches,
read-only inputs, empty batches), the layer protocol's defaults (``forward`` evaluates,
``backward`` returns ``dL/dx``), what ``training`` reaches inside a ``Residual``, the
running statistics of ``BatchNorm``, argument checks and their messages, and the text of
``repr`` and ``config``. The values run on every backend through the ``xp`` fixture;
a read-only NumPy input takes the path that JAX arrays (never writeable) take.
"""

from __future__ import annotations

import numpy as np
import pytest
from _util import assert_on, host, put
from test_data_parallel_threads import run_ranks
from test_image_layers import reference_conv

import portanet as pn
from portanet.layers import conv as conv_module
from portanet.layers._windows import Windows, gather, scatter_add
from portanet.layers.base import Context, from_config
from portanet.testing import AGREEMENT_RTOL, assert_close, norm_rel_diff

# ------------------------------------------------------------ helpers ----


def reference_conv_grads(x, w, g, stride, pads, dilation):
    """``dL/dx``, ``dL/dW`` and ``dL/db`` of ``L = sum(conv(x) * g)``, with loops over the
    output positions (float64): each position's window gets ``g W`` back, ``W`` gets ``g x``."""
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, pads, dilation
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    _, _, kh, kw = w.shape
    dx, dweight = np.zeros_like(padded), np.zeros_like(w)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            rows = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
            cols = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
            dweight += np.einsum("nckl,no->ockl", padded[:, :, rows, cols], g[:, :, i, j])
            dx[:, :, rows, cols] += np.einsum("no,ockl->nckl", g[:, :, i, j], w)
    return dx[:, :, pt:padded.shape[2] - pb, pl:padded.shape[3] - pr], dweight, g.sum(axis=(0, 2, 3))


def _net(layers, xp, dtype, input_shape):
    xs, device = xp
    return pn.Sequential(layers, backend=xs, device=device, dtype=dtype, seed=0,
                         input_shape=input_shape)


def _read_only(a):
    """``a`` itself, made read-only where it is a NumPy array (as ``np.load(mmap_mode="r")``
    gives): NumPy then takes the path of arrays that cannot be written in place (JAX)."""
    if isinstance(a, np.ndarray):
        a.flags.writeable = False
    return a


def _with_bias(net, rng):
    """Random weights and a nonzero bias for the Conv2D at layer 0."""
    state = net.state_dict()
    state["0.weight"] = rng.normal(size=state["0.weight"].shape)
    if "0.bias" in state:
        state["0.bias"] = rng.normal(size=state["0.bias"].shape)
    net.load_state_dict(state)
    return state


def _check_conv(net, x, g, state, stride, pads, dilation, dtype, scale):
    """Forward, ``dL/dx`` and the parameter gradients of ``net`` (one Conv2D) against the loops."""
    xs, device = net.xp, net.device
    xd = host(x).astype(dtype).astype(np.float64)
    w = state["0.weight"].astype(dtype).astype(np.float64)
    b = state["0.bias"].astype(dtype).astype(np.float64) if "0.bias" in state else None
    y = net.forward(x, training=True)
    expected = reference_conv(xd, w, b, stride, pads, dilation)
    assert_on(xs, device, y, dtype, expected.shape)
    assert_close(y, expected, dtype, scale=scale)
    dx = net.backward(put(xs, device, g, dtype))
    gd = g.astype(dtype).astype(np.float64)
    want_dx, want_dw, want_db = reference_conv_grads(xd, w, gd, stride, pads, dilation)
    assert_on(xs, device, dx, dtype, xd.shape)
    assert_close(dx, want_dx, dtype, scale=scale)
    grads = net.gradients()
    assert_close(grads["0.weight"], want_dw, dtype, scale=scale)
    if b is not None:
        assert_close(grads["0.bias"], want_db, dtype, scale=scale)


# ------------------------------------------- convolution against loops ----


@pytest.mark.parametrize("kernel,stride,padding,dilation,pads", [
    ((3, 5), 1, "same", (1, 2), ((1, 1), (4, 4))),  # rows and columns pad differently
    ((2, 3), 1, "same", 1, ((0, 1), (1, 1))),  # even kernel: the extra row at the bottom
    ((3, 2), (2, 1), (0, 2), (1, 2), ((0, 0), (2, 2))),  # padding only left and right
    ((2, 3), (1, 3), (1, 0), (2, 1), ((1, 1), (0, 0))),  # padding only top and bottom
], ids=["same-3x5-d12", "same-2x3", "pad02", "pad10"])
def test_conv_with_rectangular_windows_matches_the_loops(xp, float64, kernel, stride, padding,
                                                         dilation, pads):
    xs, device = xp
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 3, 9, 8))
    layer = pn.Conv2D(3, 4, kernel, stride=stride, padding=padding, dilation=dilation)
    net = _net([layer], xp, "float64", x.shape[1:])
    state = _with_bias(net, rng)
    if padding == "same":
        assert net.output_shape == (4, 9, 8)
    y_shape = net.output_shape
    g = rng.normal(size=(2, *y_shape))
    _check_conv(net, put(xs, device, x, "float64"), g, state, layer.stride, pads, layer.dilation,
                "float64", scale=10)


@pytest.mark.parametrize("padding, budget, chunks", [
    (0, 100, 1), (0, 3, 2), (0, 1, 5), (1, 100, 1), (1, 6, 2), (1, 1, 5)])
def test_conv_of_a_read_only_input_in_chunks_matches_the_loops(xp, dtype, monkeypatch, padding,
                                                               budget, chunks):
    # padding 0 on a read-only NumPy input: the input gradient is made of parts, joined
    # along the batch (what JAX does); with padding the padded copy is writeable. Two
    # chunks join two parts: the case where one part must not be taken for all.
    monkeypatch.setattr(conv_module, "COLUMN_BUDGET", budget)
    xs, device = xp
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5, 2, 7, 6))  # 2 channels, 5 samples: the axes cannot be confused
    layer = pn.Conv2D(2, 3, 3, padding=padding)
    net = _net([layer], xp, dtype, x.shape[1:])
    assert len(layer._chunks(5, net.output_shape[1:], np.zeros(x.shape))) == chunks
    state = _with_bias(net, rng)
    g = rng.normal(size=(5, *net.output_shape))
    pads = ((padding, padding),) * 2
    x_dev = _read_only(put(xs, device, x, dtype))
    _check_conv(net, x_dev, g, state, (1, 1), pads, (1, 1), dtype, scale=20)
    # a second upstream gradient for the same forward: its own gradients
    g2 = rng.normal(size=g.shape)
    dx2 = net.backward(put(xs, device, g2, dtype))
    xd = x.astype(dtype).astype(np.float64)
    w = state["0.weight"].astype(dtype).astype(np.float64)
    want_dx, want_dw, _ = reference_conv_grads(xd, w, g2.astype(dtype).astype(np.float64),
                                               (1, 1), pads, (1, 1))
    assert_close(dx2, want_dx, dtype, scale=20)
    assert_close(net.gradients()["0.weight"], want_dw, dtype, scale=20)


def test_conv_of_an_empty_batch(xp, dtype):
    # what a rank with no rows of a global batch runs in data-parallel training
    xs, device = xp
    net = _net([pn.Conv2D(2, 3, 3), pn.ReLU(), pn.Conv2D(3, 2, 2, padding=1)], xp, dtype,
               (2, 6, 5))
    x = _read_only(put(xs, device, np.zeros((0, 2, 6, 5)), dtype))
    y = net.forward(x, training=True)
    assert_on(xs, device, y, dtype, (0, 2, 5, 4))
    dx = net.backward(xs.zeros((0, 2, 5, 4), dtype=getattr(xs, dtype), device=device))
    assert_on(xs, device, dx, dtype, (0, 2, 6, 5))
    for name, grad in net.gradients().items():
        assert_on(xs, device, grad, dtype, net.state_dict()[name].shape)
        assert not np.any(host(grad)), name


def test_a_cnn_trains_across_ranks_when_a_rank_gets_no_rows(xp, dtype):
    # 5 rows in global batches of 2: the last has one row, so the second rank gets none
    backend, device = xp
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(5, 1, 4, 4)), rng.integers(0, 2, 5)

    def train(comm):
        net = pn.Sequential([pn.Conv2D(1, 2, 3, padding=1, bias=False), pn.BatchNorm(2),
                             pn.ReLU(), pn.MaxPool2D(2), pn.Flatten(), pn.Dense(8, 2)],
                            backend=backend, device=device, dtype=dtype, seed=0,
                            input_shape=(1, 4, 4))
        net.fit(x, y, loss="cross_entropy", optimizer=pn.SGD(0.1), epochs=1, batch_size=2,
                shuffle=False, verbose=0, distributed=comm)
        return net

    one = train(None)
    for net in run_ranks(train):
        for name, value in one.state_dict().items():
            diff = norm_rel_diff(net.state_dict()[name], value)
            assert diff <= AGREEMENT_RTOL[dtype], f"{name} differs by {diff:.1e}"


def test_conv_initializer_gets_the_fans_of_the_kernel():
    seen = []

    def init(rng, shape, fan_in, fan_out):
        seen.append((shape, fan_in, fan_out))
        return np.ones(shape)

    net = pn.Sequential([pn.Conv2D(2, 3, (3, 5), init=init)], seed=0, input_shape=(2, 8, 8))
    assert seen == [((3, 2, 3, 5), 2 * 15, 3 * 15)]
    np.testing.assert_array_equal(net.state_dict()["0.bias"], np.zeros(3))


def test_layers_on_a_second_device_keep_everything_there():
    strict = pytest.importorskip("array_api_strict")
    device = strict.Device("device1")
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3, 2, 5, 4)).astype(np.float32)
    net = pn.Sequential([pn.Conv2D(2, 2, 3, padding=1), pn.BatchNorm(2), pn.LayerNorm((5, 4)),
                         pn.Conv2D(2, 2, 1)], backend="array_api_strict", device="device1",
                        dtype="float32", seed=0, input_shape=(2, 5, 4))
    for name, a in {**net.parameters(), **net.buffers()}.items():
        assert a.device == device, name
    y = net.forward(strict.asarray(x, device=device), training=True)
    dx = net.backward(strict.ones(y.shape, dtype=strict.float32, device=device))
    assert dx.device == device and tuple(dx.shape) == x.shape
    for name, grad in net.gradients().items():
        assert grad.device == device, name


# -------------------------------------------------- the windows' helpers ----


@pytest.mark.parametrize("stride", [(1, 1), (2, 3)], ids=["overlapping", "apart"])
@pytest.mark.parametrize("writeable", [True, False])
def test_scatter_add_is_the_adjoint_of_gather(stride, writeable):
    # <scatter(parts), x> = <parts, gather(x)> for every x: scatter adds each part back
    # where gather took it. A target that cannot be written (JAX, or read-only NumPy)
    # is left as it is and a new array comes back.
    rng = np.random.default_rng(14)
    windows = Windows((2, 3), stride, (1, 1), ((0, 0), (0, 0)))
    out_hw = windows.out_shape(6, 7)
    parts = [rng.normal(size=(2, *out_hw)) for _ in range(6)]
    target = np.zeros((2, 6, 7))
    target.flags.writeable = writeable
    result = scatter_add(target, parts, windows, out_hw)
    assert result.shape == (2, 6, 7)
    if not writeable:
        assert not target.any()
    x = rng.normal(size=(2, 6, 7))
    taps = gather(np, x, windows, out_hw, axis=0)
    np.testing.assert_allclose(np.sum(result * x), np.sum(taps * np.stack(parts)), rtol=1e-12)
    counts = scatter_add(np.zeros((6, 7)), [np.ones(out_hw)] * 6, windows, out_hw)
    # each of the 6 taps of each window adds 1 where it reads: 6 windows cover an inner
    # position when they overlap, one window at most when they are apart
    assert counts.max() == (6 if stride == (1, 1) else 1)
    assert counts.sum() == 6 * out_hw[0] * out_hw[1]


# ----------------------------------------------------- the layer protocol ----

PROTOCOL = {
    "conv": lambda: pn.Conv2D(2, 3, 3, padding=1),
    "maxpool": lambda: pn.MaxPool2D(2),
    "avgpool": lambda: pn.AvgPool2D(2, stride=1),
    "gap": lambda: pn.GlobalAvgPool2D(),
    "flatten": lambda: pn.Flatten(),
    "reshape": lambda: pn.Reshape((-1, 2)),
    "batchnorm": lambda: pn.BatchNorm(2),
    "layernorm": lambda: pn.LayerNorm((5, 4)),
    "residual": lambda: pn.Residual([pn.Conv2D(2, 3, 3, padding=1), pn.BatchNorm(3), pn.Dropout(0.5)],
                                    projection=pn.Conv2D(2, 3, 1)),
}


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_forward_evaluates_and_backward_returns_the_input_gradient_by_default(xp, float64, name):
    xs, device = xp
    rng = np.random.default_rng(15)
    x = put(xs, device, rng.normal(size=(4, 2, 5, 4)), "float64")
    net = _net([PROTOCOL[name]()], xp, "float64", (2, 5, 4))
    layer, before = net.layers[0], net.state_dict()
    y = layer.forward(x)  # no training argument: evaluation
    np.testing.assert_array_equal(host(y), host(net.predict(x)))
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    g = put(xs, device, rng.normal(size=tuple(y.shape)), "float64")
    dx = layer.backward(g)  # no need_input_grad argument: dL/dx
    assert dx is not None
    assert_on(xs, device, dx, "float64", x.shape)
    grads = {k: host(v) for k, v in net.gradients().items()}
    net.forward(x)
    assert net.backward(g, need_input_grad=False) is None  # the first layer of a step
    for key, value in net.gradients().items():
        assert_close(value, grads[key], "float64", err_msg=key)
    net.forward(x)
    assert_close(net.backward(g), dx, "float64")


# -------------------------------------------------------------- Residual ----


def _bn_reference(x, eps=1e-5):
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_residual_passes_training_to_its_layers_and_projection(xp, float64):
    xs, device = xp
    x = np.random.default_rng(16).normal(2.0, 3.0, size=(4, 2, 3, 3))
    net = _net([pn.Residual([pn.BatchNorm(2)], projection=pn.BatchNorm(2))], xp, "float64",
               (2, 3, 3))
    y = net.forward(put(xs, device, x, "float64"), training=True)  # batch statistics, both paths
    assert_close(y, 2 * _bn_reference(x), "float64", scale=10)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), ddof=1)
    for path in ("layers.0", "projection"):
        assert_close(net.buffers()[f"0.{path}.running_mean"], 0.1 * mean, "float64", scale=4)
        assert_close(net.buffers()[f"0.{path}.running_var"], 0.9 + 0.1 * var, "float64", scale=4)
    state = net.state_dict()
    y = net.layers[0].forward(put(xs, device, x, "float64"))  # evaluation: the running statistics
    running = (x - state["0.layers.0.running_mean"][None, :, None, None]) / np.sqrt(
        state["0.layers.0.running_var"][None, :, None, None] + 1e-5)
    assert_close(y, 2 * running, "float64", scale=10)


@pytest.mark.parametrize("projection", [False, True])
def test_a_residual_first_layer_fills_its_gradients_without_the_input_gradient(xp, float64,
                                                                                projection):
    xs, device = xp
    rng = np.random.default_rng(17)
    x, g = put(xs, device, rng.normal(size=(5, 4)), "float64"), rng.normal(size=(5, 2))
    block = pn.Residual([pn.Dense(4, 3), pn.Tanh(), pn.Dense(3, 4 - projection)],
                        projection=pn.Dense(4, 3) if projection else None)
    net = _net([block, pn.Dense(4 - projection, 2)], xp, "float64", (4,))
    g = put(xs, device, g, "float64")
    net.forward(x, training=True)
    assert net.backward(g) is not None
    grads = {k: host(v) for k, v in net.gradients().items()}
    net.forward(x, training=True)
    assert net.backward(g, need_input_grad=False) is None
    for key, value in net.gradients().items():
        assert_close(value, grads[key], "float64", err_msg=key)


def test_residual_checks_its_layers():
    with pytest.raises(ValueError, match=r"Residual: layers must be a non-empty list of layers"):
        pn.Residual(layer for layer in [pn.ReLU()])
    with pytest.raises(ValueError, match=r"Residual: layers must be a non-empty list of layers"):
        pn.Residual(pn.ReLU())
    with pytest.raises(TypeError, match=r"Residual: str is not a portanet Layer"):
        pn.Residual([pn.ReLU()], projection="conv")
    relu = pn.ReLU()
    with pytest.raises(ValueError, match=r"Residual: .* appears twice: each layer needs its own"):
        pn.Residual([relu, relu])
    with pytest.raises(ValueError, match=r"Residual: .* appears twice"):
        pn.Residual([relu], projection=relu)
    block = pn.Residual([pn.ReLU()])
    pn.Sequential([block], input_shape=(3,))
    with pytest.raises(ValueError, match=r"Residual: Residual\(\[.*\]\) already belongs to a network"):
        pn.Residual([block])
    with pytest.raises(ValueError, match=r"layer 0 \(Residual\(.*\)\) already belongs to a network"):
        pn.Sequential([block], input_shape=(3,))


def test_layers_in_a_residual_are_named_by_their_path():
    inner = pn.BatchNorm(3)
    net = pn.Sequential([pn.Dense(2, 3), pn.Residual([pn.Residual([inner])])], seed=0,
                        input_shape=(2,))
    assert inner.label == "BatchNorm(3) (layer 1.layers.0.layers.0)"
    with pytest.raises(ValueError, match=r"BatchNorm\(3\) \(layer 1\.layers\.0\.layers\.0\) needs "
                                         r"more than one value per channel"):
        net.forward(np.ones((1, 2)), training=True)
    alone, projection = pn.BatchNorm(2), pn.Dense(2, 2)
    block = pn.Residual([alone], projection=projection)  # built on its own, outside a network
    block.build(Context(np, None, np.float64, np.random.default_rng(0)))
    assert (alone.label, projection.label) == ("BatchNorm(2) (layer layers.0)",
                                               "Dense(2, 2) (layer projection)")


def test_residual_shape_mismatch_names_the_projection():
    with pytest.raises(ValueError, match=r"Residual\(.*\) \(layer 0\): its layers give samples of "
                                         r"shape \(3, 4, 4\), but its projection gives \(5, 4, 4\)"):
        pn.Sequential([pn.Residual([pn.Conv2D(2, 3, 1)], projection=pn.Conv2D(2, 5, 1))],
                      input_shape=(2, 4, 4))


# ------------------------------------------------------------- BatchNorm ----


@pytest.mark.parametrize("momentum", [0.0, 0.3, 1.0])
def test_batchnorm_running_statistics_of_two_values_per_channel(xp, float64, momentum):
    xs, device = xp
    x = np.array([[1.0, -2.0, 0.5], [4.0, 3.0, 0.25]])  # m = 2: the fewest that train
    net = _net([pn.BatchNorm(3, momentum=momentum)], xp, "float64", (3,))
    y = net.forward(put(xs, device, x, "float64"), training=True)
    assert_close(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), "float64", scale=4)
    buffers = net.buffers()
    keep = 1.0 - momentum
    assert_close(buffers["0.running_mean"], momentum * x.mean(0), "float64")
    assert_close(buffers["0.running_var"], keep + momentum * x.var(0, ddof=1), "float64")


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_features=True), r"BatchNorm: num_features must be a positive int, got True"),
    (dict(num_features=2.0), r"BatchNorm: num_features must be a positive int, got 2.0"),
    (dict(momentum=True), r"BatchNorm: momentum must be a number in \[0, 1\], got True"),
    (dict(momentum="0.1"), r"BatchNorm: momentum must be a number in \[0, 1\], got '0.1'"),
    (dict(eps=0), r"BatchNorm: eps must be a positive number, got 0"),
    (dict(eps=float("inf")), r"BatchNorm: eps must be a positive number, got inf"),
    (dict(eps=float("nan")), r"BatchNorm: eps must be a positive number, got nan"),
    (dict(eps=True), r"BatchNorm: eps must be a positive number, got True"),
    (dict(eps="1e-5"), r"BatchNorm: eps must be a positive number, got '1e-5'"),
])
def test_batchnorm_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pn.BatchNorm(**{"num_features": 3, **kwargs})


def test_batchnorm_accepts_the_edges_of_its_arguments():
    for layer in (pn.BatchNorm(1), pn.BatchNorm(3, momentum=0), pn.BatchNorm(3, momentum=1),
                  pn.BatchNorm(3, eps=1e-300)):
        assert from_config(layer.config()).config() == layer.config()
    assert pn.BatchNorm(1, momentum=1, eps=2).config() == {
        "type": "BatchNorm", "num_features": 1, "momentum": 1.0, "eps": 2.0, "affine": True}


# ------------------------------------------------------------- LayerNorm ----


@pytest.mark.parametrize("eps", [None, 0.5])
def test_layernorm_matches_numpy(xp, float64, eps):
    xs, device = xp
    rng = np.random.default_rng(18)
    x = rng.normal(1.0, 0.3, size=(3, 2, 5, 4))  # variance about 0.1: eps shows
    layer = pn.LayerNorm((5, 4)) if eps is None else pn.LayerNorm((5, 4), eps=eps)
    net = _net([layer], xp, "float64", x.shape[1:])
    assert sorted(net.parameters()) == ["0.bias", "0.weight"]  # affine by default
    state = net.state_dict()
    state["0.weight"], state["0.bias"] = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    net.load_state_dict(state)
    mean, var = x.mean(axis=(2, 3), keepdims=True), x.var(axis=(2, 3), keepdims=True)
    expected = (x - mean) / np.sqrt(var + (1e-5 if eps is None else eps))
    y = net.forward(put(xs, device, x, "float64"))
    assert_close(y, expected * state["0.weight"] + state["0.bias"], "float64", scale=10)


@pytest.mark.parametrize("make,match", [
    (lambda: pn.LayerNorm(True), r"LayerNorm: normalized_shape must be a positive int or a tuple"),
    (lambda: pn.LayerNorm((4, 2.5)), r"LayerNorm: normalized_shape .*got \(4, 2.5\)"),
    (lambda: pn.LayerNorm(()), r"LayerNorm: normalized_shape .*got \(\)"),
    (lambda: pn.LayerNorm(4, eps=0), r"LayerNorm: eps must be a positive number, got 0"),
    (lambda: pn.LayerNorm(4, eps=-1e-5), r"LayerNorm: eps must be a positive number, got -1e-05"),
])
def test_layernorm_checks_its_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_layernorm_sizes_and_config():
    net = pn.Sequential([pn.LayerNorm(1), pn.LayerNorm((3, 1), eps=0.25, elementwise_affine=False)],
                        seed=0, input_shape=(3, 1))
    np.testing.assert_array_equal(net.predict(np.ones((2, 3, 1))), np.zeros((2, 3, 1)))
    assert net.layers[1].config() == {"type": "LayerNorm", "normalized_shape": [3, 1],
                                      "eps": 0.25, "elementwise_affine": False}
    assert from_config(net.layers[1].config()).config() == net.layers[1].config()
    with pytest.raises(ValueError, match=r"LayerNorm\(\(4, 4\)\) \(layer 0\) normalizes trailing "
                                         r"axes of shape \(4, 4\), but the layer before it gives "
                                         r"samples of shape \(4,\)"):
        pn.Sequential([pn.LayerNorm((4, 4))], input_shape=(4,))


# --------------------------------------------------------------- Reshape ----


@pytest.mark.parametrize("shape,input_shape,output_shape,predicted", [
    ((4, -1), (12,), (4, 3), (4, 3)),
    ((1, -1), (12,), (1, 12), (1, 12)),
    ((3, 4), (2, 6), (3, 4), (3, 4)),
    (6, (2, 3), (6,), (6,)),
    # sizes known only with the data: a batch of (1, 4, 4) images, 16 values each
    ((-1, 2), (1, None, None), (None, 2), (8, 2)),
    ((2, 1, -1), (1, None, None), (2, 1, None), (2, 1, 8)),
])
def test_reshape_output_shapes(shape, input_shape, output_shape, predicted):
    if None in input_shape:  # the Conv2D fixes only the channels: (1, ?, ?)
        net = pn.Sequential([pn.Conv2D(1, 1, 1), pn.Flatten(), pn.Reshape(shape)], seed=0)
        assert net.input_shape == input_shape
    else:
        net = pn.Sequential([pn.Reshape(shape)], seed=0, input_shape=input_shape)
    assert net.output_shape == output_shape
    sample = tuple(4 if s is None else s for s in input_shape)
    x = np.arange(2.0 * np.prod(sample)).reshape(2, *sample)
    assert tuple(net.predict(x).shape) == (2, *predicted)


@pytest.mark.parametrize("shape", [(), (2, 0), (2, -2), (True, 3), (2, 2.5), (-1, -1)])
def test_reshape_checks_its_shape(shape):
    with pytest.raises(ValueError, match=r"Reshape: shape must be positive ints \(at most one -1\), "
                                         r"got "):
        pn.Reshape(shape)


def test_reshape_to_a_size_that_does_not_fit():
    with pytest.raises(ValueError, match=r"Reshape\(\(3, 5\)\) \(layer 0\) cannot give samples of "
                                         r"\(12,\) \(12 values\) the shape \(3, 5\)"):
        pn.Sequential([pn.Reshape((3, 5))], input_shape=(12,))


# ----------------------------------------------------- repr and config ----


@pytest.mark.parametrize("layer,text", [
    (pn.Conv2D(1, 4, 3), "Conv2D(1, 4, kernel_size=(3, 3))"),
    (pn.Conv2D(1, 4, 3, padding="valid"), "Conv2D(1, 4, kernel_size=(3, 3))"),
    (pn.Conv2D(1, 4, 3, padding="same"), "Conv2D(1, 4, kernel_size=(3, 3), padding=same)"),
    (pn.Conv2D(2, 8, (3, 5), stride=2, padding=(1, 2), dilation=(2, 1)),
     "Conv2D(2, 8, kernel_size=(3, 5), stride=(2, 2), padding=(1, 2), dilation=(2, 1))"),
    (pn.MaxPool2D(2), "MaxPool2D((2, 2))"),
    (pn.MaxPool2D(3, stride=2, padding=1), "MaxPool2D((3, 3), stride=(2, 2), padding=(1, 1))"),
    (pn.AvgPool2D((2, 3), padding=(1, 0)), "AvgPool2D((2, 3), padding=(1, 0))"),
    (pn.GlobalAvgPool2D(), "GlobalAvgPool2D()"),
    (pn.Flatten(), "Flatten()"),
    (pn.Reshape((4, -1)), "Reshape((4, -1))"),
    (pn.Residual([pn.ReLU(), pn.Flatten()]), "Residual([ActivationLayer('relu'), Flatten()])"),
    (pn.Residual([pn.Conv2D(2, 3, 1)], projection=pn.Conv2D(2, 3, 1, bias=False)),
     "Residual([Conv2D(2, 3, kernel_size=(1, 1))], projection=Conv2D(2, 3, kernel_size=(1, 1)))"),
])
def test_repr(layer, text):
    assert repr(layer) == text


@pytest.mark.parametrize("layer,config", [
    (pn.Conv2D(2, 8, (3, 5), stride=2, padding=(1, 2), dilation=(2, 1), bias=False),
     {"type": "Conv2D", "in_channels": 2, "out_channels": 8, "kernel_size": [3, 5],
      "stride": [2, 2], "padding": [1, 2], "dilation": [2, 1], "bias": False}),
    (pn.Conv2D(1, 4, 3, padding="same"),
     {"type": "Conv2D", "in_channels": 1, "out_channels": 4, "kernel_size": [3, 3],
      "stride": [1, 1], "padding": "same", "dilation": [1, 1], "bias": True}),
    (pn.GlobalAvgPool2D(), {"type": "GlobalAvgPool2D"}),
    (pn.Reshape((4, -1)), {"type": "Reshape", "shape": [4, -1]}),
    (pn.Residual([pn.Flatten()], projection=pn.Reshape((-1,))),
     {"type": "Residual", "layers": [{"type": "Flatten"}],
      "projection": {"type": "Reshape", "shape": [-1]}}),
], ids=["conv", "conv-same", "gap", "reshape", "residual"])
def test_config_and_back(layer, config):
    assert layer.config() == config
    again = from_config(config)
    assert type(again) is type(layer) and again.config() == config and repr(again) == repr(layer)


@pytest.mark.parametrize("make,match", [
    (lambda: pn.Conv2D(1, 0, 3), r"Conv2D: out_channels must be a positive int, got 0"),
    (lambda: pn.Conv2D(True, 4, 3), r"Conv2D: in_channels must be a positive int, got True"),
    (lambda: pn.Conv2D(1, 4.0, 3), r"Conv2D: out_channels must be a positive int, got 4.0"),
])
def test_conv_checks_its_channels(make, match):
    with pytest.raises(ValueError, match=match):
        make()

