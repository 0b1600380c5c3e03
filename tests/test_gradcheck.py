"""Finite differences: every analytic gradient against central differences in float64.

The driver is small and generic. :func:`central_differences` perturbs one entry
of a host NumPy copy at a time, ``(f(a + h e_i) - f(a - h e_i)) / 2h``, and
:func:`network_gradcheck` points it at the network's input and at each of its
parameters (moved to the device with ``xp.asarray``). Results are compared with
``norm_rel_diff`` at ``FINITE_DIFFERENCE_RTOL``.

Kinks (relu and leaky relu at 0, MAE at 0, Huber at ``|d| = delta``) would
make central differences wrong, so the inputs are chosen away from them:
the fixed tests draw values away from the kink by construction, and the
property tests discard (``assume``) draws that come close to one. They also
discard draws whose gradient is too small for a float64 central difference to
resolve (see :func:`resolvable`).

Every test runs on the session's backend (the ``xp`` fixture) in float64.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
from _util import ACTIVATIONS, layers_from_spec, make_targets, network_specs, randomize
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import portanet as pn
from portanet.backend import to_numpy
from portanet.testing import FINITE_DIFFERENCE_RTOL, norm_rel_diff

# The step the FINITE_DIFFERENCE_RTOL of portanet.testing is stated for: near
# eps ** (1/3), where a central difference's truncation error (h^2) and its
# rounding error (eps / h) balance. At 1e-6, XLA's float64 rounding alone
# could exceed the bound on a drawn network.
H = 4e-6
# An FD perturbation of size H moves a pre-activation by a few H at most; values
# closer than this to a kink could cross it and are kept out of the checks.
KINK_MARGIN = 8e-5

KINKED = ("relu", "leaky_relu", "elu")

LOSSES: dict[str, Callable[[], pn.Loss]] = {
    "mse": pn.MSE,
    "mae": pn.MAE,
    "huber": lambda: pn.Huber(0.5),
    "bce_with_logits": pn.BCEWithLogits,
    "cross_entropy_labels": pn.CrossEntropy,
    "cross_entropy_probs": pn.CrossEntropy,
    "cross_entropy_smooth_labels": lambda: pn.CrossEntropy(label_smoothing=0.1),
    "cross_entropy_smooth_probs": lambda: pn.CrossEntropy(label_smoothing=0.2),
}


# ------------------------------------------------------------- the driver ----


def central_differences(
    f: Callable[[np.ndarray], float], a: np.ndarray, indices: np.ndarray | None = None
) -> np.ndarray:
    """``df/da`` at the flat ``indices`` of the host array ``a`` (all of them by default).

    ``f`` receives a float64 copy of ``a`` with one entry moved by ``+-H``.
    """
    a = np.array(a, dtype=np.float64)
    flat = a.reshape(-1)
    indices = np.arange(flat.size) if indices is None else indices
    out = np.empty(len(indices))
    for k, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + H
        up = f(a.copy())
        flat[i] = old - H
        down = f(a.copy())
        flat[i] = old
        out[k] = (up - down) / (2.0 * H)
    return out


def freeze_dropout(net: pn.Sequential, x) -> None:
    """Draw every Dropout mask once (training=True), then make each layer reuse its mask."""
    net.forward(x, training=True)
    for layer in net.layers:
        if isinstance(layer, pn.Dropout):
            layer.draw_mask = lambda shape, mask=layer._mask: mask


def network_gradcheck(net, x, y, loss, *, max_entries=None, seed=0):
    """Return ``{name: (finite differences, analytic)}`` for the input ``"x"`` and every parameter.

    ``max_entries`` limits the entries checked per array (a seeded random subset).
    Dropout masks are frozen first, so every evaluation sees the same mask.
    """
    xp, device = net.xp, net.device
    pick = np.random.default_rng(seed)
    x_dev = xp.asarray(x, device=device)
    freeze_dropout(net, x_dev)
    y_dev = net.as_target(y, x.shape[0], loss)

    pred = net.forward(x_dev, training=True)
    analytic = {"x": to_numpy(net.backward(loss.grad(pred, y_dev)))}
    analytic.update({k: to_numpy(g) for k, g in net.gradients().items()})

    def loss_at(x_host: np.ndarray) -> float:
        return float(loss.value(net.forward(xp.asarray(x_host, device=device), True), y_dev))

    params = net.parameters()
    out = {}
    for name, at in [("x", x), *net.state_dict().items()]:
        size = at.size
        idx = np.arange(size)
        if max_entries is not None and size > max_entries:
            idx = np.sort(pick.choice(size, max_entries, replace=False))
        if name == "x":
            fd = central_differences(loss_at, at, idx)
        else:
            original = params[name]

            def loss_with(p_host: np.ndarray, name: str = name) -> float:
                params[name] = xp.asarray(p_host, device=device)
                return loss_at(x)

            fd = central_differences(loss_with, at, idx)
            params[name] = original
        out[name] = (fd, analytic[name].reshape(-1)[idx])
    return out


def assert_each_array(results) -> None:
    for name, (fd, grad) in results.items():
        err = norm_rel_diff(grad, fd)
        assert err <= FINITE_DIFFERENCE_RTOL, f"{name}: norm-relative error {err:.3g}"


# A central difference carries the rounding of two loss values. Measured on
# every backend, its error is about 0.25 (at most 1.3) times FD_ROUNDING * |L|
# per entry, eps being the float64 machine epsilon.
FD_ROUNDING = float(np.finfo(np.float64).eps) / H


def resolvable(grad: np.ndarray, loss_value: float) -> bool:
    """Whether central differences can check ``grad`` to ``FINITE_DIFFERENCE_RTOL``.

    The allowed error must be at least twice ``sqrt(k) * FD_ROUNDING * |L|``
    for ``k`` entries. A mean over many elements, or deep stacks of saturating
    units (five sigmoids), can shrink a gradient below that: a finite
    difference would then test its own rounding.
    """
    noise = np.sqrt(grad.size) * FD_ROUNDING * abs(loss_value)
    return bool(np.linalg.norm(grad) * FINITE_DIFFERENCE_RTOL >= 2.0 * noise)


def assert_resolvable_arrays(results, loss_value: float) -> None:
    """Check every array that FD can resolve, and the gradient as one vector.

    Draws whose whole gradient is below the FD's resolution are discarded.
    """
    fd = np.concatenate([r[0] for r in results.values()])
    grad = np.concatenate([r[1] for r in results.values()])
    assume(resolvable(grad, loss_value))
    err = norm_rel_diff(grad, fd)
    assert err <= FINITE_DIFFERENCE_RTOL, f"whole gradient: norm-relative error {err:.3g}"
    assert_each_array(
        {k: r for k, r in results.items() if resolvable(r[1], loss_value)}
    )


# ------------------------------------------------------------- inputs ----


def away_from_zero(rng, shape, low=0.1, high=3.0) -> np.ndarray:
    """Values with ``low <= |v| <= high`` and random signs."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)


