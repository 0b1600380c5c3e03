"""Checkpoints: a network (and optimizer) as one ``.npz`` of plain arrays plus JSON.

The file is written and read by the generic safe-npz module (``_safe_npz.py``:
atomic write, validated read, never pickle). This module is the *schema* on top:

- ``__portanet__``: UTF-8 JSON as a 1-d uint8 array. It names the format
  (``format_version``), the portanet version that wrote it, the architecture
  (``Sequential.config()``: layer configs, dtype, seed, input shape), the epoch,
  the state of the host RNG, the parameter and buffer names and shapes, and, if
  an optimizer was saved, its type, config, step count and state arrays.
- ``param/<name>``: each parameter, e.g. ``param/0.weight``.
- ``buffer/<name>``: each buffer (running statistics), e.g. ``buffer/1.running_mean``.
- ``optim/<name>/<slot>``: each optimizer state array, e.g. ``optim/0.weight/exp_avg``.

Layers, activations, optimizers and schedules are rebuilt through their
registries, and each layer declares its parameter and buffer shapes, so a
checkpoint is checked against the architecture before anything is allocated.
Format 1 (portanet 0.x before buffers) is read as well.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import _safe_npz as npz
from . import optim as O
from ._version import __version__
from .backend import get_namespace, resolve_device, resolve_dtype
from .layers import Layer, from_config
from .network import Sequential

__all__ = ["FORMAT_VERSION", "CheckpointError", "dumps", "load", "loads", "read_metadata", "save"]

#: The checkpoint layout this version writes (2 added buffers and the input shape).
FORMAT_VERSION = 2
#: The layouts this version reads.
READABLE_VERSIONS = (1, 2)

_FORMAT_NAME = "portanet-checkpoint"
_META_KEY = "__portanet__"
_PREFIXES = {"params": "param/", "buffers": "buffer/"}
_OPTIM_PREFIX = "optim/"


class CheckpointError(ValueError):
    """A file is not a readable portanet checkpoint (truncated, corrupted, foreign, ...)."""


# ---------------------------------------------------------------- save ----


def save(
    net: Sequential,
    path: str | os.PathLike[str],
    optimizer: O.Optimizer | None = None,
    *,
    epoch: int | None = None,
    info: Mapping[str, Any] | None = None,
) -> None:
    """Write ``net`` (and optionally ``optimizer``) to one ``.npz`` file at ``path``.

    Parameters
    ----------
    net : Sequential
        The network: architecture, parameters, buffers and host RNG state are saved.
    path : str or PathLike
        The file to write, exactly as given: no ``.npz`` is appended. An
        existing file is replaced atomically; a crash mid-save leaves it intact.
    optimizer : Optimizer, optional
        Saved with its type, hyperparameters (a schedule for ``lr`` included),
        step count and state arrays, so training resumes exactly. None saves no
        optimizer (not even ``net.optimizer``).
    epoch : int, optional
        The epoch to record; default ``net.epoch``.
    info : mapping, optional
        JSON-able notes kept with the checkpoint, read back as
        ``read_metadata(path)["info"]`` (the ``portanet`` command records how it split
        the data there, so that ``evaluate`` tests on the same rows).

    Raises
    ------
    ValueError
        Something in ``net`` or ``optimizer`` could not be loaded back: an
        activation, layer or schedule that is not registered, for instance.
    FileNotFoundError
        The folder of ``path`` does not exist.
    """
    arrays = _checkpoint_arrays(net, optimizer, epoch, info,
                                before_write=lambda: _check_folder(path))
    npz.write_atomic(Path(path), arrays)


def dumps(net: Sequential, optimizer: O.Optimizer | None = None, *,
          epoch: int | None = None, info: Mapping[str, Any] | None = None) -> bytes:
    """The checkpoint that :func:`save` would write, as bytes (the same ``.npz`` format).

    :func:`loads` reads them back. This is how portanet's scikit-learn estimators
    pickle: plain arrays and JSON, no live device objects.
    """
    return npz.to_bytes(_checkpoint_arrays(net, optimizer, epoch, info))


def _check_folder(path: Any) -> None:
    target = Path(path)
    if not target.absolute().parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "save: no such directory", str(target.absolute().parent)
        )


def _checkpoint_arrays(net: Sequential, optimizer: O.Optimizer | None, epoch: int | None,
                       info: Mapping[str, Any] | None = None,
                       before_write: Any = None) -> dict[str, np.ndarray]:
    """Every entry of the checkpoint of ``net`` (and ``optimizer``), metadata included,
    after checking the arguments (``before_write`` runs last, before anything is copied)."""
    epoch = _checked_save_arguments(net, optimizer, epoch)
    if before_write is not None:
        before_write()
    state = net.state_dict()
    kinds = {"params": list(net.parameters()), "buffers": list(net.buffers())}
    arrays = {_PREFIXES[kind] + name: state[name] for kind, names in kinds.items()
              for name in names}
    meta: dict[str, Any] = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "portanet_version": __version__,
        "network": net.config(),
        "saved_from": {"backend": net.backend, "device": str(net.device)},
        "epoch": int(epoch),
        "rng_state": net.rng.bit_generator.state,
        "parameters": {k: list(state[k].shape) for k in kinds["params"]},
        "buffers": {k: list(state[k].shape) for k in kinds["buffers"]},
        "optimizer": None,
        "info": dict(info) if info is not None else {},
    }
    if optimizer is not None:
        meta["optimizer"] = _optimizer_entry(optimizer, kinds["params"], arrays)
    try:
        text = json.dumps(meta, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save: the network's metadata is not JSON-able: {exc}") from exc
    arrays[_META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return arrays


def _checked_save_arguments(net: Any, optimizer: Any, epoch: Any) -> int:
    """Check what save and dumps were given; returns the epoch to record."""
    if not isinstance(net, Sequential):
        raise TypeError(f"save: net must be a portanet Sequential, got {type(net).__name__}")
    if optimizer is not None and not isinstance(optimizer, O.Optimizer):
        raise TypeError(
            f"save: optimizer must be a portanet Optimizer or None, got {type(optimizer).__name__}"
        )
    epoch = getattr(net, "epoch", 0) if epoch is None else epoch
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"save: epoch must be an int >= 0, got {epoch!r}")
    _check_rebuildable(net)
    return int(epoch)


def _check_rebuildable(net: Sequential) -> None:
    """Refuse now what load could not rebuild later (e.g. an unregistered activation)."""
    for i, layer_config in enumerate(net.config()["layers"]):
        try:
            from_config(layer_config)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"save: layer {i} ({net.layers[i]!r}) cannot be saved: {exc}; register it "
                "(e.g. pn.activations.register) so that load can rebuild it"
            ) from exc


def _optimizer_entry(optimizer: O.Optimizer, param_names: list[str],
                     arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The optimizer's metadata; adds its state arrays to ``arrays``."""
    kind = type(optimizer).__name__
    if kind not in O.OPTIMIZERS or O.OPTIMIZERS[kind] is not type(optimizer):
        raise TypeError(f"save: cannot save optimizer {kind}; checkpoints know the registered "
                        f"optimizers {O.OPTIMIZERS.names()}")
    try:
        sd = optimizer.state_dict()
    except ValueError as exc:
        raise ValueError(f"save: {exc}") from exc
    unknown = sorted(set(sd["state"]) - set(param_names))
    if unknown:
        raise ValueError(f"save: the optimizer has state for {unknown}, not parameters of net")
    for name, slots in sd["state"].items():
        for slot, a in slots.items():
            arrays[f"{_OPTIM_PREFIX}{name}/{slot}"] = a
    return {"type": kind, "config": sd["config"], "step": int(sd["step"]),
            "state": {name: sorted(slots) for name, slots in sd["state"].items()}}


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
        The network, with the saved dtype, parameters, buffers, host RNG state
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
        foreign file, holding pickled objects, arrays not matching the
        architecture, or an unknown ``format_version``.
    """
    meta, arrays = _read(path)
    return _rebuild(path, meta, arrays, backend, device, return_optimizer)


def loads(
    data: bytes,
    backend: str | ModuleType | None = None,
    device: Any = None,
    *,
    return_optimizer: bool = False,
) -> Sequential | tuple[Sequential, O.Optimizer | None]:
    """Rebuild a network from the bytes of :func:`dumps` (or of a checkpoint file).

    Arguments, result and errors are those of :func:`load`; the data is validated
    just as strictly.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"loads: data must be bytes, got {type(data).__name__}")
    meta, arrays = _parse(bytes(data), _BYTES)
    return _rebuild(_BYTES, meta, arrays, backend, device, return_optimizer)


