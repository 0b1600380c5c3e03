"""Sequential: build, names, train_step, state, to(), summary, and errors that change nothing."""

from __future__ import annotations

import numpy as np
import pytest
from _util import assert_on, host

import portanet as pn
from portanet.testing import AGREEMENT_RTOL, FINITE_DIFFERENCE_RTOL, TOLERANCES, assert_close, norm_rel_diff


def _layers():
    return [pn.Dense(3, 8, activation="tanh"), pn.Dense(8, 4, activation=pn.LeakyReLU(0.1)),
            pn.Dense(4, 2)]


def _data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), rng.normal(size=(n, 2))


def _snapshot(net):
    return {k: v.copy() for k, v in net.state_dict().items()}


def _assert_unchanged(net, before):
    after = net.state_dict()
    assert set(after) == set(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_attributes_and_parameter_names(xp, dtype):
    xs, device = xp
    net = pn.Sequential(_layers(), backend=xs, device=device, dtype=dtype, seed=0)
    assert net.xp is xs or net.backend == pn.backend.backend_name(xs)
    assert net.device == device and net.dtype == getattr(xs, dtype)
    names = list(net.parameters())
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    for p in net.parameters().values():
        assert_on(xs, device, p, dtype)
    assert net.num_parameters() == 3 * 8 + 8 + 8 * 4 + 4 + 4 * 2 + 2


def test_train_step_matches_numpy_and_returns_device_scalar(xp, dtype):
    xs, device = xp
    x, y = _data()
    net = pn.Sequential(_layers(), backend=xs, device=device, dtype=dtype, seed=1)
    ref = pn.Sequential(_layers(), backend="numpy", dtype=dtype, seed=1)
    opt, ref_opt = pn.Adam(1e-2), pn.Adam(1e-2)
    for _ in range(5):
        value = net.train_step(x, y, "mse", opt)
        ref_value = ref.train_step(x, y, "mse", ref_opt)
    assert_on(xs, device, value, dtype, ())
    # several steps of training: the table's bound for training runs (norm-relative)
    assert norm_rel_diff(value, ref_value) <= AGREEMENT_RTOL[dtype]
    for k, v in ref.state_dict().items():
        assert norm_rel_diff(net.state_dict()[k], v) <= AGREEMENT_RTOL[dtype], k
    assert net.optimizer is opt


def test_backward_returns_input_gradient(xp, float64):
    xs, device = xp
    net = pn.Sequential(_layers(), backend=xs, device=device, dtype="float64", seed=2)
    x, _ = _data()
    out = net.forward(x, training=True)
    dx = net.backward(xs.ones_like(out))
    assert_on(xs, device, dx, "float64", (10, 3))
    # d(sum of outputs)/dx by central differences for one entry
    h = 1e-6
    xp_, xm = x.copy(), x.copy()
    xp_[0, 1] += h
    xm[0, 1] -= h
    numeric = (host(net.forward(xp_)).sum() - host(net.forward(xm)).sum()) / (2 * h)
    np.testing.assert_allclose(host(dx)[0, 1], numeric, rtol=FINITE_DIFFERENCE_RTOL)


def test_predict_in_batches_equals_full_batch(xp):
    xs, device = xp
    net = pn.Sequential(_layers(), backend=xs, device=device, seed=0)
    x, _ = _data(23)
    full = host(net.predict(x))
    np.testing.assert_allclose(host(net.predict(x, batch_size=5)), full,
                               **TOLERANCES["float32"])  # float32: rows in other batch shapes
    with pytest.raises(ValueError, match="batch_size"):
        net.predict(x, batch_size=0)


def test_gradients_before_backward_is_an_error(xp):
    xs, device = xp
    net = pn.Sequential(_layers(), backend=xs, device=device, seed=0)
    with pytest.raises(RuntimeError, match="call backward"):
        net.gradients()


def test_state_dict_round_trip_and_copy_semantics(xp):
    xs, device = xp
    net = pn.Sequential(_layers(), backend=xs, device=device, seed=0)
    other = pn.Sequential(_layers(), backend="numpy", seed=5)
    state = other.state_dict()
    net.load_state_dict(state)
    x, y = _data()
    assert_close(net.predict(x), other.predict(x), "float32", scale=10)
    kept = {k: v.copy() for k, v in state.items()}
    net.train_step(x, y, "mse", pn.SGD(0.1))
    for k in state:  # training the network must not write into the caller's arrays
        np.testing.assert_array_equal(state[k], kept[k])


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s.pop("0.bias"), r"missing \['0.bias'\]"),
    (lambda s: s.update({"9.weight": np.zeros(1)}), r"unexpected \['9.weight'\]"),
    (lambda s: s.update({"1.weight": np.zeros((4, 8))}), r"1.weight has shape \(4, 8\), expected \(8, 4\)"),
])
def test_bad_state_dict_changes_nothing(xp, mutate, match):
    xs, device = xp
    net = pn.Sequential(_layers(), backend=xs, device=device, seed=0)
    before = _snapshot(net)
    state = pn.Sequential(_layers(), backend="numpy", seed=9).state_dict()
    mutate(state)
    with pytest.raises(ValueError, match=match):
        net.load_state_dict(state)
    _assert_unchanged(net, before)


