"""Optimizers with exactly the update rules of ``torch.optim``.

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

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from .backend import to_array, to_numpy

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "clip_by_global_norm", "clip_by_value", "get"]

Array = Any


def clip_by_value(grads: Mapping[str, Array], clip_value: float) -> dict[str, Array]:
    """Clip every gradient element to ``[-clip_value, clip_value]``."""
    out = {}
    for name, g in grads.items():
        out[name] = array_namespace(g).clip(g, min=-clip_value, max=clip_value)
    return out


def clip_by_global_norm(grads: Mapping[str, Array], max_norm: float) -> dict[str, Array]:
    """Scale all gradients by ``min(1, max_norm / (||g|| + 1e-6))``, as torch's ``clip_grad_norm_``.

    ``||g||`` is the 2-norm of all gradients together. It stays on the device:
    the scale is a 0-d array, so clipping never syncs with the host.
    """
    gs = list(grads.values())
    if not gs:
        return {}
    xp = array_namespace(gs[0])
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

    def step(self, params: MutableMapping[str, Array], grads: Mapping[str, Array]) -> None:
        """Apply one update to ``params`` from ``grads`` (both keyed by parameter name)."""
        missing = [name for name in params if name not in grads]
        if missing:
            raise KeyError(f"{type(self).__name__}.step: no gradient for parameters {missing}")
        if self.clip_value is not None:
            grads = clip_by_value(grads, self.clip_value)
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        self.step_count += 1
        for name in params:
            self._ensure_state(name, params[name])
            self._update(params, name, grads[name])

    def _ensure_state(self, name: str, p: Array) -> None:
        xp = array_namespace(p)
        for slot in self.slots:
            buf = self.state[slot].get(name)
            if buf is None:
                self.state[slot][name] = xp.zeros_like(p)
            elif not _same_namespace_and_device(buf, p):  # loaded from host, or moved
                self.state[slot][name] = to_array(buf, xp, device_of(p), p.dtype)

    def _update(self, params: MutableMapping[str, Array], name: str, g: Array) -> None:
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
        """Restore the step count and state arrays. They move to the parameters' device
        at the next step; nothing changes if the dict is malformed."""
        try:
            step = int(state_dict["step"])
            by_param = state_dict["state"]
            new_state: dict[str, dict[str, Any]] = {slot: {} for slot in self.slots}
            for name, slots in by_param.items():
                for slot, a in slots.items():
                    if slot not in new_state:
                        raise KeyError(f"unknown state slot {slot!r}")
                    new_state[slot][name] = a
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{type(self).__name__}.load_state_dict: bad state: {exc}") from exc
        self.step_count = step
        self.state = new_state

    def map_state(self, fn: Callable[[Array], Array]) -> None:
        """Replace every state array ``a`` with ``fn(a)`` (used to move between devices)."""
        for arrays in self.state.values():
            for name in arrays:
                arrays[name] = fn(arrays[name])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if v is not None)
        return f"{type(self).__name__}({args})"


def _same_namespace_and_device(a: Array, b: Array) -> bool:
    try:
        return array_namespace(a) is array_namespace(b) and device_of(a) == device_of(b)
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

    def _ensure_state(self, name: str, p: Array) -> None:
        # The momentum buffer starts as the first gradient, not as zeros (see _update).
        buf = self.state.get("momentum_buffer", {}).get(name)
        if buf is not None and not _same_namespace_and_device(buf, p):
            self.state["momentum_buffer"][name] = to_array(
                buf, array_namespace(p), device_of(p), p.dtype
            )

    def _update(self, params: MutableMapping[str, Array], name: str, g: Array) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * params[name]
        if self.momentum:
            bufs = self.state["momentum_buffer"]
            if name not in bufs:
                bufs[name] = g + 0.0  # a copy: g may be the layer's own gradient array
            else:
                bufs[name] *= self.momentum
                bufs[name] += g
            g = g + self.momentum * bufs[name] if self.nesterov else bufs[name]
        params[name] -= self.lr * g

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

    def _decay(self, params: MutableMapping[str, Array], name: str, g: Array) -> Array:
        """Adam folds weight decay into the gradient (L2); AdamW overrides this."""
        return g + self.weight_decay * params[name] if self.weight_decay else g

    def _update(self, params: MutableMapping[str, Array], name: str, g: Array) -> None:
        xp = array_namespace(g)
        b1, b2 = self.betas
        g = self._decay(params, name, g)
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        m[name] += (1.0 - b1) * (g - m[name])
        v[name] *= b2
        v[name] += (1.0 - b2) * (g * g)
        second = v[name]
        if self.amsgrad:
            vmax = self.state["max_exp_avg_sq"]
            vmax[name] = xp.maximum(vmax[name], v[name])
            second = vmax[name]
        t = self.step_count
        step_size = self.lr / (1.0 - b1**t)
        bias_correction2_sqrt = math.sqrt(1.0 - b2**t)
        denom = xp.sqrt(second) / bias_correction2_sqrt + self.eps
        params[name] -= step_size * (m[name] / denom)

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

    def _decay(self, params: MutableMapping[str, Array], name: str, g: Array) -> Array:
        if self.weight_decay:
            params[name] *= 1.0 - self.lr * self.weight_decay
        return g


_BY_NAME: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """Return an optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``) or an instance."""
    if isinstance(spec, Optimizer):
        return spec
    key = spec.lower() if isinstance(spec, str) else spec
    if key not in _BY_NAME:
        raise ValueError(f"unknown optimizer {spec!r}; known optimizers are sgd, adam, adamw")
    return _BY_NAME[key](**kwargs)
