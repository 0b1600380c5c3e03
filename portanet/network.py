"""``Sequential``: a stack of layers on one namespace, device and dtype."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from types import ModuleType
from typing import Any

from array_api_compat import device as device_of

from . import losses as L
from . import optim as O
from .backend import (
    backend_name,
    get_namespace,
    host_label_range,
    host_rng,
    namespace_of,
    resolve_device,
    resolve_dtype,
    to_array,
    to_numpy,
)
from .layers import Context, Layer

__all__ = ["Sequential"]

Array = Any


class ParameterView(MutableMapping):
    """Live ``"i.name" -> array`` view of a network's parameters (or gradients).

    Assigning through it writes into the layer, so ``params[k] -= step`` works on
    immutable arrays (JAX) as well as writeable ones.
    """

    def __init__(self, layers: Sequence[Layer], attr: str = "params"):
        self._attr = attr
        self.version = 0  # counts assignments, so optimizers can tell nothing was replaced
        # Names are fixed once the layers are built; look them up in one dict.
        self._index: dict[str, tuple[Layer, str]] = {
            f"{i}.{name}": (layer, name) for i, layer in enumerate(layers) for name in layer.params
        }

    def __getitem__(self, key: str) -> Array:
        layer, name = self._index[key]
        store = getattr(layer, self._attr)
        if name not in store:
            raise KeyError(key)
        return store[name]

    def __setitem__(self, key: str, value: Array) -> None:
        layer, name = self._index[key]
        getattr(layer, self._attr)[name] = value
        self.version += 1

    def __delitem__(self, key: str) -> None:
        raise TypeError("parameters cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        if key not in self._index:
            return False
        layer, name = self._index[key]
        return name in getattr(layer, self._attr)


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
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        backend: str | ModuleType | None = None,
        device: Any = None,
        dtype: str = "float32",
        seed: int | None = None,
    ):
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
        seed = _check_seed(seed)
        self.layers = layers
        self.in_features, self.out_features = self._check_chain()
        self.xp = get_namespace(backend)
        self.backend = backend_name(self.xp)
        self.device = resolve_device(self.xp, device)
        self.dtype = resolve_dtype(self.xp, dtype, self.device)
        self.seed = seed
        self.rng = host_rng(seed)
        self.optimizer: O.Optimizer | None = None
        self.epoch = 0  # epochs completed by fit; saved in checkpoints
        self.stop_training = False  # callbacks set this to end fit after the epoch
        ctx = self._context()
        for layer in layers:
            layer.build(ctx)
        self._params = ParameterView(layers, "params")
        self._grads = ParameterView(layers, "grads")

    def _check_chain(self) -> tuple[int, int]:
        features = None
        for layer in self.layers:
            features = layer.output_features(features)
        first = next((getattr(lay, "in_features", None) for lay in self.layers
                      if hasattr(lay, "in_features")), None)
        if first is None or features is None:
            raise ValueError("Sequential needs at least one Dense layer to fix its input size")
        return first, features

    def _context(self) -> Context:
        return Context(self.xp, self.device, self.dtype, self.rng)

    @property
    def dtype_name(self) -> str:
        return "float64" if self.dtype == self.xp.float64 else "float32"

    # ---------------------------------------------------------- parameters --
    def parameters(self) -> ParameterView:
        """Ordered, live mapping ``"i.name" -> array`` (e.g. ``"0.weight"``, ``"0.bias"``)."""
        return self._params

    def gradients(self) -> dict[str, Array]:
        """Ordered mapping ``"i.name" -> gradient`` from the last :meth:`backward`."""
        missing = [k for k in self._params if k not in self._grads]
        if missing:
            raise RuntimeError(f"no gradients yet for {missing}: call backward() first")
        return dict(self._grads)

    def num_parameters(self) -> int:
        return sum(_size(p) for p in self.parameters().values())

    # ------------------------------------------------------------ data in --
    def as_input(self, x: Any, what: str = "x") -> Array:
        """Convert ``x`` to this network's namespace, device and dtype, checking its shape."""
        if _is_ready(x, self.xp, self.dtype, self.device):
            a = x  # already on this network's namespace, device and dtype
        else:
            a = to_array(x, self.xp, self.device, self.dtype, what=what)
        if a.ndim != 2 or a.shape[1] != self.in_features:
            raise ValueError(
                f"{what}: {self.layers[0].label} expects a batch of shape "
                f"(n, {self.in_features}), got {tuple(a.shape)}"
            )
        return a

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
        loss.check_target((n, self.out_features), a)
        span = host_label_range(y) if labels else None  # device labels: not read (no sync)
        if span is not None and (span[0] < 0 or span[1] >= self.out_features):
            raise ValueError(
                f"y: class labels must be in [0, {self.out_features}) for a network with "
                f"{self.out_features} outputs, got labels from {span[0]} to {span[1]}"
            )
        return a

    # ------------------------------------------------------------ compute --
    def forward(self, x: Any, training: bool = False) -> Array:
        """Run the layers; ``training=True`` enables dropout and keeps caches for backward."""
        return self._forward_checked(self.as_input(x), training)

    __call__ = forward

    def predict(self, x: Any, batch_size: int | None = None) -> Array:
        """Outputs in evaluation mode, computed ``batch_size`` rows at a time (None: all)."""
        a = self.as_input(x)
        n = a.shape[0]
        if batch_size is None or batch_size >= n:
            return self._forward_checked(a, False)
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        parts = [self._forward_checked(a[i : min(i + batch_size, n), ...], False)
                 for i in range(0, n, batch_size)]
        return self.xp.concat(parts, axis=0)

    def _forward_checked(self, a: Array, training: bool) -> Array:
        for layer in self.layers:
            a = layer.forward(a, training)
        return a

    def backward(self, grad_output: Array) -> Array:
        """Backpropagate ``dL/d(output)``: fill every layer's gradients, return ``dL/d(input)``."""
        return self._backward(grad_output, need_input_grad=True)

    def _backward(self, g: Array, need_input_grad: bool) -> Array | None:
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(g, need_input_grad or i > 0)
        return g

    def train_step(
        self,
        x: Any,
        y: Any,
        loss: str | L.Loss,
        optimizer: O.Optimizer,
    ) -> Array:
        """One forward, backward and optimizer update on the batch ``(x, y)``.

        Returns the loss as a 0-d array on the device: nothing is synced with
        the host. Inputs are checked before anything changes.
        """
        loss = L.get(loss)
        if not isinstance(optimizer, O.Optimizer):
            raise TypeError(f"optimizer must be a portanet Optimizer, got {type(optimizer).__name__}")
        xa = self.as_input(x)
        ya = self.as_target(y, xa.shape[0], loss)
        value, _ = self._loss_and_gradients(xa, ya, loss)
        self._apply_gradients(optimizer)
        return value

    def _loss_and_gradients(self, x: Array, y: Array, loss: L.Loss) -> tuple[Array, Array]:
        """Forward in training mode, loss, and backward on checked device arrays.

        Returns the loss (0-d) and the prediction; fills every layer's ``grads``.
        """
        pred = self._forward_checked(x, True)
        value = loss.value(pred, y)
        self._backward(loss.grad(pred, y), need_input_grad=False)
        return value, pred

    def _apply_gradients(self, optimizer: O.Optimizer) -> None:
        optimizer.step(self._params, self._grads)
        self.optimizer = optimizer

    def fit(self, x: Any, y: Any, **kwargs: Any) -> Any:
        """Train on ``(x, y)``; returns a :class:`~portanet.training.History`.

        Keyword arguments (see :func:`portanet.training.fit`): ``loss``,
        ``optimizer``, ``epochs=1``, ``batch_size=32`` (None: full batch),
        ``shuffle=True``, ``validation_data=None``, ``validation_split=0.0``,
        ``metrics=()``, ``callbacks=()``, ``verbose=1`` (0 silent, 1 a tqdm bar
        per epoch, 2 a line per epoch), ``initial_epoch=0``, ``check_finite=1``.
        """
        from .training import fit

        return fit(self, x, y, **kwargs)

    def evaluate(self, x: Any, y: Any, **kwargs: Any) -> dict[str, float]:
        """Loss and metrics on ``(x, y)`` as a dict of floats (``loss=``, ``metrics=``,
        ``batch_size=256``)."""
        from .training import evaluate

        return evaluate(self, x, y, **kwargs)

    def save(self, path: Any, optimizer: O.Optimizer | None = None) -> None:
        """Write a checkpoint (see :func:`portanet.io.save`); atomic."""
        from .io import save

        save(self, path, optimizer=optimizer)

    # --------------------------------------------------------------- state --
    def state_dict(self) -> dict[str, Any]:
        """Host NumPy copies of the parameters, by name."""
        return {name: to_numpy(p) for name, p in self.parameters().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load parameters by name. Names and shapes must match exactly; on any
        mismatch nothing is changed."""
        params = self.parameters()
        expected, given = set(params), set(state)
        if expected != given:
            raise ValueError(
                f"load_state_dict: missing {sorted(expected - given)}, "
                f"unexpected {sorted(given - expected)}"
            )
        new = {}
        for name in params:
            a = to_array(state[name], self.xp, self.device, self.dtype, what=name, copy=True)
            if tuple(a.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"load_state_dict: {name} has shape {tuple(a.shape)}, "
                    f"expected {tuple(params[name].shape)}"
                )
            new[name] = a
        for name, a in new.items():
            params[name] = a

    def to(self, backend: str | ModuleType | None = None, device: Any = None) -> Sequential:
        """Move parameters (and the optimizer state this network holds) to another
        backend and/or device, in place. Returns ``self``."""
        xp = self.xp if backend is None else get_namespace(backend)
        dev = resolve_device(xp, device)
        dtype = resolve_dtype(xp, self.dtype_name, dev)

        def move(a: Array) -> Array:  # a copy: DLPack views can be shared and read-only
            return to_array(a, xp, dev, None, copy=True)

        params = self.parameters()
        moved = {name: move(p) for name, p in params.items()}
        self.xp, self.backend, self.device, self.dtype = xp, backend_name(xp), dev, dtype
        ctx = self._context()
        for layer in self.layers:
            layer.ctx = ctx
            layer.grads.clear()
        for name, a in moved.items():
            params[name] = a
        if self.optimizer is not None:
            self.optimizer.map_state(move)
        return self

    # ------------------------------------------------------------ describe --
    def config(self) -> dict[str, Any]:
        """JSON-able architecture: layer configs, dtype and seed."""
        return {"layers": [layer.config() for layer in self.layers], "dtype": self.dtype_name,
                "seed": self.seed}

    def summary(self) -> str:
        """A table of layers, output shapes and parameter counts."""
        rows = [("#", "layer", "output shape", "params")]
        features = None
        for i, layer in enumerate(self.layers):
            features = layer.output_features(features)
            count = sum(_size(p) for p in layer.params.values())
            rows.append((str(i), repr(layer), f"(n, {features})", f"{count:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        rule = "-" * len(lines[0])
        footer = (f"total parameters: {self.num_parameters():,}  "
                  f"backend: {self.backend}  device: {self.device}  dtype: {self.dtype_name}")
        return "\n".join([lines[0], rule, *lines[1:], rule, footer])

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], backend={self.backend!r}, dtype={self.dtype_name!r})"


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
    try:
        ready = namespace_of(x) is xp and x.dtype == dtype and device_of(x) == device
    except TypeError:  # not an array of a known namespace
        return False
    return ready and not getattr(x, "requires_grad", False)  # torch tensors in a graph


def _size(a: Array) -> int:
    n = 1
    for s in a.shape:
        n *= int(s)
    return n
