"""``cupy.cuda`` of the stand-in: devices, the runtime, streams and events.

Work runs eagerly on the host, so a stream has nothing to wait for; waiting on one
(``Stream.synchronize``, ``Event.synchronize``) still declares a synchronization,
as CuPy's does.
"""

from __future__ import annotations

import time
from typing import Any

from .. import _sync
from . import device, runtime
from .device import Device

__all__ = ["Device", "Event", "ExternalStream", "Stream", "device", "get_current_stream",
           "get_elapsed_time", "is_available", "runtime"]


class Stream:
    """A CUDA stream; ``Stream.null`` is the default one."""

    null: Stream

    def __init__(self, null: bool = False, non_blocking: bool = False, ptr: int = 0):
        self.ptr = 0 if null else ptr
        self.device_id = runtime.getDevice()

    def synchronize(self) -> None:
        _sync.declare()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class ExternalStream(Stream):
    """A stream made elsewhere, known by its pointer."""

    def __init__(self, ptr: int, device_id: int = -1):
        super().__init__(ptr=ptr)


Stream.null = Stream(null=True) if runtime._ERROR is None else None  # type: ignore[assignment]


def get_current_stream(device_id: int = -1) -> Stream:
    runtime.getDevice()  # raises the emulated CUDA error, if any
    return Stream.null


class Event:
    """A CUDA event; recording takes the host's clock (the work is already done)."""

    def __init__(self, block: bool = False, disable_timing: bool = False,
                 interprocess: bool = False):
        self._t: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        _sync.declare()

    @property
    def done(self) -> bool:
        return True


def get_elapsed_time(start: Event, end: Event) -> float:
    """Milliseconds between two recorded events."""
    if start._t is None or end._t is None:
        raise runtime.CUDARuntimeError("cudaErrorInvalidResourceHandle")
    return (end._t - start._t) * 1e3


def is_available() -> bool:
    try:
        return runtime.getDeviceCount() > 0
    except runtime.CUDARuntimeError:
        return False