def test_to_moves_parameters_and_optimizer_state(xp):
    xs, device = xp
    x, y = _data()
    net = pn.Sequential(_layers(), backend="numpy", seed=0)
    opt = pn.Adam(1e-2)
    net.train_step(x, y, "mse", opt)
    ref = pn.Sequential(_layers(), backend="numpy", seed=0)
    ref_opt = pn.Adam(1e-2)
    ref.train_step(x, y, "mse", ref_opt)

    assert net.to(xs, device) is net
    assert net.device == device
    for p in net.parameters().values():
        assert_on(xs, device, p, "float32")
    for arrays in opt.state.values():
        for a in arrays.values():
            assert_on(xs, device, a, "float32")
    net.train_step(x, y, "mse", opt)
    ref.train_step(x, y, "mse", ref_opt)
    for k, v in ref.state_dict().items():
        assert_close(net.state_dict()[k], v, "float32", scale=20)
    net.to("numpy")
    assert net.backend == "numpy"


def test_summary_lists_layers_shapes_and_counts():
    net = pn.Sequential([pn.Dense(2, 100, activation=pn.LeakyReLU(0.1)), pn.Dropout(0.2),
                         pn.Dense(100, 1)], seed=0)
    text = net.summary()
    assert "Dense(2, 100, activation='leaky_relu')" in text and "Dropout(0.2)" in text
    assert "(n, 100)" in text and "(n, 1)" in text
    assert "300" in text and "101" in text and "total parameters: 401" in text
    assert "Sequential([" in repr(net)


# ------------------------------------------------------------------ errors ----


def test_unknown_backend_lists_known_names():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'; known backends are "
                                         "'numpy', 'cupy', 'torch', 'jax', 'array_api_strict'"):
        pn.Sequential(_layers(), backend="tensorflow")


def test_rows_of_y_must_match_rows_of_x(xp):
    xs, device = xp
    net = pn.Sequential(_layers(), backend=xs, device=device, seed=0)
    opt = pn.Adam()
    before = _snapshot(net)
    x, y = _data()
    with pytest.raises(ValueError, match="y has 9 rows but x has 10"):
        net.train_step(x, y[:9], "mse", opt)
    with pytest.raises(ValueError, match=r"target shape \(10, 3\) does not match"):
        net.train_step(x, np.zeros((10, 3)), "mse", opt)
    _assert_unchanged(net, before)
    assert opt.step_count == 0 and net.rng.bit_generator.state == pn.Sequential(
        _layers(), backend="numpy", seed=0).rng.bit_generator.state


def test_strings_in_x_are_rejected(xp):
    xs, device = xp
    net = pn.Sequential(_layers(), backend=xs, device=device, seed=0)
    before = _snapshot(net)
    with pytest.raises(TypeError, match="must hold numbers, got an array of dtype <U"):
        net.predict([["a", "b", "c"]])
    with pytest.raises(TypeError, match="must hold numbers"):
        net.train_step([["1", "2", "3"]], [[0.0, 0.0]], "mse", pn.SGD(0.1))
    with pytest.raises(TypeError, match="numeric"):
        net.predict([[1.0, 2.0], [3.0]])  # ragged
    _assert_unchanged(net, before)


def test_wrong_width_leaves_network_unchanged(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dense(2, 100), pn.Dense(100, 1)], backend=xs, device=device, seed=0)
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"expects a batch of shape \(n, 2\), got \(4, 3\)"):
        net.train_step(np.zeros((4, 3)), np.zeros((4, 1)), "mse", pn.SGD(0.1))
    with pytest.raises(ValueError, match=r"got \(2,\)"):
        net.predict([1.0, 2.0])
    _assert_unchanged(net, before)


def test_layers_must_be_layers_and_unshared():
    with pytest.raises(TypeError, match="layer 1 is str"):
        pn.Sequential([pn.Dense(2, 2), "relu"])
    with pytest.raises(TypeError, match=r"^layers must be a sequence of Layer objects, got Dense$"):
        pn.Sequential(pn.Dense(2, 2))  # one layer, not in a list
    with pytest.raises(TypeError, match=r"^layers must be a sequence of Layer objects, got int$"):
        pn.Sequential(3)
    with pytest.raises(ValueError, match="cannot tell the input shape from its first layer"):
        pn.Sequential([pn.MaxPool2D(2), pn.Flatten(), pn.Dense(4, 2)])  # sizes come after
    with pytest.raises(ValueError, match="at least one layer"):
        pn.Sequential([])
    shared = pn.Dense(2, 2)
    pn.Sequential([shared])
    with pytest.raises(ValueError, match="already belongs to a network"):
        pn.Sequential([shared])


def test_bad_dtype_and_device():
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        pn.Sequential(_layers(), dtype="float16")
    with pytest.raises(ValueError, match="runs on the CPU only"):
        pn.Sequential(_layers(), backend="numpy", device="cuda")
    with pytest.raises(ValueError, match="not understood"):
        pn.Sequential(_layers(), backend="numpy", device="tpu")


def test_class_labels_out_of_range_are_rejected(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dense(3, 4)], backend=xs, device=device, seed=0)
    before = _snapshot(net)
    x = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\).*from 0 to 4"):
        net.train_step(x, np.array([0, 4, 1]), "cross_entropy", pn.SGD(0.1))
    with pytest.raises(ValueError, match="from -1 to 1"):
        net.train_step(x, [-1, 0, 1], "cross_entropy", pn.SGD(0.1))
    _assert_unchanged(net, before)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("subclass", [np.asmatrix, lambda a: np.ma.array(a, mask=a < 0)],
                         ids=["matrix", "masked"])
def test_numpy_subclasses_are_read_as_plain_arrays(subclass):
    # np.matrix multiplies with *, and a masked array keeps its mask through arithmetic:
    # neither may reach the layers as it is
    net = pn.Sequential([pn.Dense(2, 3, activation="tanh"), pn.Dense(3, 2)], seed=0)
    x = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    y = net.predict(subclass(x))
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, net.predict(x))
