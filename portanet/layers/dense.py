"""``Dense``: the fully connected layer."""

from __future__ import annotations

from typing import Any

from .. import activations as A
from .. import initializers
from .activation import ActivationLayer
from .base import REGISTRY, Context, Layer, Shape

__all__ = ["Dense"]

Array = Any


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


