"""``cupy.cuda.runtime`` of the stand-in: device count, current device, versions, errors.

``PORTANET_EMULATED_CUDA_DEVICES`` sets the number of emulated GPUs (default 1).
``PORTANET_EMULATED_CUDA_ERROR`` names a CUDA error (``cudaErrorInsufficientDriver``,
``cudaErrorNoDevice``, ...) that every runtime call then raises, as the real wheel
does on a machine without a working driver or GPU; both are read at import.
"""

from __future__ import annotations

import os
import threading

from .. import _sync

_MESSAGES = {
    "cudaErrorInsufficientDriver": "CUDA driver version is insufficient for CUDA runtime version",
    "cudaErrorNoDevice": "no CUDA-capable device is detected",
    "cudaErrorInvalidDevice": "invalid device ordinal",
}
errorInvalidValue = 1
errorInvalidDevice = 101


class CUDARuntimeError(RuntimeError):
    """A CUDA runtime error, as ``cupy_backends.cuda.api.runtime.CUDARuntimeError``."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"{name}: {_MESSAGES.get(name, 'emulated CUDA error')}")


_ERROR = os.environ.get("PORTANET_EMULATED_CUDA_ERROR") or None
_COUNT = int(os.environ.get("PORTANET_EMULATED_CUDA_DEVICES", "1"))
_current = threading.local()


def _check() -> None:
    if _ERROR is not None:
        raise CUDARuntimeError(_ERROR)


def getDeviceCount() -> int:  # noqa: N802 (CuPy's name)
    _check()
    return _COUNT


def getDevice() -> int:  # noqa: N802
    _check()
    return getattr(_current, "id", 0)


def setDevice(device: int) -> None:  # noqa: N802
    _check()
    if not 0 <= int(device) < _COUNT:
        raise CUDARuntimeError("cudaErrorInvalidDevice")
    _current.id = int(device)


def deviceSynchronize() -> None:  # noqa: N802
    _sync.declare()
    _check()


def runtimeGetVersion() -> int:  # noqa: N802
    _check()
    return 13000


def driverGetVersion() -> int:  # noqa: N802
    _check()
    return 13000


def getDeviceProperties(device: int) -> dict:  # noqa: N802
    _check()
    if not 0 <= int(device) < _COUNT:
        raise CUDARuntimeError("cudaErrorInvalidDevice")
    return {"name": b"CuPy stand-in (NumPy on the host, no GPU)", "major": 0, "minor": 0,
            "totalGlobalMem": 0, "multiProcessorCount": 0}
