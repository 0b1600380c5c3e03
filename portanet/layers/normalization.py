"""Normalization: ``BatchNorm`` (over the batch, per channel) and ``LayerNorm`` (per sample).

Both compute ``xhat = (x - mean) / sqrt(var + eps)`` over a set of ``m`` values
and then ``y = weight * xhat + bias``. With ``gh = dL/dxhat = dL/dy * weight``,
differentiating through the mean and the (biased) variance gives the one formula
both layers use::

    dL/dx = (1 / sqrt(var + eps)) * (gh - mean(gh) - xhat * mean(gh * xhat))

where the means run over the same ``m`` values. ``dL/dweight = sum(dL/dy * xhat)``
and ``dL/dbias = sum(dL/dy)``, summed over everything that shares the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .base import REGISTRY, Context, Layer, Shape

__all__ = ["BatchNorm", "LayerNorm"]

Array = Any


def _normalized_grad(xp: Any, gh: Array, xhat: Array, inv_std: Array,
                     axes: tuple[int, ...]) -> Array:
    """``dL/dx`` from ``gh = dL/dxhat``: the formula of the module docstring."""
    mean_gh = xp.mean(gh, axis=axes, keepdims=True)
    mean_ghx = xp.mean(gh * xhat, axis=axes, keepdims=True)
    return inv_std * (gh - mean_gh - xhat * mean_ghx)


def _synced_normalized_grad(xp: Any, gh: Array, xhat: Array, inv_std: Array,
                            axes: tuple[int, ...], sync: Any, m: float) -> Array:
    """The same, with the means over the global batch: one sum over ranks of both."""
    c = gh.shape[1]
    local = xp.concat([xp.sum(gh, axis=axes), xp.sum(gh * xhat, axis=axes)])
    total = sync(local) / m
    shape = (1, c) + (1,) * (gh.ndim - 2)
    mean_gh, mean_ghx = xp.reshape(total[:c], shape), xp.reshape(total[c:], shape)
    return inv_std * (gh - mean_gh - xhat * mean_ghx)


def _positive_float(layer: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{layer}: {name} must be a positive number, got {value!r}")
    return float(value)


@REGISTRY.register("BatchNorm")
class BatchNorm(Layer):
    """Batch normalization, as ``torch.nn.BatchNorm1d`` for ``(n, C)`` and ``BatchNorm2d``
    for ``(n, C, H, W)`` (statistics per channel, over the batch and the image).

    In training, each channel is normalized by the mean and variance of its ``m``
    values in the batch (across ranks, of the global batch: one sum over ranks of the
    per-channel sums in forward, one in backward), and the buffers follow them:
    ``running_mean <- (1 - momentum) running_mean + momentum mean`` and the same for
    ``running_var`` with the unbiased variance ``var m / (m - 1)``, as torch. In
    evaluation (``predict``, ``evaluate``, validation) the running statistics
    normalize instead, and ``dL/dx = dL/dy * weight / sqrt(running_var + eps)``.
    """

    keeps_shape = True

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5,
                 affine: bool = True):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"BatchNorm: num_features must be a positive int, got {num_features!r}")
        if (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                or not 0.0 <= momentum <= 1.0):
            raise ValueError(f"BatchNorm: momentum must be a number in [0, 1], got {momentum!r}")
        self.num_features, self.momentum = num_features, float(momentum)
        self.eps = _positive_float("BatchNorm", "eps", eps)
        self.affine = bool(affine)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        c = (self.num_features,)
        return {"weight": c, "bias": c} if self.affine else {}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"running_mean": (self.num_features,), "running_var": (self.num_features,)}

    def build(self, ctx: Context) -> None:
        super().build(ctx)
        xp, c = ctx.xp, (self.num_features,)
        ones = lambda: xp.ones(c, dtype=ctx.dtype, device=ctx.device)  # noqa: E731
        zeros = lambda: xp.zeros(c, dtype=ctx.dtype, device=ctx.device)  # noqa: E731
        self.params = {"weight": ones(), "bias": zeros()} if self.affine else {}
        self.buffers = {"running_mean": zeros(), "running_var": ones()}

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) not in (1, 3) or input_shape[0] not in (None, self.num_features):
            raise ValueError(f"{self.label} expects samples of shape ({self.num_features},) or "
                             f"({self.num_features}, H, W), but the layer before it gives "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x: Array, training: bool = False) -> Array:
        xp = self.ctx.xp
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        per_channel = (1, self.num_features) + (1,) * (x.ndim - 2)  # broadcasts over the rest
        m = None
        if training:
            mean, var, m = self._batch_statistics(x, axes)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = xp.reshape(1.0 / xp.sqrt(var + self.eps), per_channel)
        xhat = (x - xp.reshape(mean, per_channel)) * inv_std
        self._cache = (xhat, inv_std, axes, training, m)
        if not self.affine:
            return xhat
        return xhat * xp.reshape(self.params["weight"], per_channel) + \
            xp.reshape(self.params["bias"], per_channel)

    def _batch_statistics(self, x: Array, axes: tuple[int, ...]) -> tuple[Array, Array, float]:
        """The batch's mean and biased variance per channel; updates the running ones."""
        xp = self.ctx.xp
        if self.ctx.sync is not None:
            mean, var, m = self._global_statistics(x, axes)
        else:
            m = math.prod(x.shape[a] for a in axes)
            mean = xp.mean(x, axis=axes)
            var = xp.var(x, axis=axes)  # biased (correction 0): what normalizes the batch
        if m < 2:
            raise ValueError(f"{self.label} needs more than one value per channel in training, "
                             f"got input of shape {tuple(x.shape)}")
        keep = 1.0 - self.momentum
        self.buffers["running_mean"] = keep * self.buffers["running_mean"] + self.momentum * mean
        self.buffers["running_var"] = (keep * self.buffers["running_var"]
                                       + self.momentum * (m / (m - 1.0)) * var)
        return mean, var, m

    def _global_statistics(self, x: Array, axes: tuple[int, ...]) -> tuple[Array, Array, float]:
        """Mean and biased variance over the global batch (all ranks): one sum over ranks of
        each channel's ``sum(d)`` and ``sum(d^2)``, with ``d = x - running_mean`` (the same
        shift on every rank, which keeps the variance free of cancellation)."""
        xp, c = self.ctx.xp, self.num_features
        rows = self.ctx.global_rows[0]  # the global batch's size: known, no host read
        m = float(rows * math.prod(x.shape[2:]))
        shift = self.buffers["running_mean"]
        d = x - xp.reshape(shift, (1, c) + (1,) * (x.ndim - 2))
        total = self.ctx.sync(xp.concat([xp.sum(d, axis=axes), xp.sum(d * d, axis=axes)]))
        mean_d = total[:c] / m
        return shift + mean_d, total[c:] / m - mean_d * mean_d, m

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        xp = self.ctx.xp
        xhat, inv_std, axes, training, m = self._cache
        gh = grad_out
        if self.affine:
            self.grads["weight"] = xp.sum(grad_out * xhat, axis=axes)
            self.grads["bias"] = xp.sum(grad_out, axis=axes)
            shape = (1, self.num_features) + (1,) * (grad_out.ndim - 2)
            gh = grad_out * xp.reshape(self.params["weight"], shape)  # dL/dxhat
        if not need_input_grad:
            return None
        if not training:  # the running statistics are constants
            return gh * inv_std
        if self.ctx.sync is not None:
            return _synced_normalized_grad(xp, gh, xhat, inv_std, axes, self.ctx.sync, m)
        return _normalized_grad(xp, gh, xhat, inv_std, axes)

    def config(self) -> dict[str, Any]:
        return {"type": "BatchNorm", "num_features": self.num_features,
                "momentum": self.momentum, "eps": self.eps, "affine": self.affine}

    def __repr__(self) -> str:
        return f"BatchNorm({self.num_features})"


