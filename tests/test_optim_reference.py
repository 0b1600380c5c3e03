"""The optimizers against update rules written out in plain float64 NumPy, as the
``torch.optim`` documentation states them: an oracle that needs no torch, so that every
session (``tests-numpy`` included) checks them.

Each rule runs 60 steps of seeded gradients with ``eps`` well away from 0 (where Adam's
rescaled epsilon matters), weight decay, momentum, AMSGrad, clipping and schedules, and
every step's parameters must match at ``ORACLE_RTOL`` (float64) or the float32 bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from _util import host, put

import portanet as pn
from portanet.testing import ORACLE_RTOL, norm_rel_diff

STEPS = 60


def sgd_rule(lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD (dampening 0): b <- mu b + g (b = g at first), g <- g + mu b or b."""
    def step(p, g, state, t):
        g = g + weight_decay * p
        if momentum:
            state["b"] = g.copy() if t == 1 else momentum * state["b"] + g
            g = g + momentum * state["b"] if nesterov else state["b"]
        return p - lr(t) * g
    return step


def adam_rule(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
              decoupled=False):
    """torch.optim.Adam / AdamW: the bias-corrected moments, AMSGrad's running maximum of
    the second moment, L2 (Adam) or decoupled (AdamW) weight decay."""
    b1, b2 = betas

    def step(p, g, state, t):
        if decoupled:
            p = p * (1 - lr(t) * weight_decay)
        else:
            g = g + weight_decay * p
        state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
        state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * g * g
        v = state["v"]
        if amsgrad:
            state["vmax"] = np.maximum(state.get("vmax", 0.0), v)
            v = state["vmax"]
        m_hat = state["m"] / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return p - lr(t) * m_hat / (np.sqrt(v_hat) + eps)
    return step


def clipped(grads, clip_value=None, clip_norm=None):
    """torch.nn.utils.clip_grad_value_ then clip_grad_norm_ (norm of all gradients)."""
    if clip_value is not None:
        grads = {k: np.clip(g, -clip_value, clip_value) for k, g in grads.items()}
    if clip_norm is not None:
        total = np.sqrt(sum((g * g).sum() for g in grads.values()))
        scale = min(1.0, clip_norm / (total + 1e-6))
        grads = {k: g * scale for k, g in grads.items()}
    return grads


def constant(value):
    return lambda t: value


CASES = {
    "sgd": (lambda: pn.SGD(0.1), sgd_rule(constant(0.1)), {}),
    "sgd-momentum-decay": (lambda: pn.SGD(0.05, momentum=0.9, weight_decay=0.01),
                           sgd_rule(constant(0.05), 0.9, weight_decay=0.01), {}),
    "sgd-nesterov": (lambda: pn.SGD(0.05, momentum=0.8, nesterov=True),
                     sgd_rule(constant(0.05), 0.8, nesterov=True), {}),
    "adam-eps": (lambda: pn.Adam(0.01, eps=1e-3), adam_rule(constant(0.01), eps=1e-3), {}),
    "adam-betas-decay": (lambda: pn.Adam(0.02, betas=(0.8, 0.95), eps=1e-2, weight_decay=0.05),
                         adam_rule(constant(0.02), (0.8, 0.95), 1e-2, 0.05), {}),
    "amsgrad": (lambda: pn.Adam(0.02, eps=1e-4, amsgrad=True),
                adam_rule(constant(0.02), eps=1e-4, amsgrad=True), {"shrink": True}),
    "adamw": (lambda: pn.AdamW(0.01, eps=1e-3, weight_decay=0.1),
              adam_rule(constant(0.01), eps=1e-3, weight_decay=0.1, decoupled=True), {}),
    "adamw-amsgrad": (lambda: pn.AdamW(0.01, eps=1e-5, weight_decay=0.2, amsgrad=True),
                      adam_rule(constant(0.01), eps=1e-5, weight_decay=0.2, amsgrad=True,
                                decoupled=True), {"shrink": True}),
    "sgd-clip-value": (lambda: pn.SGD(0.1, clip_value=0.3), sgd_rule(constant(0.1)),
                       {"clip_value": 0.3}),
    "adam-clip-norm": (lambda: pn.Adam(0.01, eps=1e-3, clip_norm=0.7),
                       adam_rule(constant(0.01), eps=1e-3), {"clip_norm": 0.7}),
    "adam-step-schedule": (
        lambda: pn.Adam(pn.CosineAnnealing(STEPS, warmup_steps=5, eta_min=1e-3,
                                           initial_lr=0.05), eps=1e-3),
        adam_rule(lambda t: pn.CosineAnnealing(STEPS, warmup_steps=5, eta_min=1e-3)(t - 1, 0.05),
                  eps=1e-3), {}),
}


