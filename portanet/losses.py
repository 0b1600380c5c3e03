"""Loss functions: a value and its gradient with respect to the prediction.

A :class:`Loss` is the notebook's ``(f, df)`` pair. ``value(pred, target)``
returns a 0-d array in the prediction's namespace (never a Python float, so a
GPU is not synced), and ``grad(pred, target)`` returns ``dL/dpred``, an array
of ``pred``'s shape. Every loss is a mean, as torch's default ``reduction="mean"``.

Weighted form: ``value(pred, target, sample_weight=w)`` is the weighted mean over
samples, ``sum_i w_i l_i / sum_i w_i``, of the per-sample losses ``l_i``
(:meth:`Loss.per_sample`), and ``grad(..., sample_weight=w)`` scales row ``i`` of the
unweighted gradient by ``n w_i / sum_i w_i``, which is its gradient. The
unweighted call is the same code as before: a weight costs nothing until given.

Losses are known by name through one registry (:data:`REGISTRY`): ``get``,
``fit(loss="mse")`` and checkpoints all read it, and :func:`register` adds one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from array_api_compat import device as device_of

from .backend import namespace_of, size
from .registry import Registry

__all__ = [
    "BCEWithLogits",
    "CrossEntropy",
    "Huber",
    "Loss",
    "MAE",
    "MSE",
    "REGISTRY",
    "get",
    "names",
    "register",
]

Array = Any


class Loss:
    """A loss ``f(pred, target)`` with its gradient ``df(pred, target) = dL/dpred``.

    Parameters
    ----------
    f, df : callable
        ``f`` returns a 0-d array, ``df`` an array shaped like ``pred``.
    name : str, optional
        A name for logs and checkpoints.
    per_sample : callable, optional
        ``per_sample(pred, target)``: the loss of each sample, shape ``(n,)``, whose mean
        is ``f``. It gives the loss its weighted form (``sample_weight=``); without it,
        the loss cannot weight samples.

    Notes
    -----
    The weighted gradient assumes what every built-in loss is: ``f`` is the mean over
    samples of ``per_sample``, so ``df``'s row ``i`` is ``d l_i / d pred_i`` over ``n``.
    """

    #: whether integer class labels are accepted as targets
    accepts_labels = False
    #: whether predictions are logits (accuracy then thresholds them at 0, not 0.5)
    takes_logits = False

    def __init__(
        self,
        f: Callable[[Array, Array], Array],
        df: Callable[[Array, Array], Array],
        name: str = "",
        per_sample: Callable[[Array, Array], Array] | None = None,
    ):
        self.f = f
        self.df = df
        self.name = name or getattr(f, "__name__", "loss")
        self._per_sample = per_sample

    def __call__(self, pred: Array, target: Array, sample_weight: Array | None = None) -> Array:
        return self.value(pred, target, sample_weight)

    def value(self, pred: Array, target: Array, sample_weight: Array | None = None) -> Array:
        """The loss, a 0-d array in ``pred``'s namespace; with ``sample_weight`` (shape
        ``(n,)``, on ``pred``'s device) the weighted mean ``sum_i w_i l_i / sum_i w_i``."""
        xp = namespace_of(pred)
        if sample_weight is None:
            # NumPy reductions return scalars; asarray makes every backend return a 0-d array.
            return xp.asarray(self.f(pred, target), dtype=pred.dtype, device=device_of(pred))
        rows = self.per_sample(pred, target)
        mean = xp.sum(rows * sample_weight) / weight_total(xp, sample_weight)
        return xp.asarray(mean, dtype=pred.dtype, device=device_of(pred))

    def grad(self, pred: Array, target: Array, sample_weight: Array | None = None) -> Array:
        """``dL/dpred``, shaped like ``pred``; with ``sample_weight``, the gradient of the
        weighted mean: row ``i`` of the unweighted one times ``n w_i / sum_i w_i``."""
        g = self.df(pred, target)
        if sample_weight is None:
            return g
        xp = namespace_of(g)
        scale = (sample_weight / weight_total(xp, sample_weight)) * float(g.shape[0])
        return g * xp.reshape(scale, (g.shape[0],) + (1,) * (g.ndim - 1))

    def value_and_grad(self, pred: Array, target: Array,
                       sample_weight: Array | None = None) -> tuple[Array, Array]:
        """:meth:`value` and :meth:`grad` together; built-in losses share their common
        terms (one softmax for the cross-entropy), with results equal to the two calls."""
        return self.value(pred, target, sample_weight), self.grad(pred, target, sample_weight)

    @property
    def weighs_samples(self) -> bool:
        """Whether the loss has a weighted form (a per-sample form)."""
        return self._per_sample is not None or type(self).per_sample is not Loss.per_sample

    def per_sample(self, pred: Array, target: Array) -> Array:
        """The loss of each sample, shape ``(n,)``: the loss is their mean.

        Raises ``TypeError`` for a loss built without ``per_sample=``, which therefore
        cannot weight samples.
        """
        if self._per_sample is None:
            raise TypeError(
                f"loss {self.name!r} has no per-sample form, so it cannot weight samples "
                "(sample_weight=): build it as Loss(f, df, per_sample=...)"
            )
        return self._per_sample(pred, target)

    def check_target(self, pred_shape: tuple[int, ...], target: Array) -> None:
        """Raise ``ValueError`` unless ``target`` fits predictions of ``pred_shape``.

        The default wants the same shape: nothing is silently broadcast.
        """
        if tuple(target.shape) != tuple(pred_shape):
            raise ValueError(
                f"loss {self.name!r}: target shape {tuple(target.shape)} does not match "
                f"prediction shape {tuple(pred_shape)}"
            )

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def weight_total(xp: Any, w: Array) -> Array:
    """``sum(w)`` as a denominator: a batch whose weights are all zero then counts for
    nothing (a zero loss and gradient) instead of dividing by zero."""
    # maximum, not xp.clip: array-api-compat's clip for CuPy reads a mask on the host (a
    # device sync in every weighted step); the floor in w's dtype, so no promotion
    floor = xp.asarray(xp.finfo(w.dtype).smallest_normal, dtype=w.dtype, device=device_of(w))
    return xp.maximum(xp.sum(w), floor)


