"""The fit loop: batches, validation, metrics, callbacks, divergence and Ctrl-C.

Data goes to the device once per ``fit`` call; batches are gathered on the
device with ``take``. Losses and metrics are summed on the device and reach the
host once per epoch (and when the progress bar refreshes, a few times a
second at most), so a GPU is not stalled every step. The one per-step check is
for divergence, which ``check_finite`` controls.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from array_api_compat import is_writeable_array

from . import losses as L
from . import optim as O
from .backend import from_host, namespace_of, to_numpy

if TYPE_CHECKING:
    from .network import Sequential

__all__ = [
    "Callback",
    "CosineAnnealing",
    "EarlyStopping",
    "ExponentialLR",
    "History",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "StepLR",
    "TrainingDivergedError",
    "evaluate",
    "fit",
]

Array = Any


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite, or exploded; the network was restored.

    ``epoch`` and ``step`` count from 0 (the message counts from 1, as the progress bar).
    """

    def __init__(self, epoch: int, step: int, lr: float, value: float):
        self.epoch, self.step, self.lr, self.value = epoch, step, lr, value
        super().__init__(
            f"training diverged: loss is {value:.6g} at epoch {epoch + 1}, step {step + 1} "
            f"(learning rate {lr:g}); parameters and optimizer state were restored to the "
            "last checked step whose loss was finite and in range. Try a smaller learning "
            "rate or clip_norm=."
        )


# ---------------------------------------------------------------- metrics ----


class Metric:
    """A metric summed over batches on the device: ``total(pred, target)`` returns a
    0-d array; the epoch value is the sum over batches divided by the sample count."""

    name = "metric"

    def total(self, pred: Array, target: Array) -> Array:
        raise NotImplementedError


class Accuracy(Metric):
    """Fraction of correct predictions.

    Multiclass ``(n, k)`` predictions: argmax against integer labels or the argmax
    of probability targets. Binary ``(n, 1)``: thresholded at 0 for logits and
    at 0.5 for probabilities (``from_logits`` follows the loss when not given).
    """

    name = "accuracy"

    def __init__(self, from_logits: bool = True):
        self.from_logits = from_logits

    def total(self, pred: Array, target: Array) -> Array:
        xp = _ns(pred)
        if pred.shape[-1] > 1:
            guess = xp.argmax(pred, axis=-1)
            truth = target if target.ndim == 1 else xp.argmax(target, axis=-1)
            hits = guess == xp.astype(truth, guess.dtype)
        else:
            threshold = 0.0 if self.from_logits else 0.5
            hits = (pred > threshold) == (target > 0.5)
        return xp.sum(xp.astype(hits, pred.dtype))


class _Elementwise(Metric):
    def __init__(self, name: str, fn: Callable[[Any, Array], Array]):
        self.name, self._fn = name, fn

    def total(self, pred: Array, target: Array) -> Array:
        xp = _ns(pred)
        per_row = xp.sum(self._fn(xp, pred - target), axis=-1) / float(pred.shape[-1])
        return xp.sum(per_row)


def _ns(a: Array) -> Any:
    return namespace_of(a)


def get_metric(spec: str | Metric, loss: L.Loss) -> Metric:
    """A metric from ``"accuracy"``, ``"mse"``, ``"mae"`` or an instance."""
    if isinstance(spec, Metric):
        return spec
    if spec in ("accuracy", "acc"):
        return Accuracy(from_logits=isinstance(loss, (L.BCEWithLogits, L.CrossEntropy)))
    if spec == "mse":
        return _Elementwise("mse", lambda xp, d: d * d)
    if spec == "mae":
        return _Elementwise("mae", lambda xp, d: xp.abs(d))
    raise ValueError(f"unknown metric {spec!r}; known metrics are accuracy, mse, mae")


# ---------------------------------------------------------------- history ----


class History:
    """Per-epoch values: ``history.history["loss"]``, ``["val_loss"]``, ``["accuracy"]``, ..."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.interrupted = False

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def plot(self, path: str) -> str:
        """Write a PNG of the loss and metric curves to ``path``; needs the ``plot`` extra."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError(
                'History.plot needs matplotlib: pip install "portanet[plot]"'
            ) from exc
        metrics = sorted({k.removeprefix("val_") for k in self.history} - {"loss"})
        panels = ["loss", *metrics]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        epochs = [e + 1 for e in self.epoch]
        for ax, key in zip(axes[0], panels):
            for prefix, style in (("", "-"), ("val_", "--")):
                values = self.history.get(prefix + key)
                if values:
                    ax.plot(epochs, values, style, marker="o", ms=3,
                            label="validation" if prefix else "training")
            ax.set_title(key)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


