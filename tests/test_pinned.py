"""Behaviours that a mutation run found unpinned, each pinned by a test that fails when it
breaks: derivatives at the kinks, loss dtypes, devices, configs that checkpoints rebuild,
the divergence guard's edges, shuffling and validation rows, checkpoint and IDX validation,
copies that must not alias.

Tests that need a second device run on array-api-strict's ``device1`` in every session
(where strict is installed): an array created on the wrong device raises there, so the
NumPy session sees what only the strict session saw before.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import numpy as np
import pytest
from _util import host

import portanet as pn
from portanet import activations as A
from portanet.cli import main

# ---------------------------------------------------------- kinks at zero ----


def test_relu_derivative_at_zero_is_zero_and_leaky_relu_at_zero_is_the_slope():
    x = np.array([-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(A.relu.grad(x), [0.0, 0.0, 1.0])  # torch: relu'(0) = 0
    np.testing.assert_array_equal(A.LeakyReLU(0.1).grad(x), [0.1, 0.1, 1.0])  # slope at 0
    g = np.array([2.0, 3.0, 5.0])
    np.testing.assert_array_equal(A.relu.backward(x, A.relu(x), g), [0.0, 0.0, 5.0])
    leaky = A.LeakyReLU(0.2)
    np.testing.assert_array_equal(leaky.backward(x, leaky(x), g), [0.2 * 2.0, 0.2 * 3.0, 5.0])
    np.testing.assert_array_equal(A.ELU(0.5).grad(x), [0.5 * np.exp(-1.0), 0.5, 1.0])


# -------------------------------------------------------------- loss dtypes ----


@pytest.mark.parametrize("loss", [pn.MSE(), pn.MAE(), pn.Huber(0.5), pn.BCEWithLogits()])
def test_a_loss_keeps_the_predictions_dtype_with_float64_targets(loss):
    pred = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    target = np.full((2, 3), 0.25)  # float64
    value = loss.value(pred, target)
    assert value.dtype == np.float32 and value.shape == ()


def test_a_custom_loss_returning_a_python_float_gives_a_0d_array_of_the_pred_dtype():
    loss = pn.Loss(lambda p, t: 0.5, lambda p, t: p - t, name="half")
    value = loss.value(np.zeros((2, 2), dtype=np.float32), np.zeros((2, 2)))
    assert value.dtype == np.float32 and value.shape == () and float(value) == 0.5


# --------------------------------------------------- devices, every session ----


@pytest.fixture
def device1():
    strict = pytest.importorskip("array_api_strict")
    return strict.Device("device1")


def test_labels_dropout_and_shuffles_stay_on_the_networks_device(device1):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    net = pn.Sequential([pn.Dense(4, 8, activation="relu"), pn.Dropout(0.3), pn.Dense(8, 3)],
                        backend="array_api_strict", device=device1, seed=0)
    value = net.train_step(x, y, pn.CrossEntropy(label_smoothing=0.1), pn.Adam(1e-2))
    assert value.device == device1
    weighted = net.train_step(x, y, "cross_entropy", pn.SGD(0.1),
                              sample_weight=np.linspace(0.5, 2.0, 20))  # host weights move too
    assert weighted.device == device1
    history = net.fit(x, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=8,
                      verbose=0, metrics=["accuracy"], validation_split=0.2)
    assert len(history.history["val_accuracy"]) == 2


def test_to_moves_the_optimizer_state_to_the_new_device(device1):
    net, opt = pn.Sequential([pn.Dense(3, 2)], seed=0), pn.Adam(1e-2, amsgrad=True)
    net.train_step(np.ones((4, 3)), np.zeros((4, 2)), "mse", opt)
    net.to("array_api_strict", device1)
    for slot, arrays in opt.state.items():
        for name, a in arrays.items():
            assert a.device == device1, f"{slot}/{name} stayed behind"
    net.train_step(np.ones((4, 3)), np.zeros((4, 2)), "mse", opt)  # and it keeps training


# ------------------------------------------------- configs that rebuild ----


def test_checkpoints_keep_bias_false_and_the_slopes_of_activation_layers(tmp_path):
    net = pn.Sequential([pn.Dense(3, 4, bias=False), pn.LeakyReLU(0.2), pn.Dense(4, 4),
                         pn.ELU(0.5), pn.Dense(4, 2, activation=pn.LeakyReLU(0.3))], seed=0)
    net.save(tmp_path / "m.npz")
    back = pn.load(tmp_path / "m.npz")
    assert back.layers[0].use_bias is False and "0.bias" not in back.parameters()
    assert back.layers[1].activation.negative_slope == 0.2
    assert back.layers[3].activation.alpha == 0.5
    assert back.layers[4].activation.negative_slope == 0.3
    x = np.linspace(-2, 2, 12).reshape(4, 3)
    np.testing.assert_array_equal(host(back.predict(x)), host(net.predict(x)))


# ------------------------------------------------------- divergence edges ----


class _Losses(pn.Loss):
    """A loss whose values are scripted, step by step (its gradient is zero)."""

    def __init__(self, values):
        self.values = list(values)
        super().__init__(self._f, self._df, name="scripted")

    def _f(self, p, t):
        return self.values.pop(0)

    def _df(self, p, t):
        return p * 0.0


def _fit_scripted(values, **kwargs):
    net = pn.Sequential([pn.Dense(1, 1)], seed=0)
    return net.fit(np.ones((len(values), 1)), np.ones((len(values), 1)), loss=_Losses(values),
                   optimizer=pn.SGD(0.1), batch_size=1, verbose=0, shuffle=False, **kwargs)


def test_the_reference_loss_is_floored_at_one():
    # first loss 0.001: without the floor, 0.001 * 1e4 = 10 would already diverge
    _fit_scripted([0.001, 50.0, 9999.0], divergence_factor=1e4)
    with pytest.raises(pn.TrainingDivergedError, match=r"loss is 10001 at epoch 1, step 2"):
        _fit_scripted([0.001, 10001.0, 1.0], divergence_factor=1e4)


def test_a_loss_of_exactly_factor_times_the_reference_is_not_divergence():
    _fit_scripted([2.0, 20.0, 1.0], divergence_factor=10)  # 20 = 10 x 2: allowed
    with pytest.raises(pn.TrainingDivergedError, match=r"loss is 20\.001 at epoch 1, step 2"):
        _fit_scripted([2.0, 20.001, 1.0], divergence_factor=10)


def test_check_finite_every_k_steps_names_the_checked_step():
    nan = float("nan")
    with pytest.raises(pn.TrainingDivergedError, match=r"loss is nan at epoch 1, step 6 "):
        _fit_scripted([1.0] * 5 + [nan] + [1.0] * 3, check_finite=3)  # steps 3, 6, 9 are read
    # a NaN between checks is seen in the epoch's mean, reported at its last step
    with pytest.raises(pn.TrainingDivergedError, match=r"loss is nan at epoch 1, step 9 "):
        _fit_scripted([1.0] * 3 + [nan] + [1.0] * 5, check_finite=3)


# ------------------------------------------- shuffles, validation, checkpoints ----


class _Batches(pn.Callback):
    """Records the first input value of each batch, through the network's forward."""


