"""Layers: each one knows its forward pass and its own gradient.

The protocol is small. ``forward(x, training)`` computes the output and keeps
what backward will need; ``backward(grad_out)`` takes ``dL/d(output)``, stores
``dL/d(parameter)`` in ``self.grads`` and returns ``dL/d(input)``. There is no
autograd tape: the calculus is written out below, one layer at a time.

Around that:

- ``output_shape(input_shape)`` maps a per-sample input shape (no batch axis)
  to the output's, and raises ``ValueError`` naming the layer when the input
  does not fit. ``Sequential`` walks the chain when it is built.
- ``params`` are trained; ``buffers`` (running statistics) are state that is
  saved, moved and loaded but never seen by an optimizer.
  ``param_shapes()`` and ``buffer_shapes()`` say what ``build`` will create, so a
  checkpoint is checked before anything is allocated.
- ``training`` is the one switch between training and evaluation behaviour.

Shapes: a batch of vectors is ``(n, features)``. ``Dense`` computes ``x @ W + b``
with ``W`` of shape ``(in_features, out_features)``, as the notebook did.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import activations as A
from . import initializers
from .backend import to_array
from .registry import Registry

__all__ = [
    "ELU",
    "GELU",
    "REGISTRY",
    "ActivationLayer",
    "Context",
    "Dense",
    "Dropout",
    "Identity",
    "Layer",
    "LeakyReLU",
    "ReLU",
    "Shape",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Tanh",
    "format_shape",
    "from_config",
]

Array = Any
#: A per-sample shape; None marks a size not known until data arrives.
Shape = tuple[int | None, ...]

#: Every layer type, by the ``"type"`` of its config: ``from_config`` and checkpoints read it.
REGISTRY: Registry[Layer] = Registry("layer type", key="type")


def from_config(config: Mapping[str, Any]) -> Layer:
    """Rebuild a layer from :meth:`Layer.config` (used by checkpoints)."""
    return REGISTRY.create(config)


def format_shape(shape: Shape | None, batch: str = "n") -> str:
    """``(n, 16, 26, 26)``: a per-sample shape with the batch axis in front."""
    if shape is None:
        return "(unknown)"
    return "(" + ", ".join([batch, *("?" if s is None else str(s) for s in shape)]) + ")"


@dataclass
class Context:
    """What a network hands its layers: namespace, device, dtype and host RNG."""

    xp: ModuleType
    device: Any
    dtype: Any
    rng: Any  # numpy.random.Generator, seeded once per network


class Layer:
    """Base class: subclasses create ``params`` in :meth:`build` and fill ``grads`` in backward."""

    #: whether the output has the input's shape, whatever it is (activations, dropout)
    keeps_shape = False

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self.ctx: Context | None = None
        self.index: int | None = None

    # -- building ------------------------------------------------------------
    def build(self, ctx: Context) -> None:
        """Attach the network's context and create parameters and buffers on its device."""
        self.ctx = ctx

    def on_device(self, host: Any) -> Array:
        """A host array (drawn from the host RNG) on this layer's namespace, device and dtype."""
        ctx = self.ctx
        return to_array(host, ctx.xp, ctx.device, ctx.dtype)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each parameter that :meth:`build` creates, by name."""
        return {}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each buffer (non-trained state) that :meth:`build` creates."""
        return {}

    def children(self) -> list[tuple[str, Layer]]:
        """Layers held inside this one, with the name of each in parameter paths."""
        return []

    def slots(self, kind: str) -> Iterator[tuple[str, Layer, str]]:
        """``(path, owner, key)`` for each parameter (``kind="params"``) or buffer
        (``"buffers"``) of this layer and the layers inside it: the array is
        ``getattr(owner, kind)[key]`` (and its gradient ``owner.grads[key]``)."""
        shapes = self.param_shapes() if kind == "params" else self.buffer_shapes()
        for key in shapes:
            yield key, self, key
        for prefix, child in self.children():
            for path, owner, key in child.slots(kind):
                yield f"{prefix}.{path}", owner, key

    def declared_shapes(self, kind: str) -> dict[str, tuple[int, ...]]:
        """``path -> shape`` of every parameter (``kind="params"``) or buffer (``"buffers"``)
        that building creates, here and in the layers inside: known before anything is built."""
        def shapes(owner: Layer) -> dict[str, tuple[int, ...]]:
            return owner.param_shapes() if kind == "params" else owner.buffer_shapes()

        return {path: tuple(shapes(owner)[key]) for path, owner, key in self.slots(kind)}

    def expected_input_shape(self) -> Shape | None:
        """The per-sample input shape this layer fixes on its own (``Dense(64, 10)``:
        ``(64,)``), or None where it takes any shape."""
        return None

    def output_shape(self, input_shape: Shape) -> Shape:
        """The per-sample output shape for ``input_shape``; ``ValueError`` naming this
        layer where the input does not fit. The default keeps the shape."""
        return tuple(input_shape)

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
        """JSON-able arguments that rebuild this layer: ``{"type": ..., **arguments}``."""
        return {"type": type(self).__name__}

    @property
    def label(self) -> str:
        where = f" (layer {self.index})" if self.index is not None else ""
        return f"{self!r}{where}"


