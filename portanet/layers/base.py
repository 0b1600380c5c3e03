"""The layer protocol: the base class, the registry of layer types, and shape helpers.

The protocol is small. ``forward(x, training)`` computes the output and keeps
what backward will need; ``backward(grad_out)`` takes ``dL/d(output)``, stores
``dL/d(parameter)`` in ``self.grads`` and returns ``dL/d(input)``. There is no
autograd tape: the calculus is written out below, one layer at a time.

Around that:

- ``output_shape(input_shape)`` maps a per-sample input shape (no batch axis)
  to the output's, and raises ``ValueError`` naming the layer when the input
  does not fit. ``Sequential`` walks the chain when it is built.
- ``params`` are trained; ``buffers`` (running statistics) are state that is
  saved, moved and loaded but never seen by an optimizer.
  ``param_shapes()`` and ``buffer_shapes()`` say what ``build`` will create, so a
  checkpoint is checked before anything is allocated.
- ``training`` is the one switch between training and evaluation behaviour.

- ``backward`` never modifies ``grad_out`` in place (a layer may hand the same
  array to two places, as ``Residual`` does).

Shapes: a batch of vectors is ``(n, features)`` and a batch of images
``(n, channels, height, width)``, as in torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..backend import to_array
from ..registry import Registry

__all__ = [
    "REGISTRY",
    "Context",
    "Layer",
    "Shape",
    "check_built",
    "format_shape",
    "from_config",
    "int_pair",
]

Array = Any
#: A per-sample shape; None marks a size not known until data arrives.
Shape = tuple[int | None, ...]

#: Every layer type, by the ``"type"`` of its config: ``from_config`` and checkpoints read it.
REGISTRY: Registry[Layer] = Registry("layer type", key="type")


def from_config(config: Mapping[str, Any]) -> Layer:
    """Rebuild a layer from :meth:`Layer.config` (used by checkpoints)."""
    return REGISTRY.create(config)


def format_shape(shape: Shape | None, batch: str = "n") -> str:
    """``(n, 16, 26, 26)``: a per-sample shape with the batch axis in front."""
    if shape is None:
        return "(unknown)"
    return "(" + ", ".join([batch, *("?" if s is None else str(s) for s in shape)]) + ")"


@dataclass
class Context:
    """What a network hands its layers: namespace, device, dtype and host RNG; and, while
    ``fit`` trains across ranks, how to sum an array over them and which rows of the global
    batch this rank holds."""

    xp: ModuleType
    device: Any
    dtype: Any
    rng: Any  # numpy.random.Generator, seeded once per network
    #: the sum of an array over every rank (``comm.allreduce``); None in one process
    sync: Callable[[Any], Any] | None = None
    #: ``(global batch rows, first, stop)``: this rank's rows of the batch; None in one process
    global_rows: tuple[int, int, int] | None = None


class Layer:
    """Base class: subclasses create ``params`` in :meth:`build` and fill ``grads`` in backward."""

    #: whether the output has the input's shape, whatever it is (activations, dropout)
    keeps_shape = False

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self.ctx: Context | None = None
        self.index: int | None = None

    # -- building ------------------------------------------------------------
    def build(self, ctx: Context) -> None:
        """Attach the network's context and create parameters and buffers on its device."""
        self.ctx = ctx

    def on_device(self, host: Any) -> Array:
        """A host array (drawn from the host RNG) on this layer's namespace, device and dtype."""
        ctx = self.ctx
        return to_array(host, ctx.xp, ctx.device, ctx.dtype)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each parameter that :meth:`build` creates, by name."""
        return {}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each buffer (non-trained state) that :meth:`build` creates."""
        return {}

    def children(self) -> list[tuple[str, Layer]]:
        """Layers held inside this one, with the name of each in parameter paths."""
        return []

    def slots(self, kind: str) -> Iterator[tuple[str, Layer, str]]:
        """``(path, owner, key)`` for each parameter (``kind="params"``) or buffer
        (``"buffers"``) of this layer and the layers inside it: the array is
        ``getattr(owner, kind)[key]`` (and its gradient ``owner.grads[key]``)."""
        shapes = self.param_shapes() if kind == "params" else self.buffer_shapes()
        for key in shapes:
            yield key, self, key
        for prefix, child in self.children():
            for path, owner, key in child.slots(kind):
                yield f"{prefix}.{path}", owner, key

    def declared_shapes(self, kind: str) -> dict[str, tuple[int, ...]]:
        """``path -> shape`` of every parameter (``kind="params"``) or buffer (``"buffers"``)
        that building creates, here and in the layers inside: known before anything is built."""
        def shapes(owner: Layer) -> dict[str, tuple[int, ...]]:
            return owner.param_shapes() if kind == "params" else owner.buffer_shapes()

        return {path: tuple(shapes(owner)[key]) for path, owner, key in self.slots(kind)}

    def expected_input_shape(self) -> Shape | None:
        """The per-sample input shape this layer fixes on its own (``Dense(64, 10)``:
        ``(64,)``), or None where it takes any shape."""
        return None

    def output_shape(self, input_shape: Shape) -> Shape:
        """The per-sample output shape for ``input_shape``; ``ValueError`` naming this
        layer where the input does not fit. The default keeps the shape."""
        return tuple(input_shape)

    # -- computing -----------------------------------------------------------
    def forward(self, x: Array, training: bool = False) -> Array:
        raise NotImplementedError

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        """Fill ``self.grads`` and return ``dL/d(input)`` (None if not ``need_input_grad``)."""
        raise NotImplementedError

    def __call__(self, x: Array, training: bool = False) -> Array:
        return self.forward(x, training)

    # -- describing ----------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this layer: ``{"type": ..., **arguments}``."""
        return {"type": type(self).__name__}

    @property
    def label(self) -> str:
        where = f" (layer {self.index})" if self.index is not None else ""
        return f"{self!r}{where}"


def check_built(layer: Layer) -> None:
    """A layer must create exactly the parameters and buffers that it declares (checkpoints
    trust the declaration to check files before anything is allocated)."""
    for kind, shapes in (("params", layer.param_shapes()), ("buffers", layer.buffer_shapes())):
        made = {k: tuple(a.shape) for k, a in getattr(layer, kind).items()}
        if made != {k: tuple(s) for k, s in shapes.items()}:
            raise RuntimeError(f"{layer.label} built {kind} {made}, but declares {shapes}")
    for _, child in layer.children():
        check_built(child)


def int_pair(layer: str, name: str, value: Any, minimum: int = 1) -> tuple[int, int]:
    """``value`` as ``(a, b)`` from an int or a pair of ints, each at least ``minimum``;
    ``ValueError`` naming the layer and argument otherwise."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum
                             for v in pair):
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{layer}: {name} must be an int {what} or a pair of them, "
                         f"got {value!r}")
    return pair  # type: ignore[return-value]
