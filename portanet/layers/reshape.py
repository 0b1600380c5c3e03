"""``Flatten`` and ``Reshape``: the same numbers in another per-sample shape.

Neither changes a value, so the gradient is the upstream gradient put back in the
input's shape: ``dL/dx = reshape(dL/dy, x.shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .base import REGISTRY, Layer, Shape

__all__ = ["Flatten", "Reshape"]

Array = Any


class _Reshaping(Layer):
    def forward(self, x: Array, training: bool = False) -> Array:
        self._shape = tuple(x.shape)
        return self.ctx.xp.reshape(x, (x.shape[0], *self._target(tuple(x.shape[1:]))))

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        return self.ctx.xp.reshape(grad_out, self._shape) if need_input_grad else None

    def _target(self, sample: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError


@REGISTRY.register("Flatten")
class Flatten(_Reshaping):
    """``(n, d1, d2, ...) -> (n, d1 d2 ...)``: one vector per sample (the batch axis stays)."""

    def output_shape(self, input_shape: Shape) -> Shape:
        return (None if None in input_shape else math.prod(input_shape),)

    def _target(self, sample: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(sample),)

    def config(self) -> dict[str, Any]:
        return {"type": "Flatten"}

    def __repr__(self) -> str:
        return "Flatten()"


@REGISTRY.register("Reshape")
class Reshape(_Reshaping):
    """Give each sample the shape ``shape`` (one entry may be -1: whatever is left)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        if (not shape or any(isinstance(s, bool) or not isinstance(s, int) or (s < 1 and s != -1)
                             for s in shape) or shape.count(-1) > 1):
            raise ValueError(f"Reshape: shape must be positive ints (at most one -1), got {shape!r}")
        self.shape = shape

    def output_shape(self, input_shape: Shape) -> Shape:
        if None in input_shape:
            return tuple(None if s == -1 else s for s in self.shape)
        return self._checked(tuple(input_shape))

    def _checked(self, sample: tuple[int, ...]) -> tuple[int, ...]:
        size, known = math.prod(sample), math.prod(s for s in self.shape if s != -1)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ValueError(f"{self.label} cannot give samples of {sample} ({size} values) "
                             f"the shape {self.shape}")
        return tuple(size // known if s == -1 else s for s in self.shape)

    def _target(self, sample: tuple[int, ...]) -> tuple[int, ...]:
        return self._checked(sample)

    def config(self) -> dict[str, Any]:
        return {"type": "Reshape", "shape": list(self.shape)}

    def __repr__(self) -> str:
        return f"Reshape({self.shape})"