# -------------------------------------------------------------- callbacks ----


class Callback:
    """Hooks called by :func:`fit`. ``self.net`` and ``self.optimizer`` are set at train begin.

    Set ``self.net.stop_training = True`` to stop after the current epoch.
    """

    net: Sequential
    optimizer: O.Optimizer

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

    With ``restore_best_weights`` the network gets back the parameters of its best
    epoch when training ends.
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
        from .io import save

        path = self.path.format(epoch=epoch + 1, **logs)
        save(self.net, path, optimizer=self.optimizer, epoch=epoch + 1)
        self.saved.append(path)


# ---------------------------------------------------------------- schedules --


class Schedule:
    """A learning-rate schedule: ``schedule(t, initial_lr) -> lr``.

    ``per`` is ``"epoch"`` (``t`` counts epochs) or ``"step"`` (``t`` counts
    optimizer steps, so the schedule resumes exactly from a checkpoint).
    """

    per = "epoch"

    def __call__(self, t: int, initial_lr: float) -> float:
        raise NotImplementedError


class StepLR(Schedule):
    """``lr = initial_lr * gamma ** (epoch // step_size)``, as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, t: int, initial_lr: float) -> float:
        return initial_lr * self.gamma ** (t // self.step_size)


class ExponentialLR(Schedule):
    """``lr = initial_lr * gamma ** epoch``."""

    def __init__(self, gamma: float):
        self.gamma = float(gamma)

    def __call__(self, t: int, initial_lr: float) -> float:
        return initial_lr * self.gamma**t


class CosineAnnealing(Schedule):
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``eta_min`` at ``total_steps``.

    Counted in optimizer steps: ``lr = eta_min + (initial_lr - eta_min) (1 + cos(pi s)) / 2``
    with ``s`` the fraction of the decay done.
    """

    per = "step"

    def __init__(self, total_steps: int, eta_min: float = 0.0, warmup_steps: int = 0):
        if total_steps <= warmup_steps:
            raise ValueError("CosineAnnealing: total_steps must exceed warmup_steps")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.eta_min = float(eta_min)

    def __call__(self, t: int, initial_lr: float) -> float:
        if t < self.warmup_steps:
            return initial_lr * (t + 1) / self.warmup_steps
        s = min(1.0, (t - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.eta_min + (initial_lr - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * s))


class LearningRateScheduler(Callback):
    """Set ``optimizer.lr`` from a :class:`Schedule` (or a function ``(epoch, initial_lr) -> lr``)
    at the start of each epoch, or before each step for step schedules."""

    def __init__(self, schedule: Schedule | Callable[[int, float], float]):
        self.schedule = schedule
        self.per = getattr(schedule, "per", "epoch")

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


# ------------------------------------------------------- the fit machinery --


class _Snapshot:
    """Copies of parameters and optimizer state, to roll back a diverged step.

    Writeable arrays are copied into buffers allocated once; immutable (JAX)
    arrays are simply kept, since nothing can change them.
    """

    def __init__(self, net: Sequential, optimizer: O.Optimizer):
        self.net, self.optimizer = net, optimizer
        self.params: dict[str, Array] = {}
        self.state: dict[str, dict[str, Array]] = {}
        self.step_count = optimizer.step_count

    @staticmethod
    def _keep(buffers: dict[str, Array], name: str, a: Array) -> None:
        buf = buffers.get(name)
        if is_writeable_array(a):
            if buf is None or buf.shape != a.shape:
                buffers[name] = a + 0.0  # fresh copy
            else:
                buf[...] = a
        else:
            buffers[name] = a

    def take(self) -> None:
        for name, p in self.net.parameters().items():
            self._keep(self.params, name, p)
        for slot, arrays in self.optimizer.state.items():
            bufs = self.state.setdefault(slot, {})
            for name in list(bufs):
                if name not in arrays:
                    del bufs[name]
            for name, a in arrays.items():
                self._keep(bufs, name, a)
        self.step_count = self.optimizer.step_count

    def restore(self) -> None:
        params = self.net.parameters()
        for name, a in self.params.items():
            params[name] = a + 0.0
        self.optimizer.state = {
            slot: {name: a + 0.0 for name, a in self.state.get(slot, {}).items()}
            for slot in self.optimizer.state
        }
        self.optimizer.step_count = self.step_count


class _DivergenceGuard:
    """Flags a loss that is not finite or has grown ``factor`` times past its start."""

    def __init__(self, factor: float):
        self.factor = float(factor)
        self.reference: float | None = None

    def diverged(self, value: float) -> bool:
        if not math.isfinite(value):
            return True
        if self.reference is None:
            self.reference = max(abs(value), 1.0)
            return False
        return abs(value) > self.factor * self.reference


class _Interrupts:
    """Turn Ctrl-C into a flag checked at step boundaries (main thread only).

    A second Ctrl-C raises at once, as usual. Where SIGINT is ignored (``nohup``,
    a background job) or handled outside Python, it is left alone.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if old is not None and old != signal.SIG_IGN:
                self._old = old
                signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _split_validation(net: Sequential, x: Array, y: Array, split: float):
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 <= split < 1.0:
        raise ValueError(f"validation_split must be a number in [0, 1), got {split!r}")
    n = x.shape[0]
    n_val = int(n * split)
    if split and (n_val == 0 or n_val == n):
        raise ValueError(f"validation_split={split} leaves an empty set for {n} samples")
    if not n_val:
        return x, y, None
    cut = n - n_val  # the last rows, before any shuffling, as Keras does
    return x[:cut, ...], y[:cut, ...], (x[cut:, ...], y[cut:, ...])


def _batch_bounds(n: int, batch_size: int | None) -> list[tuple[int, int]]:
    if batch_size is None:
        return [(0, n)]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _progress(verbose: int, epoch: int, epochs: int, total: int):
    if verbose != 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=True)


def fit(
    net: Sequential,
    x: Any,
    y: Any,
    *,
    loss: str | L.Loss,
    optimizer: str | O.Optimizer,
    epochs: int = 1,
    batch_size: int | None = 32,
    shuffle: bool = True,
    validation_data: tuple[Any, Any] | None = None,
    validation_split: float = 0.0,
    metrics: Sequence[str | Metric] = (),
    callbacks: Iterable[Callback] = (),
    verbose: int = 1,
    initial_epoch: int = 0,
    check_finite: int = 1,
    divergence_factor: float = 1e4,
) -> History:
    """Train ``net`` on ``(x, y)``; see :meth:`portanet.Sequential.fit` for the parameters.

    ``check_finite`` checks the loss every that many steps (0 turns it off);
    each check brings one scalar to the host. The loss has diverged when it is
    NaN or infinite, or when it exceeds ``divergence_factor`` times both its
    first value in this call and 1 (an exploding loss that has not yet
    overflowed). Then the parameters and optimizer state go back to those of
    the last checked step with a sound loss, and
    :class:`TrainingDivergedError` is raised.
    """
    loss = L.get(loss)
    optimizer = O.get(optimizer)
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    metric_fns = [get_metric(m, loss) for m in metrics]
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be portanet Callback objects, got {type(cb).__name__}")
    for name, value in (("epochs", epochs), ("initial_epoch", initial_epoch),
                        ("check_finite", check_finite)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch ({initial_epoch}) must not exceed epochs ({epochs})")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if validation_data is not None and (
        not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2
    ):
        raise ValueError("validation_data must be a pair (x_val, y_val)")

    # Check and move everything before training starts: a bad input changes nothing.
    xa = net.as_input(x)
    ya = net.as_target(y, xa.shape[0], loss)
    xa, ya, val = _split_validation(net, xa, ya, validation_split)
    if validation_data is not None:
        if val is not None:
            raise ValueError("give validation_data or validation_split, not both")
        vx, vy = validation_data
        vxa = net.as_input(vx, what="validation x")
        val = (vxa, net.as_target(vy, vxa.shape[0], loss))
    n = xa.shape[0]
    bounds = _batch_bounds(n, batch_size)

    history = History()
    net.stop_training = False
    net.optimizer = optimizer
    for cb in callbacks:
        cb.net, cb.optimizer = net, optimizer
        cb.on_train_begin({})
    guard = _DivergenceGuard(divergence_factor)
    snapshot = _Snapshot(net, optimizer) if check_finite else None
    if snapshot is not None:
        snapshot.take()
    xp = net.xp

    with _Interrupts() as interrupts:
        for epoch in range(initial_epoch, epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch, {})
            order = from_host(net.rng.permutation(n), xp, net.device, xp.int64) if shuffle else None
            sums = _EpochSums(xp, metric_fns)
            bar = _progress(verbose, epoch, epochs, len(bounds))
            last_refresh = time.monotonic()
            for step, (lo, hi) in enumerate(bounds):
                if interrupts.requested:
                    break
                if order is None:
                    bx, by = xa[lo:hi, ...], ya[lo:hi, ...]
                else:
                    idx = order[lo:hi]
                    bx, by = xp.take(xa, idx, axis=0), xp.take(ya, idx, axis=0)
                value, pred = net._loss_and_gradients(bx, by, loss)
                if check_finite and (step + 1) % check_finite == 0:
                    current = float(value)
                    if guard.diverged(current):
                        snapshot.restore()
                        if bar is not None:
                            bar.close()
                        raise TrainingDivergedError(epoch, step, optimizer.lr, current)
                    snapshot.take()
                net._apply_gradients(optimizer)
                sums.add(value, pred, by, hi - lo)
                for cb in callbacks:
                    cb.on_batch_end(step, {"epoch": epoch})
                if bar is not None:
                    bar.update(1)
                    if time.monotonic() - last_refresh > 0.5:  # sync a few times a second at most
                        bar.set_postfix(loss=f"{sums.running_loss():.4g}", refresh=False)
                        last_refresh = time.monotonic()
            completed = sums.steps == len(bounds)
            if interrupts.requested and not completed:
                if bar is not None:
                    bar.close()
                history.interrupted = True
                break
            logs = sums.result(metric_fns)
            if check_finite and guard.diverged(logs["loss"]):
                snapshot.restore()
                raise TrainingDivergedError(epoch, len(bounds) - 1, optimizer.lr, logs["loss"])
            if val is not None:
                val_logs = evaluate(net, val[0], val[1], loss=loss, metrics=metric_fns,
                                    batch_size=batch_size)
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            net.epoch = epoch + 1
            history.append(epoch, logs)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
                bar.close()
            elif verbose == 2:
                line = "  ".join(f"{k}={v:.4g}" for k, v in logs.items())
                print(f"epoch {epoch + 1}/{epochs}  {line}", flush=True)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            if interrupts.requested:  # pressed during the epoch's last step, or after it
                history.interrupted = True
                break
            if net.stop_training:
                break
    for cb in callbacks:
        cb.on_train_end({})
    return history


class _EpochSums:
    """Sums of loss and metric totals, kept on the device until the epoch ends."""

    def __init__(self, xp: Any, metrics: Sequence[Metric]):
        self.loss: Array | None = None
        self.metrics: list[Array | None] = [None] * len(metrics)
        self.count = 0
        self.steps = 0
        self._fns = metrics

    def add(self, value: Array, pred: Array, target: Array, n: int) -> None:
        weighted = value * float(n)
        self.loss = weighted if self.loss is None else self.loss + weighted
        for i, m in enumerate(self._fns):
            t = m.total(pred, target)
            self.metrics[i] = t if self.metrics[i] is None else self.metrics[i] + t
        self.count += n
        self.steps += 1

    def running_loss(self) -> float:
        return float(self.loss) / self.count if self.count else math.nan

    def result(self, metrics: Sequence[Metric]) -> dict[str, float]:
        if not self.count:
            return {"loss": math.nan}
        out = {"loss": float(to_numpy(self.loss)) / self.count}
        for m, total in zip(metrics, self.metrics):
            out[m.name] = float(to_numpy(total)) / self.count
        return out


def evaluate(
    net: Sequential,
    x: Any,
    y: Any,
    *,
    loss: str | L.Loss,
    metrics: Sequence[str | Metric] = (),
    batch_size: int | None = 256,
) -> dict[str, float]:
    """Loss and metrics of ``net`` on ``(x, y)`` in evaluation mode (no dropout)."""
    loss = L.get(loss)
    metric_fns = [get_metric(m, loss) for m in metrics]
    xa = net.as_input(x)
    ya = net.as_target(y, xa.shape[0], loss)
    sums = _EpochSums(net.xp, metric_fns)
    for lo, hi in _batch_bounds(xa.shape[0], batch_size):
        bx, by = xa[lo:hi, ...], ya[lo:hi, ...]
        pred = net._forward_checked(bx, False)
        sums.add(loss.value(pred, by), pred, by, hi - lo)
    return sums.result(metric_fns)
