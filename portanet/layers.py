"""Layers: each one knows its forward pass and its own gradient.

The protocol is small. ``forward(x, training)`` computes the output and keeps
what backward will need; ``backward(grad_out)`` takes ``dL/d(output)``, stores
``dL/d(parameter)`` in ``self.grads`` and returns ``dL/d(input)``. There is no
autograd tape: the calculus is written out below, one layer at a time.

Shapes: a batch is ``(n, features)``. ``Dense`` computes ``x @ W + b`` with
``W`` of shape ``(in_features, out_features)``, as the notebook did.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import activations as A
from . import initializers
from .backend import from_host

__all__ = [
    "ELU",
    "GELU",
    "Context",
    "Dense",
    "Dropout",
    "Identity",
    "Layer",
    "LeakyReLU",
    "ReLU",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Tanh",
]

Array = Any


@dataclass
class Context:
    """What a network hands its layers: namespace, device, dtype and host RNG."""

    xp: ModuleType
    device: Any
    dtype: Any
    rng: Any  # numpy.random.Generator, seeded once per network


class Layer:
    """Base class. Subclasses set ``params`` in :meth:`build` and fill ``grads`` in backward."""

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.ctx: Context | None = None
        self.index: int | None = None

    # -- building ------------------------------------------------------------
    def build(self, ctx: Context) -> None:
        """Attach the network's context and create parameters on its device."""
        self.ctx = ctx

    def output_features(self, in_features: int | None) -> int | None:
        """Features of the output for ``in_features`` of input (None: unknown yet)."""
        return in_features

    # -- computing -----------------------------------------------------------
    def forward(self, x: Array, training: bool = False) -> Array:
        raise NotImplementedError

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        """Fill ``self.grads`` and return ``dL/d(input)`` (None if not ``need_input_grad``)."""
        raise NotImplementedError

    def __call__(self, x: Array, training: bool = False) -> Array:
        return self.forward(x, training)

    # -- describing ----------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this layer (see :func:`from_config`)."""
        return {"type": type(self).__name__}

    @property
    def label(self) -> str:
        where = f" (layer {self.index})" if self.index is not None else ""
        return f"{self!r}{where}"


# ---------------------------------------------------------------- Dense ----


