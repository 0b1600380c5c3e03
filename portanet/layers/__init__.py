"""Layers: each one knows its forward pass and its own gradient.

``forward(x, training)`` computes the output and keeps what backward will need;
``backward(grad_out)`` takes ``dL/d(output)``, stores ``dL/d(parameter)`` in
``self.grads`` and returns ``dL/d(input)``. There is no autograd tape: the
calculus is written out in each layer's docstring and code. The protocol
(shapes, parameters, buffers) is in :mod:`portanet.layers.base`.

=====================  ==============================================================
module                 layers
=====================  ==============================================================
``dense``              ``Dense``
``activation``         ``ActivationLayer`` (``ReLU()``, ``LeakyReLU(0.1)``, ...)
``dropout``            ``Dropout``
``conv``               ``Conv2D``
``pooling``            ``MaxPool2D``, ``AvgPool2D``, ``GlobalAvgPool2D``
``reshape``            ``Flatten``, ``Reshape``
``normalization``      ``BatchNorm``, ``LayerNorm``
``residual``           ``Residual``
=====================  ==============================================================
"""

from .activation import (
    ELU,
    GELU,
    ActivationLayer,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from .base import REGISTRY, Context, Layer, Shape, check_built, format_shape, from_config
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .normalization import BatchNorm, LayerNorm
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .reshape import Flatten, Reshape
from .residual import Residual

__all__ = [
    "ELU", "GELU", "REGISTRY", "ActivationLayer", "AvgPool2D", "BatchNorm", "Context", "Conv2D",
    "Dense", "Dropout", "Flatten", "GlobalAvgPool2D", "Identity", "Layer", "LayerNorm",
    "LeakyReLU", "MaxPool2D", "ReLU", "Reshape", "Residual", "Shape", "SiLU", "Sigmoid",
    "Softmax", "Softplus", "Tanh", "check_built", "format_shape", "from_config",
]
