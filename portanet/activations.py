"""Activation functions and their derivatives.

An :class:`Activation` is the notebook's ``(f, df)`` pair: ``f(x)`` is the
function and ``df(x)`` its elementwise derivative, so that backprop through it
is ``grad_in = grad_out * df(x)``. Softmax is not elementwise, so it overrides
:meth:`Activation.backward` with its Jacobian-vector product.

Every function takes its namespace from its argument, so it runs on any
array-API library.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ._spec import from_spec
from .backend import namespace_of

__all__ = [
    "Activation",
    "ELU",
    "LeakyReLU",
    "elu",
    "gelu",
    "get",
    "identity",
    "leaky_relu",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]

Array = Any


class Activation:
    """An activation function ``f`` with its elementwise derivative ``df``.

    Parameters
    ----------
    f : callable
        ``f(x) -> y``, applied elementwise.
    df : callable
        ``df(x) -> dy/dx``, the elementwise derivative at ``x``.
    name : str, optional
        A name for summaries and checkpoints.

    Examples
    --------
    >>> square = Activation(lambda x: x * x, lambda x: 2.0 * x, name="square")
    """

    def __init__(self, f: Callable[[Array], Array], df: Callable[[Array], Array], name: str = ""):
        self.f = f
        self.df = df
        self.name = name or getattr(f, "__name__", "activation")

    def __call__(self, x: Array) -> Array:
        return self.f(x)

    def forward(self, x: Array) -> Array:
        return self.f(x)

    def grad(self, x: Array) -> Array:
        """The elementwise derivative ``df(x)``."""
        return self.df(x)

    def backward(self, x: Array, y: Array, grad_y: Array) -> Array:
        """Chain rule: ``dL/dx = dL/dy * f'(x)``. ``y = f(x)`` is given for subclasses."""
        return grad_y * self.df(x)

    def config(self) -> dict[str, Any]:
        """A JSON-able description, from which :func:`get` rebuilds the activation."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


# ------------------------------------------------------- the functions ----


def _identity(x: Array) -> Array:
    return x


def _ones(x: Array) -> Array:
    xp = namespace_of(x)
    return xp.ones_like(x)


def _relu(x: Array) -> Array:
    xp = namespace_of(x)
    return xp.maximum(x, xp.zeros_like(x))


def _step(x: Array) -> Array:
    """Heaviside step, 1 where x > 0 else 0, in x's dtype (the derivative of relu)."""
    xp = namespace_of(x)
    return xp.astype(x > 0, x.dtype)


def _sigmoid(x: Array) -> Array:
    # 1/(1+e^-x) for x >= 0 and e^x/(1+e^x) for x < 0: exp never sees a large
    # positive argument, so nothing overflows and small values keep their precision.
    xp = namespace_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _dsigmoid(x: Array) -> Array:
    s = _sigmoid(x)
    return s * (1.0 - s)


def _tanh(x: Array) -> Array:
    return namespace_of(x).tanh(x)


def _dtanh(x: Array) -> Array:
    t = namespace_of(x).tanh(x)
    return 1.0 - t * t


def _softplus(x: Array) -> Array:
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|), stable for large |x|.
    xp = namespace_of(x)
    return xp.maximum(x, xp.zeros_like(x)) + xp.log1p(xp.exp(-xp.abs(x)))


def _silu(x: Array) -> Array:
    return x * _sigmoid(x)


def _dsilu(x: Array) -> Array:
    # d/dx x s(x) = s + x s (1 - s)
    s = _sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu(x: Array) -> Array:
    xp = namespace_of(x)
    inner = _GELU_C * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + xp.tanh(inner))


def _dgelu(x: Array) -> Array:
    # u = c (x + a x^3), gelu = x (1 + tanh u) / 2
    # d/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) u' / 2, with u' = c (1 + 3 a x^2)
    xp = namespace_of(x)
    t = xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
    du = _GELU_C * (1.0 + 3.0 * 0.044715 * x * x)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du


def _softmax(x: Array) -> Array:
    xp = namespace_of(x)
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


identity = Activation(_identity, _ones, name="identity")
relu = Activation(_relu, _step, name="relu")
sigmoid = Activation(_sigmoid, _dsigmoid, name="sigmoid")
tanh = Activation(_tanh, _dtanh, name="tanh")
softplus = Activation(_softplus, _sigmoid, name="softplus")
silu = Activation(_silu, _dsilu, name="silu")
gelu = Activation(_gelu, _dgelu, name="gelu")
gelu.__doc__ = "GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."


