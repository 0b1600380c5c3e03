"""Weight initializers: draw on the host from the network's seeded NumPy generator.

Each initializer maps ``(rng, shape, fan_in, fan_out)`` to a host array. The
network casts it to its dtype on the host and then moves it to the device, so
every backend starts from bit-identical weights (DESIGN.md, principle 5).

Initializers are known by name through one registry (:data:`REGISTRY`), which
:func:`get` reads; ``{"name": "normal", "mean": 1.0, "std": 0.1}`` builds the
notebook's ``normal(1, 0.1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .backend import host_zeros
from .registry import Registry

__all__ = ["REGISTRY", "Initializer", "get", "names", "normal"]

HostArray = Any
Initializer = Callable[[Any, tuple[int, ...], int, int], HostArray]

#: Every initializer name; a registered factory returns the initializer function.
REGISTRY: Registry[Initializer] = Registry("initializer")


def _normal(std_of: Callable[[int, int], float]) -> Initializer:
    def init(rng: Any, shape: tuple[int, ...], fan_in: int, fan_out: int) -> HostArray:
        return rng.standard_normal(shape) * std_of(fan_in, fan_out)

    return init


def _uniform(limit_of: Callable[[int, int], float]) -> Initializer:
    def init(rng: Any, shape: tuple[int, ...], fan_in: int, fan_out: int) -> HostArray:
        limit = limit_of(fan_in, fan_out)
        return rng.uniform(-limit, limit, size=shape)

    return init


def zeros(rng: Any, shape: tuple[int, ...], fan_in: int, fan_out: int) -> HostArray:
    """All zeros (draws nothing from ``rng``)."""
    return host_zeros(shape)


def normal(mean: float = 0.0, std: float = 1.0) -> Initializer:
    """The notebook's initializer: ``N(mean, std^2)`` (it used ``normal(1, 0.1)``)."""

    def init(rng: Any, shape: tuple[int, ...], fan_in: int, fan_out: int) -> HostArray:
        return rng.normal(mean, std, size=shape)

    init.__name__ = f"normal({mean}, {std})"
    return init


# Variance-preserving choices: He for ReLU-like layers, Glorot (Xavier) for
# tanh/sigmoid, LeCun for SELU-like layers.
_FIXED: dict[str, Initializer] = {
    "he_normal": _normal(lambda fi, fo: math.sqrt(2.0 / fi)),
    "he_uniform": _uniform(lambda fi, fo: math.sqrt(6.0 / fi)),
    "glorot_normal": _normal(lambda fi, fo: math.sqrt(2.0 / (fi + fo))),
    "glorot_uniform": _uniform(lambda fi, fo: math.sqrt(6.0 / (fi + fo))),
    "lecun_normal": _normal(lambda fi, fo: math.sqrt(1.0 / fi)),
    "zeros": zeros,
}
for _name, _init in _FIXED.items():
    REGISTRY.register(_name, lambda init=_init: init)
REGISTRY.register("normal", normal)


def names() -> list[str]:
    """The registered initializer names."""
    return REGISTRY.names()


def get(spec: str | Mapping[str, Any] | Initializer) -> Initializer:
    """Return an initializer from its name, a config dict, or a callable
    ``(rng, shape, fan_in, fan_out)``."""
    if callable(spec):
        return spec
    return REGISTRY.create(spec)
