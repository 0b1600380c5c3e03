"""Checkpoints: exact round trips across backends, optimizer and RNG resume,
atomic writes, and CheckpointError for every kind of bad file."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import numpy.lib.format as npy_format
import pytest
from _util import assert_on

import portanet as pn
from portanet.io import FORMAT_VERSION, CheckpointError, load, read_metadata, save
from portanet.testing import AGREEMENT_RTOL, assert_close, norm_rel_diff


def _net(xp, device, dtype="float32", seed=0):
    layers = [pn.Dense(3, 6, activation="tanh"), pn.Dropout(0.25), pn.Dense(6, 2)]
    return pn.Sequential(layers, backend=xp, device=device, dtype=dtype, seed=seed)


def _data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(8, 3)), rng.normal(size=(8, 2))


def _train(net, opt, steps):
    x, y = _data()
    for _ in range(steps):
        net.train_step(x, y, "mse", opt)


def _host_params(net):
    return {k: pn.to_numpy(v) for k, v in net.parameters().items()}


def _assert_same_params(a, b):
    pa, pb = _host_params(a), _host_params(b)
    assert list(pa) == list(pb)
    for k in pa:
        assert pa[k].dtype == pb[k].dtype, k
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.fixture
def checkpoint(tmp_path):
    """A numpy checkpoint with an Adam state: (path, the network it came from)."""
    net = _net("numpy", None, seed=3)
    opt = pn.Adam(lr=0.05)
    _train(net, opt, 2)
    path = tmp_path / "ref.npz"
    save(net, path, opt, epoch=2)
    return path, net


# --------------------------------------------------------------- round trips --


def test_round_trip_on_session_backend(xp, dtype, tmp_path):
    ns, device = xp
    net = _net(ns, device, dtype)
    _train(net, pn.SGD(lr=0.1, momentum=0.9), 2)
    path = tmp_path / "model.npz"
    save(net, path, epoch=5)

    back = load(path, backend=ns, device=device)
    assert back.config() == net.config()
    assert back.epoch == 5
    assert back.optimizer is None
    for p in back.parameters().values():
        assert_on(ns, device, p, dtype)
    _assert_same_params(back, net)
    x, _ = _data()
    np.testing.assert_array_equal(pn.to_numpy(back.predict(x)), pn.to_numpy(net.predict(x)))
    assert load(path, backend=ns, device=device, return_optimizer=True)[1] is None


def test_session_backend_to_numpy_and_back(xp, tmp_path):
    ns, device = xp
    net = _net(ns, device)
    _train(net, pn.Adam(lr=0.01), 2)
    save(net, tmp_path / "a.npz")
    on_numpy = load(tmp_path / "a.npz", backend="numpy")
    assert on_numpy.backend == "numpy"
    _assert_same_params(on_numpy, net)

    save(on_numpy, tmp_path / "b.npz")
    again = load(tmp_path / "b.npz", backend=ns, device=device)
    for p in again.parameters().values():
        assert_on(ns, device, p, "float32")
    _assert_same_params(again, net)


def test_dumps_and_loads_are_a_checkpoint_in_memory(xp, tmp_path):
    ns, device = xp
    net = _net(ns, device)
    opt = pn.Adam(lr=0.01)
    _train(net, opt, 2)
    data = pn.io.dumps(net, opt)
    save(net, tmp_path / "m.npz", optimizer=opt)
    assert data == (tmp_path / "m.npz").read_bytes()  # the very same file format
    back, back_opt = pn.io.loads(data, backend=ns, device=device, return_optimizer=True)
    _assert_same_params(back, net)
    assert back_opt.step_count == opt.step_count and back.optimizer is back_opt
    for p in back.parameters().values():
        assert_on(ns, device, p, "float32")
    with pytest.raises(CheckpointError, match=r"'<checkpoint bytes>': truncated or corrupted"):
        pn.io.loads(data[:-50])
    with pytest.raises(TypeError, match="loads: data must be bytes, got str"):
        pn.io.loads("model.npz")


def test_path_is_written_exactly_as_given(tmp_path):
    net = _net("numpy", None)
    save(net, str(tmp_path / "model.ckpt"))  # str, and no .npz suffix
    assert os.listdir(tmp_path) == ["model.ckpt"]
    _assert_same_params(load(tmp_path / "model.ckpt", backend="numpy"), net)


def test_file_is_a_plain_npz_with_json_metadata(checkpoint):
    path, net = checkpoint
    with np.load(path, allow_pickle=False) as f:
        assert f["__portanet__"].dtype == np.uint8
        meta = json.loads(f["__portanet__"].tobytes())
        weight = pn.to_numpy(net.parameters()["0.weight"])
        np.testing.assert_array_equal(f["param/0.weight"], weight)
        assert f["optim/2.bias/exp_avg_sq"].shape == (2,)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["portanet_version"] == pn.__version__
    assert meta["network"] == net.config()
    assert meta["epoch"] == 2
    assert meta["optimizer"]["type"] == "Adam" and meta["optimizer"]["step"] == 2
    assert read_metadata(path) == meta


def test_epoch_defaults_to_net_epoch(tmp_path):
    net = _net("numpy", None)
    net.epoch = 7
    save(net, tmp_path / "m.npz")
    assert load(tmp_path / "m.npz", backend="numpy").epoch == 7


def test_sequential_save_delegates(tmp_path):
    net = _net("numpy", None)
    opt = pn.SGD(lr=0.1)
    _train(net, opt, 1)
    net.save(tmp_path / "m.npz", optimizer=opt)
    back, back_opt = load(tmp_path / "m.npz", backend="numpy", return_optimizer=True)
    _assert_same_params(back, net)
    assert isinstance(back_opt, pn.SGD) and back_opt.step_count == 1


def test_save_checks_its_arguments(tmp_path):
    net = _net("numpy", None)
    with pytest.raises(TypeError, match="Sequential"):
        save(object(), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="Optimizer"):
        save(net, tmp_path / "m.npz", optimizer="adam")
    with pytest.raises(ValueError, match="epoch"):
        save(net, tmp_path / "m.npz", epoch=-1)
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------- resuming training --

OPTIMIZERS = {
    "sgd-nesterov": lambda: pn.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam-amsgrad": lambda: pn.Adam(lr=0.02, betas=(0.8, 0.99), amsgrad=True, weight_decay=1e-3),
    "adamw": lambda: pn.AdamW(lr=0.02, weight_decay=0.1, clip_norm=1.0),
}


@pytest.mark.parametrize("make_opt", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_optimizer_resumes_identically(xp, dtype, make_opt, tmp_path):
    ns, device = xp
    net, opt = _net(ns, device, dtype), make_opt()
    _train(net, opt, 3)
    save(net, tmp_path / "m.npz", opt)

    back, back_opt = load(tmp_path / "m.npz", backend=ns, device=device, return_optimizer=True)
    assert type(back_opt) is type(opt)
    assert back_opt.config() == opt.config()
    assert back_opt.step_count == 3
    assert back.optimizer is back_opt
    assert set(back_opt.state) == set(opt.state)

    _train(net, opt, 3)
    _train(back, back_opt, 3)
    assert back_opt.step_count == opt.step_count == 6
    for name, p in back.parameters().items():
        assert_on(ns, device, p, dtype)
        assert_close(p, net.parameters()[name], dtype, err_msg=name)
    for slot, arrays in back_opt.state.items():
        for name, a in arrays.items():
            assert_on(ns, device, a, dtype)  # moved from the host at the first step
            assert_close(a, opt.state[slot][name], dtype, err_msg=f"{slot}/{name}")


def test_optimizer_resumes_on_another_backend(xp, tmp_path):
    ns, device = xp
    net, opt = _net(ns, device), pn.Adam(lr=0.02)
    _train(net, opt, 3)
    save(net, tmp_path / "m.npz", opt)
    back, back_opt = load(tmp_path / "m.npz", backend="numpy", return_optimizer=True)
    _train(net, opt, 4)
    _train(back, back_opt, 4)
    for name, p in back.parameters().items():
        assert norm_rel_diff(p, net.parameters()[name]) <= AGREEMENT_RTOL["float32"], name


def test_rng_state_is_restored(xp, tmp_path):
    ns, device = xp
    net = _net(ns, device)
    _train(net, pn.SGD(lr=0.1), 2)  # draws dropout masks: the RNG moved on from its seed
    save(net, tmp_path / "m.npz")
    back = load(tmp_path / "m.npz", backend=ns, device=device)
    fresh = _net(ns, device)
    assert back.rng.bit_generator.state == net.rng.bit_generator.state
    assert back.rng.bit_generator.state != fresh.rng.bit_generator.state

    x, _ = _data()
    for _ in range(2):  # the same dropout masks, drawn through the layers' context
        np.testing.assert_array_equal(
            pn.to_numpy(back.forward(x, training=True)), pn.to_numpy(net.forward(x, training=True))
        )
    assert back.rng.random() == net.rng.random()


# ---------------------------------------------------------------- atomicity --


def test_crash_at_rename_keeps_old_file(checkpoint, monkeypatch):
    path, net = checkpoint
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save(net, path, epoch=99)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    assert read_metadata(path)["epoch"] == 2


def test_crash_mid_write_keeps_old_file_and_leaves_none_new(checkpoint, monkeypatch):
    import portanet._safe_npz as pio

    path, net = checkpoint
    before = path.read_bytes()

    def crash(f, arrays):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(pio, "_write_npz", crash)
    with pytest.raises(KeyboardInterrupt):
        save(net, path)
    with pytest.raises(KeyboardInterrupt):
        save(net, path.parent / "new.npz")
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_save_fsyncs_file_and_directory(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    save(_net("numpy", None), tmp_path / "m.npz")
    assert len(calls) >= 2


# --------------------------------------------------------------- bad files --


class _Unpickled(Exception):
    pass


def _explode():
    raise _Unpickled("the loader unpickled data")


class _Trap:
    def __reduce__(self):
        return (_explode, ())


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {i.filename[:-4]: zf.read(i) for i in zf.infolist()}


def _write_members(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in members.items():
            if not isinstance(value, bytes):
                buf = io.BytesIO()
                npy_format.write_array(buf, np.asarray(value), allow_pickle=True)
                value = buf.getvalue()
            zf.writestr(key + ".npy", value)


def _rewrite(src, dst, edit_meta=None, replace=None, drop=()):
    members = _members(src)
    meta = json.loads(npy_format.read_array(io.BytesIO(members["__portanet__"])).tobytes())
    if edit_meta is not None:
        edit_meta(meta)
    members["__portanet__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    members.update(replace or {})
    for key in drop:
        del members[key]
    _write_members(dst, members)
    return dst


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load(tmp_path / "nope.npz")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"weights: 1 2 3\n", "not a portanet checkpoint"),
        (pickle.dumps({"0.weight": [1.0, 2.0]}), "not a portanet checkpoint"),
        (b"PK\x05\x06" + b"\0" * 18, "without"),  # an empty zip
    ],
    ids=["empty", "text", "pickle", "empty-zip"],
)
def test_foreign_files(tmp_path, content, message):
    path = tmp_path / "f.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load(path, backend="numpy")
    assert "f.npz" in str(info.value)


def test_plain_npz_is_foreign(tmp_path):
    np.savez(tmp_path / "plain.npz", weights=np.ones((2, 2)))
    with pytest.raises(CheckpointError, match="without the '__portanet__' metadata"):
        load(tmp_path / "plain.npz", backend="numpy")


def test_object_arrays_are_refused_without_unpickling(checkpoint, tmp_path):
    path, _ = checkpoint
    for key in ("param/0.weight", "__portanet__"):
        bad = _rewrite(path, tmp_path / "bad.npz")
        members = _members(bad)
        members[key] = np.array([_Trap(), 1], dtype=object)
        _write_members(bad, members)
        with pytest.raises(CheckpointError, match="pickle"):
            load(bad, backend="numpy")  # _Unpickled would escape if anything unpickled


def test_shape_not_matching_the_architecture(checkpoint, tmp_path):
    path, _ = checkpoint

    def widen(meta):
        meta["parameters"]["0.weight"] = [3, 7]

    bad = _rewrite(path, tmp_path / "bad.npz", widen, {"param/0.weight": np.ones((3, 7), "f4")})
    with pytest.raises(CheckpointError, match="do not match the architecture.*0.weight"):
        load(bad, backend="numpy")
    # The same array without the metadata edit contradicts the metadata itself.
    bad = _rewrite(path, tmp_path / "bad2.npz", replace={"param/0.weight": np.ones((3, 7), "f4")})
    with pytest.raises(CheckpointError, match=r"entry 'param/0.weight' has shape \(3, 7\), the "
                                              r"metadata says \(3, 6\)"):
        load(bad, backend="numpy")


def test_optimizer_state_shape_must_match(checkpoint, tmp_path):
    path, _ = checkpoint
    bad = _rewrite(path, tmp_path / "bad.npz",
                   replace={"optim/0.bias/exp_avg": np.ones((5,), "f4")})
    with pytest.raises(CheckpointError, match="0.bias/exp_avg"):
        load(bad, backend="numpy")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "format_version"),
        (lambda m: m.update(format_version="1"), "format_version"),
        (lambda m: m.pop("format"), "no portanet marker"),
        (lambda m: m["network"]["layers"][0].update(type="Conv2d"), "Conv2d"),
        (lambda m: m["network"].update(dtype="float16"), "dtype"),
        (lambda m: m.update(epoch=-3), "epoch"),
        (lambda m: m.update(rng_state={"bit_generator": "MT19937"}), "RNG"),
        (lambda m: m["optimizer"].update(type="Lion"), "Lion"),
        (lambda m: m["optimizer"].update(config={"lr": -1.0}), "lr"),
        (lambda m: m["optimizer"]["state"]["0.bias"].append("momentum"), "missing"),
    ],
    ids=["newer-version", "string-version", "no-marker", "unknown-layer", "dtype", "epoch",
         "rng", "unknown-optimizer", "bad-optimizer-config", "missing-state-entry"],
)
def test_bad_metadata(checkpoint, tmp_path, edit, message):
    path, _ = checkpoint
    bad = _rewrite(path, tmp_path / "bad.npz", edit)
    with pytest.raises(CheckpointError, match=message):
        load(bad, backend="numpy")


def test_missing_and_unexpected_entries(checkpoint, tmp_path):
    path, _ = checkpoint
    bad = _rewrite(path, tmp_path / "bad.npz", drop=["param/2.bias"])
    with pytest.raises(CheckpointError, match="missing.*param/2.bias"):
        load(bad, backend="numpy")
    bad = _rewrite(path, tmp_path / "bad.npz", replace={"param/9.weight": np.ones(2, "f4")})
    with pytest.raises(CheckpointError, match="unexpected.*param/9.weight"):
        load(bad, backend="numpy")


def test_file_cut_at_any_offset_is_a_checkpoint_error(checkpoint, tmp_path):
    path, _ = checkpoint
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    offsets = set(np.linspace(0, len(data) - 1, 120).astype(int).tolist())
    offsets |= {1, 2, 4, 30, len(data) - 22, len(data) - 2, len(data) - 1}
    # each cut is reported as what it is: empty, not a zip at all, or a damaged one
    kinds = r"cut\.npz'?: (the file is empty|not a portanet checkpoint|truncated or corrupted)"
    for offset in sorted(offsets):
        cut.write_bytes(data[:offset])
        with pytest.raises(CheckpointError, match=kinds):
            load(cut, backend="numpy")


def test_flipped_bytes_are_detected_or_harmless(checkpoint, tmp_path):
    path, net = checkpoint
    data = path.read_bytes()
    meta = read_metadata(path)
    rng = np.random.default_rng(0)
    bad = tmp_path / "flip.npz"
    detected = 0
    for offset in rng.choice(len(data), size=60, replace=False):
        flipped = bytearray(data)
        flipped[offset] ^= int(rng.integers(1, 256))
        bad.write_bytes(bytes(flipped))
        try:
            back = load(bad, backend="numpy")
        except CheckpointError:
            detected += 1
            continue
        # A flip in a zip field nobody reads (a timestamp, say) may pass;
        # the content may not change.
        _assert_same_params(back, net)
        assert read_metadata(bad) == meta
    assert detected >= 40  # most bytes are array data or JSON, covered by the zip CRC


def test_float64_checkpoint_on_a_float32_only_device(xp, tmp_path):
    from portanet.backend import has_float64

    ns, device = xp
    if has_float64(ns, device):
        pytest.skip("this device has float64")
    save(_net("numpy", None, "float64"), tmp_path / "m.npz")
    with pytest.raises(ValueError, match="float64"):
        load(tmp_path / "m.npz", backend=ns, device=device)
