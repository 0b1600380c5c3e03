"""``Conv2D``: 2-D convolution as one matrix product per batch chunk (im2col)."""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import is_writeable_array

from .. import initializers
from ._windows import Windows, gather, scatter_add
from .base import REGISTRY, Context, Layer, Shape, int_pair

__all__ = ["COLUMN_BUDGET", "Conv2D"]

Array = Any

#: A column buffer (the gathered windows, or their gradient) holds at most this many
#: times the elements of the layer's whole input: past that, the batch is processed in
#: chunks, and backward gathers each chunk's columns again instead of keeping them
#: from forward. Backward frees a chunk's columns before it makes their gradient, so
#: one such buffer is alive at a time (``bench/conv_step.py memory`` measures the peak).
COLUMN_BUDGET = 3


@REGISTRY.register("Conv2D")
class Conv2D(Layer):
    """2-D convolution (cross-correlation, as ``torch.nn.Conv2d``) of ``(n, C, H, W)`` images.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C`` and ``O``.
    kernel_size, stride, dilation : int or (int, int)
        The window ``(kh, kw)``, its step, and the spacing of its taps.
    padding : int, (int, int), ``"valid"`` or ``"same"``
        Zeros added around each image; ``"same"`` (stride 1 only) keeps ``H`` and ``W``,
        with the extra row and column at the bottom and right for even kernels, as torch.
    bias : bool
        Whether to add ``b`` (one per output channel).
    init : str or callable
        Weight initializer, with fan-in ``C kh kw`` and fan-out ``O kh kw``.

    Notes
    -----
    The weight ``W`` has shape ``(O, C, kh, kw)``, read as a matrix ``W2`` of shape
    ``(O, C kh kw)``. Gathering every window of the padded input as a column of
    ``X`` (shape ``(C kh kw, n Ho Wo)``, im2col) makes the layer a matrix product,
    ``Y = W2 X + b``, and the chain rule gives, for the upstream ``G = dL/dY``:

    - ``dL/dW2 = G X^T``  (summed over every output position of every sample)
    - ``dL/db = sum of G over n, Ho, Wo``
    - ``dL/dX = W2^T G``, and each column of it is added back where its window was
      gathered (col2im); overlapping windows add up. Then the padding is cut off.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True,
                 init: str | initializers.Initializer = "he_uniform"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Conv2D: {name} must be a positive int, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = int_pair("Conv2D", "kernel_size", kernel_size)
        self.stride = int_pair("Conv2D", "stride", stride)
        self.dilation = int_pair("Conv2D", "dilation", dilation)
        self.padding = padding if isinstance(padding, str) else int_pair(
            "Conv2D", "padding", padding, minimum=0)
        self.windows = Windows(self.kernel_size, self.stride, self.dilation, self._pad_pairs())
        self.use_bias = bool(bias)
        self.init = initializers.get(init)

    def _pad_pairs(self) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.padding == "valid":
            return (0, 0), (0, 0)
        if self.padding == "same":
            if self.stride != (1, 1):
                raise ValueError(f"Conv2D: padding='same' needs stride 1, got stride {self.stride}")
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return (total[0] // 2, total[0] - total[0] // 2), (total[1] // 2, total[1] - total[1] // 2)
        if isinstance(self.padding, str):
            raise ValueError(f"Conv2D: padding must be an int, a pair, 'valid' or 'same', "
                             f"got {self.padding!r}")
        return (self.padding[0],) * 2, (self.padding[1],) * 2

    # -- building --------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"weight": (self.out_channels, self.in_channels, *self.kernel_size)}
        if self.use_bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def build(self, ctx: Context) -> None:
        super().build(ctx)
        shapes = self.param_shapes()
        taps = math.prod(self.kernel_size)
        w = self.init(ctx.rng, shapes["weight"], self.in_channels * taps, self.out_channels * taps)
        self.params = {"weight": self.on_device(w)}
        if self.use_bias:
            self.params["bias"] = self.on_device(initializers.zeros(ctx.rng, shapes["bias"], 0, 0))

    def expected_input_shape(self) -> Shape:
        return (self.in_channels, None, None)

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3 or input_shape[0] not in (None, self.in_channels):
            raise ValueError(f"{self.label} expects images of shape ({self.in_channels}, H, W) "
                             f"per sample, but the layer before it gives {tuple(input_shape)}")
        out = [None if s is None else self.windows.out_size(s, axis)
               for axis, s in enumerate(input_shape[1:])]
        if any(o is not None and o < 1 for o in out):
            raise ValueError(
                f"{self.label}: its {self.kernel_size} kernel (dilation {self.dilation}) is "
                f"larger than the padded input {tuple(input_shape[1:])} with padding "
                f"{self.windows.padding}: the output would be empty")
        return (self.out_channels, *out)

    # -- computing -------------------------------------------------------------
    def forward(self, x: Array, training: bool = False) -> Array:
        xp = self.ctx.xp
        n = x.shape[0]
        out_hw = self.windows.out_shape(x.shape[2], x.shape[3])
        # Channels first (C, n, Hp, Wp): each window tap is then a (C, n, Ho, Wo) slice,
        # and the stacked taps read as the column matrix X of shape (C kh kw, n Ho Wo).
        padded = xp.permute_dims(self.windows.pad(x), (1, 0, 2, 3))
        w2 = xp.reshape(self.params["weight"], (self.out_channels, -1))
        chunks = self._chunks(n, out_hw, x)
        kept, outs = [], []
        for lo, hi in chunks:
            cols = self._columns(padded[:, lo:hi, ...], out_hw)
            outs.append(w2 @ cols)  # Y = W2 X, (O, n_chunk Ho Wo)
            kept.append(cols if len(chunks) == 1 else None)  # many chunks: gathered again later
            del cols  # before the next chunk's columns exist: one column buffer at a time
        y = outs[0] if len(outs) == 1 else xp.concat(outs, axis=1)
        if self.use_bias:
            y += self.params["bias"][:, None]
        self._cache = (padded, x.shape, out_hw, chunks, kept)
        return xp.permute_dims(xp.reshape(y, (self.out_channels, n, *out_hw)), (1, 0, 2, 3))

    def _columns(self, padded: Array, out_hw: tuple[int, int]) -> Array:
        """im2col of ``padded`` (C, n, Hp, Wp): the matrix X, shape (C kh kw, n Ho Wo)."""
        xp = self.ctx.xp
        taps = gather(xp, padded, self.windows, out_hw, axis=1)  # (C, kh kw, n, Ho, Wo)
        # every size spelled out: with n = 0, a -1 would be ambiguous (0 = k * 0 for any k)
        return xp.reshape(taps, (taps.shape[0] * taps.shape[1], math.prod(taps.shape[2:])))

    def _chunks(self, n: int, out_hw: tuple[int, int], x: Array) -> list[tuple[int, int]]:
        """Batch slices whose column buffers stay within ``COLUMN_BUDGET`` x the input."""
        per_sample = self.in_channels * math.prod(self.kernel_size) * math.prod(out_hw)
        per_input = math.prod(x.shape[1:])
        size = max(1, (COLUMN_BUDGET * n * per_input) // per_sample)
        return [(lo, min(lo + size, n)) for lo in range(0, n, size)] or [(0, 0)]  # n = 0: one

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        xp = self.ctx.xp
        padded, x_shape, out_hw, chunks, kept = self._cache
        positions = math.prod(out_hw)
        g = xp.reshape(xp.permute_dims(grad_out, (1, 0, 2, 3)),
                       (self.out_channels, grad_out.shape[0] * positions))  # G
        w2 = xp.reshape(self.params["weight"], (self.out_channels, -1))
        dw2, dx = None, _InputGrad(xp, padded, self.ctx.device) if need_input_grad else None
        for i, (lo, hi) in enumerate(chunks):
            g_chunk = g[:, lo * positions:hi * positions]
            cols = kept[i] if kept[i] is not None else self._columns(padded[:, lo:hi, ...], out_hw)
            kept[i] = None  # the columns are freed once used: one column buffer at a time
            share = g_chunk @ xp.matrix_transpose(cols)  # dL/dW2 = G X^T (this chunk's share)
            del cols
            dw2 = share if dw2 is None else dw2 + share
            if dx is not None:
                dcols = xp.matrix_transpose(w2) @ g_chunk  # dL/dX = W2^T G
                dx.add(self._col2im(dcols, dx.rows(lo, hi), out_hw))
                del dcols
        self.grads["weight"] = xp.reshape(dw2, self.param_shapes()["weight"])
        if self.use_bias:
            self.grads["bias"] = xp.sum(g, axis=1)  # dL/db
        if dx is None:  # the first layer of a training step: no col2im at all
            return None
        return xp.permute_dims(self.windows.unpad(dx.result()), (1, 0, 2, 3))  # (n, C, H, W)

    def _col2im(self, dcols: Array, target: Array, out_hw: tuple[int, int]) -> Array:
        """col2im: each column of ``dL/dX`` added into ``target`` (C, n, Hp, Wp) where its
        window was gathered; overlapping windows add up."""
        n = target.shape[1]
        taps = self.ctx.xp.reshape(dcols, (self.in_channels, math.prod(self.kernel_size), n,
                                           *out_hw))  # (C, kh kw, n, Ho, Wo)
        return scatter_add(target, [taps[:, k, ...] for k in range(taps.shape[1])], self.windows,
                           out_hw)

    # -- describing ------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"type": "Conv2D", "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "bias": self.use_bias}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in (("stride", self.stride), ("padding", self.padding),
                                                   ("dilation", self.dilation))
                        if v not in ((1, 1), (0, 0), "valid"))
        return (f"Conv2D({self.in_channels}, {self.out_channels}, "
                f"kernel_size={self.kernel_size}{extra})")


class _InputGrad:
    """The padded input gradient (C, n, Hp, Wp), filled chunk by chunk: in place in one
    array where arrays are writeable, else (JAX) as parts joined at the end."""

    def __init__(self, xp: Any, padded: Array, device: Any):
        self.xp, self.shape, self.dtype, self.device = xp, tuple(padded.shape), padded.dtype, device
        self.whole = xp.zeros(self.shape, dtype=self.dtype, device=device) \
            if is_writeable_array(padded) else None
        self.parts: list[Array] = []

    def rows(self, lo: int, hi: int) -> Array:
        """The zeros that samples ``lo:hi`` add into (a view of the whole where writeable)."""
        if self.whole is not None:
            return self.whole[:, lo:hi, ...]
        return self.xp.zeros((self.shape[0], hi - lo, *self.shape[2:]), dtype=self.dtype,
                             device=self.device)

    def add(self, part: Array) -> None:
        """Take the gradient of the next chunk of samples, filled into :meth:`rows`'s
        zeros; chunks come in batch order. Where the whole is writeable, ``part`` is a view
        of it and already in place, so there is nothing to do."""
        if self.whole is None:
            self.parts.append(part)

    def result(self) -> Array:
        if self.whole is not None:
            return self.whole
        return self.parts[0] if len(self.parts) == 1 else self.xp.concat(self.parts, axis=1)
