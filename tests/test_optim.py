"""Optimizers on every backend against NumPy: values, state, clipping, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _util import assert_on, host, put
from array_api_compat import is_writeable_array

import portanet as pn
from portanet import _fast_optim as fast
from portanet.backend import is_host_array
from portanet.testing import AGREEMENT_RTOL, ORACLE_RTOL, norm_rel_diff

CONFIGS = {
    "sgd": lambda: pn.SGD(lr=0.1),
    "sgd_momentum": lambda: pn.SGD(lr=0.1, momentum=0.9),
    "sgd_nesterov": lambda: pn.SGD(lr=0.1, momentum=0.9, nesterov=True),
    "sgd_decay": lambda: pn.SGD(lr=0.1, weight_decay=0.01),
    "adam": lambda: pn.Adam(lr=0.01),
    "adam_amsgrad": lambda: pn.Adam(lr=0.01, amsgrad=True),
    "adam_decay": lambda: pn.Adam(lr=0.01, weight_decay=0.01),
    "adamw": lambda: pn.AdamW(lr=0.01, weight_decay=0.1),
    "adam_clip_norm": lambda: pn.Adam(lr=0.01, clip_norm=0.5),
    "sgd_clip_value": lambda: pn.SGD(lr=0.1, clip_value=0.05),
}


def _run(opt, params_host, grads_host, to_device):
    """Apply len(grads_host) steps; return the final parameters on the host."""
    params = {k: to_device(v.copy()) for k, v in params_host.items()}  # updated in place
    for grads in grads_host:
        opt.step(params, {k: to_device(v) for k, v in grads.items()})
    return params


def _problem(steps=15):
    rng = np.random.default_rng(0)
    params = {"0.weight": rng.normal(size=(4, 3)), "0.bias": rng.normal(size=3)}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_optimizer_matches_numpy(xp, dtype, name):
    xs, device = xp
    params, grads = _problem()
    got = _run(CONFIGS[name](), params, grads, lambda a: put(xs, device, a, dtype))
    ref = _run(CONFIGS[name](), params, grads, lambda a: np.asarray(a, dtype=dtype))
    for k in params:
        assert_on(xs, device, got[k], dtype, params[k].shape)
        # 15 updates: the table's bound for training runs (norm-relative)
        assert norm_rel_diff(got[k], ref[k]) <= AGREEMENT_RTOL[dtype], f"{name} {k}"


def _adam_reference(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as written in Kingma & Ba (2015), in float64 NumPy."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps * 0)
    return p


def test_adam_follows_the_paper_when_eps_is_zero(xp, float64):
    xs, device = xp
    params, grads = _problem()
    got = _run(pn.Adam(lr=0.01, eps=0.0), params, grads, lambda a: put(xs, device, a, "float64"))
    expected = _adam_reference(params["0.weight"], [g["0.weight"] for g in grads], 0.01)
    assert norm_rel_diff(got["0.weight"], expected) <= ORACLE_RTOL["float64"]


def test_sgd_momentum_by_hand():
    p = {"w": np.array([1.0])}
    opt = pn.SGD(lr=0.5, momentum=0.9)
    opt.step(p, {"w": np.array([1.0])})  # b = 1,     p = 1 - 0.5
    opt.step(p, {"w": np.array([1.0])})  # b = 1.9,   p = 0.5 - 0.95
    np.testing.assert_allclose(p["w"], [-0.45])


def test_clip_by_global_norm_scales_all_gradients_together():
    g = {"a": np.array([3.0]), "b": np.array([4.0])}
    out = pn.optim.clip_by_global_norm(g, 1.0)
    # the 1e-6 that torch adds to the norm (5) moves the scaled values by 2e-7
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [0.6, 0.8], rtol=1e-6)
    same = pn.optim.clip_by_global_norm(g, 10.0)
    np.testing.assert_allclose(same["a"], [3.0])


def test_state_dict_round_trip_continues_identically(xp, dtype):
    xs, device = xp
    params, grads = _problem(10)
    dev = lambda a: put(xs, device, a, dtype)  # noqa: E731
    straight = _run(pn.Adam(lr=0.01, amsgrad=True), params, grads, dev)

    first = pn.Adam(lr=0.01, amsgrad=True)
    half = _run(first, params, grads[:5], dev)
    saved = first.state_dict()
    assert saved["step"] == 5 and set(saved["state"]) == set(params)
    assert set(saved["state"]["0.weight"]) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert isinstance(saved["state"]["0.weight"]["exp_avg"], np.ndarray)
    second = pn.Adam(lr=0.01, amsgrad=True)
    second.load_state_dict(saved)
    for g in grads[5:]:
        second.step(half, {k: dev(v) for k, v in g.items()})
    for k in params:
        assert_on(xs, device, second.state["exp_avg"][k], dtype)
        np.testing.assert_array_equal(host(half[k]), host(straight[k]))


def test_bad_state_dict_changes_nothing():
    opt = pn.Adam()
    opt.step({"w": np.ones(2)}, {"w": np.ones(2)})
    with pytest.raises(ValueError, match="bad state"):
        opt.load_state_dict({"step": 3, "state": {"w": {"momentum": np.zeros(2)}}})
    assert opt.step_count == 1 and "w" in opt.state["exp_avg"]


@pytest.mark.parametrize("make,match", [
    (lambda: pn.SGD(lr=-1.0), "lr must be >= 0"),
    (lambda: pn.SGD(lr=float("nan")), "lr must be a finite number"),
    (lambda: pn.SGD(lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
    (lambda: pn.SGD(lr=0.1, nesterov=True), "nesterov=True needs momentum"),
    (lambda: pn.Adam(betas=(0.9,)), "betas must be a pair"),
    (lambda: pn.Adam(eps=-1.0), "eps must be >= 0"),
    (lambda: pn.SGD(lr=True), r"^lr must be a finite number, got True$"),
    (lambda: pn.SGD(lr="0.1"), r"^lr must be a finite number, got '0\.1'$"),
    (lambda: pn.Adam(betas=(1.0, 0.999)), r"^betas\[0\] must be in \[0, 1\), got 1\.0$"),
    (lambda: pn.Adam(betas=(0.9, -0.5)), r"^betas\[1\] must be >= 0, got -0\.5$"),
    (lambda: pn.Adam(weight_decay=-0.1), r"^weight_decay must be >= 0, got -0\.1$"),
    (lambda: pn.AdamW(weight_decay=-0.1), r"^weight_decay must be >= 0, got -0\.1$"),
    (lambda: pn.Adam(clip_norm=0.0), "clip_norm must be > 0"),
    (lambda: pn.optim.get("rmsprop"), "unknown optimizer"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_missing_gradient_is_an_error():
    with pytest.raises(KeyError, match="no gradient for parameters"):
        pn.SGD(lr=0.1).step({"w": np.ones(2)}, {})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_packed_blockwise_and_whole_array_updates_agree_bitwise(xp, dtype, name, monkeypatch):
    """Small networks update all parameters as one packed flat buffer; large host arrays
    are updated in cache-sized blocks of views. Both must give bitwise the result of the
    plain per-parameter, whole-array update."""
    xs, device = xp
    params, grads = _problem()
    dev = lambda a: put(xs, device, a, dtype)  # noqa: E731
    packed_opt = CONFIGS[name]()
    packed = _run(packed_opt, params, grads, dev)
    host_writeable = is_writeable_array(dev(params["0.weight"])) and \
        is_host_array(dev(params["0.weight"]))
    assert (packed_opt._packed is not None) == host_writeable
    monkeypatch.setattr(fast, "PACK_ELEMENTS", 0)
    whole_opt = CONFIGS[name]()
    whole = _run(whole_opt, params, grads, dev)
    assert whole_opt._packed is None
    monkeypatch.setattr(fast, "BLOCK_ELEMENTS", 2)
    assert fast.blockwise(dev(params["0.weight"])) == host_writeable
    blocked = _run(CONFIGS[name](), params, grads, dev)
    for k in params:
        np.testing.assert_array_equal(host(packed[k]), host(whole[k]), err_msg=f"{name} {k}")
        np.testing.assert_array_equal(host(blocked[k]), host(whole[k]), err_msg=f"{name} {k}")


def test_packed_parameters_are_views_and_repack_after_replacement():
    params = {"w": np.ones((2, 3)), "b": np.zeros(3)}
    opt = pn.Adam(0.1)
    opt.step(params, {"w": np.ones((2, 3)), "b": np.ones(3)})
    packed = opt._packed
    assert packed is not None and np.shares_memory(params["w"], packed.p)
    assert np.shares_memory(opt.state["exp_avg"]["b"], packed.state[0])
    params["w"] = np.full((2, 3), 5.0)  # e.g. load_state_dict put a new array in
    opt.step(params, {"w": np.ones((2, 3)), "b": np.ones(3)})
    assert opt._packed is not packed and np.shares_memory(params["w"], opt._packed.p)
    assert np.all(params["w"] < 5.0)  # the new array was updated, not the old buffer


def test_row_blocks_cover_every_row_once():
    blocks = fast.row_blocks((10, 3))  # BLOCK_ELEMENTS // 3 rows per block
    covered = [i for s in blocks for i in range(10)[s]]
    assert covered == list(range(10))
    assert fast.row_blocks((7,))[0] == slice(0, 7)


# ------------------------------------------------------------ packing ----
# A small network's parameters and optimizer state are packed into flat buffers
# (_fast_optim.packed); these pin when that happens and that it never goes stale.


def _small_float64_net():
    return pn.Sequential([pn.Dense(3, 4, activation="tanh"), pn.Dense(4, 2)], dtype="float64",
                         seed=0)


def _regression_batch():
    rng = np.random.default_rng(5)
    return rng.normal(size=(8, 3)), rng.normal(size=(8, 2))


def _train_across_a_load(load):
    """Two Adam steps, then ``load`` ("parameters", "optimizer" or None) of halved values,
    then two more steps: the final parameters, optimizer state and whether it was packed."""
    net, opt, (x, y) = _small_float64_net(), pn.Adam(1e-2), _regression_batch()
    for _ in range(2):
        net.train_step(x, y, "mse", opt)
    if load == "parameters":
        net.load_state_dict({k: v * 0.5 for k, v in net.state_dict().items()})
    elif load == "optimizer":
        sd = opt.state_dict()
        opt.load_state_dict({**sd, "state": {name: {slot: a * 0.5 for slot, a in slots.items()}
                                             for name, slots in sd["state"].items()}})
    for _ in range(2):
        net.train_step(x, y, "mse", opt)
    return net.state_dict(), opt.state_dict()["state"], opt._packed is not None


@pytest.mark.parametrize("load", ["parameters", "optimizer"])
def test_steps_after_a_load_update_the_loaded_arrays(monkeypatch, load):
    packed_params, packed_state, packed = _train_across_a_load(load)
    assert packed
    unloaded_params, _, _ = _train_across_a_load(None)
    assert not np.array_equal(packed_params["1.weight"], unloaded_params["1.weight"])  # it told
    monkeypatch.setattr(fast, "PACK_ELEMENTS", 0)  # nothing packed: each array on its own
    params, state, packed = _train_across_a_load(load)
    assert not packed
    for name, value in params.items():
        np.testing.assert_array_equal(packed_params[name], value, err_msg=name)
    for name, slots in state.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(packed_state[name][slot], value, err_msg=f"{name}/{slot}")


def test_the_packing_is_checked_again_only_after_an_array_was_replaced(monkeypatch):
    checks = []
    intact = fast.Packed.intact

    def counted_intact(self, params, state):
        checks.append(1)
        return intact(self, params, state)

    monkeypatch.setattr(fast.Packed, "intact", counted_intact)
    net, opt, (x, y) = _small_float64_net(), pn.Adam(1e-2), _regression_batch()
    for _ in range(4):
        net.train_step(x, y, "mse", opt)
    assert checks == []  # packed at the first step; nothing replaced since: no check at all
    assert all(np.shares_memory(p, opt._packed.p) for p in net.parameters().values())
    net.load_state_dict(net.state_dict())  # every parameter replaced
    net.train_step(x, y, "mse", opt)
    assert checks == [1]  # the packing is found broken once, and made again
    assert all(np.shares_memory(p, opt._packed.p) for p in net.parameters().values())
    net.train_step(x, y, "mse", opt)
    assert checks == [1]


@pytest.mark.parametrize("extra, packs", [(0, True), (1, False)])
def test_up_to_pack_elements_parameters_are_packed(extra, packs):
    params = {"w": np.ones(fast.PACK_ELEMENTS - 1 + extra), "b": np.ones(1)}
    opt = pn.SGD(0.5)
    opt.step(params, {"w": np.ones_like(params["w"]), "b": np.ones(1)})
    assert (opt._packed is not None) is packs
    assert np.all(params["w"] == 0.5) and np.all(params["b"] == 0.5)


def test_parameters_of_two_dtypes_are_each_updated_in_their_own():
    params = {"a": np.ones(3, dtype=np.float32), "b": np.ones(2, dtype=np.float64)}
    opt = pn.SGD(0.25)
    for _ in range(2):
        opt.step(params, {"a": np.ones(3, dtype=np.float32), "b": np.ones(2, dtype=np.float64)})
    assert params["a"].dtype == np.float32 and params["b"].dtype == np.float64
    assert np.all(params["a"] == 0.5) and np.all(params["b"] == 0.5)


def test_loaded_state_of_another_dtype_takes_the_parameters_dtype(xp):
    # a float64 checkpoint's Adam state loaded to train a float32 network
    xs, device = xp
    net = pn.Sequential([pn.Dense(3, 2)], backend=xs, device=device, seed=0)
    x, y = _regression_batch()
    opt = pn.Adam(1e-2)
    net.train_step(x, y, "mse", opt)
    sd = opt.state_dict()
    state64 = {name: {slot: a.astype(np.float64) for slot, a in slots.items()}
               for name, slots in sd["state"].items()}
    again = pn.Adam(1e-2)
    again.load_state_dict({**sd, "state": state64})
    net.train_step(x, y, "mse", again)
    assert set(again.state) == {"exp_avg", "exp_avg_sq"}
    for arrays in again.state.values():
        assert set(arrays) == set(net.parameters())
        for name, a in arrays.items():
            assert_on(xs, device, a, "float32", tuple(net.parameters()[name].shape))
