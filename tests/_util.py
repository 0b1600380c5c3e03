"""Small helpers shared by the tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np

import portanet as pn
from portanet.backend import backend_name


def host(a):
    """A float64 host copy of any array."""
    return pn.to_numpy(a).astype(np.float64)


def put(xp, device, a, dtype: str):
    """Move a host array to the backend as ``dtype`` (cast on the host first)."""
    return xp.asarray(np.asarray(a, dtype=dtype), device=device)


def assert_on(xp, device, a, dtype: str | None = None, shape=None):
    """Assert that ``a`` is an array of ``xp`` on ``device`` (and of ``dtype``, ``shape``)."""
    from array_api_compat import array_namespace
    from array_api_compat import device as device_of

    assert backend_name(array_namespace(a)) == backend_name(xp)
    assert device_of(a) == device, f"array on {device_of(a)}, expected {device}"
    if dtype is not None:
        assert a.dtype == getattr(xp, dtype), f"dtype {a.dtype}, expected {dtype}"
    if shape is not None:
        assert tuple(a.shape) == tuple(shape)
