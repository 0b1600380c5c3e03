"""Sliding windows over images: the geometry that convolution and pooling share.

A window of ``kernel`` taps moves over a padded ``(H, W)`` image in steps of
``stride``; ``dilation`` spaces its taps apart. For every tap ``(i, j)`` of the
kernel, the values it sees at all output positions form one strided slice of the
padded image,

    padded[..., i*dh : i*dh + sh*(Ho-1) + 1 : sh,  j*dw : j*dw + sw*(Wo-1) + 1 : sw]

of shape ``(..., Ho, Wo)``. Stacking the ``kh*kw`` slices gathers every window at
once (im2col); adding gradients back slice by slice scatters them (col2im). Both
are plain strided slicing, so they run on every array-API namespace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import array_api_extra as xpx
from array_api_compat import is_writeable_array

Array = Any


@dataclass(frozen=True)
class Windows:
    """Kernel, stride, dilation and padding (``((top, bottom), (left, right))``) of a layer."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]

    def span(self, axis: int) -> int:
        """How far one window reaches along ``axis`` (0: rows, 1: columns)."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1

    def out_size(self, size: int, axis: int) -> int:
        """Output positions along ``axis`` for an input of ``size``: may be < 1 (too small)."""
        padded = size + sum(self.padding[axis])
        return (padded - self.span(axis)) // self.stride[axis] + 1

    def out_shape(self, height: int, width: int) -> tuple[int, int]:
        return self.out_size(height, 0), self.out_size(width, 1)

    @property
    def overlap(self) -> bool:
        """Whether neighbouring windows share input positions (stride shorter than a window)."""
        return any(self.stride[a] < self.span(a) for a in (0, 1))

    def taps(self, out_hw: tuple[int, int]) -> Iterator[tuple[slice, slice]]:
        """For each tap of the kernel, row by row, the slices of the padded image it reads."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        ho, wo = out_hw
        for i in range(kh):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            for j in range(kw):
                yield rows, slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)

    def pad(self, x: Array, value: float = 0.0) -> Array:
        """``x`` (``(..., H, W)``) with this padding around its last two axes."""
        if not any(self.padding[0] + self.padding[1]):
            return x
        widths = [(0, 0)] * (x.ndim - 2) + [self.padding[0], self.padding[1]]
        return xpx.pad(x, widths, constant_values=value)

    def unpad(self, x: Array) -> Array:
        """The inverse of :meth:`pad`: the interior of the last two axes."""
        (top, bottom), (left, right) = self.padding
        return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def gather(xp: Any, padded: Array, windows: Windows, out_hw: tuple[int, int],
           axis: int) -> Array:
    """im2col: the ``kh*kw`` slices of ``padded`` (``(..., Hp, Wp)``), stacked at ``axis``."""
    return xp.stack([padded[..., rows, cols] for rows, cols in windows.taps(out_hw)], axis=axis)


def scatter_add(target: Array, parts: Sequence[Array], windows: Windows,
                out_hw: tuple[int, int]) -> Array:
    """col2im: add ``parts[k]`` (``(..., Ho, Wo)``) into the slice of tap ``k`` of ``target``
    (zeros of shape ``(..., Hp, Wp)``), where overlapping windows add up. Returns the
    target: updated in place where it is writeable, a new array otherwise (JAX)."""
    writeable, add = is_writeable_array(target), windows.overlap
    for part, (rows, cols) in zip(parts, windows.taps(out_hw)):
        if writeable and add:
            target[..., rows, cols] += part
        elif writeable:  # windows apart: every slice is written once, onto zeros
            target[..., rows, cols] = part
        else:
            at = xpx.at(target)[..., rows, cols]
            target = at.add(part) if add else at.set(part)
    return target
