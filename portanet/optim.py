"""Optimizers with the update rules of ``torch.optim``, learning-rate schedules, clipping.

An optimizer is a little state plus an update rule. ``step(params, grads)``
updates a mapping of named parameters with augmented assignment
(``params[name] -= step``): in place where arrays are writeable (NumPy, CuPy,
torch) and by rebinding where they are not (JAX). The state is plain named
arrays (``state[slot][param_name]``), so it can be saved and moved.

Each rule below is written once, as ``torch.optim``'s documentation states it.
SGD follows torch's operations one for one; Adam computes the same rule in the
equivalent form of its paper, one array pass fewer, and so agrees with torch up
to rounding (``tests/test_torch_oracle.py`` bounds the difference). On host
arrays the base class applies the rule to packed or blocked views of the arrays
(``_fast_optim.py``), with bitwise the same result.

Hyperparameters are Python floats, so float32 math stays float32, and the
step count lives on the host, so bias corrections and schedules cost no device
sync. ``lr`` may be a float or a schedule: a function of the step count,
evaluated on the host before each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from array_api_compat import device as device_of

from . import _fast_optim as fast
from .backend import namespace_of, to_array, to_numpy
from .registry import Registry

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealing",
    "ExponentialLR",
    "Optimizer",
    "Schedule",
    "StepLR",
    "clip_by_global_norm",
    "clip_by_value",
    "get",
    "get_schedule",
]

Array = Any

#: Every optimizer name (case does not matter: ``"adam"``, ``"Adam"``).
OPTIMIZERS: Registry[Optimizer] = Registry("optimizer", case_sensitive=False)
#: Every schedule name; an optimizer saved with a schedule for ``lr`` stores its config.
SCHEDULES: Registry[Schedule] = Registry("schedule")


# ----------------------------------------------------------------- clipping --


# Clipping is written with maximum and minimum against Python floats, never with
# xp.clip: array-api-compat's clip for CuPy is its generic one, which assigns through
# boolean masks (out[mask] = b[mask]), and CuPy reads each mask's count back to the
# host, a device synchronization on every step. maximum/minimum are one elementwise
# kernel each, propagate NaN as clip does, and take a Python float on every backend
# (torch's through array-api-compat >= 1.16, the floor in pyproject.toml).


def clip_by_value(grads: Mapping[str, Array], clip_value: float) -> dict[str, Array]:
    """Clip every gradient element to ``[-clip_value, clip_value]``, as torch's
    ``clip_grad_value_``; elementwise on the device, no host sync."""
    out = {}
    for name, g in grads.items():
        xp = namespace_of(g)
        out[name] = xp.minimum(xp.maximum(g, -clip_value), clip_value)
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
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    return {name: g * scale for name, g in grads.items()}


# ---------------------------------------------------------------- schedules --


class Schedule:
    """A learning rate as a function of a count: ``schedule(t) -> lr``.

    ``t`` counts optimizer steps when the schedule is an optimizer's ``lr``
    (``Adam(lr=CosineAnnealing(1000, initial_lr=3e-3))``), or what ``per`` says
    when a :class:`~portanet.callbacks.LearningRateScheduler` applies it
    (``"epoch"``, or ``"step"`` so that it resumes exactly from a checkpoint).
    The rate starts from ``initial_lr``: the schedule's own, or the one passed in.
    """

    per = "epoch"

    def __init__(self, initial_lr: float | None = None):
        self.initial_lr = None if initial_lr is None else _positive_float("initial_lr", initial_lr)

    def __call__(self, t: int, initial_lr: float | None = None) -> float:
        base = self.initial_lr if initial_lr is None else initial_lr
        if base is None:
            raise ValueError(f"{type(self).__name__} has no initial_lr: give initial_lr= to use "
                             "it as an optimizer's lr")
        return self.value(t, float(base))

    def value(self, t: int, initial_lr: float) -> float:
        """The learning rate at count ``t`` for a schedule starting from ``initial_lr``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild the schedule through :data:`SCHEDULES`."""
        raise NotImplementedError


def get_schedule(spec: str | Mapping[str, Any] | Schedule) -> Schedule:
    """A :class:`Schedule` from a config dict (``{"name": "cosine", ...}``) or an instance."""
    return spec if isinstance(spec, Schedule) else SCHEDULES.create(spec)


@SCHEDULES.register("step")
class StepLR(Schedule):
    """``lr = initial_lr * gamma ** (t // step_size)``, as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, step_size: int, gamma: float = 0.1, initial_lr: float | None = None):
        super().__init__(initial_lr)
        self.step_size, self.gamma = int(step_size), float(gamma)
        if self.step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")

    def value(self, t: int, initial_lr: float) -> float:
        return initial_lr * self.gamma ** (t // self.step_size)

    def config(self) -> dict[str, Any]:
        return {"name": "step", "step_size": self.step_size, "gamma": self.gamma,
                "initial_lr": self.initial_lr}


@SCHEDULES.register("exponential")
class ExponentialLR(Schedule):
    """``lr = initial_lr * gamma ** t``."""

    def __init__(self, gamma: float, initial_lr: float | None = None):
        super().__init__(initial_lr)
        self.gamma = float(gamma)

    def value(self, t: int, initial_lr: float) -> float:
        return initial_lr * self.gamma**t

    def config(self) -> dict[str, Any]:
        return {"name": "exponential", "gamma": self.gamma, "initial_lr": self.initial_lr}


@SCHEDULES.register("cosine")
class CosineAnnealing(Schedule):
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``eta_min`` at ``total_steps``.

    Counted in optimizer steps: ``lr = eta_min + (initial_lr - eta_min) (1 + cos(pi s)) / 2``
    with ``s`` the fraction of the decay done.
    """

    per = "step"

    def __init__(self, total_steps: int, eta_min: float = 0.0, warmup_steps: int = 0,
                 initial_lr: float | None = None):
        super().__init__(initial_lr)
        if total_steps <= warmup_steps:
            raise ValueError("CosineAnnealing: total_steps must exceed warmup_steps")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.eta_min = float(eta_min)

    def value(self, t: int, initial_lr: float) -> float:
        if t < self.warmup_steps:
            return initial_lr * (t + 1) / self.warmup_steps
        s = min(1.0, (t - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.eta_min + (initial_lr - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * s))

    def config(self) -> dict[str, Any]:
        return {"name": "cosine", "total_steps": self.total_steps, "eta_min": self.eta_min,
                "warmup_steps": self.warmup_steps, "initial_lr": self.initial_lr}


# ------------------------------------------------------------ the base class --


class Optimizer:
    """Base class: the step count, the learning rate (or its schedule), clipping, and state.

    Parameters
    ----------
    lr : float, Schedule or callable
        The learning rate, a Python float; or a schedule, ``lr(step) -> float``,
        evaluated on the host before each step (``step`` counts from 0). A
        :class:`Schedule` (or its config dict) can be saved in a checkpoint.
    clip_norm : float, optional
        Clip the global gradient norm to this value before the update.
    clip_value : float, optional
        Clip each gradient element to ``[-clip_value, clip_value]``.
    initial_lr : float, optional
        The learning rate that epoch-level schedules
        (:class:`~portanet.callbacks.LearningRateScheduler`) start from (default: ``lr``).
    """

    #: the per-parameter state arrays this optimizer keeps
    slots: tuple[str, ...] = ()

    def __init__(
        self,
        lr: float | Schedule | Callable[[int], float] | Mapping[str, Any],
        *,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        initial_lr: float | None = None,
    ):
        if isinstance(lr, Mapping):
            lr = get_schedule(lr)
        self.schedule = lr if callable(lr) else None
        first = self.schedule(0) if self.schedule is not None else lr
        self.lr = _positive_float("lr", first, allow_zero=True)
        # Epoch schedules scale the learning rate the optimizer was built with; it is
        # saved with the optimizer so that a resumed run follows the same schedule.
        self.initial_lr = self.lr if initial_lr is None else _positive_float("initial_lr", initial_lr)
        self.clip_norm = None if clip_norm is None else _positive_float("clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else _positive_float("clip_value", clip_value)
        self.step_count = 0
        self.state: dict[str, dict[str, Array]] = {slot: {} for slot in self.slots}
        # True while state may sit on the host or another device (after a load or move).
        self._check_placement = False
        self._packed: fast.Packed | None = None  # the fast path's cache (_fast_optim.py)
        self._packed_seen: tuple[Any, Any, Any] | None = None

    def step(self, params: MutableMapping[str, Array], grads: Mapping[str, Array]) -> None:
        """Apply one update to ``params`` from ``grads`` (both keyed by parameter name)."""
        missing = [name for name in params if name not in grads]
        if missing:
            raise KeyError(f"{type(self).__name__}.step: no gradient for parameters {missing}")
        if self.clip_value is not None:
            grads = clip_by_value(grads, self.clip_value)
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        if self._check_placement:  # after a load or a move: check and place all state first
            for name in params:
                for slot in self.slots:
                    self.state_for(slot, name, params[name])
            self._check_placement = False
        if self.schedule is not None:
            self.lr = _scheduled_lr(self.schedule, self.step_count)
        self._prepare_step(self.step_count + 1)
        packed = fast.packed(self, params)
        if packed is not None:  # a small host network: one update over all parameters at once
            packed.update(self._rule, grads)
        else:
            for name in params:
                self._update_param(params, name, grads[name])
        self.step_count += 1

    def _update_param(self, params: MutableMapping[str, Array], name: str, g: Array) -> None:
        p = params[name]
        state = [self.state_for(slot, name, p) for slot in self.slots]
        if fast.blockwise(p):  # a large host array: in place, block by block
            fast.update_in_blocks(self._rule, p, g, state)
            return
        new_p, *new_state = self._rule(p, g, *state)
        params[name] = new_p
        for slot, a in zip(self.slots, new_state):
            self.state[slot][name] = a

    def state_for(self, slot: str, name: str, p: Array) -> Array:
        """The state array of ``slot`` for parameter ``name``: zeros at first, and moved to
        ``p``'s namespace, device and dtype after a load or a move."""
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

    def _prepare_step(self, t: int) -> None:
        """Compute the scalars of step ``t`` (Python floats) before the per-parameter loop."""

    def _rule(self, p: Array, g: Array, *state: Array) -> tuple[Array, ...]:
        """The update of one parameter (or a view of it): returns ``(p, *state)``.

        It updates with augmented assignment, so writeable arrays (and views of
        them) change in place and immutable ones are returned anew.
        """
        raise NotImplementedError

    # -- state -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Hyperparameters as JSON-able values; ``type(self)(**config)`` rebuilds it.

        Raises ``ValueError`` when ``lr`` is a schedule that cannot be described
        (a plain function rather than a :class:`Schedule`).
        """
        return {"lr": self._lr_config(), "clip_norm": self.clip_norm,
                "clip_value": self.clip_value, "initial_lr": self.initial_lr}

    def _lr_config(self) -> float | dict[str, Any]:
        if self.schedule is None:
            return self.lr
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"{type(self).__name__}: lr is the function {self.schedule!r}, which "
                             "cannot be saved; use a registered Schedule (optim.SCHEDULES)")
        return self.schedule.config()

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
        if self.schedule is not None:
            self.lr = _scheduled_lr(self.schedule, step)

    def map_state(self, fn: Callable[[Array], Array]) -> None:
        """Replace every state array ``a`` with ``fn(a)`` (used to move between devices)."""
        for arrays in self.state.values():
            for name in arrays:
                arrays[name] = fn(arrays[name])
        self._check_placement = True
        self._packed_seen = None

    def __repr__(self) -> str:
        lr = self.schedule if self.schedule is not None else self.lr
        rest = {k: v for k, v in self.config().items() if k != "lr"} if self.schedule is None \
            else {"clip_norm": self.clip_norm, "clip_value": self.clip_value}
        args = ", ".join([f"lr={lr!r}"] + [f"{k}={v!r}" for k, v in rest.items() if v is not None])
        return f"{type(self).__name__}({args})"


def _scheduled_lr(schedule: Callable[[int], float], step: int) -> float:
    lr = float(schedule(step))
    if not (lr >= 0.0 and math.isfinite(lr)):
        raise ValueError(f"the learning-rate schedule gave {lr!r} at step {step}; it must be a "
                         "finite number >= 0")
    return lr


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


# ------------------------------------------------------------- the rules --


@OPTIMIZERS.register("sgd")
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


@OPTIMIZERS.register("adam")
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

    ``eps_hat=True`` takes ``eps`` as the paper's ``eps_hat`` instead, ``eps_t = eps``:
    the rule of scikit-learn's MLP and of Keras, which adds ``eps`` to ``sqrt(v)``
    before the bias correction. The two differ only where ``sqrt(v)`` is near ``eps``.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        eps_hat: bool = False,
        **clipping: Any,
    ):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of floats, got {betas!r}")
        self.betas = (_unit_interval("betas[0]", betas[0]), _unit_interval("betas[1]", betas[1]))
        self.eps = _positive_float("eps", eps, allow_zero=True)
        self.weight_decay = _positive_float("weight_decay", weight_decay, allow_zero=True)
        self.amsgrad = bool(amsgrad)
        self.eps_hat = bool(eps_hat)
        self.slots = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        super().__init__(lr, **clipping)

    def _prepare_step(self, t: int) -> None:
        b1, b2 = self.betas
        bias_correction2_sqrt = math.sqrt(1.0 - b2**t)
        self._step_size = self.lr * bias_correction2_sqrt / (1.0 - b1**t)  # a_t
        self._eps_t = self.eps if self.eps_hat else self.eps * bias_correction2_sqrt

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
            vmax = [fast.assign(vmax[0], xp.maximum(vmax[0], v))]
            second = vmax[0]
        denom = xp.sqrt(second)  # sqrt(v) + eps_t
        denom += self._eps_t
        step = m / denom  # p <- p - a_t * m / denom
        step *= self._step_size
        p -= step
        return (p, m, v, *vmax)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad,
                "eps_hat": self.eps_hat}


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """AdamW, the rule of ``torch.optim.AdamW``: decoupled weight decay.

    ``p <- p (1 - lr * weight_decay)`` first, then the Adam step without L2.
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 *, eps_hat: bool = False, **clipping: Any):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, eps_hat=eps_hat, **clipping)

    def _decay(self, p: Array, g: Array) -> tuple[Array, Array]:
        if self.weight_decay:
            p *= 1.0 - self.lr * self.weight_decay
        return p, g


def get(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """Return an optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``) or an instance.

    ``kwargs`` (``lr=``, ``weight_decay=``, ...) go to the optimizer's constructor.
    """
    if isinstance(spec, Optimizer):
        return spec
    return OPTIMIZERS.create(spec, **kwargs)
