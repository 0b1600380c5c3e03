"""Activation functions and their derivatives, and the one registry of their names.

An :class:`Activation` is the notebook's ``(f, df)`` pair: ``f(x)`` is the
function and ``df`` its elementwise derivative, so that backprop through it is
``grad_in = grad_out * f'(x)``. Where the derivative is simplest in terms of the
output ``y = f(x)`` (sigmoid: ``y (1 - y)``, tanh: ``1 - y^2``), ``df`` takes
``y`` instead (``df_of_output=True``) and nothing is recomputed. Softmax is not
elementwise, so it overrides :meth:`Activation.backward` with its
Jacobian-vector product.

Adding an activation is one function pair and one registration::

    cube = pn.activations.register("cube", lambda x: x * x * x, lambda x: 3.0 * x * x)

after which ``Dense(..., activation="cube")`` works, checkpoints included.

Every function takes its namespace from its argument, so it runs on any
array-API library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .backend import namespace_of
from .registry import Registry

__all__ = [
    "ELU",
    "REGISTRY",
    "Activation",
    "LeakyReLU",
    "elu",
    "gelu",
    "get",
    "identity",
    "leaky_relu",
    "names",
    "register",
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
        The elementwise derivative: ``df(x) = dy/dx``, or ``df(y)`` with
        ``df_of_output=True``.
    name : str, optional
        The name that summaries and checkpoints use (default: ``f``'s name).
    df_of_output : bool
        ``df`` takes the output ``y = f(x)`` rather than ``x``.

    Examples
    --------
    >>> square = Activation(lambda x: x * x, lambda x: 2.0 * x, name="square")
    """

    def __init__(self, f: Callable[[Array], Array], df: Callable[[Array], Array],
                 name: str = "", *, df_of_output: bool = False):
        self.f = f
        self.df = df
        self.name = name or getattr(f, "__name__", "activation")
        self.df_of_output = bool(df_of_output)

    def __call__(self, x: Array) -> Array:
        return self.f(x)

    def forward(self, x: Array) -> Array:
        return self.f(x)

    def grad(self, x: Array) -> Array:
        """The elementwise derivative ``f'(x)``."""
        return self.df(self.f(x)) if self.df_of_output else self.df(x)

    def backward(self, x: Array, y: Array, grad_y: Array) -> Array:
        """Chain rule: ``dL/dx = dL/dy * f'(x)``, where ``y = f(x)`` was kept by forward."""
        return grad_y * (self.df(y) if self.df_of_output else self.df(x))

    def config(self) -> dict[str, Any]:
        """A JSON-able description, from which :func:`get` rebuilds the activation."""
        return {"name": self.name}

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"Activation({self.name!r}{params})"


#: Every activation name: ``get``, layer configs, checkpoints and the CLI read it.
REGISTRY: Registry[Activation] = Registry("activation")


def register(name: str, f: Callable[[Array], Array], df: Callable[[Array], Array], *,
             df_of_output: bool = False, aliases: tuple[str, ...] = ()) -> Activation:
    """Make ``Activation(f, df)`` known as ``name`` everywhere a built-in name works.

    Returns the :class:`Activation`. After ``register("cube", f, df)``,
    ``Dense(..., activation="cube")`` builds with it and checkpoints that use it
    save and load (in any process that has registered it too).
    """
    act = Activation(f, df, name=name, df_of_output=df_of_output)
    REGISTRY.register(name, lambda: act, aliases=aliases)
    return act


def names() -> list[str]:
    """The registered activation names (the CLI's ``--activation`` choices)."""
    return REGISTRY.names()


def get(spec: str | Activation | Mapping[str, Any] | None) -> Activation:
    """Return an :class:`Activation` from a name, a config dict, an instance, or None.

    ``None`` means the identity.
    """
    if spec is None:
        return identity
    if isinstance(spec, Activation):
        return spec
    return REGISTRY.create(spec)