def kink_distance(net, x, y, loss) -> float:
    """How close the forward pass comes to a kink (inf if nowhere kinked).

    Looks at pre-activations of relu-like activations and at the residuals of
    MAE and Huber, on host copies. Call after :func:`freeze_dropout`.
    """
    dist = [np.inf]
    a = net.xp.asarray(x, device=net.device)
    for layer in net.layers:
        act = getattr(layer, "activation", None)
        if act is not None and act.name in KINKED:
            z = to_numpy(a)
            if isinstance(layer, pn.Dense):
                z = z @ to_numpy(layer.params["weight"])
                if layer.use_bias:
                    z = z + to_numpy(layer.params["bias"])
            dist.append(np.abs(z).min())
        a = layer.forward(a, training=True)
    if isinstance(loss, (pn.MAE, pn.Huber)):
        d = np.abs(to_numpy(a) - np.asarray(y))
        dist.append((d if isinstance(loss, pn.MAE) else np.abs(d - loss.delta)).min())
    return float(min(dist))


def build(layers, xp, seed=0) -> pn.Sequential:
    xp_, device = xp
    return pn.Sequential(layers, backend=xp_, device=device, dtype="float64", seed=seed)


# ---------------------------------------------------- activations alone ----


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward_matches_finite_differences(xp, float64, name):
    xp_, device = xp
    act = ACTIVATIONS[name]()
    rng = np.random.default_rng(1)
    x = away_from_zero(rng, (6, 7), 0.05, 4.0)
    g = rng.normal(size=(6, 7))
    g_dev = xp_.asarray(g, device=device)

    def weighted_output(x_host: np.ndarray) -> float:
        # <g, f(x)>, whose gradient in x is act.backward(x, f(x), g)
        return float(xp_.sum(g_dev * act(xp_.asarray(x_host, device=device))))

    x_dev = xp_.asarray(x, device=device)
    analytic = to_numpy(act.backward(x_dev, act(x_dev), g_dev))
    fd = central_differences(weighted_output, x).reshape(x.shape)
    assert norm_rel_diff(analytic, fd) <= FINITE_DIFFERENCE_RTOL