def _gradients(rng, params, t, shrink):
    """Seeded gradients; with ``shrink``, their size falls over time, so that AMSGrad's
    running maximum differs from the current second moment."""
    scale = 3.0 / (1 + t) if shrink else 1.0
    return {k: scale * rng.normal(size=v.shape) for k, v in params.items()}


def reference_run(rule, params, extra, steps=STEPS):
    rng = np.random.default_rng(1)
    params = {k: v.copy() for k, v in params.items()}
    states = {k: {} for k in params}
    history = []
    for t in range(1, steps + 1):
        grads = clipped(_gradients(rng, params, t, extra.get("shrink")), extra.get("clip_value"),
                        extra.get("clip_norm"))
        params = {k: rule(params[k], grads[k], states[k], t) for k in params}
        history.append(params)
    return history


def portanet_run(opt, params, extra, to_device, steps=STEPS):
    rng = np.random.default_rng(1)
    live = {k: to_device(v.copy()) for k, v in params.items()}
    history = []
    for t in range(1, steps + 1):
        grads = _gradients(rng, params, t, extra.get("shrink"))
        opt.step(live, {k: to_device(g) for k, g in grads.items()})
        history.append({k: host(v) for k, v in live.items()})
    return history


def _params():
    rng = np.random.default_rng(0)
    return {"0.weight": rng.normal(size=(5, 4)), "0.bias": rng.normal(size=4),
            "1.weight": rng.normal(size=(4, 3))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_step_follows_the_written_rule(xp, dtype, name):
    xs, device = xp
    make, rule, extra = CASES[name]
    params = _params()
    if dtype == "float32":
        params = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    expected = reference_run(rule, params, extra)
    got = portanet_run(make(), params, extra, lambda a: put(xs, device, a, dtype))
    # float64: the oracle bound; float32: rounding of 60 steps, the agreement bound
    rtol = ORACLE_RTOL["float64"] if dtype == "float64" else 1e-4
    for t, (ours, theirs) in enumerate(zip(got, expected), start=1):
        for k in theirs:
            assert norm_rel_diff(ours[k], theirs[k]) <= rtol, f"{name} step {t} {k}"


def test_adams_epsilon_is_rescaled_not_dropped():
    """With a large eps, the rescaled form (eps sqrt(1 - b2^t)) and a plain eps differ."""
    params = _params()
    expected = reference_run(adam_rule(constant(0.01), eps=0.1), params, {}, steps=5)
    got = portanet_run(pn.Adam(0.01, eps=0.1), params, {}, np.asarray, steps=5)
    wrong = reference_run(adam_rule(constant(0.01), eps=0.1 / np.sqrt(1 - 0.999)), params, {},
                          steps=5)
    assert norm_rel_diff(got[-1]["0.weight"], expected[-1]["0.weight"]) <= 1e-12
    assert norm_rel_diff(wrong[-1]["0.weight"], expected[-1]["0.weight"]) > 1e-6


def test_amsgrad_uses_the_running_maximum():
    params = _params()
    extra = {"shrink": True}
    with_max = reference_run(adam_rule(constant(0.02), eps=1e-4, amsgrad=True), params, extra)
    without = reference_run(adam_rule(constant(0.02), eps=1e-4), params, extra)
    got = portanet_run(pn.Adam(0.02, eps=1e-4, amsgrad=True), params, extra, np.asarray)
    assert norm_rel_diff(got[-1]["0.weight"], with_max[-1]["0.weight"]) <= 1e-12
    assert norm_rel_diff(with_max[-1]["0.weight"], without[-1]["0.weight"]) > 1e-6  # 4.5e-5


@pytest.mark.parametrize("value", [0.05, 0.3])
def test_clip_value_bounds_are_symmetric_and_exact(value):
    g = {"w": np.array([-1.0, -value, -0.01, 0.0, 0.02, value, 3.0])}
    out = pn.optim.clip_by_value(g, value)["w"]
    np.testing.assert_array_equal(out, np.clip(g["w"], -value, value))


def test_load_state_dict_copies_the_arrays():
    opt = pn.Adam(0.01)
    params = {"w": np.ones(3)}
    opt.step(params, {"w": np.full(3, 0.5)})
    state = opt.state_dict()
    fresh = pn.Adam(0.01)
    fresh.load_state_dict(state)
    kept = state["state"]["w"]["exp_avg"].copy()
    fresh.step({"w": np.ones(3)}, {"w": np.ones(3)})
    np.testing.assert_array_equal(state["state"]["w"]["exp_avg"], kept)
    state["state"]["w"]["exp_avg"][:] = 99.0  # and changing the dict later changes nothing
    assert not np.any(pn.to_numpy(fresh.state["exp_avg"]["w"]) == 99.0)
