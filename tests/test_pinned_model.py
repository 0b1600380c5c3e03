"""Behaviours of the model modules that a mutation run found unpinned: the optimizers'
defaults, reprs, configs, saved state and the checks after a load or a move; the
learning-rate schedules' defaults and values; the losses' registration, configs,
reprs, Huber's two branches and the weighted call; ``Sequential``'s repr, summary,
``predict`` in batches, ``load_state_dict`` and ``to``.

Expected values are worked out by hand from the formulas in the docstrings (torch's
definitions), never read off portanet's output.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from _util import assert_on, host, put

import portanet as pn
from portanet import losses as L
from portanet import optim
from portanet.backend import to_array
from portanet.layers import ActivationLayer
from portanet.testing import assert_close

# ----------------------------------------------------------------- schedules ----


def test_step_lr_divides_by_ten_every_step_size_steps_by_default():
    sched = pn.StepLR(3, initial_lr=2.0)
    assert sched.gamma == 0.1
    got = np.array([sched(t) for t in range(7)])
    assert_close(got, [2.0, 2.0, 2.0, 0.2, 0.2, 0.2, 0.02], "float64")


def test_cosine_annealing_has_no_warmup_by_default():
    sched = pn.CosineAnnealing(10, initial_lr=1.0)
    assert (sched.warmup_steps, sched.eta_min) == (0, 0.0)
    # lr = (1 + cos(pi t / 10)) / 2 from the first step on, and eta_min = 0 after the end
    want = [(1.0 + math.cos(math.pi * min(t, 10) / 10)) / 2 for t in range(13)]
    assert_close(np.array([sched(t) for t in range(13)]), want, "float64")
    assert sched.config() == {"name": "cosine", "total_steps": 10, "eta_min": 0.0,
                              "warmup_steps": 0, "initial_lr": 1.0}


def test_cosine_annealing_needs_steps_after_the_warmup():
    for total, warmup in [(5, 5), (0, 0), (3, 4)]:
        with pytest.raises(ValueError, match="CosineAnnealing: total_steps must exceed warmup_steps"):
            pn.CosineAnnealing(total, warmup_steps=warmup)
    sched = pn.CosineAnnealing(6, warmup_steps=5, initial_lr=1.0)  # one step of decay
    assert_close(np.array([sched(t) for t in range(7)]),
                 [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.0], "float64")


def test_exponential_lr_config_rebuilds_it():
    sched = pn.ExponentialLR(0.5, initial_lr=4.0)
    config = sched.config()
    assert config == {"name": "exponential", "gamma": 0.5, "initial_lr": 4.0}
    again = optim.get_schedule(config)
    assert type(again) is pn.ExponentialLR and again.config() == config
    assert_close(np.array([again(t) for t in range(4)]), [4.0, 2.0, 1.0, 0.5], "float64")


def test_get_schedule_returns_a_schedule_as_it_is():
    sched = pn.StepLR(2, initial_lr=1.0)
    assert optim.get_schedule(sched) is sched


def test_a_schedule_names_a_bad_initial_lr():
    with pytest.raises(ValueError, match=r"^initial_lr must be > 0, got -1\.0$"):
        pn.StepLR(2, initial_lr=-1.0)
    with pytest.raises(ValueError, match=r"^initial_lr must be > 0, got 0$"):
        pn.ExponentialLR(0.5, initial_lr=0)


# ---------------------------------------------------------------- optimizers ----


class _Halving:
    """A plain callable schedule (not a :class:`Schedule`), with a repr of its own."""

    def __call__(self, t):
        return 0.5**t

    def __repr__(self):
        return "Halving()"


def test_sgd_defaults():
    sgd = pn.SGD()
    assert sgd.lr == 0.01 and sgd.initial_lr == 0.01
    assert sgd.config() == {"lr": 0.01, "clip_norm": None, "clip_value": None,
                            "initial_lr": 0.01, "momentum": 0.0, "nesterov": False,
                            "weight_decay": 0.0}
    with pytest.raises(ValueError, match=r"^weight_decay must be >= 0, got -0\.5$"):
        pn.SGD(weight_decay=-0.5)


def test_optimizer_reprs_show_the_hyperparameters_that_are_set():
    assert repr(pn.SGD()) == ("SGD(lr=0.01, initial_lr=0.01, momentum=0.0, nesterov=False, "
                              "weight_decay=0.0)")
    assert repr(pn.Adam(clip_value=0.5)) == (
        "Adam(lr=0.001, clip_value=0.5, initial_lr=0.001, betas=[0.9, 0.999], eps=1e-08, "
        "weight_decay=0.0, amsgrad=False, eps_hat=False)")
    # with a schedule for lr: the schedule and the clipping that is set, nothing else
    assert repr(pn.SGD(lr=_Halving(), momentum=0.9)) == "SGD(lr=Halving())"
    assert repr(pn.SGD(lr=_Halving(), clip_norm=2.0)) == "SGD(lr=Halving(), clip_norm=2.0)"
    assert repr(pn.AdamW(lr=_Halving(), clip_norm=2.0, clip_value=0.5)) == (
        "AdamW(lr=Halving(), clip_norm=2.0, clip_value=0.5)")


def test_a_fresh_optimizers_state_dict_names_its_type_and_loads():
    adam = pn.Adam(lr=0.01)
    sd = adam.state_dict()
    assert sd == {"type": "Adam", "config": adam.config(), "step": 0, "state": {}}
    other = pn.Adam(lr=0.01)
    other.load_state_dict(sd)  # step 0 is a step count like any other
    assert other.step_count == 0 and other.state == {"exp_avg": {}, "exp_avg_sq": {}}
    bad = {**sd, "step": -1}
    with pytest.raises(ValueError, match=r"^Adam\.load_state_dict: bad state: negative step -1$"):
        other.load_state_dict(bad)


def test_sgd_keeps_a_momentum_buffer_only_with_momentum(xp, dtype):
    xs, device = xp
    for momentum, slots in ((0.0, set()), (0.9, {"momentum_buffer"})):
        params = {"w": put(xs, device, [1.0, 2.0], dtype)}
        opt = pn.SGD(lr=0.5, momentum=momentum)
        opt.step(params, {"w": put(xs, device, [0.5, -1.0], dtype)})
        assert_close(params["w"], [0.75, 2.5], dtype)  # the first step is p - lr g either way
        state = opt.state_dict()["state"]
        assert set(state.get("w", {})) == slots, momentum


def test_clip_by_global_norm_of_a_single_gradient(xp, dtype):
    xs, device = xp
    out = optim.clip_by_global_norm({"w": put(xs, device, [3.0, 4.0], dtype)}, 1.0)
    assert list(out) == ["w"]
    assert_close(out["w"], np.array([3.0, 4.0]) / (5.0 + 1e-6), dtype)


def test_adam_without_weight_decay_never_reads_the_parameter_into_the_gradient(xp, dtype):
    # torch adds weight_decay * p only when weight_decay != 0: an infinite weight keeps
    # finite moments (0 * inf would be NaN) and stays infinite; the other one steps
    xs, device = xp
    params = {"w": put(xs, device, [math.inf, 1.0], dtype)}
    g = np.array([0.5, -0.5])
    opt = pn.Adam(lr=0.1)
    opt.step(params, {"w": put(xs, device, g, dtype)})
    m, v = 0.1 * g, 0.001 * g * g
    step = 0.1 / (1 - 0.9) * m / (np.sqrt(v) / math.sqrt(1 - 0.999) + 1e-8)
    w = host(params["w"])
    assert w[0] == math.inf
    assert_close(w[1:], [1.0 - step[1]], dtype)
    state = opt.state_dict()["state"]["w"]
    assert_close(state["exp_avg"], m, dtype)
    assert_close(state["exp_avg_sq"], v, dtype)


def test_map_state_makes_the_next_step_check_the_state(xp, dtype):
    xs, device = xp
    params = {"w": put(xs, device, [1.0, 2.0, 3.0], dtype)}
    grads = {"w": put(xs, device, [1.0, 1.0, 1.0], dtype)}
    opt = pn.SGD(lr=0.1, momentum=0.9)
    opt.step(params, grads)
    opt.map_state(lambda a: a[:1])
    with pytest.raises(ValueError, match=re.escape(
            "SGD: state 'momentum_buffer' of 'w' has shape (1,), but the parameter has shape (3,)")):
        opt.step(params, grads)


def test_map_state_to_host_buffers_places_them_at_the_next_step(xp, dtype):
    # state that is no array of any namespace (here memoryviews of host copies) is
    # converted to the parameter's namespace, device and dtype before the update
    xs, device = xp
    params = {"w": put(xs, device, [1.0, 2.0], dtype)}
    grads = {"w": put(xs, device, [1.0, -1.0], dtype)}
    opt = pn.SGD(lr=0.5, momentum=0.5)
    opt.step(params, grads)  # buffer g = [1, -1]; w = [0.5, 2.5]
    opt.map_state(lambda a: memoryview(pn.to_numpy(a)))
    opt.step(params, grads)  # buffer 0.5 b + g = [1.5, -1.5]; w -= 0.5 b
    assert_on(xs, device, opt.state["momentum_buffer"]["w"], dtype)
    assert_close(opt.state["momentum_buffer"]["w"], [1.5, -1.5], dtype)
    assert_close(params["w"], [-0.25, 3.25], dtype)


def test_state_moved_to_another_device_of_the_same_backend_follows_the_parameters():
    strict = pytest.importorskip("array_api_strict")
    xs = pn.backend.get_namespace("array_api_strict")
    here, there = strict.Device("CPU_DEVICE"), strict.Device("device1")
    params = {"w": xs.asarray([1.0, 2.0], device=here)}
    grads = {"w": xs.asarray([1.0, -1.0], device=here)}
    opt = pn.Adam(lr=0.1)
    opt.step(params, grads)
    opt.map_state(lambda a: to_array(a, xs, there, copy=True))
    opt.step(params, grads)
    for slot in ("exp_avg", "exp_avg_sq"):
        assert opt.state[slot]["w"].device == here, slot
    assert params["w"].device == here


# -------------------------------------------------------------------- losses ----


@pytest.fixture
def registered():
    """Register losses for one test; unregister them after."""
    names = []

    def register(name, *args, **kwargs):
        names.append(name)
        return L.register(name, *args, **kwargs)

    yield register
    for name in names:
        L.REGISTRY._factories.pop(name, None)


def _sum_sq(pred, target):  # a function name that differs from the registered name
    xs = pn.backend.namespace_of(pred)
    return xs.sum((pred - target) ** 2) / pred.shape[0]


def _sum_sq_grad(pred, target):
    return 2.0 * (pred - target) / pred.shape[0]


def _sum_sq_rows(pred, target):
    xs = pn.backend.namespace_of(pred)
    return xs.sum((pred - target) ** 2, axis=1)


def test_register_makes_a_loss_known_by_its_name(registered, xp, dtype):
    xs, device = xp
    loss = registered("pinned_sum_sq", _sum_sq, _sum_sq_grad, per_sample=_sum_sq_rows)
    assert isinstance(loss, L.Loss) and loss.name == "pinned_sum_sq"
    assert "pinned_sum_sq" in L.names() and L.get("pinned_sum_sq") is loss
    assert L.get({"name": "pinned_sum_sq"}) is loss
    pred, target = np.array([[1.0, 2.0], [0.0, -1.0]]), np.array([[0.0, 0.0], [1.0, 1.0]])
    pa, ta = put(xs, device, pred, dtype), put(xs, device, target, dtype)
    assert_close(loss.value(pa, ta), (1 + 4 + 1 + 4) / 2, dtype)
    assert_close(loss.grad(pa, ta), (pred - target), dtype)
    w = put(xs, device, [1.0, 3.0], dtype)  # rows lose 5 and 5: the weighted mean is 5
    assert loss.weighs_samples
    assert_close(loss.value(pa, ta, sample_weight=w), 5.0, dtype)
    plain = registered("pinned_plain", _sum_sq, _sum_sq_grad)
    assert L.get("pinned_plain") is plain and not plain.weighs_samples
    with pytest.raises(TypeError, match="loss 'pinned_plain' has no per-sample form"):
        plain.value(pa, ta, sample_weight=w)
    with pytest.raises(ValueError, match="loss 'pinned_sum_sq' is already registered"):
        L.register("pinned_sum_sq", _sum_sq, _sum_sq_grad)


def test_loss_configs_and_reprs():
    assert pn.losses.MSE().config() == {"name": "mse"}
    assert pn.losses.Huber(2.5).config() == {"name": "huber", "delta": 2.5}
    assert pn.losses.CrossEntropy(0.1).config() == {"name": "cross_entropy", "label_smoothing": 0.1}
    for loss in (pn.losses.MAE(), pn.losses.Huber(0.5), pn.losses.CrossEntropy(0.2)):
        again = L.get(loss.config())
        assert type(again) is type(loss) and again.config() == loss.config()
    assert [repr(f()) for f in (L.MSE, L.MAE, L.BCEWithLogits)] == [
        "MSE()", "MAE()", "BCEWithLogits()"]
    assert repr(L.Loss(_sum_sq, _sum_sq_grad)) == "Loss()"


def test_huber_is_quadratic_up_to_delta_and_linear_beyond(xp, dtype):
    xs, device = xp
    huber = L.Huber(delta=2.0)
    pred = np.array([[0.5, -1.0], [3.0, 2.0], [-4.0, 1.0]])
    target = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 3.0]])
    # |d| = 0.5, 2 | 3, 2 | 5, 2: d^2 / 2 = 0.125 and 2 (at delta), 2 (|d| - 1) = 4 and 8
    rows = np.array([(0.125 + 2.0) / 2, (4.0 + 2.0) / 2, (8.0 + 2.0) / 2])
    pa, ta = put(xs, device, pred, dtype), put(xs, device, target, dtype)
    assert_close(huber.value(pa, ta), rows.mean(), dtype)
    assert_close(huber.per_sample(pa, ta), rows, dtype)
    w = np.array([1.0, 0.0, 3.0])
    assert_close(huber(pa, ta, sample_weight=put(xs, device, w, dtype)),
                 (rows * w).sum() / w.sum(), dtype)


def test_calling_a_loss_passes_the_sample_weights(xp, dtype):
    xs, device = xp
    pred, target = np.array([[1.0], [2.0], [4.0]]), np.zeros((3, 1))
    pa, ta = put(xs, device, pred, dtype), put(xs, device, target, dtype)
    w = put(xs, device, [1.0, 0.0, 3.0], dtype)
    assert_close(pn.losses.MSE()(pa, ta, sample_weight=w), (1.0 + 3 * 16.0) / 4, dtype)
    assert_close(pn.losses.MSE()(pa, ta), 21.0 / 3, dtype)


# ---------------------------------------------------------------- Sequential ----


def _small_net(**kwargs):
    return pn.Sequential([pn.Dense(2, 1000, activation=pn.LeakyReLU(0.1)), pn.Dropout(0.2),
                          pn.Dense(1000, 1)], **kwargs)


def test_sequential_repr():
    net = pn.Sequential([pn.Dense(2, 3, activation=pn.LeakyReLU(0.1)), pn.Dropout(0.5),
                         pn.Dense(3, 1)], backend="numpy", dtype="float64", seed=0)
    assert repr(net) == ("Sequential([Dense(2, 3, activation='leaky_relu'), Dropout(0.5), "
                         "Dense(3, 1)], backend='numpy', dtype='float64')")


def test_summary_is_a_table_with_a_rule_above_and_below_the_layers():
    net = _small_net(backend="numpy", seed=0)
    # columns as wide as their widest cell, two spaces apart, no trailing spaces
    want = "\n".join([
        "#  layer" + " " * 34 + "  output shape  params",
        "-" * 64,
        "0  Dense(2, 1000, activation='leaky_relu')  (n, 1000)     3,000",
        "1  Dropout(0.2)" + " " * 27 + "  (n, 1000)     0",
        "2  Dense(1000, 1)" + " " * 25 + "  (n, 1)        1,001",
        "-" * 64,
        "input shape: (n, 2)  total parameters: 4,001  backend: numpy  device: cpu  dtype: float32",
    ])
    assert net.summary() == want


class _Recorder(ActivationLayer):
    """The identity as a layer that records the ``training`` flag of each forward."""

    def __init__(self):
        super().__init__("identity")
        self.seen = []

    def forward(self, x, training=False):
        self.seen.append(training)
        return super().forward(x, training)


def test_predict_in_batches_equals_one_forward_in_evaluation_mode(xp, dtype):
    xs, device = xp
    rec = _Recorder()
    net = pn.Sequential([pn.Dense(2, 8, activation=pn.LeakyReLU(0.1)), pn.Dropout(0.5), rec,
                         pn.Dense(8, 3)], backend=xs, device=device, dtype=dtype, seed=0)
    x = np.random.default_rng(0).normal(size=(7, 2))
    want = host(net.forward(put(xs, device, x, dtype)))  # training=False: dropout off
    for batch_size in (None, 1, 2, 3, 6, 7, 8):
        rec.seen.clear()
        got = net.predict(put(xs, device, x, dtype), batch_size=batch_size)
        assert_on(xs, device, got, dtype, (7, 3))
        assert_close(got, want, dtype, err_msg=f"batch_size={batch_size}")
        batches = 1 if batch_size is None else -(-7 // batch_size)
        assert rec.seen == [False] * batches, batch_size
    # no rows: an empty output, whatever the batch size
    for batch_size in (None, 1, 4):
        got = net.predict(put(xs, device, np.zeros((0, 2)), dtype), batch_size=batch_size)
        assert_on(xs, device, got, dtype, (0, 3))
    for batch_size in (0, -2):
        with pytest.raises(ValueError, match=f"^batch_size must be a positive int, got {batch_size}$"):
            net.predict(put(xs, device, x, dtype), batch_size=batch_size)


def test_load_state_dict_casts_to_the_networks_dtype_and_copies(xp, dtype):
    xs, device = xp
    net = pn.Sequential([pn.Dense(2, 3), pn.Dense(3, 1)], backend=xs, device=device,
                        dtype=dtype, seed=0)
    other = "float32" if dtype == "float64" else "float64"
    rng = np.random.default_rng(1)
    given = {k: rng.normal(size=v.shape).astype(other) for k, v in net.state_dict().items()}
    net.load_state_dict(given)
    for name, p in net.parameters().items():
        assert_on(xs, device, p, dtype)
        assert_close(p, given[name].astype(dtype), dtype)
    # the network's arrays never alias the caller's: in the network's own dtype neither
    same = {k: rng.normal(size=v.shape).astype(dtype) for k, v in net.state_dict().items()}
    expected = {k: v.copy() for k, v in same.items()}
    net.load_state_dict(same)
    for a in same.values():
        a[...] = 7.0
    for name, p in net.state_dict().items():
        np.testing.assert_array_equal(p, expected[name], err_msg=name)


def test_load_state_dict_names_the_array_that_holds_no_numbers(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dense(2, 1)], backend=xs, device=device, seed=0)
    before = net.state_dict()
    bad = {**before, "0.weight": np.array([["a"], ["b"]])}
    with pytest.raises(TypeError, match=r"^0\.weight must hold numbers, got an array of dtype <U1$"):
        net.load_state_dict(bad)
    for name, p in net.state_dict().items():
        np.testing.assert_array_equal(p, before[name], err_msg=name)


def test_to_copies_so_that_arrays_taken_before_do_not_follow_training(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dense(2, 3), pn.Dense(3, 1)], backend=xs, device=device, seed=0)
    opt = pn.SGD(lr=0.1, momentum=0.9)
    x, y = np.ones((4, 2)), np.zeros((4, 1))
    net.train_step(x, y, "mse", opt)
    old_params = dict(net.parameters())
    old_state = dict(opt.state["momentum_buffer"])
    values = {k: host(v) for k, v in old_params.items()}
    state_values = {k: host(v) for k, v in old_state.items()}
    assert net.to(xs, device) is net
    assert (net.backend, net.device) == (pn.backend.backend_name(xs), device)
    net.train_step(x, y, "mse", opt)
    for name, p in net.parameters().items():
        assert not np.array_equal(host(p), values[name]), name  # training moved them
        np.testing.assert_array_equal(host(old_params[name]), values[name], err_msg=name)
        np.testing.assert_array_equal(host(old_state[name]), state_values[name], err_msg=name)


def test_to_a_device_keeps_the_backend_and_checks_float64():
    strict = pytest.importorskip("array_api_strict")
    net = pn.Sequential([pn.Dense(2, 1)], backend="array_api_strict", dtype="float64",
                        device=strict.Device("CPU_DEVICE"), seed=0)
    before = net.state_dict()
    net.to(device=strict.Device("device1"))  # backend None: the network's own
    assert (net.backend, net.device, net.dtype_name) == (
        "array_api_strict", strict.Device("device1"), "float64")
    with pytest.raises(ValueError, match="device .*no_float64.* of backend 'array_api_strict' "
                                         "has no float64"):
        net.to(device=strict.Device("no_float64"))
    assert net.device == strict.Device("device1")
    with pytest.raises(ValueError, match="device .*no_float64.* of backend 'array_api_strict' "
                                         "has no float64"):
        pn.Sequential([pn.Dense(2, 1)], backend="array_api_strict", dtype="float64",
                      device=strict.Device("no_float64"))
    for name, p in net.parameters().items():
        assert p.device == strict.Device("device1") and p.dtype == strict.float64
        np.testing.assert_array_equal(pn.to_numpy(p), before[name], err_msg=name)


def test_predict_refuses_a_batch_size_below_one_whatever_the_rows(xp):
    # the check once ran only for batch sizes below the row count: an empty input
    # let batch_size=0 through
    xs, device = xp
    net = pn.Sequential([pn.Dense(2, 1)], backend=xs, device=device, seed=0)
    for rows in (0, 1, 3):
        for batch_size in (0, -1):
            with pytest.raises(ValueError,
                               match=f"^batch_size must be a positive int, got {batch_size}$"):
                net.predict(np.zeros((rows, 2)), batch_size=batch_size)


def test_an_input_on_another_device_of_the_same_backend_is_moved():
    strict = pytest.importorskip("array_api_strict")
    net = pn.Sequential([pn.Dense(2, 1)], backend="array_api_strict", seed=0)  # CPU_DEVICE
    x = strict.asarray(np.ones((3, 2), dtype=np.float32), device=strict.Device("device1"))
    y = net.predict(x)
    assert y.device == net.device == strict.Device("CPU_DEVICE")