def _first_column_per_step(shuffle):
    seen = []
    net = pn.Sequential([pn.Dense(1, 1)], seed=0)
    real = net.forward_checked

    def forward_checked(a, training=False):
        if training:
            seen.append(host(a)[:, 0].tolist())
        return real(a, training)

    net.forward_checked = forward_checked
    x = np.arange(12.0).reshape(12, 1)
    net.fit(x, x, loss="mse", optimizer=pn.SGD(0.0), batch_size=4, epochs=2, verbose=0,
            shuffle=shuffle)
    return seen


def test_fit_shuffles_each_epoch_anew_and_not_without_shuffle():
    plain = _first_column_per_step(False)
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]] * 2
    shuffled = _first_column_per_step(True)
    assert sorted(v for batch in shuffled[:3] for v in batch) == list(range(12))
    assert shuffled[:3] != plain[:3] and shuffled[:3] != shuffled[3:]


def test_validation_split_holds_out_the_last_rows():
    net = pn.Sequential([pn.Dense(1, 1)], seed=0)
    seen = []
    real = net.forward_checked
    net.forward_checked = lambda a, training=False: (seen.append((training, host(a)[:, 0].tolist())),
                                                      real(a, training))[1]
    x = np.arange(10.0).reshape(10, 1)
    net.fit(x, x, loss="mse", optimizer=pn.SGD(0.0), batch_size=None, epochs=1, verbose=0,
            shuffle=False, validation_split=0.3)
    assert seen[0] == (True, [0, 1, 2, 3, 4, 5, 6]) and seen[1] == (False, [7, 8, 9])


def test_model_checkpoint_saves_the_optimizer_too(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.integers(0, 2, size=20)
    net, opt = pn.Sequential([pn.Dense(3, 2)], seed=0), pn.Adam(1e-2)
    net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=2, verbose=0,
            callbacks=[pn.ModelCheckpoint(str(tmp_path / "c{epoch}.npz"), monitor="loss")])
    back, back_opt = pn.load(tmp_path / "c2.npz", return_optimizer=True)
    assert isinstance(back_opt, pn.Adam) and back_opt.step_count == opt.step_count
    assert back.epoch == 2


