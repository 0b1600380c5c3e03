"""Save and load networks: one ``.npz`` file of plain arrays plus JSON, never pickle.

A checkpoint is a zip archive in NumPy's ``.npz`` layout (``numpy.load`` can
open it for a look). It holds:

- ``__portanet__``: UTF-8 JSON as a 1-d uint8 array. It names the format
  (``format_version``), the portanet version that wrote it, the architecture
  (``Sequential.config()``: layer configs, dtype, seed), the epoch, the
  state of the host RNG (``net.rng.bit_generator.state``), the parameter names
  and shapes, and, if an optimizer was saved, its type, config, step count
  and which state arrays it has.
- ``param/<name>``: each parameter, e.g. ``param/0.weight``.
- ``optim/<name>/<slot>``: each optimizer state array, e.g. ``optim/0.weight/exp_avg``.

Saving is atomic: the archive is written to a temporary file in the target's
directory, flushed and fsynced, then renamed over the target. Loading checks
everything (zip CRCs, ``.npy`` headers, JSON fields, names and shapes) and
turns any problem with the file's content into :class:`CheckpointError`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from . import optim as O
from ._version import __version__
from .backend import get_namespace, resolve_device, resolve_dtype
from .layers import from_config
from .network import Sequential

__all__ = ["FORMAT_VERSION", "CheckpointError", "load", "read_metadata", "save"]

#: The checkpoint layout this version writes and reads.
FORMAT_VERSION = 1

_FORMAT_NAME = "portanet-checkpoint"
_META_KEY = "__portanet__"
_PARAM_PREFIX = "param/"
_OPTIM_PREFIX = "optim/"
_OPTIMIZERS: dict[str, type[O.Optimizer]] = {"SGD": O.SGD, "Adam": O.Adam, "AdamW": O.AdamW}

# Everything that reading a damaged zip / npy / JSON can raise. Parsing runs on
# bytes already in memory, so an OSError here is about content, not the disk.
_PARSE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    json.JSONDecodeError,
    UnicodeError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    OSError,
    EOFError,
    NotImplementedError,  # a flipped compression-method field
    RuntimeError,  # a flipped "encrypted" flag
    OverflowError,
    MemoryError,  # a damaged header that asks for an absurd size
)


class CheckpointError(ValueError):
    """A file is not a readable portanet checkpoint (truncated, corrupted, foreign, ...)."""


# ---------------------------------------------------------------- save ----


def save(
    net: Sequential,
    path: str | os.PathLike[str],
    optimizer: O.Optimizer | None = None,
    *,
    epoch: int | None = None,
) -> None:
    """Write ``net`` (and optionally ``optimizer``) to one ``.npz`` file at ``path``.

    Parameters
    ----------
    net : Sequential
        The network: architecture, parameters and host RNG state are saved.
    path : str or PathLike
        The file to write, exactly as given: no ``.npz`` is appended. An
        existing file is replaced atomically; a crash mid-save leaves it intact.
    optimizer : Optimizer, optional
        Saved with its type, hyperparameters, step count and state arrays, so
        training resumes exactly. None saves no optimizer (not even
        ``net.optimizer``).
    epoch : int, optional
        The epoch to record; default ``getattr(net, "epoch", 0)``.
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"save: net must be a portanet Sequential, got {type(net).__name__}")
    if optimizer is not None and not isinstance(optimizer, O.Optimizer):
        raise TypeError(
            f"save: optimizer must be a portanet Optimizer or None, got {type(optimizer).__name__}"
        )
    epoch = getattr(net, "epoch", 0) if epoch is None else epoch
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"save: epoch must be an int >= 0, got {epoch!r}")

    for i, layer_config in enumerate(net.config()["layers"]):
        try:  # refuse now what load could not rebuild later (e.g. a custom Activation)
            from_config(layer_config)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"save: layer {i} ({net.layers[i]!r}) cannot be saved: {exc}; checkpoints "
                "hold built-in activations only"
            ) from exc
    target = Path(path)
    if not target.absolute().parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "save: no such directory", str(target.absolute().parent)
        )
    params = net.state_dict()
    arrays: dict[str, np.ndarray] = {_PARAM_PREFIX + k: a for k, a in params.items()}
    meta: dict[str, Any] = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "portanet_version": __version__,
        "network": net.config(),
        "saved_from": {"backend": net.backend, "device": str(net.device)},
        "epoch": int(epoch),
        "rng_state": net.rng.bit_generator.state,
        "parameters": {k: list(a.shape) for k, a in params.items()},
        "optimizer": None,
    }
    if optimizer is not None:
        sd = optimizer.state_dict()
        if type(optimizer).__name__ not in _OPTIMIZERS:
            raise TypeError(
                f"save: cannot save optimizer {type(optimizer).__name__}; "
                f"checkpoints know {sorted(_OPTIMIZERS)}"
            )
        unknown = sorted(set(sd["state"]) - set(params))
        if unknown:
            raise ValueError(f"save: the optimizer has state for {unknown}, not parameters of net")
        meta["optimizer"] = {
            "type": type(optimizer).__name__,
            "config": sd["config"],
            "step": int(sd["step"]),
            "state": {name: sorted(slots) for name, slots in sd["state"].items()},
        }
        for name, slots in sd["state"].items():
            for slot, a in slots.items():
                arrays[f"{_OPTIM_PREFIX}{name}/{slot}"] = a
    try:
        text = json.dumps(meta, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save: the network's metadata is not JSON-able: {exc}") from exc
    arrays[_META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _write_atomic(target, arrays)


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    directory = path.absolute().parent
    tmp = _create_temp(directory, path.name)
    try:
        with open(tmp, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _create_temp(directory: Path, name: str) -> Path:
    """Create a new empty file next to the target. The kernel applies the umask to
    mode 0o666, so the checkpoint gets the permissions a plain ``open`` would give."""
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"save: could not create a temporary file in {directory}")


def _write_npz(f: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """``numpy.savez`` to an open file, uncompressed and with pickling off."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, a in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                npy_format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable. Not every platform can open a directory (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- load ----


def load(
    path: str | os.PathLike[str],
    backend: str | ModuleType | None = None,
    device: Any = None,
    *,
    return_optimizer: bool = False,
) -> Sequential | tuple[Sequential, O.Optimizer | None]:
    """Rebuild a network saved by :func:`save`.

    Parameters
    ----------
    path : str or PathLike
        The checkpoint.
    backend : str or namespace module, optional
        Where to build the network. Default: portanet's default backend
        (:func:`portanet.get_backend`), not the backend it was saved from, so a
        checkpoint from a GPU loads on a machine without one.
    device : optional
        Device on ``backend`` (as for ``Sequential``).
    return_optimizer : bool
        Return ``(net, optimizer)`` instead of ``net``; ``optimizer`` is None
        when none was saved.

    Returns
    -------
    Sequential or (Sequential, Optimizer or None)
        The network, with the saved dtype, parameters, host RNG state
        (``net.rng``) and ``net.epoch``. A saved optimizer is rebuilt with its
        hyperparameters, step count and state, and attached as
        ``net.optimizer``; its state arrays move to the network's device at its
        next step.

    Raises
    ------
    FileNotFoundError
        No file at ``path`` (other OS errors reading it also pass through).
    ValueError, ImportError, RuntimeError
        ``backend`` or ``device`` cannot be used (as for ``Sequential``), or the
        device lacks the saved dtype (a float64 checkpoint on a float32-only device).
    CheckpointError
        The file is not a valid portanet checkpoint: truncated, corrupted, a
        foreign file, holding pickled objects, parameters not matching the
        architecture, or an unknown ``format_version``.
    """
    meta, arrays = _read(path)
    cfg = meta["network"]
    # Backend and device are the caller's arguments: their errors pass through as they are.
    xp = get_namespace(backend)
    dev = resolve_device(xp, device)
    resolve_dtype(xp, cfg["dtype"], dev)
    _check_implied_shapes(path, cfg, meta["parameters"])
    try:
        layers = [from_config(c) for c in cfg["layers"]]
        net = Sequential(layers, backend=xp, device=dev, dtype=cfg["dtype"], seed=cfg["seed"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{_name(path)}: cannot rebuild the architecture: {exc}") from exc
    params = {k[len(_PARAM_PREFIX):]: a for k, a in arrays.items() if k.startswith(_PARAM_PREFIX)}
    try:
        net.load_state_dict(params)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{_name(path)}: the parameters do not match the architecture: {exc}"
        ) from exc
    try:
        # In place: the layers hold this same Generator (dropout masks come from it).
        net.rng.bit_generator.state = meta["rng_state"]
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise CheckpointError(f"{_name(path)}: bad host RNG state: {exc}") from exc
    net.epoch = meta["epoch"]
    optimizer = None
    if meta["optimizer"] is not None:
        optimizer = _restore_optimizer(path, meta["optimizer"], arrays, net)
        net.optimizer = optimizer
    return (net, optimizer) if return_optimizer else net


def _check_implied_shapes(path: Any, cfg: Mapping[str, Any], shapes: Mapping[str, Any]) -> None:
    """Compare the parameter shapes the architecture implies with those stored, before
    anything is built (a tampered size must not allocate a huge network)."""
    implied: dict[str, list[int]] = {}
    try:
        for i, c in enumerate(cfg["layers"]):
            if c.get("type") not in ("Dense", "Dropout", "ActivationLayer"):
                raise CheckpointError(f"{_name(path)}: unknown layer type {c.get('type')!r}")
            if c.get("type") == "Dense":
                implied[f"{i}.weight"] = [c["in_features"], c["out_features"]]
                if c.get("bias", True):
                    implied[f"{i}.bias"] = [c["out_features"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{_name(path)}: malformed layer config: {exc}") from exc
    stored = {k: list(v) for k, v in shapes.items()}
    if implied != stored:
        raise CheckpointError(
            f"{_name(path)}: the parameters do not match the architecture: it implies "
            f"{implied}, the file holds {stored}"
        )


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON metadata (architecture, epoch, optimizer, versions).

    The whole file is validated as by :func:`load`, but no network is built.
    """
    return _read(path)[0]


def _restore_optimizer(
    path: Any, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], net: Sequential
) -> O.Optimizer:
    kind = spec["type"]
    cls = _OPTIMIZERS.get(kind)
    if cls is None:
        raise CheckpointError(
            f"{_name(path)}: unknown optimizer type {kind!r}; known: {sorted(_OPTIMIZERS)}"
        )
    shapes = {name: tuple(p.shape) for name, p in net.parameters().items()}
    state: dict[str, dict[str, np.ndarray]] = {}
    for name, slots in spec["state"].items():
        if name not in shapes:
            raise CheckpointError(
                f"{_name(path)}: optimizer state for {name!r}, which is not a parameter"
            )
        for slot in slots:
            a = arrays[f"{_OPTIM_PREFIX}{name}/{slot}"]
            if a.shape != shapes[name]:
                raise CheckpointError(
                    f"{_name(path)}: optimizer state {name}/{slot} has shape {a.shape}, "
                    f"expected {shapes[name]} like the parameter"
                )
            state.setdefault(name, {})[slot] = a
    try:
        optimizer = cls(**spec["config"])
        optimizer.load_state_dict({"step": spec["step"], "state": state})
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{_name(path)}: cannot restore the {kind} optimizer: {exc}"
        ) from exc
    return optimizer


# --------------------------------------------------------------- parse ----


def _name(path: Any) -> str:
    return repr(os.fspath(path))


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and validate a checkpoint: (metadata, arrays by key)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no checkpoint file at {_name(path)}") from exc
    try:
        members = _unzip(data)
        meta = _metadata(members)
        arrays = {key: _parse_npy(key, raw) for key, raw in members.items() if key != _META_KEY}
        _check_entries(meta, arrays)
    except CheckpointError as exc:
        raise CheckpointError(f"{_name(path)}: {exc}") from None
    except _PARSE_ERRORS as exc:
        raise CheckpointError(
            f"{_name(path)} is truncated or corrupted: {type(exc).__name__}: {exc}"
        ) from exc
    return meta, arrays


def _unzip(data: bytes) -> dict[str, bytes]:
    if not data:
        raise CheckpointError("the file is empty")
    if not data.startswith(b"PK"):
        raise CheckpointError(
            "not a portanet checkpoint: not a zip/npz archive "
            f"(it starts with {data[:8]!r})"
        )
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy") or info.is_dir():
                raise CheckpointError(f"unexpected archive member {info.filename!r}")
            key = info.filename[: -len(".npy")]
            if key in members:
                raise CheckpointError(f"archive member {info.filename!r} appears twice")
            # A stored member cannot outgrow the file, nor can deflate expand more
            # than ~1032:1; a larger claim is damage (or a zip bomb), not a checkpoint.
            ratio = 1 if info.compress_type == zipfile.ZIP_STORED else 1100
            if info.file_size > ratio * len(data) + (1 << 20):
                raise CheckpointError(f"archive member {info.filename!r} claims an absurd size")
            members[key] = zf.read(info)  # verifies the member's CRC-32
    if _META_KEY not in members:
        raise CheckpointError(
            "not a portanet checkpoint: an npz archive without the "
            f"{_META_KEY!r} metadata entry (entries: {sorted(members)[:5]})"
        )
    return members


def _parse_npy(key: str, raw: bytes) -> np.ndarray:
    """One ``.npy`` member, refusing object (pickled) arrays; returns a writeable copy."""
    fp = io.BytesIO(raw)
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
    else:
        raise CheckpointError(f"entry {key!r}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise CheckpointError(
            f"entry {key!r} holds Python objects (a pickle); portanet checkpoints never do, "
            "and loading pickles could run arbitrary code"
        )
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise CheckpointError(f"entry {key!r} has dtype {dtype}, expected numbers")
    count = 1
    for s in shape:
        count *= int(s)
    offset = fp.tell()
    if len(raw) - offset != count * dtype.itemsize:
        raise CheckpointError(
            f"entry {key!r}: shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, "
            f"found {len(raw) - offset}"
        )
    a = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    a = a.reshape(shape, order="F" if fortran else "C")
    return np.array(a, dtype=dtype.newbyteorder("="), order="C")  # native, writeable


def _metadata(members: Mapping[str, bytes]) -> dict[str, Any]:
    raw = _parse_npy(_META_KEY, members[_META_KEY])
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"metadata must be 1-d uint8 JSON bytes, got {raw.dtype} {raw.shape}")
    meta = json.loads(raw.tobytes().decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise CheckpointError("not a portanet checkpoint: the metadata has no portanet marker")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        writer = meta.get("portanet_version", "an unknown version")
        raise CheckpointError(
            f"unsupported format_version {version!r} (written by portanet {writer}); "
            f"this portanet {__version__} reads format_version {FORMAT_VERSION}"
        )
    _check_fields(meta)
    return meta


def _check_fields(meta: Mapping[str, Any]) -> None:
    """Check the JSON's types, so that later code can index it without surprises."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"bad metadata: {what}")

    net = meta.get("network")
    need(isinstance(net, dict), "'network' must be an object")
    need(isinstance(net.get("layers"), list) and len(net["layers"]) > 0
         and all(isinstance(c, dict) for c in net["layers"]), "'network.layers' must be a list")
    need(net.get("dtype") in ("float32", "float64"), "'network.dtype' must be float32 or float64")
    need(net.get("seed") is None or _is_int(net.get("seed")), "'network.seed' must be an int")
    need(_is_int(meta.get("epoch")) and meta["epoch"] >= 0, "'epoch' must be an int >= 0")
    need(isinstance(meta.get("rng_state"), dict), "'rng_state' must be an object")
    shapes = meta.get("parameters")
    need(isinstance(shapes, dict) and all(
        isinstance(s, list) and all(_is_int(d) and d >= 0 for d in s) for s in shapes.values()
    ), "'parameters' must map names to shapes")
    opt = meta.get("optimizer")
    if opt is not None:
        need(isinstance(opt, dict), "'optimizer' must be an object or null")
        need(isinstance(opt.get("type"), str), "'optimizer.type' must be a string")
        need(isinstance(opt.get("config"), dict), "'optimizer.config' must be an object")
        need(_is_int(opt.get("step")) and opt["step"] >= 0, "'optimizer.step' must be an int >= 0")
        state = opt.get("state")
        need(isinstance(state, dict) and all(
            isinstance(s, list) and all(isinstance(x, str) for x in s) for s in state.values()
        ), "'optimizer.state' must map parameter names to slot lists")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entries(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """The arrays must be exactly those the metadata lists, with the listed shapes."""
    expected = {_PARAM_PREFIX + name: tuple(s) for name, s in meta["parameters"].items()}
    opt = meta["optimizer"]
    if opt is not None:
        for name, slots in opt["state"].items():
            for slot in slots:
                expected[f"{_OPTIM_PREFIX}{name}/{slot}"] = None
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise CheckpointError(f"entries missing {missing[:5]}, unexpected {extra[:5]}")
    for key, shape in expected.items():
        if shape is not None and arrays[key].shape != shape:
            raise CheckpointError(
                f"entry {key!r} has shape {arrays[key].shape}, the metadata says {shape}"
            )
