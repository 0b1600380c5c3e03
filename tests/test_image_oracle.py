"""PyTorch autograd as the oracle for the image layers (float64, NumPy backend).

For each layer, portanet and ``torch.nn.functional`` see the same input, weights and
upstream gradient ``g`` (the loss is ``sum(y * g)``). The output, the input gradient
and every parameter gradient must agree to ``ORACLE_RTOL["float64"]`` (1e-10,
norm-relative). BatchNorm's running statistics follow torch's over 20 training steps
of a small network to 1e-12.

Skipped cleanly where torch is not installed. With ``PORTANET_ORACLE_REPORT=file.json``
the worst difference seen for each test (function) is written to that file: the figures
of the README's "Convolutional networks" section.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _util import WorstReport
from test_image_layers import CONV_GRID

import portanet as pn
from portanet.backend import to_numpy
from portanet.testing import ORACLE_RTOL, norm_rel_diff

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = ORACLE_RTOL["float64"]


def t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def portanet_grads(layer, x, g, input_shape=None, state=None):
    """Forward in training mode and backward with upstream ``g``: (y, dx, {param: grad})."""
    net = pn.Sequential([layer], backend="numpy", dtype="float64", seed=0,
                        input_shape=input_shape or x.shape[1:])
    if state is not None:
        net.load_state_dict({**net.state_dict(), **state})
    y = to_numpy(net.forward(x, training=True))
    dx = to_numpy(net.backward(g))
    grads = {k.split(".", 1)[1]: to_numpy(v) for k, v in net.gradients().items()}
    return y, dx, grads, net


#: The worst norm-relative difference per test function (``PORTANET_ORACLE_REPORT``).
REPORT = WorstReport("PORTANET_ORACLE_REPORT")


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    REPORT.write()


def assert_agree(ours: dict, theirs: dict, rtol: float = RTOL) -> None:
    diffs = {k: norm_rel_diff(ours[k], theirs[k].detach().numpy()) for k in theirs}
    REPORT.record(*diffs.values())
    bad = {k: v for k, v in diffs.items() if not v <= rtol}
    assert not bad, f"norm-relative differences above {rtol:g}: {bad} (all: {diffs})"


# ------------------------------------------------------------- convolution ----


@pytest.mark.parametrize("batch,hw", [(2, (11, 9)), (1, (10, 13))], ids=["n2-11x9", "n1-10x13"])
@pytest.mark.parametrize("cfg", CONV_GRID, ids=str)
def test_conv_matches_autograd(cfg, batch, hw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 3, *hw))
    layer = pn.Conv2D(3, 4, cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
                      dilation=cfg["dilation"], bias=cfg["bias"])
    state = {"0.weight": rng.normal(size=(4, 3, cfg["kernel"], cfg["kernel"]))}
    if cfg["bias"]:
        state["0.bias"] = rng.normal(size=4)
    y_shape = pn.Sequential([pn.Conv2D(3, 4, cfg["kernel"], stride=cfg["stride"],
                                       padding=cfg["padding"], dilation=cfg["dilation"])],
                            input_shape=x.shape[1:]).output_shape
    g = rng.normal(size=(batch, *y_shape))
    y, dx, grads, _ = portanet_grads(layer, x, g, state=state)

    xt, wt = t(x, True), t(state["0.weight"], True)
    bt = t(state["0.bias"], True) if cfg["bias"] else None
    yt = F.conv2d(xt, wt, bt, stride=cfg["stride"], padding=cfg["padding"],
                  dilation=cfg["dilation"])
    (yt * t(g)).sum().backward()
    expected = {"y": yt, "x": xt.grad, "weight": wt.grad}
    if cfg["bias"]:
        expected["bias"] = bt.grad
    assert_agree({"y": y, "x": dx, **grads}, expected)


def test_conv_with_pairs_matches_autograd():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 2, 10, 9))
    layer = pn.Conv2D(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 3))
    state = {"0.weight": rng.normal(size=(3, 2, 3, 2)), "0.bias": rng.normal(size=3)}
    net = pn.Sequential([layer], dtype="float64", input_shape=(2, 10, 9))
    g = rng.normal(size=(2, *net.output_shape))
    net.load_state_dict(state)
    y = to_numpy(net.forward(x, training=True))
    dx = to_numpy(net.backward(g))
    grads = {k.split(".", 1)[1]: to_numpy(v) for k, v in net.gradients().items()}
    xt, wt, bt = t(x, True), t(state["0.weight"], True), t(state["0.bias"], True)
    yt = F.conv2d(xt, wt, bt, stride=(2, 1), padding=(1, 2), dilation=(1, 3))
    (yt * t(g)).sum().backward()
    assert_agree({"y": y, "x": dx, **grads}, {"y": yt, "x": xt.grad, "weight": wt.grad,
                                              "bias": bt.grad})


# ----------------------------------------------------------------- pooling ----

POOLS = [dict(kind=k, kernel=kern, stride=s, padding=p)
         for k, (kern, s, p) in itertools.product(
             ("max", "avg"), ((2, None, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (2, 1), (1, 0)),
                              (4, 3, 2)))]


@pytest.mark.parametrize("cfg", POOLS, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_pooling_matches_autograd(cfg, ties):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 9, 8))
    if ties:
        x = np.round(x)  # many equal values: the gradient goes to the first maximum, as torch
    cls = pn.MaxPool2D if cfg["kind"] == "max" else pn.AvgPool2D
    layer = cls(cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"])
    shape = pn.Sequential([cls(cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"])],
                          input_shape=x.shape[1:]).output_shape
    g = rng.normal(size=(2, *shape))
    y, dx, _, _ = portanet_grads(layer, x, g)
    xt = t(x, True)
    kwargs = dict(kernel_size=cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"])
    yt = F.max_pool2d(xt, **kwargs) if cfg["kind"] == "max" else F.avg_pool2d(xt, **kwargs)
    (yt * t(g)).sum().backward()
    assert_agree({"y": y, "x": dx}, {"y": yt, "x": xt.grad})


def test_global_average_pool_flatten_and_reshape_match_autograd():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 5, 6))
    for layer, op, out_shape in [
        (pn.GlobalAvgPool2D(), lambda a: a.mean(dim=(2, 3)), (3, 4)),
        (pn.Flatten(), lambda a: a.flatten(1), (3, 120)),
        (pn.Reshape((-1, 10)), lambda a: a.reshape(3, 12, 10), (3, 12, 10)),
    ]:
        g = rng.normal(size=out_shape)
        y, dx, _, _ = portanet_grads(layer, x, g)
        xt = t(x, True)
        yt = op(xt)
        (yt * t(g)).sum().backward()
        assert_agree({"y": y, "x": dx}, {"y": yt, "x": xt.grad})


# ------------------------------------------------------------ normalization ----


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 2), (1, 4, 3, 3)], ids=["1d", "2d", "n1-2d"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batchnorm_matches_autograd(shape, affine):
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 3.0, size=shape)
    layer = pn.BatchNorm(4, momentum=0.3, eps=1e-3, affine=affine)
    state = ({"0.weight": rng.normal(size=4), "0.bias": rng.normal(size=4)} if affine else {})
    g = rng.normal(size=shape)
    y, dx, grads, net = portanet_grads(layer, x, g, state=state)
    xt = t(x, True)
    wt, bt = (t(state["0.weight"], True), t(state["0.bias"], True)) if affine else (None, None)
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    yt = F.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.3, eps=1e-3)
    (yt * t(g)).sum().backward()
    expected = {"y": yt, "x": xt.grad}
    if affine:
        expected.update(weight=wt.grad, bias=bt.grad)
    assert_agree({"y": y, "x": dx, **grads}, expected)
    buffers = {k.split(".", 1)[1]: to_numpy(v) for k, v in net.buffers().items()}
    assert_agree(buffers, {"running_mean": rm, "running_var": rv}, 1e-12)
    # evaluation mode normalizes by the running statistics, as torch's eval()
    y_eval = to_numpy(net.predict(x))
    yt_eval = F.batch_norm(t(x), rm, rv, wt, bt, training=False, eps=1e-3)
    assert norm_rel_diff(y_eval, yt_eval.detach().numpy()) <= RTOL


@pytest.mark.parametrize("normalized", [(5,), (4, 5), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layernorm_matches_autograd(normalized, affine):
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 2.0, size=(2, 3, 4, 5))
    layer = pn.LayerNorm(normalized, eps=1e-4, elementwise_affine=affine)
    state = ({"0.weight": rng.normal(size=normalized), "0.bias": rng.normal(size=normalized)}
             if affine else {})
    g = rng.normal(size=x.shape)
    y, dx, grads, _ = portanet_grads(layer, x, g, state=state)
    xt = t(x, True)
    wt, bt = (t(state["0.weight"], True), t(state["0.bias"], True)) if affine else (None, None)
    yt = F.layer_norm(xt, normalized, wt, bt, eps=1e-4)
    (yt * t(g)).sum().backward()
    expected = {"y": yt, "x": xt.grad}
    if affine:
        expected.update(weight=wt.grad, bias=bt.grad)
    assert_agree({"y": y, "x": dx, **grads}, expected)


# ----------------------------------------------------------------- residual ----


def test_residual_with_projection_matches_autograd():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 2, 6, 5))
    block = pn.Residual([pn.Conv2D(2, 3, 3, padding=1), pn.Tanh(), pn.Conv2D(3, 3, 3, padding=1)],
                        projection=pn.Conv2D(2, 3, 1))
    w = {"0.layers.0.weight": rng.normal(size=(3, 2, 3, 3)), "0.layers.0.bias": rng.normal(size=3),
         "0.layers.2.weight": rng.normal(size=(3, 3, 3, 3)), "0.layers.2.bias": rng.normal(size=3),
         "0.projection.weight": rng.normal(size=(3, 2, 1, 1)),
         "0.projection.bias": rng.normal(size=3)}
    g = rng.normal(size=(2, 3, 6, 5))
    y, dx, grads, _ = portanet_grads(block, x, g, state=w)
    tw = {k: t(v, True) for k, v in w.items()}
    xt = t(x, True)
    h = F.conv2d(torch.tanh(F.conv2d(xt, tw["0.layers.0.weight"], tw["0.layers.0.bias"],
                                     padding=1)),
                 tw["0.layers.2.weight"], tw["0.layers.2.bias"], padding=1)
    yt = h + F.conv2d(xt, tw["0.projection.weight"], tw["0.projection.bias"])
    (yt * t(g)).sum().backward()
    assert_agree({"y": y, "x": dx, **grads},
                 {"y": yt, "x": xt.grad, **{k.split(".", 1)[1]: v.grad for k, v in tw.items()}})


# ---------------------------------------- 20 training steps with BatchNorm ----


class TorchTwin(torch.nn.Module):
    """conv (no bias) -> BatchNorm2d -> ReLU -> max pool -> flatten -> BatchNorm1d -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False, dtype=torch.float64)
        self.bn2 = torch.nn.BatchNorm2d(4, momentum=0.2, dtype=torch.float64)
        self.bn1 = torch.nn.BatchNorm1d(36, dtype=torch.float64)
        self.fc = torch.nn.Linear(36, 3, dtype=torch.float64)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.bn2(self.conv(x))), 2)
        return self.fc(self.bn1(h.flatten(1)))


