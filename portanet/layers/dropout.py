"""``Dropout``: inverted dropout, with masks from the network's seeded host RNG."""

from __future__ import annotations

from typing import Any

from .base import REGISTRY, Layer

__all__ = ["Dropout"]

Array = Any


@REGISTRY.register("Dropout")
class Dropout(Layer):
    """Inverted dropout: in training, zero each input with probability ``p``.

    The kept inputs are scaled by ``1 / (1 - p)``, so the expected output
    equals the input and evaluation is the identity. With the mask
    ``m = keep / (1 - p)``: ``y = x * m`` and ``dL/dx = dL/dy * m``.
    Masks are drawn from the network's seeded host RNG.
    """

    keeps_shape = True

    def __init__(self, p: float = 0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self._mask: Array | None = None

    def draw_mask(self, shape: tuple[int, ...]) -> Array:
        """Draw a mask on the host and move it to the device (kept / (1 - p)).

        Across ranks, the mask of the whole global batch is drawn (the same on every
        rank, from the shared seed) and each keeps its own rows: the masks of one
        process training on the global batch.
        """
        rows = self.ctx.global_rows
        if rows is None:
            keep = self.ctx.rng.random(shape) >= self.p
        else:
            total, first, stop = rows
            keep = (self.ctx.rng.random((total, *shape[1:])) >= self.p)[first:stop]
        return self.on_device(keep / (1.0 - self.p))

    def forward(self, x: Array, training: bool = False) -> Array:
        if not training or self.p == 0.0:
            self._mask = None
            return x
        self._mask = self.draw_mask(tuple(x.shape))
        return x * self._mask

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if not need_input_grad:
            return None
        return grad_out if self._mask is None else grad_out * self._mask

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}

    def __repr__(self) -> str:
        return f"Dropout({self.p})"
