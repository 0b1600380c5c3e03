"""Optimizers with the update rules of ``torch.optim``.

SGD follows torch's operations one for one; Adam computes the same rule in
the equivalent form of its paper, one array pass fewer, and so agrees with
torch up to rounding (``tests/test_torch_oracle.py`` bounds the difference).

An optimizer is a little state plus an update rule. ``step(params, grads)``
updates a mapping of named parameters with augmented assignment
(``params[name] -= step``): in place where arrays are writeable (NumPy, CuPy,
torch) and by rebinding where they are not (JAX). The state is plain named
arrays (``state[slot][param_name]``), so it can be saved and moved.

Hyperparameters are Python floats, so float32 math stays float32, and the
step count lives on the host, so bias corrections cost no device sync.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from array_api_compat import device as device_of
from array_api_compat import is_writeable_array

from .backend import is_host_array, namespace_of, to_array, to_numpy

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "clip_by_global_norm", "clip_by_value", "get"]

Array = Any


def clip_by_value(grads: Mapping[str, Array], clip_value: float) -> dict[str, Array]:
    """Clip every gradient element to ``[-clip_value, clip_value]``."""
    out = {}
    for name, g in grads.items():
        out[name] = namespace_of(g).clip(g, min=-clip_value, max=clip_value)
    return out


def clip_by_global_norm(grads: Mapping[str, Array], max_norm: float) -> dict[str, Array]:
    """Scale all gradients by ``min(1, max_norm / (||g|| + 1e-6))``, as torch's ``clip_grad_norm_``.

    ``||g||`` is the 2-norm of all gradients together. It stays on the device:
    the scale is a 0-d array, so clipping never syncs with the host.
    """
    gs = list(grads.values())
    if not gs:
        return {}
    xp = namespace_of(gs[0])
    total = xp.sqrt(sum(xp.sum(g * g) for g in gs))
    scale = xp.clip(max_norm / (total + 1e-6), max=1.0)
    return {name: g * scale for name, g in grads.items()}


class Optimizer:
    """Base class: gradient clipping, the step count, and state handling.

    Parameters
    ----------
    lr : float
        Learning rate (a Python float; schedules change ``optimizer.lr``).
    clip_norm : float, optional
        Clip the global gradient norm to this value before the update.
    clip_value : float, optional
        Clip each gradient element to ``[-clip_value, clip_value]``.
    initial_lr : float, optional
        The learning rate that schedules start from (default: ``lr``).
    """

    #: the per-parameter state arrays this optimizer keeps
    slots: tuple[str, ...] = ()

    def __init__(
        self,
        lr: float,
        *,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        initial_lr: float | None = None,
    ):
        self.lr = _positive_float("lr", lr, allow_zero=True)
        # Schedules scale the learning rate the optimizer was built with; it is
        # saved with the optimizer so that a resumed run follows the same schedule.
        self.initial_lr = self.lr if initial_lr is None else _positive_float("initial_lr", initial_lr)
        self.clip_norm = None if clip_norm is None else _positive_float("clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else _positive_float("clip_value", clip_value)
        self.step_count = 0
        self.state: dict[str, dict[str, Array]] = {slot: {} for slot in self.slots}
        # True while state may sit on the host or another device (after a load or move).
        self._check_placement = False
        self._packed: _Packed | None = None
        self._packed_seen: tuple[Any, Any, Any] | None = None

    def step(self, params: MutableMapping[str, Array], grads: Mapping[str, Array]) -> None:
        """Apply one update to ``params`` from ``grads`` (both keyed by parameter name)."""
        packed = self._packed_for(params)
        names = packed.names if packed is not None else list(params)
        missing = [name for name in names if name not in grads]
        if missing:
            raise KeyError(f"{type(self).__name__}.step: no gradient for parameters {missing}")
        if self.clip_value is not None:
            grads = clip_by_value(grads, self.clip_value)
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        if self._check_placement:  # after a load or a move: check and place all state first
            for name in params:
                for slot in self.slots:
                    self._state_for(slot, name, params[name])
            self._check_placement = False
            packed = self._packed_for(params)
        self._prepare_step(self.step_count + 1)
        if packed is not None:  # small network: one update over all parameters at once
            xp = namespace_of(packed.p)
            flat_g = xp.concat([grads[name] for name in packed.names], axis=None)  # flattened
            self._rule(packed.p, flat_g, *packed.state)
        else:
            for name in params:
                self._update_param(params, name, grads[name])
        self.step_count += 1

    def _packed_for(self, params: MutableMapping[str, Array]) -> _Packed | None:
        """The flat buffers of a small network's parameters and state, made on first use
        (and again after anything replaced a parameter or a state array)."""
        # A network's live parameter view counts its assignments (``version``): while
        # it and the state dict are unchanged, the last decision stands, at no cost.
        seen = (params, getattr(params, "version", None), self.state)
        if self._packed_seen is not None and seen[1] is not None and all(
            a is b for a, b in zip(seen, self._packed_seen)
        ):
            return self._packed
        if self._packed is None or not self._packed.intact(params, self.state):
            self._packed = _Packed.make(params, self, self.slots)
        self._packed_seen = (params, getattr(params, "version", None), self.state)
        return self._packed

    def _prepare_step(self, t: int) -> None:
        """Compute the scalars of step ``t`` (Python floats) before the per-parameter loop."""

    def _update_param(self, params: MutableMapping[str, Array], name: str, g: Array) -> None:
        p = params[name]
        state = [self._state_for(slot, name, p) for slot in self.slots]
        if _blockwise(p):
            # Update in cache-sized blocks of views: the temporaries of the rule
            # stay in cache, so only p, g and the state stream through memory.
            for rows in _row_blocks(p.shape):
                self._rule(p[rows, ...], g[rows, ...], *[a[rows, ...] for a in state])
            return
        new_p, *new_state = self._rule(p, g, *state)
        params[name] = new_p
        for slot, a in zip(self.slots, new_state):
            self.state[slot][name] = a

    def _state_for(self, slot: str, name: str, p: Array) -> Array:
        """The state array of ``slot`` for ``p``: zeros at first, and moved to ``p``'s
        namespace, device and dtype after a load or a move."""
        buf = self.state[slot].get(name)
        if buf is None:
            buf = namespace_of(p).zeros_like(p)
            self.state[slot][name] = buf
        elif self._check_placement:
            if tuple(buf.shape) != tuple(p.shape):
                raise ValueError(
                    f"{type(self).__name__}: state {slot!r} of {name!r} has shape "
                    f"{tuple(buf.shape)}, but the parameter has shape {tuple(p.shape)}"
                )
            if not _same_namespace_and_device(buf, p) or buf.dtype != p.dtype:
                buf = to_array(buf, namespace_of(p), device_of(p), p.dtype, copy=True)
                self.state[slot][name] = buf
        return buf

    def _rule(self, p: Array, g: Array, *state: Array) -> tuple[Array, ...]:
        """The update of one parameter (or a block of it): returns ``(p, *state)``.

        It updates with augmented assignment, so writeable arrays (and views of
        them) change in place and immutable ones are returned anew.
        """
        raise NotImplementedError

    # -- state -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Hyperparameters as JSON-able values; ``type(self)(**config)`` rebuilds it."""
        return {"lr": self.lr, "clip_norm": self.clip_norm, "clip_value": self.clip_value,
                "initial_lr": self.initial_lr}

    def state_dict(self) -> dict[str, Any]:
        """``{"step": int, "state": {param_name: {slot: numpy array}}}``, on the host."""
        by_param: dict[str, dict[str, Any]] = {}
        for slot, arrays in self.state.items():
            for name, a in arrays.items():
                by_param.setdefault(name, {})[slot] = to_numpy(a)
        return {"type": type(self).__name__, "config": self.config(),
                "step": self.step_count, "state": by_param}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the step count and state arrays (copied to the host). They are checked
        against the parameters and moved to their device at the next step; nothing
        changes if the dict is malformed."""
        try:
            step = int(state_dict["step"])
            by_param = state_dict["state"]
            new_state: dict[str, dict[str, Any]] = {slot: {} for slot in self.slots}
            for name, slots in by_param.items():
                for slot, a in slots.items():
                    if slot not in new_state:
                        raise KeyError(f"unknown state slot {slot!r}")
                    host = to_numpy(a)  # a copy: the caller's arrays are never updated
                    if host.dtype.kind != "f":
                        raise TypeError(f"state {slot!r} of {name!r} has dtype {host.dtype}")
                    new_state[slot][name] = host
            if step < 0:
                raise ValueError(f"negative step {step}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{type(self).__name__}.load_state_dict: bad state: {exc}") from exc
        self.step_count = step
        self.state = new_state
        self._check_placement = True
        self._packed_seen = None

    def map_state(self, fn: Callable[[Array], Array]) -> None:
        """Replace every state array ``a`` with ``fn(a)`` (used to move between devices)."""
        for arrays in self.state.values():
            for name in arrays:
                arrays[name] = fn(arrays[name])
        self._check_placement = True
        self._packed_seen = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if v is not None)
        return f"{type(self).__name__}({args})"


#: Up to this many parameter elements in all, writeable host parameters are
#: packed into one flat buffer (each parameter a view of it), so that a small
#: network's update is a dozen array operations rather than a dozen per parameter.
PACK_ELEMENTS = 1 << 16


class _Packed:
    """Parameters and optimizer state as views of flat buffers (``p`` and ``state``)."""

    def __init__(self, names: list[str], p: Array, state: list[Array],
                 views: dict[str, Array], state_views: list[dict[str, Array]]):
        self.names, self.p, self.state = names, p, state
        self.views, self.state_views = views, state_views

    @classmethod
    def make(cls, params: MutableMapping[str, Array], opt: Optimizer,
             slots: tuple[str, ...]) -> _Packed | None:
        names = list(params)
        arrays = [params[n] for n in names]
        if not arrays or sum(math.prod(a.shape) for a in arrays) > PACK_ELEMENTS:
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
                stop = start + math.prod(a.shape)
                views[name] = xp.reshape(flat[start:stop], a.shape, copy=False)
                start = stop
            return flat, views

        flat_p, views = pack(arrays)
        state, state_views = [], []
        for slot in slots:
            flat_s, s_views = pack([opt._state_for(slot, n, params[n]) for n in names])
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


#: Elements per block when host arrays are updated in place: the rule's few
#: temporaries of this size (128 KiB in float32) stay in a core's L2 cache.
BLOCK_ELEMENTS = 32768


def _blockwise(p: Array) -> bool:
    """Large writeable host arrays are updated block by block (see ``_update_param``)."""
    return math.prod(p.shape) >= 2 * BLOCK_ELEMENTS and is_writeable_array(p) and is_host_array(p)


def _row_blocks(shape: tuple[int, ...]) -> list[slice]:
    """Slices along axis 0 covering about ``BLOCK_ELEMENTS`` elements each."""
    rows = max(1, BLOCK_ELEMENTS // max(1, math.prod(shape[1:])))
    return [slice(i, min(i + rows, shape[0])) for i in range(0, shape[0], rows)]


def _assign(dst: Array, value: Array) -> Array:
    """Write ``value`` into ``dst`` in place where ``dst`` is writeable (a block view
    must be written through); otherwise return ``value`` to rebind."""
    if is_writeable_array(dst):
        dst[...] = value
        return dst
    return value


def _same_namespace_and_device(a: Array, b: Array) -> bool:
    try:
        return namespace_of(a) is namespace_of(b) and device_of(a) == device_of(b)
    except TypeError:  # a is not an array of a known namespace (e.g. a host copy)
        return False


def _positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _unit_interval(name: str, value: Any) -> float:
    value = _positive_float(name, value, allow_zero=True)
    if value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


class SGD(Optimizer):
    """Stochastic gradient descent, the rule of ``torch.optim.SGD`` (dampening 0).

    ``g <- g + weight_decay * p`` (the notebook's L2 "penalty"), then with momentum
    ``mu``: ``b <- mu * b + g`` (``b = g`` on the first step), and ``g <- g + mu * b``
    (Nesterov) or ``g <- b``. Finally ``p <- p - lr * g``.
    """

    def __init__(
        self,
        lr: float = 1e-2,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        **clipping: Any,
    ):
        self.momentum = _unit_interval("momentum", momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = _positive_float("weight_decay", weight_decay, allow_zero=True)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.slots = ("momentum_buffer",) if self.momentum else ()
        super().__init__(lr, **clipping)

    def _rule(self, p: Array, g: Array, *state: Array) -> tuple[Array, ...]:
        if self.weight_decay:
            g = g + self.weight_decay * p
        if not self.momentum:
            p -= self.lr * g
            return (p,)
        (buf,) = state
        # The buffer starts at zero, so the first step makes it exactly g, as torch's clone.
        buf *= self.momentum
        buf += g
        g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g
        return p, buf

    def config(self) -> dict[str, Any]:
        return {**super().config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam, the rule of ``torch.optim.Adam``.

    With ``t`` the step, ``g <- g + weight_decay * p`` (L2 penalty), then

    - ``m <- m + (1 - b1) (g - m)``        (first moment, torch's ``lerp``)
    - ``v <- b2 v + (1 - b2) g^2``         (second moment)
    - ``v_max <- max(v_max, v)`` and use ``v_max`` for ``v`` (AMSGrad only)
    - ``p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``

    The last line is computed in the equivalent form of Kingma & Ba (2015,
    section 2), ``p <- p - a_t * m / (sqrt(v) + eps_t)`` with
    ``a_t = lr sqrt(1 - b2^t) / (1 - b1^t)`` and ``eps_t = eps sqrt(1 - b2^t)``:
    the bias corrections become two host scalars, and the update makes one pass
    over the arrays fewer. It differs from torch's order only by rounding.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        **clipping: Any,
    ):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of floats, got {betas!r}")
        self.betas = (_unit_interval("betas[0]", betas[0]), _unit_interval("betas[1]", betas[1]))
        self.eps = _positive_float("eps", eps, allow_zero=True)
        self.weight_decay = _positive_float("weight_decay", weight_decay, allow_zero=True)
        self.amsgrad = bool(amsgrad)
        self.slots = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        super().__init__(lr, **clipping)

    def _prepare_step(self, t: int) -> None:
        b1, b2 = self.betas
        bias_correction2_sqrt = math.sqrt(1.0 - b2**t)
        self._step_size = self.lr * bias_correction2_sqrt / (1.0 - b1**t)  # a_t
        self._eps_t = self.eps * bias_correction2_sqrt

    def _decay(self, p: Array, g: Array) -> tuple[Array, Array]:
        """Adam folds weight decay into the gradient (L2); AdamW overrides this."""
        return p, (g + self.weight_decay * p if self.weight_decay else g)

    def _rule(self, p: Array, g: Array, *state: Array) -> tuple[Array, ...]:
        xp = namespace_of(p)
        b1, b2 = self.betas
        m, v, *vmax = state
        p, g = self._decay(p, g)
        d = g - m  # m <- m + (1 - b1)(g - m): one temporary, updated in place
        d *= 1.0 - b1
        m += d
        g2 = g * g  # v <- b2 v + (1 - b2) g^2
        g2 *= 1.0 - b2
        v *= b2
        v += g2
        second = v
        if self.amsgrad:
            vmax = [_assign(vmax[0], xp.maximum(vmax[0], v))]
            second = vmax[0]
        denom = xp.sqrt(second)  # sqrt(v) + eps_t
        denom += self._eps_t
        step = m / denom  # p <- p - a_t * m / denom
        step *= self._step_size
        p -= step
        return (p, m, v, *vmax)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """AdamW, the rule of ``torch.optim.AdamW``: decoupled weight decay.

    ``p <- p (1 - lr * weight_decay)`` first, then the Adam step without L2.
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 **clipping: Any):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, **clipping)

    def _decay(self, p: Array, g: Array) -> tuple[Array, Array]:
        if self.weight_decay:
            p *= 1.0 - self.lr * self.weight_decay
        return p, g


_BY_NAME: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """Return an optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``) or an instance."""
    if isinstance(spec, Optimizer):
        return spec
    key = spec.lower() if isinstance(spec, str) else spec
    if key not in _BY_NAME:
        raise ValueError(f"unknown optimizer {spec!r}; known optimizers are sgd, adam, adamw")
    return _BY_NAME[key](**kwargs)
