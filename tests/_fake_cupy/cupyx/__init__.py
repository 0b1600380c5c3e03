"""``cupyx`` of the CuPy stand-in: synchronization detection only."""

from __future__ import annotations

from cupy._sync import DeviceSynchronized, allow_synchronize

__all__ = ["DeviceSynchronized", "allow_synchronize"]
