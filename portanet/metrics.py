"""Metrics for ``fit`` and ``evaluate``, summed on the device and known by name.

A :class:`Metric` returns a 0-d array, the *total* over a batch; ``fit`` adds the
totals of an epoch on the device and divides by the sample count once, on the
host, when the epoch is logged. Metrics are known by name through one registry
(:data:`REGISTRY`); a registered factory takes the loss, so that ``"accuracy"``
knows whether predictions are logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .backend import namespace_of
from .losses import Loss
from .registry import Registry

__all__ = ["REGISTRY", "Accuracy", "Metric", "get", "names"]

Array = Any

#: Every metric name; a factory is called with ``loss=`` (the loss being trained).
REGISTRY: Registry[Metric] = Registry("metric")


class Metric:
    """A metric summed over batches on the device: ``total(pred, target)`` returns a
    0-d array; the epoch value is the sum over batches divided by the sample count."""

    name = "metric"

    def total(self, pred: Array, target: Array) -> Array:
        raise NotImplementedError


class Accuracy(Metric):
    """Fraction of correct predictions.

    Multiclass ``(n, k)`` predictions: argmax against integer labels or the argmax
    of probability targets. Binary ``(n, 1)``: thresholded at 0 for logits and
    at 0.5 for probabilities. Predictions of any other rank raise ``ValueError``.
    """

    name = "accuracy"

    def __init__(self, from_logits: bool = True):
        self.from_logits = from_logits

    def total(self, pred: Array, target: Array) -> Array:
        xp = namespace_of(pred)
        if pred.ndim != 2:  # an image's or a sequence's hits would count once per position
            raise ValueError(f"accuracy needs predictions of shape (n, classes) or (n, 1), "
                             f"got {tuple(pred.shape)}")
        if pred.shape[-1] > 1:
            guess = xp.argmax(pred, axis=-1)
            truth = target if target.ndim == 1 else xp.argmax(target, axis=-1)
            hits = guess == xp.astype(truth, guess.dtype)
        else:
            threshold = 0.0 if self.from_logits else 0.5
            hits = (pred > threshold) == (target > 0.5)
        return xp.sum(xp.astype(hits, pred.dtype))


class RowMean(Metric):
    """The mean over outputs of ``fn(pred - target)``, summed over rows (MSE, MAE).

    A row's outputs are all its elements, whatever their shape (an image's channels,
    rows and columns), as for the losses' per-sample values; 1-D predictions hold one
    output per row.
    """

    def __init__(self, name: str, fn: Callable[[Any, Array], Array]):
        self.name, self._fn = name, fn

    def total(self, pred: Array, target: Array) -> Array:
        xp = namespace_of(pred)
        per_row = self._fn(xp, pred - target)
        if per_row.ndim > 1:
            outputs = math.prod(per_row.shape[1:])
            per_row = xp.sum(xp.reshape(per_row, (per_row.shape[0], outputs)), axis=1) / float(outputs)
        return xp.sum(per_row)


@REGISTRY.register("accuracy", aliases=("acc",))
def _accuracy(loss: Loss) -> Metric:
    return Accuracy(from_logits=loss.takes_logits)


@REGISTRY.register("mse")
def _mse(loss: Loss) -> Metric:
    return RowMean("mse", lambda xp, d: d * d)


@REGISTRY.register("mae")
def _mae(loss: Loss) -> Metric:
    return RowMean("mae", lambda xp, d: xp.abs(d))


def names() -> list[str]:
    """The registered metric names."""
    return REGISTRY.names()


def get(spec: str | Metric, loss: Loss) -> Metric:
    """A metric from ``"accuracy"``, ``"mse"``, ``"mae"`` (or another registered name) or an
    instance; ``loss`` is the loss being trained."""
    if isinstance(spec, Metric):
        return spec
    return REGISTRY.create(spec, loss=loss)