class LeakyReLU(Activation):
    """``f(x) = x`` for ``x > 0`` and ``negative_slope * x`` otherwise (the notebook used 0.1).

    ``f'(x) = 1`` for ``x > 0`` and ``negative_slope`` otherwise.
    """

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = float(negative_slope)
        super().__init__(self._f, self._df, name="leaky_relu")

    def _f(self, x: Array) -> Array:
        xp = namespace_of(x)
        if 0.0 <= self.negative_slope <= 1.0:  # then max(x, a x) picks the same, in one pass fewer
            return xp.maximum(x, self.negative_slope * x)
        return xp.where(x > 0, x, self.negative_slope * x)

    def _df(self, x: Array) -> Array:
        # step + a (1 - step): exactly 1 where x > 0 and exactly a elsewhere.
        s = _step(x)
        return s + self.negative_slope * (1.0 - s)

    def backward(self, x: Array, y: Array, grad_y: Array) -> Array:
        # grad_y where x > 0, else a * grad_y; each step is exact, so this equals
        # where(x > 0, grad_y, a * grad_y) bitwise, but runs as fast vectorized
        # products (where() is several times slower on NumPy for mixed signs).
        xp = namespace_of(grad_y)
        passed = xp.astype(x > 0, grad_y.dtype)
        passed *= grad_y  # grad_y or 0
        leaked = grad_y - passed  # 0 or grad_y
        leaked *= self.negative_slope
        passed += leaked
        return passed

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "negative_slope": self.negative_slope}

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class ELU(Activation):
    """``f(x) = x`` for ``x > 0`` and ``alpha (e^x - 1)`` otherwise."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)
        super().__init__(self._f, self._df, name="elu")

    def _f(self, x: Array) -> Array:
        xp = namespace_of(x)
        # expm1 of min(x, 0): the unused branch of where never overflows.
        neg = self.alpha * xp.expm1(xp.minimum(x, xp.zeros_like(x)))
        return xp.where(x > 0, x, neg)

    def _df(self, x: Array) -> Array:
        xp = namespace_of(x)
        neg = self.alpha * xp.exp(xp.minimum(x, xp.zeros_like(x)))
        return xp.where(x > 0, xp.ones_like(x), neg)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha}

    def __repr__(self) -> str:
        return f"ELU(alpha={self.alpha})"


class Softmax(Activation):
    """Softmax over the last axis: ``y_i = e^{x_i} / sum_j e^{x_j}``.

    Its Jacobian is ``dy_i/dx_j = y_i (delta_ij - y_j)``, so backprop is
    ``dL/dx = y * (dL/dy - sum(dL/dy * y))`` rather than an elementwise product.
    """

    def __init__(self) -> None:
        super().__init__(_softmax, self._no_elementwise, name="softmax")

    @staticmethod
    def _no_elementwise(x: Array) -> Array:
        raise TypeError("softmax has no elementwise derivative; use backward()")

    def backward(self, x: Array, y: Array, grad_y: Array) -> Array:
        xp = namespace_of(grad_y)
        return y * (grad_y - xp.sum(grad_y * y, axis=-1, keepdims=True))

    def __repr__(self) -> str:
        return "Softmax()"


leaky_relu = LeakyReLU(0.01)
elu = ELU(1.0)
softmax = Softmax()

_BY_NAME: dict[str, Callable[..., Activation]] = {
    "identity": lambda: identity,
    "linear": lambda: identity,
    "relu": lambda: relu,
    "sigmoid": lambda: sigmoid,
    "tanh": lambda: tanh,
    "softplus": lambda: softplus,
    "silu": lambda: silu,
    "gelu": lambda: gelu,
    "softmax": lambda: softmax,
    "leaky_relu": LeakyReLU,
    "elu": ELU,
}


def get(spec: str | Activation | dict[str, Any] | None) -> Activation:
    """Return an :class:`Activation` from a name, a config dict, an instance, or None.

    ``None`` means the identity.
    """
    if spec is None:
        return identity
    if isinstance(spec, Activation):
        return spec
    return from_spec(spec, _BY_NAME, "activation", "activations")
