"""``Sequential``: a stack of layers on one namespace, device and dtype.

This module is the model: building (with a shape check of the whole chain),
``forward``, ``predict``, ``backward``, the parameters, gradients and buffers,
their state, moving to another backend, and a summary. Training lives in
``training.py`` and checkpoints in ``io.py``; ``fit``, ``evaluate``,
``train_step`` and ``save`` here are one-line delegates to them.
"""

from __future__ import annotations

import importlib
import operator
import sys
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from array_api_compat import device as device_of

from . import losses as L
from .backend import (
    backend_name,
    get_namespace,
    host_label_range,
    host_rng,
    is_plain_array,
    namespace_of,
    resolve_device,
    resolve_dtype,
    size,
    to_array,
    to_numpy,
)
from .layers import Context, Layer, Shape, check_built, format_shape

if TYPE_CHECKING:
    from .optim import Optimizer
    from .training import History

__all__ = ["ArrayView", "Sequential"]

Array = Any


class ArrayView(MutableMapping):
    """Live ``"i.path" -> array`` view of a network's parameters, gradients or buffers.

    Assigning through it writes into the layer, so ``params[k] -= step`` works on
    immutable arrays (JAX) as well as writeable ones.
    """

    def __init__(self, layers: Sequence[Layer], kind: str = "params", attr: str | None = None):
        self._attr = attr or kind  # gradients share the parameters' names: kind "params"
        self.version = 0  # counts assignments, so optimizers can tell nothing was replaced
        # Names are fixed once the layers are built; look them up in one dict.
        self._index: dict[str, tuple[Layer, str]] = {
            f"{i}.{path}": (owner, key)
            for i, layer in enumerate(layers) for path, owner, key in layer.slots(kind)
        }

    def __getitem__(self, key: str) -> Array:
        owner, name = self._index[key]
        store = getattr(owner, self._attr)
        if name not in store:
            raise KeyError(key)
        return store[name]

    def __setitem__(self, key: str, value: Array) -> None:
        owner, name = self._index[key]
        getattr(owner, self._attr)[name] = value
        self.version += 1

    def __delitem__(self, key: str) -> None:
        raise TypeError("parameters and buffers cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        if key not in self._index:
            return False
        owner, name = self._index[key]
        return name in getattr(owner, self._attr)

    def to_dict(self) -> dict[str, Array]:
        """A plain dict of the arrays now in the layers; ``KeyError`` lists any missing."""
        attr = self._attr
        try:
            return {key: getattr(owner, attr)[name] for key, (owner, name) in self._index.items()}
        except KeyError:
            raise KeyError([key for key in self._index if key not in self]) from None


class Sequential:
    """A feed-forward network: layers applied in order.

    Parameters
    ----------
    layers : sequence of Layer
        For example ``[Dense(2, 100, activation=LeakyReLU(0.1)), Dense(100, 1)]``.
    backend : str or namespace module, optional
        ``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"``, ``"array_api_strict"`` or a
        namespace module. Default: :func:`portanet.get_backend`.
    device : optional
        None (the backend's default), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
        device object of the backend.
    dtype : {"float32", "float64"}
        Floating dtype of parameters and activations.
    seed : int, optional
        Seeds the host RNG that draws initial weights, shuffles and dropout
        masks. The same seed gives the same weights on every backend.
    input_shape : tuple of int, optional
        The shape of one sample, e.g. ``(1, 28, 28)``. Default: what the first
        layer fixes (``Dense(64, 10)``: ``(64,)``). The whole chain of shapes is
        checked when the network is built, and the layer at fault is named.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        backend: str | ModuleType | None = None,
        device: Any = None,
        dtype: str = "float32",
        seed: int | None = None,
        input_shape: Sequence[int] | None = None,
    ):
        self.layers = _check_layers(layers)
        seed = _check_seed(seed)
        self.input_shape = self._input_shape(input_shape)
        self._output_shapes = self._walk(self.input_shape)
        self._checked_shapes: set[tuple[int, ...]] = set()
        self.xp = get_namespace(backend)
        self.backend = backend_name(self.xp)
        self.device = resolve_device(self.xp, device)
        self.dtype = resolve_dtype(self.xp, dtype, self.device)
        self.seed = seed
        self.rng = host_rng(seed)
        self.optimizer: Optimizer | None = None  # the last one training used (set by training)
        self.epoch = 0  # epochs completed by fit; saved in checkpoints
        self.stop_training = False  # callbacks set this to end fit after the epoch
        ctx = self._context()
        for layer in self.layers:
            layer.build(ctx)
            check_built(layer)
        self._params = ArrayView(self.layers, "params")
        self._grads = ArrayView(self.layers, "params", attr="grads")
        self._buffers = ArrayView(self.layers, "buffers")

    # --------------------------------------------------------------- shapes --
    def _input_shape(self, given: Sequence[int] | None) -> Shape:
        if given is not None:
            shape = tuple(given)
            if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                for s in shape):
                raise ValueError(f"input_shape must be a tuple of positive ints, got {given!r}")
            return shape
        for layer in self.layers:  # the first layer that fixes a shape, past shape-keeping ones
            fixed = layer.expected_input_shape()
            if fixed is not None:
                return tuple(fixed)
            if not layer.keeps_shape:
                break
        raise ValueError("Sequential cannot tell the input shape from its first layer: "
                         "give input_shape=, e.g. input_shape=(1, 28, 28)")

    def _walk(self, shape: Shape) -> list[Shape]:
        """Each layer's output shape for a sample of ``shape``; the layers raise
        ``ValueError`` naming themselves where a shape does not fit."""
        shapes = []
        for layer in self.layers:
            shape = tuple(layer.output_shape(shape))
            shapes.append(shape)
        return shapes

    @property
    def output_shape(self) -> Shape:
        """The per-sample output shape, e.g. ``(10,)``."""
        return self._output_shapes[-1]

    @property
    def in_features(self) -> int | None:
        """Input features per sample for vector inputs (None for images)."""
        return self.input_shape[0] if len(self.input_shape) == 1 else None

    @property
    def out_features(self) -> int | None:
        """Outputs per sample for vector outputs (the classes of a classifier)."""
        return self.output_shape[0] if len(self.output_shape) == 1 else None

    def _context(self) -> Context:
        self._ctx = Context(self.xp, self.device, self.dtype, self.rng)
        return self._ctx

    @property
    def context(self) -> Context:
        """The :class:`~portanet.layers.Context` the layers share: namespace, device, dtype,
        host RNG, and (set by ``fit`` across ranks) the cross-rank sum and this rank's rows."""
        return self._ctx

    @property
    def dtype_name(self) -> str:
        return "float64" if self.dtype == self.xp.float64 else "float32"

    # ---------------------------------------------------------- parameters --
    def parameters(self) -> ArrayView:
        """Ordered, live mapping ``"i.name" -> array`` (e.g. ``"0.weight"``, ``"0.bias"``)."""
        return self._params

    def gradients(self) -> dict[str, Array]:
        """Ordered mapping ``"i.name" -> gradient`` from the last :meth:`backward`."""
        try:
            return self._grads.to_dict()
        except KeyError as exc:
            raise RuntimeError(f"no gradients yet for {exc.args[0]}: call backward() first") from None

    def buffers(self) -> ArrayView:
        """Ordered, live mapping ``"i.name" -> array`` of non-trained state (running
        statistics): saved, moved and loaded with the parameters, never optimized."""
        return self._buffers

    def num_parameters(self) -> int:
        return sum(size(p) for p in self.parameters().values())

    # ------------------------------------------------------------ data in --
    def as_input(self, x: Any, what: str = "x") -> Array:
        """Convert ``x`` to this network's namespace, device and dtype, checking its shape."""
        if _is_ready(x, self.xp, self.dtype, self.device):
            a = x  # already on this network's namespace, device and dtype
        else:
            a = to_array(x, self.xp, self.device, self.dtype, what=what)
        if a.shape[1:] != self.input_shape:  # the common case costs one comparison
            self._check_sample_shape(tuple(a.shape), what)
        return a

    def _check_sample_shape(self, shape: tuple[int, ...], what: str) -> None:
        sample = shape[1:]
        if len(shape) != 1 + len(self.input_shape) or any(
            want is not None and got != want for got, want in zip(sample, self.input_shape)
        ):
            raise ValueError(
                f"{what}: {self.layers[0].label} expects a batch of shape "
                f"{format_shape(self.input_shape)}, got {shape}"
            )
        if sample not in self._checked_shapes:  # sizes known only now: check the chain once
            self._walk(sample)
            self._checked_shapes.add(sample)

    def as_target(self, y: Any, n: int, loss: L.Loss) -> Array:
        """Convert targets, keep integer class labels integral, and check them against ``loss``.

        Raises ``ValueError`` for an empty batch, a row count that differs from
        ``n``, a shape the loss cannot use, or class labels out of range, and
        ``TypeError`` for 1-D class labels that are not integers.
        """
        if n == 0:
            raise ValueError("x has no rows: training and evaluation need at least one sample")
        a = to_array(y, self.xp, self.device, None, what="y")
        labels = loss.accepts_labels and a.ndim == 1
        if labels and not self.xp.isdtype(a.dtype, "integral"):
            raise TypeError(
                f"y: 1-D targets of loss {loss.name!r} are class labels and must be integers, "
                f"got dtype {a.dtype}; give probabilities as an (n, classes) array"
            )
        if not labels:
            a = self.xp.astype(a, self.dtype) if a.dtype != self.dtype else a
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(
                f"y has {a.shape[0] if a.ndim else 'no'} rows but x has {n}: "
                "each sample needs one target"
            )
        out = self.output_shape
        loss.check_target((n, *out), a)
        span = host_label_range(y) if labels else None  # device labels: not read (no sync)
        classes = out[-1]
        if span is not None and (span[0] < 0 or span[1] >= classes):
            raise ValueError(
                f"y: class labels must be in [0, {classes}) for a network with "
                f"{classes} outputs, got labels from {span[0]} to {span[1]}"
            )
        return a

    # ------------------------------------------------------------ compute --
    def forward(self, x: Any, training: bool = False) -> Array:
        """Run the layers; ``training=True`` is the one switch to training behaviour
        (dropout on, batch statistics) and keeps what :meth:`backward` needs."""
        return self.forward_checked(self.as_input(x), training)

    def forward_checked(self, a: Array, training: bool = False) -> Array:
        """:meth:`forward` without its input checks, for an array that :meth:`as_input`
        has returned (training code checks a data set once, then runs its batches)."""
        for layer in self.layers:
            a = layer.forward(a, training)
        return a

    __call__ = forward

    def predict(self, x: Any, batch_size: int | None = None) -> Array:
        """Outputs in evaluation mode, computed ``batch_size`` rows at a time (None: all)."""
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        a = self.as_input(x)
        n = a.shape[0]
        if batch_size is None or batch_size >= n:
            return self.forward_checked(a, training=False)
        parts = [self.forward_checked(a[i : min(i + batch_size, n), ...], training=False)
                 for i in range(0, n, batch_size)]
        return self.xp.concat(parts, axis=0)

    def backward(self, grad_output: Array, need_input_grad: bool = True) -> Array | None:
        """Backpropagate ``dL/d(output)`` through the layers of the last ``forward``: fill
        every layer's gradients and return ``dL/d(input)`` (None if not ``need_input_grad``,
        which spares the first layer that product)."""
        g = grad_output
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(g, need_input_grad or i > 0)
        return g

    # ------------------------------------------- delegates to lower modules --
    def train_step(self, x: Any, y: Any, loss: str | L.Loss, optimizer: Optimizer,
                   sample_weight: Any = None) -> Array:
        """One forward, backward and optimizer update on ``(x, y)`` (``sample_weight``: one
        weight per row, for a weighted mean loss); the loss as a 0-d device array (no host
        sync). Delegates to :func:`portanet.training.train_step`."""
        return _lower("training").train_step(self, x, y, loss, optimizer, sample_weight)

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        loss: str | L.Loss,
        optimizer: str | Optimizer,
        epochs: int = 1,
        batch_size: int | None = 32,
        shuffle: bool = True,
        validation_data: tuple[Any, Any] | None = None,
        validation_split: float = 0.0,
        sample_weight: Any = None,
        metrics: Sequence[Any] = (),
        callbacks: Iterable[Any] = (),
        verbose: int = 1,
        initial_epoch: int = 0,
        check_finite: int = 1,
        divergence_factor: float = 1e4,
        distributed: Any = None,
    ) -> History:
        """Train on ``(x, y)`` with mini-batches; returns a :class:`~portanet.training.History`.

        Every argument is described at :func:`portanet.training.fit`, to which this
        delegates: ``loss``, ``optimizer``, ``epochs``, ``batch_size`` (None: full
        batch), ``shuffle``, ``validation_data``, ``validation_split`` (the last
        rows), ``sample_weight`` (one weight per row: a weighted mean loss),
        ``metrics``, ``callbacks``, ``verbose`` (0 silent, 1 a bar, 2 a line per
        epoch), ``initial_epoch``, ``check_finite``, ``divergence_factor`` and
        ``distributed`` (``True`` or a communicator: data-parallel across MPI ranks).
        """
        return _lower("training").fit(self, x, y, loss=loss, optimizer=optimizer, epochs=epochs,
                   batch_size=batch_size, shuffle=shuffle, validation_data=validation_data,
                   validation_split=validation_split, sample_weight=sample_weight,
                   metrics=metrics, callbacks=callbacks,
                   verbose=verbose, initial_epoch=initial_epoch, check_finite=check_finite,
                   divergence_factor=divergence_factor, distributed=distributed)

    def evaluate(self, x: Any, y: Any, *, loss: str | L.Loss, metrics: Sequence[Any] = (),
                 batch_size: int | None = 256, sample_weight: Any = None) -> dict[str, float]:
        """Loss and metrics on ``(x, y)`` in evaluation mode, as floats (``sample_weight``:
        a weighted mean loss). Delegates to :func:`portanet.training.evaluate`."""
        return _lower("training").evaluate(self, x, y, loss=loss, metrics=metrics,
                                           batch_size=batch_size, sample_weight=sample_weight)

    def save(self, path: Any, optimizer: Optimizer | None = None, *,
             info: Mapping[str, Any] | None = None) -> None:
        """Write a checkpoint (atomic; optionally with ``optimizer`` and JSON-able ``info``).
        Delegates to :func:`portanet.io.save`."""
        _lower("io").save(self, path, optimizer=optimizer, info=info)

    # --------------------------------------------------------------- state --
    def state_dict(self) -> dict[str, Any]:
        """Host NumPy copies of the parameters, then the buffers, by name."""
        arrays = {**self.parameters(), **self.buffers()}
        return {name: to_numpy(a) for name, a in arrays.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load parameters and buffers by name. Names and shapes must match exactly; on
        any mismatch nothing is changed."""
        views = [self.parameters(), self.buffers()]
        expected, given = {k for v in views for k in v}, set(state)
        if expected != given:
            raise ValueError(
                f"load_state_dict: missing {sorted(expected - given)}, "
                f"unexpected {sorted(given - expected)}"
            )
        new = []
        for view in views:
            for name in view:
                a = to_array(state[name], self.xp, self.device, self.dtype, what=name, copy=True)
                if tuple(a.shape) != tuple(view[name].shape):
                    raise ValueError(
                        f"load_state_dict: {name} has shape {tuple(a.shape)}, "
                        f"expected {tuple(view[name].shape)}"
                    )
                new.append((view, name, a))
        for view, name, a in new:
            view[name] = a

    def to(self, backend: str | ModuleType | None = None, device: Any = None) -> Sequential:
        """Move parameters, buffers (and the optimizer state this network holds) to another
        backend and/or device, in place. Returns ``self``."""
        xp = self.xp if backend is None else get_namespace(backend)
        dev = resolve_device(xp, device)
        dtype = resolve_dtype(xp, self.dtype_name, dev)

        def move(a: Array) -> Array:  # a copy: DLPack views can be shared and read-only
            return to_array(a, xp, dev, None, copy=True)

        views = [self.parameters(), self.buffers()]
        moved = [(view, name, move(a)) for view in views for name, a in view.items()]
        self.xp, self.backend, self.device, self.dtype = xp, backend_name(xp), dev, dtype
        ctx = self._context()
        for layer in _all_layers(self.layers):
            layer.ctx = ctx
            layer.grads.clear()
        for view, name, a in moved:
            view[name] = a
        if self.optimizer is not None:
            self.optimizer.map_state(move)
        return self

    # ------------------------------------------------------------ describe --
    def config(self) -> dict[str, Any]:
        """JSON-able architecture: layer configs, dtype, seed and the input shape."""
        return {"layers": [layer.config() for layer in self.layers], "dtype": self.dtype_name,
                "seed": self.seed, "input_shape": list(self.input_shape)}

    def summary(self) -> str:
        """A table of layers, output shapes and parameter counts."""
        rows = [("#", "layer", "output shape", "params")]
        for i, (layer, shape) in enumerate(zip(self.layers, self._output_shapes)):
            count = sum(size(owner.params[key]) for _, owner, key in layer.slots("params"))
            rows.append((str(i), repr(layer), format_shape(shape), f"{count:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        rule = "-" * len(lines[0])
        footer = (f"input shape: {format_shape(self.input_shape)}  "
                  f"total parameters: {self.num_parameters():,}  "
                  f"backend: {self.backend}  device: {self.device}  dtype: {self.dtype_name}")
        return "\n".join([lines[0], rule, *lines[1:], rule, footer])

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], backend={self.backend!r}, dtype={self.dtype_name!r})"


def _lower(name: str) -> ModuleType:
    """``portanet.<name>``, a module below this one in the module map, imported on first
    use: the one way the delegates ``train_step``, ``fit``, ``evaluate`` and ``save`` reach
    it (an import statement in each would cost two microseconds per training step)."""
    return sys.modules.get(f"portanet.{name}") or importlib.import_module(f"portanet.{name}")


def _check_layers(layers: Any) -> list[Layer]:
    if isinstance(layers, Layer) or not isinstance(layers, Iterable):
        raise TypeError(f"layers must be a sequence of Layer objects, got {type(layers).__name__}")
    layers = list(layers)
    if not layers:
        raise ValueError("Sequential needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer {i} is {type(layer).__name__}, not a portanet Layer")
        if layer.ctx is not None:
            raise ValueError(f"layer {i} ({layer!r}) already belongs to a network")
        if any(layer is other for other in layers[:i]):
            raise ValueError(f"layer {i} ({layer!r}) appears twice: each layer needs its own object")
    for i, layer in enumerate(layers):
        layer.index = i
    return layers


def _all_layers(layers: Iterable[Layer]) -> Iterator[Layer]:
    """Every layer, and the layers inside each, depth first."""
    for layer in layers:
        yield layer
        yield from _all_layers(child for _, child in layer.children())


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be a non-negative int or None, got {seed!r}") from None
    if value < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(value)


def _is_ready(x: Any, xp: ModuleType, dtype: Any, device: Any) -> bool:
    """Whether ``x`` can be used as it is: an array of ``xp`` (not a NumPy subclass such
    as ``np.matrix``), of ``dtype``, on ``device``, and outside torch's autograd."""
    if not is_plain_array(x):
        return False
    try:
        ready = namespace_of(x) is xp and x.dtype == dtype and device_of(x) == device
    except TypeError:  # not an array of a known namespace
        return False
    return ready and not getattr(x, "requires_grad", False)  # torch tensors in a graph
