"""``cupy.cuda.Device`` of the stand-in: compared by id and unhashable, as CuPy's."""

from __future__ import annotations

import threading
from typing import Any

from .. import _sync
from . import runtime

_stack = threading.local()


class Device:
    """A CUDA device by index; ``Device()`` (or ``Device(None)``) is the current one.

    As in CuPy, two devices are equal when their ids are, a device never equals
    anything else (an int, a string, a torch or JAX device), and ``hash()`` raises.
    A ``with`` block makes the device current.
    """

    __hash__ = None  # type: ignore[assignment]  # CuPy's Device is unhashable

    def __init__(self, device: Any = None):
        self.id = runtime.getDevice() if device is None else int(device)

    def __int__(self) -> int:
        return self.id

    def __enter__(self) -> Device:
        previous = runtime.getDevice()
        stack = getattr(_stack, "ids", None)
        if stack is None:
            stack = _stack.ids = []
        stack.append(previous)
        if self.id != previous:
            runtime.setDevice(self.id)
        return self

    def __exit__(self, *exc: Any) -> None:
        runtime.setDevice(_stack.ids.pop())

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and self.id == other.id

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Device):
            return NotImplemented
        return self.id < other.id

    def use(self) -> Device:
        runtime.setDevice(self.id)
        return self

    def synchronize(self) -> None:
        _sync.declare()

    @property
    def compute_capability(self) -> str:
        return "00"
