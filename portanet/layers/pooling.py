"""Pooling: ``MaxPool2D``, ``AvgPool2D`` and ``GlobalAvgPool2D`` over ``(n, C, H, W)`` images."""

from __future__ import annotations

import math
from typing import Any

from ._windows import Windows, gather, scatter_add
from .base import REGISTRY, Layer, Shape, int_pair

__all__ = ["AvgPool2D", "GlobalAvgPool2D", "MaxPool2D"]

Array = Any


class _Pool2D(Layer):
    """What max and average pooling share: the windows, their checks and their shapes."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None,
                 padding: int | tuple[int, int]):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = int_pair(name, "kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else int_pair(name, "stride", stride)
        self.padding = int_pair(name, "padding", padding, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding must be at most half the kernel size, got padding "
                             f"{self.padding} for kernel {self.kernel_size}")
        pads = ((self.padding[0],) * 2, (self.padding[1],) * 2)
        self.windows = Windows(self.kernel_size, self.stride, (1, 1), pads)

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise ValueError(f"{self.label} expects images of shape (C, H, W) per sample, "
                             f"but the layer before it gives {tuple(input_shape)}")
        out = [None if s is None else self.windows.out_size(s, axis)
               for axis, s in enumerate(input_shape[1:])]
        if any(o is not None and o < 1 for o in out):
            raise ValueError(f"{self.label}: its {self.kernel_size} window is larger than the "
                             f"padded input {tuple(input_shape[1:])}: the output would be empty")
        return (input_shape[0], *out)

    def _windows_of(self, x: Array, fill: float) -> tuple[Array, tuple[int, int]]:
        """Every window of ``x`` at once: ``(kh kw, n, C, Ho, Wo)``."""
        out_hw = self.windows.out_shape(x.shape[2], x.shape[3])
        return gather(self.ctx.xp, self.windows.pad(x, fill), self.windows, out_hw, axis=0), out_hw

    def _scatter(self, parts: list[Array], x_shape: tuple[int, ...],
                 out_hw: tuple[int, int]) -> Array:
        """Add each tap's gradient back where its slice was read, then cut the padding off."""
        xp = self.ctx.xp
        (top, bottom), (left, right) = self.windows.padding
        padded = (*x_shape[:2], x_shape[2] + top + bottom, x_shape[3] + left + right)
        dx = xp.zeros(padded, dtype=parts[0].dtype, device=self.ctx.device)
        return self.windows.unpad(scatter_add(dx, parts, self.windows, out_hw))

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding)}

    def __repr__(self) -> str:
        extra = "" if self.stride == self.kernel_size else f", stride={self.stride}"
        extra += "" if self.padding == (0, 0) else f", padding={self.padding}"
        return f"{type(self).__name__}({self.kernel_size}{extra})"


@REGISTRY.register("MaxPool2D")
class MaxPool2D(_Pool2D):
    """The largest value of each window, as ``torch.nn.MaxPool2d`` (padding counts as -inf).

    ``stride`` defaults to ``kernel_size``. The gradient of a window's output goes to the
    input that was its maximum; where several tie, to the first of them in the window,
    row by row, as torch: ``dL/dx_k = dL/dy`` for that one ``k``, 0 for the others.
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0):
        super().__init__(kernel_size, stride, padding)

    def forward(self, x: Array, training: bool = False) -> Array:
        taps, out_hw = self._windows_of(x, -math.inf)  # (kh kw, n, C, Ho, Wo)
        best = self.ctx.xp.max(taps, axis=0)
        self._cache = (taps, best, x.shape, out_hw)
        return best

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if not need_input_grad:
            return None
        xp = self.ctx.xp
        taps, best, x_shape, out_hw = self._cache
        parts, taken = [], None
        for k in range(taps.shape[0]):
            hit = taps[k, ...] == best
            if taken is not None:
                hit = xp.logical_and(hit, xp.logical_not(taken))  # a tie: the first maximum only
            taken = hit if taken is None else xp.logical_or(taken, hit)
            parts.append(grad_out * xp.astype(hit, grad_out.dtype))
        return self._scatter(parts, x_shape, out_hw)


@REGISTRY.register("AvgPool2D")
class AvgPool2D(_Pool2D):
    """The mean of each window, as ``torch.nn.AvgPool2d`` (padding zeros count, as torch's
    default ``count_include_pad=True``). ``stride`` defaults to ``kernel_size``.

    With ``K = kh kw`` taps, ``y = (1/K) sum_k x_k`` and ``dL/dx_k = dL/dy / K`` for each tap.
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0):
        super().__init__(kernel_size, stride, padding)

    def forward(self, x: Array, training: bool = False) -> Array:
        taps, out_hw = self._windows_of(x, 0.0)
        self._cache = (x.shape, out_hw)
        return self.ctx.xp.mean(taps, axis=0)

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if not need_input_grad:
            return None
        x_shape, out_hw = self._cache
        taps = math.prod(self.kernel_size)
        share = grad_out / float(taps)
        return self._scatter([share] * taps, x_shape, out_hw)


@REGISTRY.register("GlobalAvgPool2D")
class GlobalAvgPool2D(Layer):
    """The mean of each channel over the whole image: ``(n, C, H, W) -> (n, C)``.

    ``y_c = (1 / HW) sum_hw x_chw``, so ``dL/dx_chw = dL/dy_c / HW``.
    """

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise ValueError(f"{self.label} expects images of shape (C, H, W) per sample, "
                             f"but the layer before it gives {tuple(input_shape)}")
        return (input_shape[0],)

    def forward(self, x: Array, training: bool = False) -> Array:
        self._shape = tuple(x.shape)
        return self.ctx.xp.mean(x, axis=(2, 3))

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if not need_input_grad:
            return None
        xp = self.ctx.xp
        area = float(self._shape[2] * self._shape[3])
        return xp.broadcast_to((grad_out / area)[:, :, None, None], self._shape)

    def config(self) -> dict[str, Any]:
        return {"type": "GlobalAvgPool2D"}

    def __repr__(self) -> str:
        return "GlobalAvgPool2D()"
