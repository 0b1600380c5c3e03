"""PyTorch as the oracle: gradients against autograd, optimizers against ``torch.optim``.

A portanet network (NumPy backend, float64) and a ``torch.nn`` twin with the
same weights see the same batch. The loss, the input gradient and every
parameter gradient must match autograd to ``ORACLE_RTOL["float64"]``
(norm-relative, per array). portanet keeps ``W`` as ``(in, out)``; ``nn.Linear``
keeps ``(out, in)``, so weights and their gradients are transposed across.

Optimizers take 200 steps from identical seeded gradients on both sides; every
step's parameters must match ``torch.optim`` to ``ORACLE_RTOL[dtype]``.

This file does not use the ``xp`` fixture: it runs in every session where
torch is importable and is skipped cleanly where it is not.
"""

from __future__ import annotations

import numpy as np
import pytest
from _util import ACTIVATIONS, layers_from_spec, make_targets, network_specs, randomize
from hypothesis import HealthCheck, given, settings

import portanet as pn
from portanet import activations as A
from portanet.backend import to_numpy
from portanet.testing import ORACLE_RTOL, norm_rel_diff

torch = pytest.importorskip("torch")
nn = torch.nn

RTOL = ORACLE_RTOL["float64"]

LOSSES = {
    "mse": (pn.MSE, lambda: nn.MSELoss()),
    "mae": (pn.MAE, lambda: nn.L1Loss()),
    "huber": (lambda: pn.Huber(0.5), lambda: nn.HuberLoss(delta=0.5)),
    "bce_with_logits": (pn.BCEWithLogits, lambda: nn.BCEWithLogitsLoss()),
    "cross_entropy_labels": (pn.CrossEntropy, lambda: nn.CrossEntropyLoss()),
    "cross_entropy_probs": (pn.CrossEntropy, lambda: nn.CrossEntropyLoss()),
    "cross_entropy_smooth_labels": (
        lambda: pn.CrossEntropy(label_smoothing=0.1),
        lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
    ),
    "cross_entropy_smooth_probs": (
        lambda: pn.CrossEntropy(label_smoothing=0.2),
        lambda: nn.CrossEntropyLoss(label_smoothing=0.2),
    ),
}

# torch's Softplus turns linear above this input (beta = 1); portanet's never does.
TORCH_SOFTPLUS_THRESHOLD = 20.0


# ------------------------------------------------------- the twin network ----


def torch_activation(act: A.Activation) -> nn.Module:
    if act.name == "leaky_relu":
        return nn.LeakyReLU(act.negative_slope)
    if act.name == "elu":
        return nn.ELU(act.alpha)
    return {
        "identity": nn.Identity,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "gelu": lambda: nn.GELU(approximate="tanh"),
        "silu": nn.SiLU,
        "softplus": lambda: nn.Softplus(beta=1.0, threshold=TORCH_SOFTPLUS_THRESHOLD),
        "softmax": lambda: nn.Softmax(dim=-1),
    }[act.name]()


class FixedMask(nn.Module):
    """A portanet Dropout layer with its drawn mask: ``y = x * mask``."""

    def __init__(self, mask: np.ndarray):
        super().__init__()
        self.mask = torch.from_numpy(mask)

    def forward(self, x):
        return x * self.mask


def torch_twin(net: pn.Sequential) -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    """A float64 ``torch.nn`` copy of ``net``, and its parameters under portanet's names.

    Dropout layers become their current (frozen) mask.
    """
    modules: list[nn.Module] = []
    named: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(net.layers):
        if isinstance(layer, pn.Dense):
            lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias,
                            dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(to_numpy(layer.params["weight"]).T))
                named[f"{i}.weight"] = lin.weight
                if layer.use_bias:
                    lin.bias.copy_(torch.from_numpy(to_numpy(layer.params["bias"])))
                    named[f"{i}.bias"] = lin.bias
            modules += [lin, torch_activation(layer.activation)]
        elif isinstance(layer, pn.Dropout):
            mask = layer._mask
            modules.append(nn.Identity() if mask is None else FixedMask(to_numpy(mask)))
        else:
            modules.append(torch_activation(layer.activation))
    return nn.Sequential(*modules), named