#: Every loss name: ``get``, ``fit(loss=...)`` and the CLI read it.
REGISTRY: Registry[Loss] = Registry("loss", "losses")


def register(name: str, f: Callable[[Array, Array], Array],
             df: Callable[[Array, Array], Array],
             per_sample: Callable[[Array, Array], Array] | None = None) -> Loss:
    """Make ``Loss(f, df, per_sample=per_sample)`` known as ``name`` (``fit(loss=name)``);
    returns the :class:`Loss`. ``per_sample`` gives it the weighted form."""
    loss = Loss(f, df, name=name, per_sample=per_sample)
    REGISTRY.register(name, lambda: loss)
    return loss


def names() -> list[str]:
    """The registered loss names."""
    return REGISTRY.names()


def get(spec: str | Loss | Mapping[str, Any]) -> Loss:
    """Return a :class:`Loss` from a name (``"mse"``, ...), a config dict, or an instance."""
    if isinstance(spec, Loss):
        return spec
    return REGISTRY.create(spec)


def _count(a: Array) -> float:
    """Number of elements as a Python float, to divide by (keeps the array's dtype)."""
    return float(size(a))


def _mean(xp: Any, a: Array) -> Array:
    return xp.sum(a) / _count(a)


def _row_means(xp: Any, a: Array) -> Array:
    """The mean of each row of ``a`` over every axis but the first: shape ``(n,)``."""
    if a.ndim == 1:
        return a
    return xp.mean(xp.reshape(a, (a.shape[0], -1)), axis=1)


@REGISTRY.register("mse")
class MSE(Loss):
    """Mean squared error over all elements, as ``torch.nn.MSELoss()``.

    ``L = mean((p - t)^2)`` and ``dL/dp = 2 (p - t) / n``.
    """

    def __init__(self) -> None:
        super().__init__(self._f, self._df, name="mse", per_sample=self._rows)

    @staticmethod
    def _f(pred: Array, target: Array) -> Array:
        xp = namespace_of(pred)
        d = pred - target
        return _mean(xp, d * d)

    @staticmethod
    def _rows(pred: Array, target: Array) -> Array:
        d = pred - target
        return _row_means(namespace_of(pred), d * d)

    @staticmethod
    def _df(pred: Array, target: Array) -> Array:
        return (2.0 / _count(pred)) * (pred - target)

    def value_and_grad(self, pred: Array, target: Array,
                       sample_weight: Array | None = None) -> tuple[Array, Array]:
        if sample_weight is not None:
            return super().value_and_grad(pred, target, sample_weight)
        xp = namespace_of(pred)
        d = pred - target
        value = xp.asarray(_mean(xp, d * d), dtype=pred.dtype, device=device_of(pred))
        return value, (2.0 / _count(pred)) * d


