"""Names and config dicts to objects: the one parser behind ``activations.get`` and ``losses.get``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def from_spec(spec: str | Mapping[str, Any], registry: Mapping[str, Callable[..., Any]],
              kind: str, kinds: str) -> Any:
    """Build ``registry[name](**kwargs)`` from ``"name"`` or ``{"name": ..., **kwargs}``.

    Unknown names and bad parameters raise ``ValueError`` naming the ``kind``
    (and listing the known ``kinds``).
    """
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
    else:
        name, kwargs = spec, {}
    if not isinstance(name, str) or name not in registry:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {kind} {spec!r}; known {kinds} are {known}")
    try:
        return registry[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad parameters for {kind} {name!r}: {exc}") from exc
