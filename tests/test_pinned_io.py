"""Behaviours of checkpoints (``portanet.io``) and of the safe ``.npz`` reader under them
that a mutation run found unpinned: every metadata check with its exact message and the
values at its edges (a step or a dimension of 0, a seed of None), the format version
and its writer, ``dumps``/``loads`` passing every argument on, optimizers that cannot be
saved, and the ``.npz`` layer as a file written elsewhere may hold it: ``.npy`` version
2.0, Fortran order, big-endian data, deflated members, empty arrays, members that are
not ``.npy``, sizes claimed at the limit and beyond, zip64 headers, the temporary file
of an atomic save and its permissions.

Checkpoints are edited in memory: :func:`_members` opens the bytes of ``dumps``, the
test changes the arrays or the JSON, and :func:`_pack` writes them back the way another
program could (any ``.npy`` version, byte order, layout or compression).
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import struct
import zipfile

import numpy as np
import numpy.lib.format as npy_format
import pytest
from _util import host, put

import portanet as pn
from portanet import _safe_npz
from portanet.io import CheckpointError, dumps, load, loads, read_metadata, save
from portanet.testing import assert_close

BYTES = re.escape("'<checkpoint bytes>'")


def _net(xp="numpy", device=None, seed=0):
    layers = [pn.Dense(3, 4, activation="tanh"), pn.Dense(4, 2)]
    return pn.Sequential(layers, backend=xp, device=device, seed=seed)


def _trained(steps=1):
    """A numpy network and its Adam optimizer after ``steps`` steps."""
    net, opt = _net(), pn.Adam(lr=0.1)
    x = np.linspace(-1.0, 1.0, 15).reshape(5, 3)
    y = np.linspace(0.0, 1.0, 10).reshape(5, 2)
    for _ in range(steps):
        net.train_step(x, y, "mse", opt)
    return net, opt


def _members(data):
    """{entry: array} of checkpoint bytes, read with NumPy's own reader."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename[:-4]: npy_format.read_array(io.BytesIO(zf.read(i)))
                for i in zf.infolist()}