@REGISTRY.register("mae")
class MAE(Loss):
    """Mean absolute error, as ``torch.nn.L1Loss()``: ``dL/dp = sign(p - t) / n``.

    ``sign`` is written out, ``(d > 0) - (d < 0)`` with NaN kept: array-api-compat's
    ``sign`` for CuPy restores NaNs through a boolean mask, which syncs with the host.
    """

    def __init__(self) -> None:
        super().__init__(self._f, self._df, name="mae", per_sample=self._rows)

    @staticmethod
    def _f(pred: Array, target: Array) -> Array:
        xp = namespace_of(pred)
        return _mean(xp, xp.abs(pred - target))

    @staticmethod
    def _rows(pred: Array, target: Array) -> Array:
        xp = namespace_of(pred)
        return _row_means(xp, xp.abs(pred - target))

    @staticmethod
    def _df(pred: Array, target: Array) -> Array:
        xp = namespace_of(pred)
        d = pred - target
        sign = xp.astype(d > 0, d.dtype) - xp.astype(d < 0, d.dtype)
        sign = xp.where(xp.isnan(d), d, sign)  # NaN stays NaN, as with torch's sign
        return sign / _count(pred)


@REGISTRY.register("huber")
class Huber(Loss):
    """Huber loss, as ``torch.nn.HuberLoss(delta=delta)``.

    ``l(d) = d^2 / 2`` for ``|d| <= delta``, else ``delta (|d| - delta / 2)``,
    with ``d = p - t``; its derivative is ``d`` clipped to ``[-delta, delta]``.
    """

    def __init__(self, delta: float = 1.0) -> None:
        if not delta > 0:
            raise ValueError(f"Huber: delta must be positive, got {delta!r}")
        self.delta = float(delta)
        super().__init__(self._f, self._df, name="huber", per_sample=self._rows)

    def _elementwise(self, pred: Array, target: Array) -> Array:
        xp = namespace_of(pred)
        a = xp.abs(pred - target)
        quadratic = 0.5 * a * a
        linear = self.delta * (a - 0.5 * self.delta)
        return xp.where(a <= self.delta, quadratic, linear)

    def _f(self, pred: Array, target: Array) -> Array:
        return _mean(namespace_of(pred), self._elementwise(pred, target))

    def _rows(self, pred: Array, target: Array) -> Array:
        return _row_means(namespace_of(pred), self._elementwise(pred, target))

    def _df(self, pred: Array, target: Array) -> Array:
        xp = namespace_of(pred)
        # d clipped to [-delta, delta] with maximum/minimum, not xp.clip: array-api-compat's
        # clip for CuPy assigns through boolean masks, a host sync (see optim.py).
        d = xp.minimum(xp.maximum(pred - target, -self.delta), self.delta)
        return d / _count(pred)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "delta": self.delta}

    def __repr__(self) -> str:
        return f"Huber(delta={self.delta})"


def _log_sigmoid_parts(xp: Any, z: Array) -> tuple[Array, Array]:
    """Return ``max(z, 0)`` and ``log1p(exp(-|z|))``: softplus(z) is their sum."""
    return xp.maximum(z, 0.0), xp.log1p(xp.exp(-xp.abs(z)))


@REGISTRY.register("bce_with_logits")
class BCEWithLogits(Loss):
    """Binary cross-entropy on logits, as ``torch.nn.BCEWithLogitsLoss()``.

    ``L = mean(softplus(z) - t z)``, computed as
    ``max(z, 0) - t z + log1p(e^{-|z|})`` so that no exp overflows;
    ``dL/dz = (sigmoid(z) - t) / n``.
    """

    takes_logits = True

    def __init__(self) -> None:
        super().__init__(self._f, self._df, name="bce_with_logits", per_sample=self._rows)

    @staticmethod
    def _f(z: Array, t: Array) -> Array:
        xp = namespace_of(z)
        pos, log_term = _log_sigmoid_parts(xp, z)
        return _mean(xp, pos - t * z + log_term)

    @staticmethod
    def _rows(z: Array, t: Array) -> Array:
        xp = namespace_of(z)
        pos, log_term = _log_sigmoid_parts(xp, z)
        return _row_means(xp, pos - t * z + log_term)

    @staticmethod
    def _df(z: Array, t: Array) -> Array:
        from .activations import sigmoid

        return (sigmoid(z) - t) / _count(z)

    def value_and_grad(self, z: Array, t: Array,
                       sample_weight: Array | None = None) -> tuple[Array, Array]:
        """One ``e = exp(-|z|)`` for both: ``softplus(z) = max(z, 0) + log1p(e)`` and
        ``sigmoid(z) = 1 / (1 + e)`` for ``z >= 0``, ``e / (1 + e)`` below."""
        if sample_weight is not None:
            return super().value_and_grad(z, t, sample_weight)
        xp = namespace_of(z)
        e = xp.exp(-xp.abs(z))
        value = _mean(xp, xp.maximum(z, 0.0) - t * z + xp.log1p(e))
        value = xp.asarray(value, dtype=z.dtype, device=device_of(z))
        inverse = 1.0 / (1.0 + e)
        sig = xp.where(z >= 0, inverse, e * inverse)
        return value, (sig - t) / _count(z)