# ---------------------------------------------------------------- Dense ----


@REGISTRY.register("Dense")
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

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"weight": (self.in_features, self.out_features)}
        if self.use_bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def build(self, ctx: Context) -> None:
        super().build(ctx)
        shapes = self.param_shapes()
        w = self.init(ctx.rng, shapes["weight"], self.in_features, self.out_features)
        self.params = {"weight": self.on_device(w)}
        if self.use_bias:
            self.params["bias"] = self.on_device(initializers.zeros(ctx.rng, shapes["bias"], 0, 0))

    def declared_shapes(self, kind: str) -> dict[str, tuple[int, ...]]:
        """``path -> shape`` of every parameter (``kind="params"``) or buffer (``"buffers"``)
        that building creates, here and in the layers inside: known before anything is built."""
        def shapes(owner: Layer) -> dict[str, tuple[int, ...]]:
            return owner.param_shapes() if kind == "params" else owner.buffer_shapes()

        return {path: tuple(shapes(owner)[key]) for path, owner, key in self.slots(kind)}

    def expected_input_shape(self) -> Shape:
        return (self.in_features,)

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ValueError(
                f"{self.label} expects {self.in_features} features per sample, but the layer "
                f"before it gives samples of shape {tuple(input_shape)}: put a Flatten() before it"
            )
        if input_shape[0] is not None and input_shape[0] != self.in_features:
            raise ValueError(
                f"{self.label} expects {self.in_features} input features, "
                f"but the layer before it gives {input_shape[0]}"
            )
        return (self.out_features,)

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


@REGISTRY.register("ActivationLayer")
class ActivationLayer(Layer):
    """An activation as a layer of its own: ``y = f(x)``, ``dL/dx = dL/dy * f'(x)``.

    ``activation`` is anything :func:`portanet.activations.get` takes: a name,
    a config dict or an :class:`~portanet.activations.Activation`. The
    spellings ``ReLU()``, ``LeakyReLU(0.1)``, ... below build this one type.
    """

    keeps_shape = True

    def __init__(self, activation: str | A.Activation | Mapping[str, Any]):
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
        params = "".join(f", {k}={v!r}" for k, v in self.activation.config().items() if k != "name")
        return f"ActivationLayer({self.activation.name!r}{params})"


def Identity() -> ActivationLayer:  # CamelCase: the spellings of torch.nn
    """``y = x`` as a layer."""
    return ActivationLayer(A.identity)


def ReLU() -> ActivationLayer:
    """``y = max(x, 0)`` as a layer."""
    return ActivationLayer(A.relu)


def LeakyReLU(negative_slope: float = 0.01) -> ActivationLayer:
    """Leaky ReLU as a layer; the notebook's ``relu`` is ``LeakyReLU(0.1)``."""
    return ActivationLayer(A.LeakyReLU(negative_slope))


def ELU(alpha: float = 1.0) -> ActivationLayer:
    """``y = x`` for ``x > 0``, else ``alpha (e^x - 1)``, as a layer."""
    return ActivationLayer(A.ELU(alpha))


def Sigmoid() -> ActivationLayer:
    """``y = 1 / (1 + e^-x)`` as a layer."""
    return ActivationLayer(A.sigmoid)


def Tanh() -> ActivationLayer:
    """``y = tanh(x)`` as a layer."""
    return ActivationLayer(A.tanh)


def GELU() -> ActivationLayer:
    """GELU (tanh approximation) as a layer."""
    return ActivationLayer(A.gelu)


def SiLU() -> ActivationLayer:
    """``y = x sigmoid(x)`` as a layer."""
    return ActivationLayer(A.silu)


def Softplus() -> ActivationLayer:
    """``y = log(1 + e^x)`` as a layer."""
    return ActivationLayer(A.softplus)


def Softmax() -> ActivationLayer:
    """Softmax over the last axis as a layer. For classification prefer ``CrossEntropy`` on logits."""
    return ActivationLayer(A.softmax)


# -------------------------------------------------------------- Dropout ----


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
        """Draw a mask on the host and move it to the device (kept / (1 - p))."""
        keep = self.ctx.rng.random(shape) >= self.p
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
