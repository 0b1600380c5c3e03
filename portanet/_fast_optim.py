"""The optimizers' fast path on host arrays; the rules themselves live in ``optim.py``.

The update rules are written once, with augmented assignment, so the same code
updates a whole array, a view of one, or a flat buffer that holds many. This
module only chooses *what* a rule is applied to, and results stay bitwise equal
to the plain per-parameter update (``tests/test_optim.py`` compares them):

- **packed**: a small network's writeable host parameters and optimizer state
  become views of a few flat buffers, so one step is a dozen array operations
  rather than a dozen per parameter. The packing is made on first use and reused
  while the parameter view's assignment counter (``version``) and the state dict
  show that nothing replaced an array.
- **blockwise**: a large writeable host array is updated in place, one
  cache-sized block of rows at a time, so the rule's temporaries stay in cache
  and only the parameter, its gradient and its state stream through memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from array_api_compat import is_writeable_array

from .backend import is_host_array, namespace_of, size

Array = Any
Optimizer = Any  # an optim.Optimizer; not imported, since optim imports this module

#: Up to this many parameter elements in all, writeable host parameters are
#: packed into one flat buffer (each parameter a view of it).
PACK_ELEMENTS = 1 << 16

#: Elements per block when host arrays are updated in place: the rule's few
#: temporaries of this size (128 KiB in float32) stay in a core's L2 cache.
BLOCK_ELEMENTS = 32768


class Packed:
    """Parameters and optimizer state as views of flat buffers (``p`` and ``state``)."""

    def __init__(self, names: list[str], p: Array, state: list[Array],
                 views: dict[str, Array], state_views: list[dict[str, Array]]):
        self.names, self.p, self.state = names, p, state
        self.views, self.state_views = views, state_views

    @classmethod
    def make(cls, params: MutableMapping[str, Array], opt: Optimizer) -> Packed | None:
        """Pack ``params`` and ``opt``'s state, or None where the arrays do not allow it."""
        names = list(params)
        arrays = [params[n] for n in names]
        if not arrays or sum(size(a) for a in arrays) > PACK_ELEMENTS:
            return None
        first = arrays[0]
        xp = namespace_of(first)
        if not all(is_writeable_array(a) and is_host_array(a) and a.dtype == first.dtype
                   and namespace_of(a) is xp for a in arrays):
            return None

        def pack(parts: list[Array]) -> tuple[Array, dict[str, Array]]:
            flat = xp.concat([xp.reshape(a, (-1,)) for a in parts])
            views, start = {}, 0
            for name, a in zip(names, parts):
                stop = start + size(a)
                views[name] = xp.reshape(flat[start:stop], a.shape, copy=False)
                start = stop
            return flat, views

        flat_p, views = pack(arrays)
        state, state_views = [], []
        for slot in opt.slots:
            flat_s, s_views = pack([opt.state_for(slot, n, params[n]) for n in names])
            state.append(flat_s)
            state_views.append(s_views)
            opt.state[slot].update(s_views)
        for name, view in views.items():
            params[name] = view
        return cls(names, flat_p, state, views, state_views)

    def intact(self, params: Mapping[str, Array], state: Mapping[str, dict[str, Array]]) -> bool:
        """Whether every parameter and state array is still the view made here."""
        if list(params) != self.names:
            return False
        if any(params[n] is not v for n, v in self.views.items()):
            return False
        slots = list(state.values())
        return all(arrays.get(n) is v for arrays, views in zip(slots, self.state_views)
                   for n, v in views.items())

    def update(self, rule: Callable[..., Any], grads: Mapping[str, Array]) -> None:
        """One ``rule`` over all parameters at once (the flat gradient is one concat)."""
        xp = namespace_of(self.p)
        flat_g = xp.concat([grads[name] for name in self.names], axis=None)
        rule(self.p, flat_g, *self.state)


def packed(opt: Optimizer, params: MutableMapping[str, Array]) -> Packed | None:
    """The flat buffers of a small network's parameters and state, made on first use (and
    again after anything replaced a parameter or a state array); None where not packable."""
    # A network's live parameter view counts its assignments (``version``): while it
    # and the state dict are unchanged, the last decision stands, at no cost.
    version = getattr(params, "version", None)
    seen = opt._packed_seen
    if (seen is not None and version is not None and seen[0] is params
            and seen[1] == version and seen[2] is opt.state):
        return opt._packed
    if opt._packed is None or not opt._packed.intact(params, opt.state):
        opt._packed = Packed.make(params, opt)
    opt._packed_seen = (params, getattr(params, "version", None), opt.state)
    return opt._packed


def blockwise(p: Array) -> bool:
    """Whether ``p`` is a large writeable host array, to be updated block by block."""
    return size(p) >= 2 * BLOCK_ELEMENTS and is_writeable_array(p) and is_host_array(p)


def row_blocks(shape: tuple[int, ...]) -> list[slice]:
    """Slices along axis 0 covering about ``BLOCK_ELEMENTS`` elements each."""
    rows = max(1, BLOCK_ELEMENTS // max(1, math.prod(shape[1:])))
    return [slice(i, min(i + rows, shape[0])) for i in range(0, shape[0], rows)]


def update_in_blocks(rule: Callable[..., Any], p: Array, g: Array, state: list[Array]) -> None:
    """Apply ``rule`` in place to ``p`` and its ``state``, one block of rows at a time."""
    for rows in row_blocks(p.shape):
        rule(p[rows, ...], g[rows, ...], *[a[rows, ...] for a in state])


def assign(dst: Array, value: Array) -> Array:
    """Write ``value`` into ``dst`` in place where ``dst`` is writeable (a block view
    must be written through); otherwise return ``value`` to rebind."""
    if is_writeable_array(dst):
        dst[...] = value
        return dst
    return value