def _log_softmax(xp: Any, z: Array) -> Array:
    """``z - max(z) - log(sum(e^{z - max(z)}))`` over the last axis."""
    shifted = z - xp.max(z, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


@REGISTRY.register("cross_entropy")
class CrossEntropy(Loss):
    """Softmax cross-entropy on logits, as ``torch.nn.CrossEntropyLoss``.

    Targets are integer class labels of shape ``(n,)`` or class probabilities
    of shape ``(n, classes)``. With label smoothing ``e`` the target
    distribution is ``q = (1 - e) t + e / classes``. Then

    ``L = -mean_over_rows(sum_k q_k log softmax(z)_k)`` and
    ``dL/dz = (softmax(z) - q) / n``.

    ``log softmax(z) = z - max(z) - log(sum(e^{z - max(z)}))`` keeps logits of
    size 1e4 finite.
    """

    accepts_labels = True
    takes_logits = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(
                f"CrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing!r}"
            )
        self.label_smoothing = float(label_smoothing)
        super().__init__(self._f, self._df, name="cross_entropy", per_sample=self._rows)

    def check_target(self, pred_shape: tuple[int, ...], target: Array) -> None:
        pred_shape = tuple(pred_shape)
        if len(pred_shape) != 2:
            raise ValueError(
                f"loss 'cross_entropy' needs predictions of shape (n, classes), got {pred_shape}"
            )
        shape = tuple(target.shape)
        if shape not in (pred_shape[:1], pred_shape):
            raise ValueError(
                f"loss 'cross_entropy': target shape {shape} fits neither labels "
                f"{pred_shape[:1]} nor probabilities {pred_shape}"
            )

    def _target_distribution(self, z: Array, t: Array) -> Array:
        xp = namespace_of(z)
        classes = z.shape[-1]
        if t.ndim == 1:  # labels -> one-hot, built on z's device
            ks = xp.arange(classes, dtype=t.dtype, device=device_of(z))
            t = xp.astype(t[:, None] == ks[None, :], z.dtype)
        e = self.label_smoothing
        if e:
            t = (1.0 - e) * t + e / classes
        return t

    def _f(self, z: Array, t: Array) -> Array:
        xp = namespace_of(z)
        q = self._target_distribution(z, t)
        return -xp.sum(q * _log_softmax(xp, z)) / float(z.shape[0])

    def _rows(self, z: Array, t: Array) -> Array:
        xp = namespace_of(z)
        q = self._target_distribution(z, t)
        return -xp.sum(q * _log_softmax(xp, z), axis=-1)

    def _df(self, z: Array, t: Array) -> Array:
        from .activations import softmax

        return (softmax(z) - self._target_distribution(z, t)) / float(z.shape[0])

    def value_and_grad(self, z: Array, t: Array,
                       sample_weight: Array | None = None) -> tuple[Array, Array]:
        """One softmax for both: ``e = exp(z - max z)``, ``log p = z - max z - log sum e``
        and ``p = e / sum e``: the very operations of :meth:`value` and :meth:`grad`."""
        if sample_weight is not None:
            return super().value_and_grad(z, t, sample_weight)
        xp = namespace_of(z)
        shifted = z - xp.max(z, axis=-1, keepdims=True)
        e = xp.exp(shifted)
        total = xp.sum(e, axis=-1, keepdims=True)
        q = self._target_distribution(z, t)
        n = float(z.shape[0])
        value = -xp.sum(q * (shifted - xp.log(total))) / n
        value = xp.asarray(value, dtype=z.dtype, device=device_of(z))
        return value, (e / total - q) / n

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "label_smoothing": self.label_smoothing}

    def __repr__(self) -> str:
        return f"CrossEntropy(label_smoothing={self.label_smoothing})"