@REGISTRY.register("LayerNorm")
class LayerNorm(Layer):
    """Layer normalization, as ``torch.nn.LayerNorm``: each sample is normalized over its
    trailing ``normalized_shape`` axes (by its own mean and biased variance), the same in
    training and evaluation. ``weight`` and ``bias`` have shape ``normalized_shape``."""

    keeps_shape = True

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be a positive int or a tuple of "
                             f"them, got {normalized_shape!r}")
        self.normalized_shape = shape
        self.eps = _positive_float("LayerNorm", "eps", eps)
        self.elementwise_affine = bool(elementwise_affine)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        s = self.normalized_shape
        return {"weight": s, "bias": s} if self.elementwise_affine else {}

    def build(self, ctx: Context) -> None:
        super().build(ctx)
        xp, s = ctx.xp, self.normalized_shape
        if self.elementwise_affine:
            self.params = {"weight": xp.ones(s, dtype=ctx.dtype, device=ctx.device),
                           "bias": xp.zeros(s, dtype=ctx.dtype, device=ctx.device)}

    def output_shape(self, input_shape: Shape) -> Shape:
        k = len(self.normalized_shape)
        tail = tuple(input_shape[-k:]) if len(input_shape) >= k else None
        if tail is None or any(a is not None and a != b for a, b in zip(tail, self.normalized_shape)):
            raise ValueError(f"{self.label} normalizes trailing axes of shape "
                             f"{self.normalized_shape}, but the layer before it gives samples "
                             f"of shape {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x: Array, training: bool = False) -> Array:
        xp = self.ctx.xp
        axes = tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        mean = xp.mean(x, axis=axes, keepdims=True)
        var = xp.var(x, axis=axes, keepdims=True)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = (x - mean) * inv_std
        self._cache = (xhat, inv_std, axes)
        if not self.elementwise_affine:
            return xhat
        return xhat * self.params["weight"] + self.params["bias"]

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        xp = self.ctx.xp
        xhat, inv_std, axes = self._cache
        gh = grad_out
        if self.elementwise_affine:
            shared = tuple(range(grad_out.ndim - len(axes)))  # every axis before the normalized
            self.grads["weight"] = xp.sum(grad_out * xhat, axis=shared)
            self.grads["bias"] = xp.sum(grad_out, axis=shared)
            gh = grad_out * self.params["weight"]
        if not need_input_grad:
            return None
        return _normalized_grad(xp, gh, xhat, inv_std, axes)

    def config(self) -> dict[str, Any]:
        return {"type": "LayerNorm", "normalized_shape": list(self.normalized_shape),
                "eps": self.eps, "elementwise_affine": self.elementwise_affine}

    def __repr__(self) -> str:
        return f"LayerNorm({self.normalized_shape})"