#: What messages call checkpoint data that :func:`loads` was given.
_BYTES = "<checkpoint bytes>"


def _rebuild(path: Any, meta: dict[str, Any], arrays: dict[str, np.ndarray], backend: Any,
             device: Any, return_optimizer: bool) -> Any:
    """The network (and optimizer) that validated checkpoint entries describe, built on
    ``backend`` and ``device``; ``path`` (or :data:`_BYTES`) is named in messages."""
    cfg = meta["network"]
    # Backend and device are the caller's arguments: their errors pass through as they are.
    xp = get_namespace(backend)
    dev = resolve_device(xp, device)
    resolve_dtype(xp, cfg["dtype"], dev)
    layers = _layers_checked_against(path, cfg, meta)
    try:
        net = Sequential(layers, backend=xp, device=dev, dtype=cfg["dtype"], seed=cfg["seed"],
                         input_shape=cfg.get("input_shape"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{_name(path)}: cannot rebuild the architecture: {exc}") from exc
    state = {k.split("/", 1)[1]: a for k, a in arrays.items()
             if k.startswith(tuple(_PREFIXES.values()))}
    try:
        net.load_state_dict(state)
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


def _layers_checked_against(path: Any, cfg: Mapping[str, Any],
                            meta: Mapping[str, Any]) -> list[Layer]:
    """The layers of the architecture, not yet built, after checking the shapes they
    declare against those stored (a tampered size must not allocate a huge network)."""
    try:
        layers = [from_config(c) for c in cfg["layers"]]
    except ValueError as exc:
        raise CheckpointError(f"{_name(path)}: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{_name(path)}: malformed layer config: {exc}") from exc
    for kind, key in (("params", "parameters"), ("buffers", "buffers")):
        declared = {f"{i}.{name}": list(shape) for i, layer in enumerate(layers)
                    for name, shape in layer.declared_shapes(kind).items()}
        stored = {k: list(v) for k, v in meta.get(key, {}).items()}
        if declared != stored:
            raise CheckpointError(
                f"{_name(path)}: the {key} do not match the architecture: it implies "
                f"{declared}, the file holds {stored}"
            )
    return layers


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON metadata (architecture, epoch, optimizer, versions).

    The whole file is validated as by :func:`load`, but no network is built.
    """
    return _read(path)[0]


def _restore_optimizer(
    path: Any, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], net: Sequential
) -> O.Optimizer:
    kind = spec["type"]
    if kind not in O.OPTIMIZERS:
        raise CheckpointError(
            f"{_name(path)}: unknown optimizer type {kind!r}; known: {O.OPTIMIZERS.names()}"
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
        optimizer = O.OPTIMIZERS[kind](**spec["config"])
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
    return _parse(data, path)


def _parse(data: bytes, path: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Validate and parse checkpoint bytes read from ``path`` (named in messages)."""
    try:
        arrays = npz.read_bytes(data)
    except npz.NotNpzError as exc:
        raise CheckpointError(f"{_name(path)}: not a portanet checkpoint: {exc}") from None
    except npz.NpzError as exc:
        raise CheckpointError(f"{_name(path)}: {exc}") from exc
    try:
        meta = _metadata(arrays)
        _check_entries(meta, arrays)
    except CheckpointError as exc:
        raise CheckpointError(f"{_name(path)}: {exc}") from None
    except (json.JSONDecodeError, UnicodeError) as exc:
        raise CheckpointError(f"{_name(path)}: the metadata is corrupted: {exc}") from exc
    return meta, arrays


def _metadata(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Take the JSON metadata out of ``arrays`` and check it."""
    raw = arrays.pop(_META_KEY, None)
    if raw is None:
        raise CheckpointError(
            "not a portanet checkpoint: an npz archive without the "
            f"{_META_KEY!r} metadata entry (entries: {sorted(arrays)[:5]})"
        )
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"metadata must be 1-d uint8 JSON bytes, got {raw.dtype} {raw.shape}")
    meta = json.loads(raw.tobytes().decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise CheckpointError("not a portanet checkpoint: the metadata has no portanet marker")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
        writer = meta.get("portanet_version", "an unknown version")
        raise CheckpointError(
            f"unsupported format_version {version!r} (written by portanet {writer}); "
            f"this portanet {__version__} reads format_version {READABLE_VERSIONS}"
        )
    _check_fields(meta)
    return meta


def _check_fields(meta: Mapping[str, Any]) -> None:
    """Check the JSON's types, so that later code can index it without surprises."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"bad metadata: {what}")

    def is_shapes(x: Any) -> bool:
        return isinstance(x, dict) and all(
            isinstance(s, list) and all(_is_int(d) and d >= 0 for d in s) for s in x.values())

    net = meta.get("network")
    need(isinstance(net, dict), "'network' must be an object")
    need(isinstance(net.get("layers"), list) and len(net["layers"]) > 0
         and all(isinstance(c, dict) for c in net["layers"]), "'network.layers' must be a list")
    need(net.get("dtype") in ("float32", "float64"), "'network.dtype' must be float32 or float64")
    need(net.get("seed") is None or _is_int(net.get("seed")), "'network.seed' must be an int")
    shape = net.get("input_shape")
    need(shape is None or (isinstance(shape, list) and all(_is_int(d) and d > 0 for d in shape)),
         "'network.input_shape' must be a list of positive ints")
    need(_is_int(meta.get("epoch")) and meta["epoch"] >= 0, "'epoch' must be an int >= 0")
    need(isinstance(meta.get("rng_state"), dict), "'rng_state' must be an object")
    need(isinstance(meta.setdefault("info", {}), dict), "'info' must be an object")
    need(is_shapes(meta.get("parameters")), "'parameters' must map names to shapes")
    need(is_shapes(meta.get("buffers", {})), "'buffers' must map names to shapes")
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
    expected: dict[str, tuple[int, ...] | None] = {}
    for kind, key in (("params", "parameters"), ("buffers", "buffers")):
        expected.update({_PREFIXES[kind] + name: tuple(s)
                         for name, s in meta.get(key, {}).items()})
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