def test_batchnorm_running_statistics_follow_torch_over_20_steps():
    net = pn.Sequential([pn.Conv2D(1, 4, 3, padding=1, bias=False), pn.BatchNorm(4, momentum=0.2),
                         pn.ReLU(), pn.MaxPool2D(2), pn.Flatten(), pn.BatchNorm(36),
                         pn.Dense(36, 3)], dtype="float64", seed=0, input_shape=(1, 6, 6))
    twin = TorchTwin()
    with torch.no_grad():
        twin.conv.weight.copy_(torch.from_numpy(to_numpy(net.parameters()["0.weight"])))
        twin.fc.weight.copy_(torch.from_numpy(to_numpy(net.parameters()["6.weight"]).T))
        twin.fc.bias.copy_(torch.from_numpy(to_numpy(net.parameters()["6.bias"])))
    opt, t_opt = pn.SGD(0.1, momentum=0.9), torch.optim.SGD(twin.parameters(), 0.1, momentum=0.9)
    rng = np.random.default_rng(7)
    for _ in range(20):
        x, y = rng.normal(1.0, 2.0, size=(8, 1, 6, 6)), rng.integers(0, 3, size=8)
        net.train_step(x, y, "cross_entropy", opt)
        t_opt.zero_grad()
        F.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        t_opt.step()
    buffers = {k: to_numpy(v) for k, v in net.buffers().items()}
    expected = {"1.running_mean": twin.bn2.running_mean, "1.running_var": twin.bn2.running_var,
                "5.running_mean": twin.bn1.running_mean, "5.running_var": twin.bn1.running_var}
    assert_agree(buffers, expected, 1e-12)
    assert norm_rel_diff(net.parameters()["6.weight"], twin.fc.weight.detach().numpy().T) <= 1e-12
    x = rng.normal(size=(4, 1, 6, 6))
    twin.eval()
    assert norm_rel_diff(net.predict(x), twin(torch.from_numpy(x)).detach().numpy()) <= 1e-12