def _pack(members, *, version=None, fortran=False, byteorder=None,
          compression=zipfile.ZIP_STORED):
    """Archive bytes of ``members`` (entry -> array, or raw bytes of a member named as is)
    written with the given ``.npy`` version, layout, byte order and zip compression."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for key, value in members.items():
            if isinstance(value, bytes):
                zf.writestr(key, value)
                continue
            a = np.asarray(value)
            if byteorder is not None:
                a = a.astype(a.dtype.newbyteorder(byteorder))
            if fortran:
                a = np.asfortranarray(a)
            npy = io.BytesIO()
            npy_format.write_array(npy, a, version=version)
            zf.writestr(key + ".npy", npy.getvalue())
    return buffer.getvalue()


def _meta(members):
    return json.loads(members["__portanet__"].tobytes())


def _edited(data, edit):
    """``data`` with ``edit(meta)`` applied to its JSON metadata."""
    members = _members(data)
    meta = _meta(members)
    edit(meta)
    members["__portanet__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return _pack(members)


@pytest.fixture(scope="module")
def data():
    """The bytes of a checkpoint with an Adam state after one step."""
    net, opt = _trained()
    return dumps(net, opt, epoch=1)


# ------------------------------------------------------------- metadata --


def _set(path, value):
    """An edit that sets the metadata field at ``path`` ("a.b") to ``value``."""
    def edit(meta):
        *outer, last = path.split(".")
        target = meta
        for key in outer:
            target = target[key]
        target[last] = value
    return edit


BAD_METADATA = [
    ("network", [], "'network' must be an object"),
    ("network.layers", [], "'network.layers' must be a list"),
    ("network.layers", None, "'network.layers' must be a list"),
    ("network.layers", ["Dense"], "'network.layers' must be a list"),
    ("network.dtype", "float16", "'network.dtype' must be float32 or float64"),
    ("network.seed", "0", "'network.seed' must be an int"),
    ("network.seed", 1.5, "'network.seed' must be an int"),
    ("network.input_shape", [0], "'network.input_shape' must be a list of positive ints"),
    ("network.input_shape", [-3], "'network.input_shape' must be a list of positive ints"),
    ("network.input_shape", [3.0], "'network.input_shape' must be a list of positive ints"),
    ("network.input_shape", {}, "'network.input_shape' must be a list of positive ints"),
    ("network.input_shape", "", "'network.input_shape' must be a list of positive ints"),
    ("epoch", -3, "'epoch' must be an int >= 0"),
    ("epoch", 1.5, "'epoch' must be an int >= 0"),
    ("epoch", True, "'epoch' must be an int >= 0"),
    ("rng_state", [], "'rng_state' must be an object"),
    ("info", [], "'info' must be an object"),
    ("parameters", [[3, 4]], "'parameters' must map names to shapes"),
    ("parameters.0.weight", "", "'parameters' must map names to shapes"),
    ("parameters.0.weight", [3, -4], "'parameters' must map names to shapes"),
    ("parameters.0.weight", [3, 4.0], "'parameters' must map names to shapes"),
    ("buffers", [], "'buffers' must map names to shapes"),
    ("buffers", {"0.mean": [-1]}, "'buffers' must map names to shapes"),
    ("optimizer", [], "'optimizer' must be an object or null"),
    ("optimizer.type", 3, "'optimizer.type' must be a string"),
    ("optimizer.config", [], "'optimizer.config' must be an object"),
    ("optimizer.step", -1, "'optimizer.step' must be an int >= 0"),
    ("optimizer.step", 1.5, "'optimizer.step' must be an int >= 0"),
    ("optimizer.state", [], "'optimizer.state' must map parameter names to slot lists"),
    ("optimizer.state.0.bias", "exp_avg",
     "'optimizer.state' must map parameter names to slot lists"),
    ("optimizer.state.0.bias", [1], "'optimizer.state' must map parameter names to slot lists"),
]


@pytest.mark.parametrize("field, value, message", BAD_METADATA,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_METADATA])
def test_bad_metadata_names_the_field(data, field, value, message, tmp_path):
    if field.startswith(("parameters.", "optimizer.state.")):  # names hold a dot
        outer, name = field.split(".", 1)
        edit = (lambda m: m[outer].__setitem__(name, value)) if outer == "parameters" else \
            (lambda m: m["optimizer"]["state"].__setitem__(name.split(".", 1)[1], value))
    else:
        edit = _set(field, value)
    bad = _edited(data, edit)
    with pytest.raises(CheckpointError, match=f"^{BYTES}: bad metadata: {re.escape(message)}$"):
        loads(bad)
    path = tmp_path / "bad.npz"
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match=f"^'{re.escape(str(path))}': bad metadata: "
                                              f"{re.escape(message)}$"):
        read_metadata(path)


def test_zero_is_a_valid_dimension_in_the_stored_shapes(data):
    # a stored [3, 0] passes the metadata check; the array of shape (3, 4) contradicts it
    bad = _edited(data, lambda m: m["parameters"].__setitem__("0.weight", [3, 0]))
    with pytest.raises(CheckpointError, match=f"^{BYTES}: entry 'param/0.weight' has shape "
                                              r"\(3, 4\), the metadata says \(3, 0\)$"):
        loads(bad)


def test_a_network_without_a_seed_and_an_optimizer_at_step_0_load():
    net = pn.Sequential([pn.Dense(3, 2)], seed=None)
    back, opt = loads(dumps(net, pn.SGD(lr=0.5, momentum=0.9)), return_optimizer=True)
    assert back.config()["seed"] is None and back.config() == net.config()
    assert opt.step_count == 0 and opt.lr == 0.5 and opt.state_dict()["state"] == {}
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)


@pytest.mark.parametrize("version", [True, 1.0, 2.0, 3, "2"])
def test_format_version_must_be_a_readable_int(data, version):
    bad = _edited(data, _set("format_version", version))
    with pytest.raises(CheckpointError, match=re.escape(
            f"unsupported format_version {version!r} (written by portanet ")):
        loads(bad)


def test_an_unsupported_format_version_names_the_portanet_that_wrote_it(data):
    def newer(meta):
        meta.update(format_version=99, portanet_version="9.9.9")

    with pytest.raises(CheckpointError, match=re.escape(
            "unsupported format_version 99 (written by portanet 9.9.9); this portanet "
            f"{pn.__version__} reads format_version (1, 2)")):
        loads(_edited(data, newer))

    def anonymous(meta):
        del meta["portanet_version"]
        meta["format_version"] = 99

    with pytest.raises(CheckpointError, match=re.escape(
            "unsupported format_version 99 (written by portanet an unknown version)")):
        loads(_edited(data, anonymous))


@pytest.mark.parametrize("raw, described", [
    (lambda m: m.reshape(1, -1), "uint8 (1, {n})"),
    (lambda m: m.astype(np.float32), "float32 ({n},)"),
    (lambda m: m.astype(np.int8), "int8 ({n},)"),
], ids=["2-d", "float32", "int8"])
def test_metadata_must_be_1d_uint8(data, raw, described):
    members = _members(data)
    n = members["__portanet__"].size
    members["__portanet__"] = raw(members["__portanet__"])
    with pytest.raises(CheckpointError, match=re.escape(
            f"metadata must be 1-d uint8 JSON bytes, got {described.format(n=n)}")):
        loads(_pack(members))


# ---------------------------------------------------- dumps / loads / load --


def test_dumps_records_the_epoch_and_info_it_is_given(tmp_path):
    net = _net()
    net.epoch = 4
    data = dumps(net, epoch=7, info={"split": [0.8, 0.2]})
    path = tmp_path / "m.npz"
    path.write_bytes(data)
    meta = read_metadata(path)
    assert (meta["epoch"], meta["info"]) == (7, {"split": [0.8, 0.2]})
    assert loads(data).epoch == 7
    # the defaults: the network's epoch, no info
    path.write_bytes(dumps(net))
    meta = read_metadata(path)
    assert (meta["epoch"], meta["info"]) == (4, {})


def test_loads_and_load_return_the_network_alone_by_default(data, tmp_path):
    net = loads(data)
    assert isinstance(net, pn.Sequential) and net.epoch == 1
    assert isinstance(net.optimizer, pn.Adam) and net.optimizer.step_count == 1
    path = tmp_path / "m.npz"
    path.write_bytes(data)
    assert isinstance(load(path), pn.Sequential)
    back, opt = loads(data, return_optimizer=True)
    assert isinstance(back, pn.Sequential) and opt is back.optimizer


def test_loads_builds_on_the_backend_and_device_it_is_given(xp, data):
    xs, device = xp
    net, opt = _trained()
    back = loads(data, backend=xs, device=device)
    assert back.device == device
    x = np.linspace(-2.0, 2.0, 6).reshape(2, 3)
    assert_close(host(back.predict(put(xs, device, x, "float32"))), host(net.predict(x)),
                 "float32")


def test_loads_passes_the_backend_and_device_errors_through(data):
    with pytest.raises(ValueError, match="no-such-backend"):
        loads(data, backend="no-such-backend")
    with pytest.raises((ValueError, TypeError), match="no-such-device"):
        loads(data, device="no-such-device")


def test_loads_names_the_bytes_in_the_errors_of_the_rebuild(data):
    # the architecture is valid metadata but no layer the registry knows
    bad = _edited(data, lambda m: m["network"]["layers"][0].update(type="Conv9d"))
    with pytest.raises(CheckpointError, match=f"^{BYTES}: .*Conv9d"):
        loads(bad)
    bad = _edited(data, _set("rng_state", {"bit_generator": "MT19937"}))
    with pytest.raises(CheckpointError, match=f"^{BYTES}: bad host RNG state"):
        loads(bad)


def test_loads_refuses_what_is_not_bytes():
    with pytest.raises(TypeError, match="loads: data must be bytes, got str"):
        loads("PK")


def test_buffers_round_trip(xp):
    xs, device = xp
    net = pn.Sequential([pn.Dense(3, 4), pn.BatchNorm(4), pn.Dense(4, 2)], seed=0)
    x = np.linspace(-1.0, 2.0, 18).reshape(6, 3)
    net.train_step(x, np.zeros((6, 2)), "mse", pn.SGD(lr=0.1))  # moves the running statistics
    buffers = {k: pn.to_numpy(v) for k, v in net.buffers().items()}
    assert buffers and any(np.any(v != 0) for v in buffers.values())
    back = loads(dumps(net), backend=xs, device=device)
    assert set(back.buffers()) == set(buffers)
    for k, v in back.buffers().items():
        assert_close(host(v), buffers[k].astype(np.float64), "float32")
    # a buffer the architecture does not declare is refused
    bad = _edited(dumps(net), lambda m: m["buffers"].update({"0.extra": [2]}))
    members = _members(bad)
    members["buffer/0.extra"] = np.zeros(2, np.float32)
    with pytest.raises(CheckpointError, match=f"^{BYTES}: " + re.escape(
            "the buffers do not match the architecture: it implies {'1.running_mean': [4], "
            "'1.running_var': [4]}, the file holds {'1.running_mean': [4], '1.running_var': [4], "
            "'0.extra': [2]}")):
        loads(_pack(members))


# ------------------------------------------------------------ optimizers --


def test_only_registered_optimizers_are_saved():
    class MyAdam(pn.Adam):
        pass

    class Adam(pn.Adam):  # the registered name, another class
        pass

    for cls in (MyAdam, Adam):
        with pytest.raises(TypeError, match=f"save: cannot save optimizer {cls.__name__}; "
                                            "checkpoints know the registered optimizers"):
            dumps(_net(), cls())


def test_optimizer_state_must_belong_to_the_network():
    _, opt = _trained()  # state for 0.weight, 0.bias, 1.weight, 1.bias
    smaller = pn.Sequential([pn.Dense(3, 4, activation="tanh")], seed=0)
    with pytest.raises(ValueError, match=re.escape(
            "save: the optimizer has state for ['1.bias', '1.weight'], not parameters of net")):
        dumps(smaller, opt)


# ------------------------------------------------------ the .npz layer --


def _assert_same_checkpoint(data, other):
    """``other`` loads to the network and optimizer ``data`` holds, with native arrays."""
    net, opt = loads(data, return_optimizer=True)
    back, back_opt = loads(other, return_optimizer=True)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    state, back_state = opt.state_dict()["state"], back_opt.state_dict()["state"]
    assert set(back_state) == set(state)
    for name, slots in state.items():
        for slot, a in slots.items():
            b = back_state[name][slot]
            assert b.dtype == np.dtype(np.float32) and b.dtype.isnative, (name, slot, b.dtype)
            assert b.flags.c_contiguous and b.flags.writeable, (name, slot)
            np.testing.assert_array_equal(b, a, err_msg=f"{name}/{slot}")


@pytest.mark.parametrize("how", [
    {"version": (2, 0)}, {"version": (1, 0), "fortran": True}, {"byteorder": ">"},
    {"version": (2, 0), "fortran": True, "byteorder": ">"},
    {"compression": zipfile.ZIP_DEFLATED},
], ids=["npy-2.0", "fortran", "big-endian", "all-three", "deflated"])
def test_archives_written_by_other_programs_read_the_same(data, how):
    members = _members(data)
    if "byteorder" in how:  # the metadata is bytes: only the numbers change order
        meta = members.pop("__portanet__")
        packed = _pack({"__portanet__": meta}, **how)
        members = {**_members(packed), **members}
    _assert_same_checkpoint(data, _pack(members, **how))


def test_fortran_members_keep_their_values():
    # a (2, 3) array stored column by column reads back as the same matrix
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = _safe_npz.read_bytes(_pack({"a": a}, fortran=True))["a"]
    np.testing.assert_array_equal(back, a)
    assert back.flags.c_contiguous


def test_unsupported_npy_version(data):
    members = {k + ".npy": _npy(v) for k, v in _members(data).items()}
    raw = io.BytesIO()
    npy_format.write_array(raw, _members(data)["param/0.bias"], version=(3, 0))
    members["param/0.bias.npy"] = raw.getvalue()
    with pytest.raises(CheckpointError, match=re.escape(
            "entry 'param/0.bias': unsupported .npy version (3, 0)")):
        loads(_pack(members))


def _npy(a):
    buffer = io.BytesIO()
    npy_format.write_array(buffer, np.asarray(a))
    return buffer.getvalue()


@pytest.mark.parametrize("value, dtype", [
    (np.ones((3, 4), np.complex64), "complex64"),
    (np.ones((3, 4), "U1"), "<U1"),
    (np.ones((3, 4), [("a", "<f4")]), "[('a', '<f4')]"),
    (np.ones((3, 4), "m8[s]"), "timedelta64[s]"),
], ids=["complex", "str", "structured", "timedelta"])
def test_entries_must_hold_plain_numbers(data, value, dtype):
    members = _members(data)
    members["param/0.weight"] = value
    with pytest.raises(CheckpointError, match=re.escape(
            f"entry 'param/0.weight' has dtype {dtype}, expected numbers")):
        loads(_pack(members))


def test_empty_arrays_are_read(data):
    # a zero-size entry is data like any other: here an unexpected one
    members = _members(data)
    members["param/9.weight"] = np.zeros((0, 3), np.float32)
    with pytest.raises(CheckpointError, match=re.escape("unexpected ['param/9.weight']")):
        loads(_pack(members))
    assert _safe_npz.read_bytes(_pack({"e": np.zeros((2, 0))}))["e"].shape == (2, 0)


@pytest.mark.parametrize("name", ["readme.txt", "param/", "param/0.weight.npy/"])
def test_members_must_be_npy_files(data, name):
    members = {k + ".npy": _npy(v) for k, v in _members(data).items()}
    members[name] = b""
    with pytest.raises(CheckpointError, match=re.escape(f"unexpected archive member {name!r}")):
        loads(_pack(members))


def _claiming(data, size):
    """Archive ``data`` with the uncompressed size of its first member, in the central
    directory, replaced by ``size`` (what zipfile checks before it reads the member)."""
    at = data.index(b"PK\x01\x02")
    return data[:at + 24] + struct.pack("<I", size) + data[at + 28:]


def test_a_stored_member_may_not_claim_more_than_the_file_and_the_slack():
    archive = _pack({"a": np.arange(4.0)})
    limit = len(archive) + _safe_npz.SIZE_SLACK
    with pytest.raises(_safe_npz.NpzError, match=re.escape(
            f"archive member 'a.npy' claims an absurd size ({limit + 1} bytes in a file of "
            f"{len(archive)})")):
        _safe_npz.read_bytes(_claiming(archive, limit + 1))
    # at the limit the claim passes, and the member reads as the data it holds
    np.testing.assert_array_equal(_safe_npz.read_bytes(_claiming(archive, limit))["a"],
                                  np.arange(4.0))
    # through load, the same
    with pytest.raises(CheckpointError, match="claims an absurd size"):
        loads(_claiming(archive, limit + 1))


def test_a_deflated_member_may_expand_up_to_the_deflate_ratio():
    # 4 MiB of zeros deflate to a few KiB: more than the file plus the slack, yet genuine
    big = np.zeros(1 << 19)
    archive = _pack({"big": big}, compression=zipfile.ZIP_DEFLATED)
    assert len(archive) + _safe_npz.SIZE_SLACK < big.nbytes
    np.testing.assert_array_equal(_safe_npz.read_bytes(archive)["big"], big)
    limit = _safe_npz.MAX_DEFLATE_RATIO * len(archive) + _safe_npz.SIZE_SLACK
    with pytest.raises(_safe_npz.NpzError, match=re.escape(
            f"archive member 'big.npy' claims an absurd size ({limit + 1} bytes")):
        _safe_npz.read_bytes(_claiming(archive, limit + 1))


def test_members_are_written_with_zip64_sizes(data):
    # a local header per member, each with the zip64 extra field (id 1): a member may
    # pass 4 GiB; numpy.load still reads the file
    count, at = 0, data.find(b"PK\x03\x04")
    while at >= 0:
        name_len, extra_len = struct.unpack("<HH", data[at + 26:at + 30])
        extra = data[at + 30 + name_len:at + 30 + name_len + extra_len]
        assert struct.unpack("<H", extra[:2])[0] == 1, data[at + 30:at + 30 + name_len]
        count += 1
        at = data.find(b"PK\x03\x04", at + 30 + name_len + extra_len)
    assert count == len(_members(data))
    with np.load(io.BytesIO(data)) as npz:
        assert set(npz.files) == set(_members(data))


def test_read_reads_what_write_atomic_wrote(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": np.float64(2.5)}
    _safe_npz.write_atomic(tmp_path / "x.npz", arrays)
    back = _safe_npz.read(tmp_path / "x.npz")
    assert list(back) == ["a", "b"]
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(FileNotFoundError):
        _safe_npz.read(tmp_path / "missing.npz")


# ---------------------------------------------------------- atomic save --


def test_save_writes_through_a_hidden_temporary_file_next_to_the_target(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save(_net(), tmp_path / "m.npz")
    [(src, dst)] = renames
    assert dst == os.fspath(tmp_path / "m.npz")
    assert os.path.dirname(src) == os.fspath(tmp_path)
    assert re.fullmatch(r"\.m\.npz\.[0-9a-f]{12}\.tmp", os.path.basename(src)), src
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_save_skips_a_temporary_name_that_is_taken(tmp_path, monkeypatch):
    names = iter(["a" * 12, "a" * 12, "b" * 12])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    taken = tmp_path / f".m.npz.{'a' * 12}.tmp"
    taken.write_bytes(b"another writer's")
    net = _net()
    save(net, tmp_path / "m.npz")
    assert taken.read_bytes() == b"another writer's"
    assert sorted(os.listdir(tmp_path)) == sorted(["m.npz", taken.name])
    np.testing.assert_array_equal(load(tmp_path / "m.npz").state_dict()["0.weight"],
                                  net.state_dict()["0.weight"])


def test_save_gives_up_after_100_taken_temporary_names(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(secrets, "token_hex", lambda n: calls.append(n) or "a" * 12)
    (tmp_path / f".m.npz.{'a' * 12}.tmp").write_bytes(b"")
    with pytest.raises(FileExistsError, match="could not create a temporary file in"):
        save(_net(), tmp_path / "m.npz")
    assert len(calls) == 100
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_saved_file_gets_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        save(_net(), tmp_path / "m.npz")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "m.npz").st_mode & 0o777
    assert mode == os.stat(tmp_path / "plain").st_mode & 0o777 == 0o644


def test_the_writer_never_pickles(tmp_path):
    # an object array is refused before anything is written, and no temporary file is left
    arrays = {"a": np.ones(2), "b": np.array([1, "two"], dtype=object)}
    with pytest.raises(ValueError, match="allow_pickle=False"):
        _safe_npz.to_bytes(arrays)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        _safe_npz.write_atomic(tmp_path / "x.npz", arrays)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------- what is recorded --


def test_the_metadata_records_the_format_the_writer_and_where_it_was_saved_from(xp, tmp_path):
    xs, device = xp
    net = _net(xs, device)
    save(net, tmp_path / "m.npz")
    meta = read_metadata(tmp_path / "m.npz")
    assert (meta["format"], meta["format_version"], meta["portanet_version"]) == (
        "portanet-checkpoint", 2, pn.__version__)
    assert meta["saved_from"] == {"backend": net.backend, "device": str(device)}
    assert meta["optimizer"] is None and meta["network"] == net.config()


def test_the_architecture_round_trips_with_its_seed_and_input_shape():
    net = pn.Sequential([pn.Conv2D(1, 2, 3), pn.Flatten(), pn.Dense(8, 2)],
                        input_shape=(1, 4, 4), seed=3)
    back = loads(dumps(net))
    assert back.config() == net.config()
    assert (back.config()["seed"], back.input_shape) == (3, (1, 4, 4))


def test_no_saved_optimizer_loads_as_none():
    net, opt = loads(dumps(_net()), return_optimizer=True)
    assert opt is None and getattr(net, "optimizer", None) is None


def test_save_checks_the_optimizer_argument():
    with pytest.raises(TypeError, match="save: optimizer must be a portanet Optimizer or None, "
                                        "got str"):
        dumps(_net(), "adam")


def test_loads_names_the_bytes_when_the_optimizer_cannot_be_restored(data):
    bad = _edited(data, lambda m: m["optimizer"].update(type="Lion"))
    with pytest.raises(CheckpointError, match=f"^{BYTES}: unknown optimizer type 'Lion'"):
        loads(bad)


def test_loads_onto_another_backend_and_device_than_the_default(data):
    strict = pytest.importorskip("array_api_strict")
    device = strict.Device("device1")
    net = loads(data, backend="array_api_strict", device=device)
    assert net.backend == "array_api_strict" and net.device == device
    assert all(p.device == device for p in net.parameters().values())
    # a device without float64 refuses a float64 checkpoint with the backend's own error
    net64 = pn.Sequential([pn.Dense(3, 2)], dtype="float64", seed=0)
    with pytest.raises(ValueError, match="float64") as info:
        loads(dumps(net64), backend="array_api_strict", device=strict.Device("no_float64"))
    assert not isinstance(info.value, CheckpointError)


class _Slash(pn.Layer):
    """A layer whose buffer has a '/' in its name: ``y = x``, the buffer unused. It declares
    its shapes for exactly the two kinds the layer protocol names."""

    keeps_shape = True

    def __init__(self, features: int):
        super().__init__()
        self.features = features

    def buffer_shapes(self):
        return {"stats/mean": (self.features,)}

    def declared_shapes(self, kind):
        return {"params": {}, "buffers": {"stats/mean": (self.features,)}}[kind]

    def build(self, ctx):
        super().build(ctx)
        self.buffers = {"stats/mean": self.on_device(np.arange(self.features, dtype=float))}

    def forward(self, x, training=False):
        return x

    def backward(self, grad_out, need_input_grad=True):
        return grad_out if need_input_grad else None

    def config(self):
        return {"type": "_Slash", "features": self.features}


def test_entry_names_may_hold_a_slash():
    pn.layers.REGISTRY.register("_Slash", _Slash)
    try:
        net = pn.Sequential([pn.Dense(3, 2), _Slash(2)], seed=0)
        net.buffers()["1.stats/mean"] = net.buffers()["1.stats/mean"] + 1.0
        back = loads(dumps(net))
        np.testing.assert_array_equal(pn.to_numpy(back.buffers()["1.stats/mean"]), [1.0, 2.0])
    finally:
        del pn.layers.REGISTRY._factories["_Slash"]


# --------------------------------------------------------- save and load --


def test_save_and_load_pass_every_argument_on(data, tmp_path):
    net, opt = _trained()
    path = tmp_path / "m.npz"
    save(net, path, opt, epoch=7, info={"split": 0.25})
    meta = read_metadata(path)
    assert (meta["epoch"], meta["info"], meta["optimizer"]["type"]) == (7, {"split": 0.25}, "Adam")
    raw = _members(path.read_bytes())["__portanet__"].tobytes().decode()
    assert list(json.loads(raw)) == sorted(json.loads(raw))  # written with sorted keys
    with pytest.raises(ValueError, match="no-such-backend"):
        load(path, backend="no-such-backend")
    with pytest.raises((ValueError, TypeError), match="no-such-device"):
        load(path, device="no-such-device")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(_edited(data, lambda m: m["network"]["layers"][0].update(type="Conv9d")))
    with pytest.raises(CheckpointError, match=f"^'{re.escape(str(bad))}': .*Conv9d"):
        load(bad)


def test_save_refuses_a_missing_folder_nan_and_non_int_epochs(tmp_path):
    with pytest.raises(FileNotFoundError, match="save: no such directory"):
        save(_net(), tmp_path / "nowhere" / "m.npz")
    with pytest.raises(ValueError, match="save: the network's metadata is not JSON-able"):
        save(_net(), tmp_path / "m.npz", info={"loss": float("nan")})
    for epoch in (1.5, True, -1, "3"):
        with pytest.raises(ValueError, match=re.escape(
                f"save: epoch must be an int >= 0, got {epoch!r}")):
            save(_net(), tmp_path / "m.npz", epoch=epoch)
    assert os.listdir(tmp_path) == []


def test_members_past_zip64s_limit_are_written_and_read(monkeypatch):
    # Members are streamed into the archive, so their size is not known when their header
    # is written: without zip64 headers from the start, zipfile refuses a member over
    # 2 GiB when it is closed. The limit is lowered here so that a small network has one.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)
    net, opt = _trained()
    data = dumps(net, opt)
    back, back_opt = loads(data, return_optimizer=True)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    assert back_opt.state_dict()["step"] == opt.step_count