# --------------------------------------------------------- losses alone ----


def _loss_inputs(name: str, rng, n=8, k=5):
    pred = rng.normal(0.0, 2.0, size=(n, k))
    target = make_targets(name, rng, n, k)
    if name == "mae":  # residuals at least 0.1 from the kink at 0
        target = pred - away_from_zero(rng, (n, k), 0.1, 2.0)
    if name == "huber":  # residuals at least 0.1 from the kinks at |d| = delta
        delta = LOSSES["huber"]().delta
        mag = np.where(rng.random((n, k)) < 0.5, rng.uniform(0.0, delta - 0.1, (n, k)),
                       rng.uniform(delta + 0.1, 3.0, (n, k)))
        target = pred - rng.choice([-1.0, 1.0], size=(n, k)) * mag
    return pred, target


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_grad_matches_finite_differences(xp, float64, name):
    xp_, device = xp
    loss = LOSSES[name]()
    rng = np.random.default_rng(2)
    pred, target = _loss_inputs(name, rng)
    if name == "huber":  # both branches are checked
        residual = np.abs(pred - target)
        assert (residual < loss.delta).any() and (residual > loss.delta).any()
    t_dev = xp_.asarray(target, device=device)

    def value(p_host: np.ndarray) -> float:
        return float(loss.value(xp_.asarray(p_host, device=device), t_dev))

    analytic = to_numpy(loss.grad(xp_.asarray(pred, device=device), t_dev))
    fd = central_differences(value, pred).reshape(pred.shape)
    assert norm_rel_diff(analytic, fd) <= FINITE_DIFFERENCE_RTOL


# ---------------------------------------------------------------- Dense ----


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_dense_gradients_match_finite_differences(xp, float64, name, bias):
    net = build([pn.Dense(5, 4, activation=ACTIVATIONS[name](), bias=bias)], xp)
    loss = pn.MSE()
    for seed in range(20):  # the first draw whose pre-activations avoid relu's kink
        rng = np.random.default_rng(seed)
        randomize(net, rng)
        x = rng.normal(size=(6, 5))
        y = rng.normal(size=(6, 4))
        if kink_distance(net, x, y, loss) > 1e-3:
            break
    else:
        pytest.fail("no draw kept away from the kink")
    results = network_gradcheck(net, x, y, loss)
    assert set(results) == {"x", "0.weight"} | ({"0.bias"} if bias else set())
    assert_each_array(results)


# -------------------------------------------------------------- Dropout ----


def test_dropout_with_fixed_mask_matches_finite_differences(xp, float64):
    net = build([pn.Dense(4, 10, activation="tanh"), pn.Dropout(0.5), pn.Dense(10, 3)], xp)
    rng = np.random.default_rng(3)
    randomize(net, rng)
    x = rng.normal(size=(7, 4))
    y = rng.integers(0, 3, size=7)
    results = network_gradcheck(net, x, y, pn.CrossEntropy())
    mask = to_numpy(net.layers[1]._mask)
    assert (mask == 0).any() and (mask == 2.0).any()  # units are dropped and kept
    assert set(np.unique(mask)) == {0.0, 2.0}
    assert_each_array(results)
    # the frozen mask really is reused: the gradient is that of x -> x * mask
    g = rng.normal(size=mask.shape)
    back = to_numpy(net.layers[1].backward(net.xp.asarray(g, device=net.device)))
    np.testing.assert_array_equal(back, g * mask)


# ---------------------------------------------------- whole networks ----