def freeze_dropout(net: pn.Sequential, x) -> None:
    """Draw every Dropout mask once (training=True), then make each layer reuse its mask."""
    net.forward(x, training=True)
    for layer in net.layers:
        if isinstance(layer, pn.Dropout):
            layer.draw_mask = lambda shape, mask=layer._mask: mask


def softplus_inputs_below_threshold(net: pn.Sequential, x: np.ndarray) -> bool:
    a = x
    for layer in net.layers:
        if isinstance(layer, pn.Dense) and layer.activation.name == "softplus":
            z = a @ to_numpy(layer.params["weight"])
            if layer.use_bias:
                z = z + to_numpy(layer.params["bias"])
            if z.max() >= TORCH_SOFTPLUS_THRESHOLD:
                return False
        elif getattr(layer, "activation", None) is A.softplus and a.max() >= 20.0:
            return False
        a = to_numpy(layer.forward(a, training=True))
    return True


def compare_with_autograd(net: pn.Sequential, x: np.ndarray, y: np.ndarray, loss_name: str):
    """Return ``{what: norm-relative difference}`` for the loss, ``"x"`` and every parameter."""
    pn_loss, torch_loss = (make() for make in LOSSES[loss_name])
    freeze_dropout(net, x)
    assert softplus_inputs_below_threshold(net, x), "torch's Softplus would go linear"

    y_pn = net.as_target(y, x.shape[0], pn_loss)
    pred = net.forward(x, training=True)
    value = pn_loss.value(pred, y_pn)
    grads = {"x": net.backward(pn_loss.grad(pred, y_pn)), **net.gradients()}

    model, named = torch_twin(net)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.from_numpy(y) if y.dtype.kind == "i" else torch.tensor(y, dtype=torch.float64)
    value_t = torch_loss(model(xt), yt)
    value_t.backward()
    expected = {"x": xt.grad}
    for name, p in named.items():
        expected[name] = p.grad.T if name.endswith("weight") else p.grad

    assert set(grads) == set(expected)
    diffs = {"loss": norm_rel_diff(value, value_t.detach())}
    for name, g in grads.items():
        diffs[name] = norm_rel_diff(g, expected[name].detach())
    return diffs


def assert_within(diffs: dict[str, float], rtol: float) -> None:
    bad = {k: v for k, v in diffs.items() if not v <= rtol}
    assert not bad, f"norm-relative differences above {rtol:g}: {bad}"


def build(layers, seed=0) -> pn.Sequential:
    return pn.Sequential(layers, backend="numpy", dtype="float64", seed=seed)


# ------------------------------------------------------------ gradients ----


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradients_match_autograd(name, bias):
    net = build([pn.Dense(6, 9, activation=ACTIVATIONS[name](), bias=bias),
                 pn.Dense(9, 4, activation=ACTIVATIONS[name](), bias=bias),
                 pn.Dense(4, 3)])
    rng = np.random.default_rng(10)
    randomize(net, rng)
    x = rng.normal(0.0, 2.0, size=(11, 6))
    y = rng.normal(size=(11, 3))
    assert_within(compare_with_autograd(net, x, y, "mse"), RTOL)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_layers_match_autograd(name):
    act = ACTIVATIONS[name]()
    layer = {"leaky_relu": lambda: pn.LeakyReLU(act.negative_slope),
             "elu": lambda: pn.ELU(act.alpha)}.get(name, lambda: pn.layers.ActivationLayer(act))()
    net = build([pn.Dense(5, 7), layer, pn.Dense(7, 2)])
    rng = np.random.default_rng(11)
    randomize(net, rng)
    x = rng.normal(size=(8, 5))
    y = rng.integers(0, 2, size=8)
    assert_within(compare_with_autograd(net, x, y, "cross_entropy_labels"), RTOL)


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_loss_gradients_match_autograd(loss_name):
    net = build([pn.Dense(5, 8, activation="tanh"), pn.Dropout(0.4),
                 pn.Dense(8, 6, activation="gelu"), pn.Dense(6, 4)])
    rng = np.random.default_rng(12)
    randomize(net, rng)
    x = rng.normal(size=(10, 5))
    y = make_targets(loss_name, rng, 10, 4)
    if loss_name == "huber":  # both branches of the Huber loss are exercised
        d = np.abs(to_numpy(net.forward(x)) - y)
        assert (d < 0.5).any() and (d > 0.5).any()
    diffs = compare_with_autograd(net, x, y, loss_name)
    assert (to_numpy(net.layers[1]._mask) == 0).any()  # Dropout dropped units
    assert_within(diffs, RTOL)