class Dense(Layer):
    """Fully connected layer: ``y = f(x @ W + b)``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output.
    activation : str, Activation, activation layer or None
        ``f``; None is the identity.
    init : str or callable
        Weight initializer (``"glorot_uniform"``, ``"he_normal"``, ...,
        or ``initializers.normal(mean, std)``). The bias starts at zero.
    bias : bool
        Whether to add ``b``.

    Notes
    -----
    With ``z = x W + b`` and ``y = f(z)``, the chain rule gives, for the
    upstream gradient ``g = dL/dy``:

    - ``dL/dz = g * f'(z)``  (elementwise; softmax uses its Jacobian)
    - ``dL/dW = x^T @ dL/dz``  (sums over the batch, shape ``(in, out)``)
    - ``dL/db = sum over rows of dL/dz``
    - ``dL/dx = dL/dz @ W^T``  (passed to the layer below)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | A.Activation | ActivationLayer | None = None,
        init: str | initializers.Initializer = "glorot_uniform",
        bias: bool = True,
    ):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Dense: {name} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        if isinstance(activation, ActivationLayer):
            activation = activation.activation
        self.activation = A.get(activation)
        self.init = initializers.get(init)
        self.use_bias = bool(bias)

    def build(self, ctx: Context) -> None:
        super().build(ctx)
        shape = (self.in_features, self.out_features)
        w = self.init(ctx.rng, shape, self.in_features, self.out_features)
        self.params = {"weight": from_host(w, ctx.xp, ctx.device, ctx.dtype)}
        if self.use_bias:
            b = initializers.zeros(ctx.rng, (self.out_features,), 0, 0)
            self.params["bias"] = from_host(b, ctx.xp, ctx.device, ctx.dtype)

    def output_features(self, in_features: int | None) -> int:
        if in_features is not None and in_features != self.in_features:
            raise ValueError(
                f"{self.label} expects {self.in_features} input features, "
                f"but the layer before it gives {in_features}"
            )
        return self.out_features

    def forward(self, x: Array, training: bool = False) -> Array:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{self.label} expects input of shape (n, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        z = x @ self.params["weight"]
        if self.use_bias:
            z += self.params["bias"]  # in place on the fresh product (rebinds on JAX)
        y = self.activation(z)
        self._cache = (x, z, y)
        return y

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        x, z, y = self._cache
        xp = self.ctx.xp
        if self.activation is A.identity:
            dz = grad_out
        else:
            dz = self.activation.backward(z, y, grad_out)  # dL/dz
        self.grads["weight"] = x.T @ dz  # dL/dW = x^T dL/dz
        if self.use_bias:
            self.grads["bias"] = xp.sum(dz, axis=0)  # dL/db
        if not need_input_grad:  # the first layer of a training step: nobody needs dL/dx
            return None
        return dz @ self.params["weight"].T  # dL/dx = dL/dz W^T

    def config(self) -> dict[str, Any]:
        return {
            "type": "Dense",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": self.activation.config(),
            "bias": self.use_bias,
        }

    def __repr__(self) -> str:
        act = "" if self.activation is A.identity else f", activation={self.activation.name!r}"
        return f"Dense({self.in_features}, {self.out_features}{act})"


# ---------------------------------------------------- activation layers ----


class ActivationLayer(Layer):
    """An activation as a layer of its own: ``y = f(x)``, ``dL/dx = dL/dy * f'(x)``."""

    def __init__(self, activation: str | A.Activation):
        super().__init__()
        self.activation = A.get(activation)

    def forward(self, x: Array, training: bool = False) -> Array:
        y = self.activation(x)
        self._cache = (x, y)
        return y

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        x, y = self._cache
        return self.activation.backward(x, y, grad_out) if need_input_grad else None

    def config(self) -> dict[str, Any]:
        return {"type": "ActivationLayer", "activation": self.activation.config()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(ActivationLayer):
    def __init__(self) -> None:
        super().__init__(A.identity)


class ReLU(ActivationLayer):
    def __init__(self) -> None:
        super().__init__(A.relu)


class LeakyReLU(ActivationLayer):
    """Leaky ReLU layer; the notebook's ``relu`` is ``LeakyReLU(0.1)``."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__(A.LeakyReLU(negative_slope))

    def __repr__(self) -> str:
        return f"LeakyReLU({self.activation.negative_slope})"


class ELU(ActivationLayer):
    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(A.ELU(alpha))

    def __repr__(self) -> str:
        return f"ELU({self.activation.alpha})"


class Sigmoid(ActivationLayer):
    def __init__(self) -> None:
        super().__init__(A.sigmoid)


class Tanh(ActivationLayer):
    def __init__(self) -> None:
        super().__init__(A.tanh)


class GELU(ActivationLayer):
    """GELU layer (tanh approximation)."""

    def __init__(self) -> None:
        super().__init__(A.gelu)


class SiLU(ActivationLayer):
    def __init__(self) -> None:
        super().__init__(A.silu)


class Softplus(ActivationLayer):
    def __init__(self) -> None:
        super().__init__(A.softplus)


class Softmax(ActivationLayer):
    """Softmax over the last axis. For classification prefer ``CrossEntropy`` on logits."""

    def __init__(self) -> None:
        super().__init__(A.softmax)


# -------------------------------------------------------------- Dropout ----


class Dropout(Layer):
    """Inverted dropout: in training, zero each input with probability ``p``.

    The kept inputs are scaled by ``1 / (1 - p)``, so the expected output
    equals the input and evaluation is the identity. With the mask
    ``m = keep / (1 - p)``: ``y = x * m`` and ``dL/dx = dL/dy * m``.
    Masks are drawn from the network's seeded host RNG.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self._mask: Array | None = None

    def draw_mask(self, shape: tuple[int, ...]) -> Array:
        """Draw a mask on the host and move it to the device (kept / (1 - p))."""
        ctx = self.ctx
        keep = ctx.rng.random(shape) >= self.p
        return from_host(keep / (1.0 - self.p), ctx.xp, ctx.device, ctx.dtype)

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


# --------------------------------------------------------- from config ----

_ACTIVATION_LAYERS: dict[str, type[ActivationLayer]] = {
    "identity": Identity,
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "gelu": GELU,
    "silu": SiLU,
    "softplus": Softplus,
    "softmax": Softmax,
}


def from_config(config: dict[str, Any]) -> Layer:
    """Rebuild a layer from :meth:`Layer.config` (used by checkpoints)."""
    kind = config.get("type")
    if kind == "Dense":
        return Dense(
            config["in_features"],
            config["out_features"],
            activation=config.get("activation"),
            bias=config.get("bias", True),
        )
    if kind == "Dropout":
        return Dropout(config["p"])
    if kind == "ActivationLayer":
        act = A.get(config["activation"])
        if act.name == "leaky_relu":
            return LeakyReLU(act.negative_slope)
        if act.name == "elu":
            return ELU(act.alpha)
        cls = _ACTIVATION_LAYERS.get(act.name)
        return cls() if cls is not None else ActivationLayer(act)
    raise ValueError(f"unknown layer type {kind!r} in config")
