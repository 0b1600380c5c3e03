"""Callbacks: hooks that ``fit`` calls at the start and end of training, of each epoch
and after each batch.

``cb.net`` and ``cb.optimizer`` are set when training begins. A callback stops
training with ``self.net.stop_training = True`` (at the end of the epoch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .optim import Schedule

if TYPE_CHECKING:
    from .network import Sequential
    from .optim import Optimizer

__all__ = [
    "Callback",
    "EarlyStopping",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
]


class Callback:
    """Hooks called by :func:`portanet.training.fit`. ``self.net`` and ``self.optimizer``
    are set at train begin.

    Set ``self.net.stop_training = True`` to stop after the current epoch.
    """

    net: Sequential
    optimizer: Optimizer
    #: the communicator while ``fit`` trains across ranks (None in one process)
    comm: Any = None

    def on_train_begin(self, logs: dict[str, float]) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, float]) -> None: ...


def _better(mode: str, value: float, best: float, min_delta: float) -> bool:
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode_for(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


def _monitored(logs: Mapping[str, float], monitor: str, who: str) -> float:
    if monitor not in logs:
        raise KeyError(f"{who}: monitored value {monitor!r} is not logged; available: {sorted(logs)}")
    return logs[monitor]


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights`` the network gets back the parameters (and buffers)
    of its best epoch when training ends.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 restore_best_weights: bool = False, mode: str = "auto"):
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(float(min_delta))
        self.restore_best_weights = restore_best_weights
        self.mode = _mode_for(monitor, mode)
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None

    def on_train_begin(self, logs: dict[str, float]) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.best_state: dict[str, Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_state = self.net.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.net.stop_training = True

    def on_train_end(self, logs: dict[str, float]) -> None:
        if self.restore_best_weights and self.best_state is not None:
            self.net.load_state_dict(self.best_state)


class ModelCheckpoint(Callback):
    """Save the network (and optimizer) after each epoch to ``path``.

    ``path`` may hold ``{epoch}`` and log keys, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``.
    With ``save_best_only`` it saves only when ``monitor`` improves.
    """

    def __init__(self, path: str, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto"):
        self.path, self.monitor, self.save_best_only = str(path), monitor, save_best_only
        self.mode = _mode_for(monitor, mode)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.saved: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not _better(self.mode, value, self.best, 0.0):
                return
            self.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        if self.comm is None or self.comm.is_root:  # across ranks, rank 0 writes for all
            self.net.save(path, optimizer=self.optimizer)  # fit has set net.epoch = epoch + 1
        self.saved.append(path)


class LearningRateScheduler(Callback):
    """Set ``optimizer.lr`` from a :class:`~portanet.optim.Schedule` (or a function
    ``(epoch, initial_lr) -> lr``) at the start of each epoch, or before each step for
    step schedules (``schedule.per == "step"``).

    For a schedule over optimizer steps, the optimizer's own ``lr=`` can hold it
    instead (``Adam(lr=CosineAnnealing(1000, initial_lr=3e-3))``).
    """

    def __init__(self, schedule: Schedule | Callable[[int, float], float]):
        self.schedule = schedule
        self.per = getattr(schedule, "per", "epoch")

    def on_train_begin(self, logs: dict[str, float]) -> None:
        if self.optimizer.schedule is not None:
            raise ValueError("LearningRateScheduler: the optimizer's lr is a schedule already; "
                             "use one or the other")

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        if self.per == "epoch":
            self.optimizer.lr = float(self.schedule(epoch, self.optimizer.initial_lr))
        else:
            self._set_step_lr()

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        if self.per == "step":
            self._set_step_lr()

    def _set_step_lr(self) -> None:
        self.optimizer.lr = float(self.schedule(self.optimizer.step_count, self.optimizer.initial_lr))


class ReduceLROnPlateau(Callback):
    """Multiply ``optimizer.lr`` by ``factor`` when ``monitor`` stalls for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 min_delta: float = 1e-4, min_lr: float = 0.0, mode: str = "auto"):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.min_delta, self.min_lr = float(min_delta), float(min_lr)
        self.mode = _mode_for(monitor, mode)

    def on_train_begin(self, logs: dict[str, float]) -> None:
        if self.optimizer.schedule is not None:
            raise ValueError("ReduceLROnPlateau: the optimizer's lr is a schedule, which would "
                             "override every reduction")
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
            self.wait = 0