# ------------------------------------------------------- the functions ----


def _identity(x: Array) -> Array:
    return x


def _ones(x: Array) -> Array:
    return namespace_of(x).ones_like(x)


def _relu(x: Array) -> Array:
    xp = namespace_of(x)
    return xp.maximum(x, 0.0)  # a Python scalar: no array of zeros to make


def _step(x: Array) -> Array:
    """Heaviside step, 1 where x > 0 else 0, in x's dtype: relu'(x), with relu'(0) = 0 as torch."""
    xp = namespace_of(x)
    return xp.astype(x > 0, x.dtype)


def _sigmoid(x: Array) -> Array:
    # 1/(1+e^-x) for x >= 0 and e^x/(1+e^x) for x < 0: exp never sees a large
    # positive argument, so nothing overflows and small values keep their precision.
    xp = namespace_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _dsigmoid_of_output(y: Array) -> Array:
    return y * (1.0 - y)  # s' = s (1 - s)


def _tanh(x: Array) -> Array:
    return namespace_of(x).tanh(x)


def _dtanh_of_output(y: Array) -> Array:
    return 1.0 - y * y  # tanh' = 1 - tanh^2


def _softplus(x: Array) -> Array:
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|), stable for large |x|.
    xp = namespace_of(x)
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def _silu(x: Array) -> Array:
    return x * _sigmoid(x)


def _dsilu(x: Array) -> Array:
    # d/dx x s(x) = s + x s (1 - s)
    s = _sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu(x: Array) -> Array:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
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


identity = register("identity", _identity, _ones, aliases=("linear",))
relu = register("relu", _relu, _step)
sigmoid = register("sigmoid", _sigmoid, _dsigmoid_of_output, df_of_output=True)
tanh = register("tanh", _tanh, _dtanh_of_output, df_of_output=True)
softplus = register("softplus", _softplus, _sigmoid)  # softplus' = sigmoid
silu = register("silu", _silu, _dsilu)
gelu = register("gelu", _gelu, _dgelu)


# ------------------------------------------ activations with parameters ----


@REGISTRY.register("leaky_relu")
class LeakyReLU(Activation):
    """``f(x) = x`` for ``x > 0`` and ``negative_slope * x`` otherwise (the notebook used 0.1).

    ``f'(x) = 1`` for ``x > 0`` and ``negative_slope`` otherwise (so ``f'(0)`` is
    the slope, as in torch).
    """

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = float(negative_slope)
        super().__init__(self._f, self._df, name="leaky_relu")

    def _f(self, x: Array) -> Array:
        xp = namespace_of(x)
        # For 0 < a <= 1, max(x, a x) picks the same, in one pass fewer; not for a = 0,
        # where 0 * inf is NaN and max(inf, NaN) would turn f(inf) = inf into NaN.
        if 0.0 < self.negative_slope <= 1.0:
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


@REGISTRY.register("elu")
class ELU(Activation):
    """``f(x) = x`` for ``x > 0`` and ``alpha (e^x - 1)`` otherwise.

    ``f'(x) = 1`` for ``x > 0`` and ``alpha e^x`` otherwise.
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)
        super().__init__(self._f, self._df, name="elu")

    def _f(self, x: Array) -> Array:
        xp = namespace_of(x)
        # expm1 of min(x, 0): the unused branch of where never overflows.
        neg = self.alpha * xp.expm1(xp.minimum(x, 0.0))
        return xp.where(x > 0, x, neg)

    def _df(self, x: Array) -> Array:
        xp = namespace_of(x)
        neg = self.alpha * xp.exp(xp.minimum(x, 0.0))
        return xp.where(x > 0, 1.0, neg)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha}


class _Softmax(Activation):
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


softmax = _Softmax()
REGISTRY.register("softmax", lambda: softmax)
leaky_relu = LeakyReLU(0.01)
elu = ELU(1.0)
