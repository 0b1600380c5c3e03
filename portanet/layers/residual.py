"""``Residual``: a block of layers with a skip connection, ``y = f(x) + x``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import REGISTRY, Context, Layer, Shape, from_config

__all__ = ["Residual"]

Array = Any


class Residual(Layer):
    """``y = f(x) + x``, where ``f`` applies ``layers`` in order; with a ``projection``
    ``P`` (for example a 1x1 ``Conv2D`` or a ``Dense``), ``y = f(x) + P(x)``, for when
    ``f`` changes the shape.

    The sum sends the upstream gradient down both paths unchanged, so
    ``dL/dx = (df/dx)^T dL/dy + (dP/dx)^T dL/dy`` (the second term is ``dL/dy`` itself
    without a projection): each path backpropagates ``dL/dy`` and the results add up.
    Parameters are named by path: ``"3.layers.0.weight"``, ``"3.projection.bias"``.
    """

    def __init__(self, layers: Sequence[Layer], projection: Layer | None = None):
        super().__init__()
        if isinstance(layers, Layer) or not isinstance(layers, Sequence) or not layers:
            raise ValueError("Residual: layers must be a non-empty list of layers")
        parts = [*layers, *([projection] if projection is not None else [])]
        for i, layer in enumerate(parts):
            if not isinstance(layer, Layer):
                raise TypeError(f"Residual: {type(layer).__name__} is not a portanet Layer")
            if layer.ctx is not None or any(layer is other for other in parts[:i]):
                raise ValueError(f"Residual: {layer!r} already belongs to a network, or appears "
                                 "twice: each layer needs its own object")
        self.layers, self.projection = list(layers), projection

    def children(self) -> list[tuple[str, Layer]]:
        named = [(f"layers.{j}", layer) for j, layer in enumerate(self.layers)]
        return named + ([("projection", self.projection)] if self.projection is not None else [])

    def build(self, ctx: Context) -> None:
        super().build(ctx)
        for name, child in self.children():
            child.index = name if self.index is None else f"{self.index}.{name}"
            child.build(ctx)

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = tuple(layer.output_shape(shape))
        skip = tuple(input_shape if self.projection is None
                     else self.projection.output_shape(tuple(input_shape)))
        if any(a is not None and b is not None and a != b for a, b in zip(shape, skip)) \
                or len(shape) != len(skip):
            what = "its projection gives" if self.projection is not None else "its input is"
            raise ValueError(f"{self.label}: its layers give samples of shape {shape}, but {what} "
                             f"{skip}; they must match to be added (give projection= to map x)")
        return shape

    def forward(self, x: Array, training: bool = False) -> Array:
        h = x
        for layer in self.layers:
            h = layer.forward(h, training)
        skip = x if self.projection is None else self.projection.forward(x, training)
        return h + skip

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        g = grad_out
        for j in range(len(self.layers) - 1, -1, -1):
            g = self.layers[j].backward(g, need_input_grad or j > 0)
        if self.projection is None:
            skip = grad_out
        else:
            skip = self.projection.backward(grad_out, need_input_grad)
        return g + skip if need_input_grad else None

    def config(self) -> dict[str, Any]:
        return {"type": "Residual", "layers": [layer.config() for layer in self.layers],
                "projection": None if self.projection is None else self.projection.config()}

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        proj = "" if self.projection is None else f", projection={self.projection!r}"
        return f"Residual([{inner}]{proj})"


@REGISTRY.register("Residual")
def _residual_from_config(layers: Sequence[Mapping[str, Any]],
                          projection: Mapping[str, Any] | None = None) -> Residual:
    """A ``Residual`` rebuilt from its config: the inner layers from theirs."""
    return Residual([from_config(c) for c in layers],
                    None if projection is None else from_config(projection))
