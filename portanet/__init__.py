"""portanet: a readable from-scratch neural network on any Python array-API namespace.

>>> import portanet as pn
>>> net = pn.Sequential([pn.Dense(2, 100, activation=pn.LeakyReLU(0.1)), pn.Dense(100, 1)],
...                     backend="numpy", seed=0)
"""

from . import (
    activations,
    callbacks,
    datasets,
    initializers,
    layers,
    losses,
    metrics,
    optim,
    training,
)
from ._version import __version__
from .activations import Activation
from .backend import (
    available_backends,
    get_backend,
    get_namespace,
    set_backend,
    to_numpy,
)
from .callbacks import (
    Callback,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
)
from .io import CheckpointError, load
from .layers import (
    ELU,
    GELU,
    ActivationLayer,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    Layer,
    LayerNorm,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Reshape,
    Residual,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from .losses import MAE, MSE, BCEWithLogits, CrossEntropy, Huber, Loss
from .network import Sequential
from .optim import SGD, Adam, AdamW, CosineAnnealing, ExponentialLR, Optimizer, Schedule, StepLR
from .training import History, TrainingDivergedError

__all__ = [
    "ELU", "GELU", "MAE", "MSE", "SGD", "Activation", "ActivationLayer", "Adam", "AdamW",
    "AvgPool2D", "BCEWithLogits", "BatchNorm", "Callback", "CheckpointError", "Conv2D",
    "CosineAnnealing", "CrossEntropy", "Dense", "Dropout", "EarlyStopping", "ExponentialLR",
    "Flatten", "GlobalAvgPool2D", "History", "Huber", "Identity", "Layer", "LayerNorm",
    "LeakyReLU", "LearningRateScheduler", "Loss", "MaxPool2D", "ModelCheckpoint", "Optimizer",
    "ReLU", "ReduceLROnPlateau", "Reshape", "Residual", "Schedule", "Sequential", "SiLU",
    "Sigmoid", "Softmax",
    "Softplus", "StepLR", "Tanh", "TrainingDivergedError", "__version__", "activations",
    "available_backends", "callbacks", "datasets", "get_backend", "get_namespace",
    "initializers", "layers", "load", "losses", "metrics", "optim", "set_backend", "to_numpy",
    "training",
]
