"""Activation layers: one type, ``ActivationLayer``, and the spellings of ``torch.nn``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import activations as A
from .base import REGISTRY, Layer

__all__ = ["ELU", "GELU", "ActivationLayer", "Identity", "LeakyReLU", "ReLU", "SiLU", "Sigmoid",
           "Softmax", "Softplus", "Tanh"]

Array = Any


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