# ------------------------------------------------------- file validation ----


def _npy(a):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


def _zip(path, members, claim=None):
    with zipfile.ZipFile(path, "w") as zf:
        for key, raw in members.items():
            zf.writestr(key + ".npy", raw)
    if claim is not None:  # rewrite the first member's uncompressed size in both headers
        data = bytearray(path.read_bytes())
        local = data.find(b"PK\x03\x04")
        data[local + 22:local + 26] = claim.to_bytes(4, "little")
        central = data.find(b"PK\x01\x02")
        data[central + 24:central + 28] = claim.to_bytes(4, "little")
        path.write_bytes(bytes(data))


def test_a_member_claiming_an_absurd_size_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.npz"
    _zip(path, {"__portanet__": _npy(np.zeros(4, np.uint8))}, claim=2**31)
    with pytest.raises(pn.CheckpointError, match=r"claims an absurd size \(2147483648 bytes"):
        pn.load(path)


def test_trailing_bytes_after_an_npy_member_are_refused(tmp_path, ):
    net = pn.Sequential([pn.Dense(2, 2)], seed=0)
    net.save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as zf:
        members = {i.filename[:-4]: zf.read(i) for i in zf.infolist()}
    members["param/0.bias"] += b"\0\0\0\0"
    _zip(tmp_path / "bad.npz", members)
    with pytest.raises(pn.CheckpointError, match=r"entry 'param/0.bias': shape \(2,\) of float32 "
                                                 r"needs 8 bytes of data, found 12"):
        pn.load(tmp_path / "bad.npz")


def test_an_array_that_contradicts_the_metadata_is_refused(tmp_path):
    net = pn.Sequential([pn.Dense(2, 2)], seed=0)
    net.save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as zf:
        members = {i.filename[:-4]: zf.read(i) for i in zf.infolist()}
    members["param/0.bias"] = _npy(np.zeros(3, np.float32))
    _zip(tmp_path / "bad.npz", members)
    with pytest.raises(pn.CheckpointError, match=r"entry 'param/0.bias' has shape \(3,\), the "
                                                 r"metadata says \(2,\)"):
        pn.load(tmp_path / "bad.npz")
    meta = json.loads(np.lib.format.read_array(io.BytesIO(members["__portanet__"])).tobytes())
    assert meta["parameters"]["0.bias"] == [2]


def test_the_idx_reader_refuses_trailing_bytes(tmp_path):
    header = bytes([0, 0, 0x08, 1]) + np.array([3], ">u4").tobytes()
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(header + bytes([1, 2, 3, 4])))
    with pytest.raises(ValueError, match=r"need 3 bytes of data, the file has 4"):
        pn.datasets.read_idx(path)


# -------------------------------------------------------------- copies ----


def test_to_numpy_never_aliases_its_input():
    a = np.arange(4.0)
    out = pn.to_numpy(a)
    a[0] = 99.0
    assert out[0] == 0.0
    torch = pytest.importorskip("torch")
    t = torch.arange(4.0)
    out = pn.to_numpy(t)
    t[0] = 99.0
    assert out[0] == 0.0


def test_save_into_a_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pn.Sequential, "fit", lambda *a, **k: pytest.fail("trained first"))
    assert main(["train", "--dataset", "xor", "--save", str(tmp_path)]) == 2
    assert "--save" in capsys.readouterr().err


def test_the_rollback_snapshot_follows_state_that_moved_after_a_load(tmp_path, device1):
    """A loaded optimizer's state sits on the host until the first step moves it to the
    device; the snapshot must then keep device copies, not write device arrays into its
    host buffers (a host conversion on every step; CuPy refuses it outright)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.integers(0, 2, size=16)
    net, opt = pn.Sequential([pn.Dense(3, 2)], seed=0), pn.Adam(1e-2)
    net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=1, verbose=0)
    net.save(tmp_path / "m.npz", optimizer=opt)
    back, back_opt = pn.load(tmp_path / "m.npz", backend="array_api_strict", device=device1,
                             return_optimizer=True)
    from portanet.training import _Snapshot

    snapshot = _Snapshot(back, back_opt)
    snapshot.take()  # the state is still on the host
    back.train_step(x, y, "cross_entropy", back_opt)  # now it is on device1
    snapshot.take()
    for slot, kept in snapshot.state.items():
        for name, a in kept.items():
            assert type(a) is type(back_opt.state[slot][name]) and a.device == device1, name
