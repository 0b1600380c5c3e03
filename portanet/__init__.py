"""portanet: a readable from-scratch neural network on any Python array-API namespace.

>>> import portanet as pn
>>> net = pn.Sequential([pn.Dense(2, 100, activation=pn.LeakyReLU(0.1)), pn.Dense(100, 1)],
...                     backend="numpy", seed=0)
"""

from . import activations, datasets, initializers, losses, optim, training
from ._version import __version__
from .activations import Activation
from .backend import (
    available_backends,
    get_backend,
    get_namespace,
    set_backend,
    to_numpy,
)
from .io import CheckpointError, load
from .layers import (
    ELU,
    GELU,
    Dense,
    Dropout,
    Identity,
    Layer,
    LeakyReLU,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from .losses import MAE, MSE, BCEWithLogits, CrossEntropy, Huber, Loss
from .network import Sequential
from .optim import SGD, Adam, AdamW, Optimizer
from .training import (
    CosineAnnealing,
    EarlyStopping,
    ExponentialLR,
    History,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    StepLR,
    TrainingDivergedError,
)

__all__ = [
    "ELU", "GELU", "MAE", "MSE", "SGD", "Activation", "Adam", "AdamW", "BCEWithLogits",
    "CheckpointError", "CosineAnnealing", "EarlyStopping", "ExponentialLR", "History",
    "LearningRateScheduler", "ModelCheckpoint", "ReduceLROnPlateau", "StepLR",
    "TrainingDivergedError", "datasets", "load", "training",
    "CrossEntropy", "Dense", "Dropout", "Huber", "Identity", "Layer", "LeakyReLU", "Loss",
    "Optimizer", "ReLU", "Sequential", "SiLU", "Sigmoid", "Softmax", "Softplus", "Tanh",
    "__version__", "activations", "available_backends", "get_backend", "get_namespace",
    "initializers", "losses", "optim", "set_backend", "to_numpy",
]