def test_loss_values_match_torch_for_large_logits():
    """Stable forms: logits of size 1e3 give finite losses equal to torch's."""
    rng = np.random.default_rng(13)
    z = rng.normal(0.0, 1e3, size=(6, 5))
    labels = rng.integers(0, 5, size=6)
    probs = rng.uniform(size=(6, 5))
    pn_ce = pn.CrossEntropy(label_smoothing=0.1).value(z, labels)
    t_ce = nn.CrossEntropyLoss(label_smoothing=0.1)(torch.from_numpy(z), torch.from_numpy(labels))
    pn_bce = pn.BCEWithLogits().value(z, probs)
    t_bce = nn.BCEWithLogitsLoss()(torch.from_numpy(z), torch.from_numpy(probs))
    assert np.isfinite(float(pn_ce)) and np.isfinite(float(pn_bce))
    assert norm_rel_diff(pn_ce, t_ce) <= RTOL
    assert norm_rel_diff(pn_bce, t_bce) <= RTOL


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=network_specs(list(ACTIVATIONS), list(LOSSES)))
def test_random_networks_match_autograd(spec):
    w = spec["widths"]
    net = build(layers_from_spec(spec, lambda name: ACTIVATIONS[name]()), seed=spec["seed"])
    rng = np.random.default_rng(spec["seed"])
    randomize(net, rng)
    x = rng.normal(size=(spec["batch"], w[0]))
    y = make_targets(spec["loss"], rng, spec["batch"], w[-1])
    assert_within(compare_with_autograd(net, x, y, spec["loss"]), RTOL)


# ----------------------------------------------------------- optimizers ----

SHAPES = {"0.weight": (5, 3), "0.bias": (3,), "1.weight": (3, 4), "1.bias": (4,)}
STEPS = 200