NETWORKS = {
    "leaky_dropout_tanh_ce": (
        lambda: [pn.Dense(5, 8, activation=pn.LeakyReLU(0.1)), pn.Dropout(0.3),
                 pn.Dense(8, 8, activation="tanh"), pn.Dense(8, 3)],
        "cross_entropy_labels",
    ),
    "gelu_silu_elu_softplus_bce": (
        lambda: [pn.Dense(5, 8, activation="gelu"), pn.SiLU(), pn.Dense(8, 6, activation="elu"),
                 pn.Dropout(0.25), pn.Dense(6, 4, activation="softplus", bias=False),
                 pn.Dense(4, 4)],
        "bce_with_logits",
    ),
    "relu_layers_softmax_mse": (
        lambda: [pn.Dense(6, 7), pn.ReLU(), pn.Dense(7, 5, bias=False), pn.Softmax()],
        "mse",
    ),
    "sigmoid_tanh_huber": (
        lambda: [pn.Dense(3, 6, activation="sigmoid"), pn.Dense(6, 6, activation="tanh"),
                 pn.Tanh(), pn.Dense(6, 2)],
        "huber",
    ),
    "identity_mae": (
        lambda: [pn.Dense(4, 5, activation="identity"), pn.Identity(), pn.ELU(),
                 pn.Dense(5, 3)],
        "mae",
    ),
    "softmax_hidden_smoothed_ce": (
        lambda: [pn.Dense(4, 6, activation="silu"), pn.Dense(6, 5, activation="softmax"),
                 pn.Dense(5, 4)],
        "cross_entropy_smooth_probs",
    ),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_sequential_gradients_match_finite_differences(xp, float64, name):
    make_layers, loss_name = NETWORKS[name]
    net = build(make_layers(), xp)
    loss = LOSSES[loss_name]()
    k = net.out_features
    for seed in range(20):
        rng = np.random.default_rng(seed)
        randomize(net, rng, scale=1.5)
        x = rng.normal(size=(9, net.in_features))
        y = make_targets(loss_name, rng, 9, k)
        freeze_dropout(net, net.xp.asarray(x, device=net.device))
        if kink_distance(net, x, y, loss) > 1e-3:
            break
        for layer in net.layers:  # redraw the masks with the next seed
            layer.__dict__.pop("draw_mask", None)
    else:
        pytest.fail("no draw kept away from the kinks")
    results = network_gradcheck(net, x, y, loss)
    assert set(results) == {"x", *net.parameters()}
    assert_each_array(results)


# --------------------------------------------------- property tests ----


def build_from_spec(spec, xp) -> pn.Sequential:
    return build(layers_from_spec(spec, lambda name: ACTIVATIONS[name]()), xp, seed=spec["seed"])


# JAX compiles every op anew for each new shape (~25 ms apiece), so a drawn
# network costs it ~2 s against milliseconds elsewhere: it draws fewer.
EXAMPLES = 10 if os.environ.get("PORTANET_TEST_BACKEND") == "jax" else 40

PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(spec=network_specs(list(ACTIVATIONS), list(LOSSES)))
def test_random_networks_match_finite_differences(xp, float64, spec):
    net = build_from_spec(spec, xp)
    loss = LOSSES[spec["loss"]]()
    rng = np.random.default_rng(spec["seed"])
    randomize(net, rng)
    x = rng.normal(size=(spec["batch"], net.in_features))
    y = make_targets(spec["loss"], rng, spec["batch"], net.out_features)
    freeze_dropout(net, net.xp.asarray(x, device=net.device))
    assume(kink_distance(net, x, y, loss) > KINK_MARGIN)
    results = network_gradcheck(net, x, y, loss, max_entries=6, seed=spec["seed"])
    assert set(results) == {"x", *net.parameters()}
    loss_value = float(loss.value(net.forward(x, training=True), net.as_target(y, len(x), loss)))
    assert_resolvable_arrays(results, loss_value)


@PROPERTY_SETTINGS
@given(
    name=st.sampled_from(list(LOSSES)),
    n=st.integers(1, 33),
    k=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_loss_shapes_match_finite_differences(xp, float64, name, n, k, seed):
    xp_, device = xp
    loss = LOSSES[name]()
    rng = np.random.default_rng(seed)
    pred, target = _loss_inputs(name, rng, n, k)
    t_dev = xp_.asarray(target, device=device)
    idx = np.sort(rng.choice(pred.size, min(pred.size, 12), replace=False))

    def value(p_host: np.ndarray) -> float:
        return float(loss.value(xp_.asarray(p_host, device=device), t_dev))

    analytic = to_numpy(loss.grad(xp_.asarray(pred, device=device), t_dev)).reshape(-1)[idx]
    assume(resolvable(analytic, value(pred)))
    err = norm_rel_diff(analytic, central_differences(value, pred, idx))
    assert err <= FINITE_DIFFERENCE_RTOL
