"""Synchronization detection, as ``cupy/_core/syncdetect.py`` of CuPy 14.2.

CuPy calls ``_declare_synchronize()`` where the host waits for the device (a copy
to the host in ``ndarray.get()``, which ``item``, ``tolist``, ``bool``, ``int``,
``float``, ``repr`` and data-dependent shapes all go through, and
``Device.synchronize()``). Inside ``cupyx.allow_synchronize(False)`` that raises
``cupyx.DeviceSynchronized``. The stand-in declares a synchronization at the same
places.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

_thread_local = threading.local()


class DeviceSynchronized(RuntimeError):
    """Raised when device synchronization is detected while disallowed."""

    def __init__(self, message: str | None = None):
        if message is None:
            message = "Device synchronization was detected while disallowed."
        super().__init__(message)


def _is_allowed() -> bool:
    try:
        return _thread_local.allowed
    except AttributeError:
        _thread_local.allowed = True
        return True


def declare() -> None:
    """Raise :class:`DeviceSynchronized` if synchronization is disallowed in this thread."""
    if not _is_allowed():
        raise DeviceSynchronized()


@contextlib.contextmanager
def allow_synchronize(allow: bool):
    """Allow or disallow device synchronization in this thread (``cupyx.allow_synchronize``)."""
    warnings.warn(
        "cupyx.allow_synchronize will be removed in future releases as it "
        "is not possible to reliably detect synchronizations.", stacklevel=3)
    old = _is_allowed()
    _thread_local.allowed = allow
    try:
        yield
    finally:
        _thread_local.allowed = old