OPTIMIZERS = {
    "sgd": (lambda: pn.SGD(lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    "sgd_momentum": (
        lambda: pn.SGD(lr=0.05, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    ),
    "sgd_nesterov": (
        lambda: pn.SGD(lr=0.05, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    ),
    "sgd_weight_decay": (
        lambda: pn.SGD(lr=0.05, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.1),
    ),
    "sgd_momentum_weight_decay": (
        lambda: pn.SGD(lr=0.05, momentum=0.5, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.1),
    ),
    "adam": (lambda: pn.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam_amsgrad": (
        lambda: pn.Adam(lr=0.01, amsgrad=True),
        lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    ),
    "adam_weight_decay": (
        lambda: pn.Adam(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
    ),
    "adamw": (
        lambda: pn.AdamW(lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ),
    "adamw_amsgrad": (
        lambda: pn.AdamW(lr=0.01, weight_decay=0.1, amsgrad=True),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=True),
    ),
}


def run_both(make_pn, make_torch, dtype: str, clip=None, seed=0) -> tuple[float, int]:
    """Step both optimizers ``STEPS`` times on the same gradients.

    Returns the largest norm-relative difference of any parameter at any step,
    and the number of steps whose gradients the clipping changed.
    ``clip`` is ``("norm", max_norm)`` or ``("value", clip_value)``: torch then
    clips with ``clip_grad_norm_``/``clip_grad_value_`` before its step.
    """
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype)
    start = {k: rng.normal(size=s).astype(np_dtype) for k, s in SHAPES.items()}
    params = {k: v.copy() for k, v in start.items()}
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    opt = make_pn()
    topt = make_torch(list(tparams.values()))
    worst, clipped = 0.0, 0
    for _ in range(STEPS):
        grads = {k: (2.0 * rng.normal(size=s)).astype(np_dtype) for k, s in SHAPES.items()}
        opt.step(params, grads)
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        if clip is not None and clip[0] == "norm":
            total = torch.nn.utils.clip_grad_norm_(list(tparams.values()), clip[1])
            clipped += int(total > clip[1])
        elif clip is not None:
            clipped += int(max(abs(g).max() for g in grads.values()) > clip[1])
            torch.nn.utils.clip_grad_value_(list(tparams.values()), clip[1])
        topt.step()
        for k, p in params.items():
            assert p.dtype == np_dtype, f"{k} became {p.dtype}"
            worst = max(worst, norm_rel_diff(p, tparams[k].detach()))
    moved = max(norm_rel_diff(params[k], start[k]) for k in params)
    assert moved > 0.1, "the parameters hardly moved: the comparison would be weak"
    return worst, clipped


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_trajectory_matches_torch(name, dtype):
    worst, _ = run_both(*OPTIMIZERS[name], dtype)
    assert worst <= ORACLE_RTOL[dtype], f"{name} drifted from torch.optim by {worst:.3g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "clip, make_pn, make_torch",
    [
        # the seeded gradients have a global norm of about 12: 4.0 clips every step, 12.0 some
        (("norm", 4.0), lambda: pn.SGD(lr=0.05, momentum=0.9, clip_norm=4.0),
         lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
        (("norm", 12.0), lambda: pn.Adam(lr=0.01, clip_norm=12.0),
         lambda p: torch.optim.Adam(p, lr=0.01)),
        (("value", 0.5), lambda: pn.SGD(lr=0.05, clip_value=0.5),
         lambda p: torch.optim.SGD(p, lr=0.05)),
        (("value", 5.0), lambda: pn.AdamW(lr=0.01, clip_value=5.0),
         lambda p: torch.optim.AdamW(p, lr=0.01)),
    ],
    ids=["norm-sgd", "norm-adam", "value-sgd", "value-adamw"],
)
def test_gradient_clipping_matches_torch(clip, make_pn, make_torch, dtype):
    worst, clipped = run_both(make_pn, make_torch, dtype, clip=clip)
    assert 0 < clipped, "the clipping never changed a gradient"
    assert worst <= ORACLE_RTOL[dtype], f"clipping {clip} drifted from torch by {worst:.3g}"
    if clip[1] > 4.0:  # some steps clip, some do not
        assert clipped < STEPS


def test_clip_by_global_norm_scales_to_the_norm():
    g = {"a": np.array([3.0, -4.0]), "b": np.array([[12.0]])}  # global norm 13
    clipped = pn.optim.clip_by_global_norm(g, 1.0)
    ts = [torch.tensor(v, requires_grad=True) for v in g.values()]
    for t, v in zip(ts, g.values()):
        t.grad = torch.tensor(v)
    torch.nn.utils.clip_grad_norm_(ts, 1.0)
    for (name, c), t in zip(clipped.items(), ts):
        assert norm_rel_diff(c, t.grad) <= RTOL, name
    total = np.sqrt(sum((to_numpy(c) ** 2).sum() for c in clipped.values()))
    assert abs(total - 1.0) < 1e-6
    unchanged = pn.optim.clip_by_global_norm(g, 20.0)
    assert all(np.array_equal(to_numpy(unchanged[k]), g[k]) for k in g)
