"""``cupy.fft`` of the stand-in: the names CuPy 14.2 has, as NumPy computes them."""

from __future__ import annotations

import numpy as _np

from .. import _device_function

__all__ = ["fft", "fft2", "fftfreq", "fftn", "fftshift", "hfft", "ifft", "ifft2", "ifftn",
           "ifftshift", "ihfft", "irfft", "irfft2", "irfftn", "rfft", "rfft2", "rfftfreq", "rfftn"]

for _name in __all__:
    globals()[_name] = _device_function(_name, getattr(_np.fft, _name))
del _name
