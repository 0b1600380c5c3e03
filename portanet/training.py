"""Training: one step, the fit loop, evaluation, and the history they record.

A training step is three calls on the model's public API
(:func:`train_step`): ``loss_and_gradients`` runs the network forward in
training mode, takes the loss and backpropagates its gradient, and
``apply_gradients`` hands the gradients to the optimizer.

``fit`` runs such steps over shuffled mini-batches, in three parts:
:func:`_plan_fit` checks every argument and moves the data to the device once
(a bad argument changes nothing), :func:`_run_epoch` takes the steps of one
epoch, and :func:`_end_epoch` logs, validates and calls the callbacks.

Losses and metrics are summed on the device and reach the host once per epoch
(and when the progress bar refreshes, a few times a second at most), so a GPU
is not stalled every step. The one per-step check is for divergence, which
``check_finite`` controls.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from array_api_compat import device as device_of
from array_api_compat import is_writeable_array

from . import distributed as D
from . import losses as L
from . import metrics as M
from . import optim as O
from .backend import is_host_data, namespace_of, to_array, to_numpy
from .callbacks import (
    Callback,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
)

if TYPE_CHECKING:
    from .network import Sequential

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TrainingDivergedError",
    "apply_gradients",
    "evaluate",
    "fit",
    "loss_and_gradients",
    "sample_weights",
    "take_rows",
    "train_step",
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


# --------------------------------------------------------------- one step ----


def loss_and_gradients(net: Sequential, x: Array, y: Array, loss: L.Loss,
                       sample_weight: Array | None = None) -> tuple[Array, Array]:
    """Forward in training mode, the loss, and backward, on device arrays that
    ``net.as_input``, ``net.as_target`` (and :func:`sample_weights`) have checked.

    Returns the loss (a 0-d device array; with ``sample_weight``, the weighted mean)
    and the prediction; fills the layers' gradients. The first layer's input
    gradient is not computed: nobody needs it.
    """
    pred = net.forward_checked(x, training=True)
    value, grad = loss.value_and_grad(pred, y, sample_weight)
    net.backward(grad, need_input_grad=False)
    return value, pred


def sample_weights(net: Sequential, w: Any, n: int, loss: L.Loss, *,
                   read: bool = True) -> Array | None:
    """``w`` (None, or one weight per sample) on ``net``'s device and dtype, checked.

    Raises ``ValueError`` naming ``sample_weight`` for a shape other than ``(n,)`` and,
    when ``read`` is true, for weights that are not finite, negative, or all zero; and
    ``TypeError`` for a loss without a weighted form. ``read=False`` checks the shape
    only, so that weights on a GPU are not brought to the host.
    """
    if w is None:
        return None
    if not loss.weighs_samples:
        loss.per_sample(None, None)  # raises TypeError, naming the loss
    a = to_array(w, net.xp, net.device, net.dtype, what="sample_weight")
    if tuple(a.shape) != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), one weight per sample, "
                         f"got shape {tuple(a.shape)}")
    if read:
        xp = net.xp
        if not bool(xp.all(xp.isfinite(a))):
            raise ValueError("sample_weight must be finite, got NaN or infinity")
        if bool(xp.any(a < 0.0)):
            raise ValueError("sample_weight must be >= 0, got negative weights")
        if not bool(xp.any(a > 0.0)):
            raise ValueError("sample_weight must hold at least one non-zero weight; "
                             "all weights are zero")
    return a


def apply_gradients(net: Sequential, optimizer: O.Optimizer,
                    grads: Mapping[str, Array] | None = None) -> None:
    """One optimizer update of ``net``'s parameters from ``grads`` (default: the gradients
    of its last backward)."""
    optimizer.step(net.parameters(), net.gradients() if grads is None else grads)
    net.optimizer = optimizer  # what save(), to() and callbacks find


def train_step(net: Sequential, x: Any, y: Any, loss: str | L.Loss,
               optimizer: O.Optimizer, sample_weight: Any = None) -> Array:
    """One forward, backward and optimizer update of ``net`` on the batch ``(x, y)``.

    Returns the loss as a 0-d array on the device: nothing is synced with the
    host. Inputs are checked before anything changes. ``sample_weight`` (one weight
    per row) makes the loss the weighted mean; its values are checked where they
    are on the host (weights on a GPU are not read, to keep the step free of syncs).
    """
    loss = L.get(loss)
    if not isinstance(optimizer, O.Optimizer):
        raise TypeError(f"optimizer must be a portanet Optimizer, got {type(optimizer).__name__}")
    xa = net.as_input(x)
    ya = net.as_target(y, xa.shape[0], loss)
    wa = sample_weights(net, sample_weight, xa.shape[0], loss, read=is_host_data(sample_weight))
    value, _ = loss_and_gradients(net, xa, ya, loss, wa)
    apply_gradients(net, optimizer)
    return value


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


# ------------------------------------------------- divergence and Ctrl-C ----


class _Snapshot:
    """Copies of parameters, buffers and optimizer state, to roll back a diverged step.

    Writeable arrays are copied into buffers allocated once; immutable (JAX)
    arrays are simply kept, since nothing can change them.
    """

    def __init__(self, net: Sequential, optimizer: O.Optimizer):
        self.net, self.optimizer = net, optimizer
        self.params: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self.state: dict[str, dict[str, Array]] = {}
        self.step_count = optimizer.step_count

    @staticmethod
    def _keep(kept: dict[str, Array], name: str, a: Array) -> None:
        buf = kept.get(name)
        if not is_writeable_array(a):
            kept[name] = a
        elif _same_kind(buf, a):
            buf[...] = a
        else:  # a fresh copy: the first, or the array moved (optimizer state after a load)
            kept[name] = _copy(a)

    def take(self) -> None:
        for name, p in self.net.parameters().items():
            self._keep(self.params, name, p)
        for name, b in self.net.buffers().items():
            self._keep(self.buffers, name, b)
        for slot, arrays in self.optimizer.state.items():
            kept = self.state.setdefault(slot, {})
            for name in list(kept):
                if name not in arrays:
                    del kept[name]
            for name, a in arrays.items():
                self._keep(kept, name, a)
        self.step_count = self.optimizer.step_count

    def restore(self) -> None:
        for view, kept in ((self.net.parameters(), self.params),
                           (self.net.buffers(), self.buffers)):
            for name, a in kept.items():
                view[name] = _copy(a)
        self.optimizer.state = {
            slot: {name: _copy(a) for name, a in self.state.get(slot, {}).items()}
            for slot in self.optimizer.state
        }
        self.optimizer.step_count = self.step_count


def _copy(a: Array) -> Array:
    """A copy of ``a``, bit for bit (``a + 0.0`` would turn -0.0 into +0.0)."""
    return namespace_of(a).asarray(a, copy=True)


def _same_kind(buf: Array | None, a: Array) -> bool:
    """Whether ``buf`` can take ``a``'s values in place: same array type, device, dtype, shape."""
    return (buf is not None and type(buf) is type(a) and buf.shape == a.shape
            and buf.dtype == a.dtype and device_of(buf) == device_of(a))


class _DivergenceGuard:
    """Flags a loss that is not finite or has grown ``factor`` times past its start
    (the start floored at 1, so a loss that begins near 0 may still grow to ``factor``)."""

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


# ------------------------------------------------------------------ fit ----


@dataclass
class _FitPlan:
    """The checked arguments of one ``fit`` call, with the data already on the device."""

    net: Sequential
    loss: L.Loss
    optimizer: O.Optimizer
    metrics: list[M.Metric]
    callbacks: list[Callback]
    x: Array
    y: Array
    w: Array | None
    validation: tuple[Array, Array, Array | None] | None
    bounds: list[tuple[int, int]]
    batch_size: int | None
    epochs: int
    initial_epoch: int
    shuffle: bool
    verbose: int
    check_finite: int
    guard: _DivergenceGuard
    snapshot: _Snapshot | None
    parallel: D.DataParallel | None  # across ranks (None: one process)

    def stop_requested(self, interrupts: _Interrupts) -> bool:
        """A Ctrl-C, here or (across ranks) on any rank: decided alike on every rank."""
        if self.parallel is None:
            return interrupts.requested
        return self.parallel.any(interrupts.requested)


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
    sample_weight: Any = None,
    metrics: Sequence[str | M.Metric] = (),
    callbacks: Iterable[Callback] = (),
    verbose: int = 1,
    initial_epoch: int = 0,
    check_finite: int = 1,
    divergence_factor: float = 1e4,
    distributed: bool | D.Communicator | None = None,
) -> History:
    """Train ``net`` on ``(x, y)`` with mini-batches; returns a :class:`History`.

    Parameters
    ----------
    net : Sequential
        The network; :meth:`Sequential.fit` calls this with ``net=self``.
    x, y : arrays
        Inputs ``(n, ...)`` and targets, of any backend or on the host.
    loss : str or Loss
        ``"mse"``, ``"cross_entropy"``, ... or a :class:`~portanet.losses.Loss`.
    optimizer : str or Optimizer
        An optimizer, or its name (with its default hyperparameters).
    epochs : int
        The epoch to stop after (counting ``initial_epoch`` ones as done).
    batch_size : int or None
        Rows per step; None takes the whole set as one batch.
    shuffle : bool
        Draw a new order of the rows each epoch from ``net.rng``.
    validation_data : (x_val, y_val), optional
        Evaluated after each epoch, logged as ``val_loss`` and ``val_<metric>``.
    validation_split : float
        Instead of ``validation_data``, hold out this fraction of the *last* rows
        (before shuffling, as Keras does).
    sample_weight : array of shape (n,), optional
        One weight per row, moved with its row: the loss becomes the weighted mean
        ``sum_i w_i l_i / sum_i w_i`` (and its gradient that of the weighted mean), so a
        weight of 2 counts a row twice. Weights must be finite, >= 0 and not all zero.
        ``validation_split`` holds out the last rows' weights with them; metrics are
        not weighted.
    metrics : sequence of str or Metric
        ``"accuracy"``, ``"mse"``, ``"mae"`` or :class:`~portanet.metrics.Metric` objects.
    callbacks : iterable of Callback
        :mod:`portanet.callbacks`: early stopping, checkpoints, schedules, your own.
    verbose : {0, 1, 2}
        0 is silent, 1 a tqdm bar per epoch, 2 a line per epoch.
    initial_epoch : int
        The epoch to start from (``net.epoch`` after :func:`portanet.load` resumes).
    check_finite : int
        Check the loss every that many steps (0: never). Each check brings one
        scalar to the host. The loss has diverged when it is NaN or infinite,
        or exceeds ``divergence_factor`` times both its first value in this call
        and 1; then parameters, buffers and optimizer state go back to those of
        the last checked step with a sound loss, and
        :class:`TrainingDivergedError` is raised.
    divergence_factor : float
        See ``check_finite``.
    distributed : bool or Communicator, optional
        Train across the ranks of a communicator (``True``: :func:`portanet.distributed.init`).
        Every rank holds the whole data set and takes its share of each *global* batch of
        ``batch_size`` rows; one allreduce per step sums the gradients, so the update is the
        one a single process would make. Parameters, buffers, optimizer state and RNG start
        from rank 0's; losses and metrics are reduced over ranks; only rank 0 shows progress
        and writes checkpoints.

    Returns
    -------
    History
        One value per epoch of ``loss``, each metric, and their ``val_`` twins;
        ``history.interrupted`` is true when Ctrl-C stopped training at a step boundary.
    """
    plan = _plan_fit(net, x, y, loss, optimizer, epochs, batch_size, shuffle, validation_data,
                     validation_split, sample_weight, metrics, callbacks, verbose,
                     initial_epoch, check_finite, divergence_factor, distributed)
    history = History()
    _begin(plan)
    with _Interrupts() as interrupts, _across_ranks(plan):
        if plan.snapshot is not None:
            plan.snapshot.take()
        for epoch in range(plan.initial_epoch, plan.epochs):
            for cb in plan.callbacks:
                cb.on_epoch_begin(epoch, {})
            sums, bar, stopped = _run_epoch(plan, epoch, interrupts)
            if stopped:
                bar.close()
                history.interrupted = True  # stopped mid-epoch: the epoch is not logged
                break
            _end_epoch(plan, epoch, sums, bar, history)
            if plan.stop_requested(interrupts):  # pressed during the epoch's last step, or after
                history.interrupted = True
                break
            if net.stop_training:
                break
    for cb in plan.callbacks:
        cb.on_train_end({})
    return history


def _begin(plan: _FitPlan) -> None:
    """Reset the network's flags and hand the callbacks what they work on."""
    plan.net.stop_training = False
    plan.net.optimizer = plan.optimizer
    for cb in plan.callbacks:
        cb.net, cb.optimizer = plan.net, plan.optimizer
        cb.comm = None if plan.parallel is None else plan.parallel.comm
    for cb in plan.callbacks:
        cb.on_train_begin({})


@contextlib.contextmanager
def _across_ranks(plan: _FitPlan) -> Iterator[None]:
    """While fit trains across ranks: every rank starts from rank 0's state, and layers can
    sum over ranks (BatchNorm's statistics) and know their rows of each global batch."""
    if plan.parallel is None:
        yield
        return
    ctx = plan.net.context
    plan.parallel.start(plan.net, plan.optimizer)
    ctx.sync = plan.parallel.comm.allreduce
    try:
        yield
    finally:
        ctx.sync = ctx.global_rows = None


def _plan_fit(net: Sequential, x: Any, y: Any, loss: Any, optimizer: Any, epochs: Any,
              batch_size: Any, shuffle: bool, validation_data: Any, validation_split: Any,
              sample_weight: Any, metrics: Any, callbacks: Any, verbose: Any,
              initial_epoch: Any, check_finite: Any, divergence_factor: float,
              distributed: Any) -> _FitPlan:
    """Check every argument of ``fit`` and move the data to the device, before anything
    changes (a bad argument leaves the network, optimizer and RNG as they were)."""
    loss = L.get(loss)
    optimizer = O.get(optimizer)
    if isinstance(metrics, (str, M.Metric)):
        metrics = [metrics]
    metric_fns = [M.get(m, loss) for m in metrics]
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
    parallel = _data_parallel(distributed)
    xa, ya, wa, val = _training_and_validation(net, x, y, loss, validation_data,
                                               validation_split, sample_weight)
    return _FitPlan(
        net=net, loss=loss, optimizer=optimizer, metrics=metric_fns, callbacks=callbacks,
        x=xa, y=ya, w=wa, validation=val, bounds=_batch_bounds(xa.shape[0], batch_size),
        batch_size=batch_size, epochs=epochs, initial_epoch=initial_epoch, shuffle=shuffle,
        verbose=verbose if parallel is None or parallel.comm.is_root else 0,
        check_finite=check_finite, guard=_DivergenceGuard(divergence_factor),
        snapshot=_Snapshot(net, optimizer) if check_finite else None, parallel=parallel,
    )


def _data_parallel(distributed: Any) -> D.DataParallel | None:
    """``fit``'s ``distributed`` argument as a DataParallel helper (None: one process; a
    one-rank world trains exactly as one process does)."""
    if distributed is None or distributed is False:
        return None
    comm = D.init() if distributed is True else distributed
    if not isinstance(comm, D.Communicator):
        raise TypeError("distributed must be True, False, None or a communicator from "
                        f"portanet.distributed.init(), got {type(distributed).__name__}")
    return None if comm.size == 1 else D.DataParallel(comm)


def _training_and_validation(net: Sequential, x: Any, y: Any, loss: L.Loss,
                             validation_data: Any, split: Any, sample_weight: Any):
    """The training arrays and weights on the device, and the validation triple
    ``(x, y, weights or None)`` (or None)."""
    if validation_data is not None and (
        not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2
    ):
        raise ValueError("validation_data must be a pair (x_val, y_val)")
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 <= split < 1.0:
        raise ValueError(f"validation_split must be a number in [0, 1), got {split!r}")
    if split and validation_data is not None:
        raise ValueError("give validation_data or validation_split, not both")
    xa = net.as_input(x)
    ya = net.as_target(y, xa.shape[0], loss)
    n = xa.shape[0]
    wa = sample_weights(net, sample_weight, n, loss)
    n_val = int(n * split)
    if split and (n_val == 0 or n_val == n):
        raise ValueError(f"validation_split={split} leaves an empty set for {n} samples")
    if n_val:
        cut = n - n_val  # the last rows, before any shuffling, as Keras does
        w_fit, w_val = (None, None) if wa is None else (wa[:cut], wa[cut:])
        return xa[:cut, ...], ya[:cut, ...], w_fit, (xa[cut:, ...], ya[cut:, ...], w_val)
    if validation_data is None:
        return xa, ya, wa, None
    vx, vy = validation_data
    vxa = net.as_input(vx, what="validation x")
    return xa, ya, wa, (vxa, net.as_target(vy, vxa.shape[0], loss), None)


def _batch_bounds(n: int, batch_size: int | None) -> list[tuple[int, int]]:
    if batch_size is None:
        return [(0, n)]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _run_epoch(plan: _FitPlan, epoch: int,
               interrupts: _Interrupts) -> tuple[_EpochSums, _ProgressBar, bool]:
    """The training steps of one epoch, until its end or a Ctrl-C; returns the epoch's
    sums, its progress bar (still open) and whether a Ctrl-C stopped it before its end."""
    net, xp = plan.net, plan.net.xp
    n = plan.x.shape[0]
    order = (to_array(net.rng.permutation(n), xp, net.device, xp.int64)
             if plan.shuffle else None)
    sums = _EpochSums(plan.metrics, weighted=plan.w is not None)
    bar = _ProgressBar(plan.verbose, epoch, plan.epochs, len(plan.bounds))
    for step, (lo, hi) in enumerate(plan.bounds):
        if plan.stop_requested(interrupts):
            return sums, bar, True
        first, stop = (lo, hi) if plan.parallel is None else plan.parallel.rows(lo, hi)
        bx, by, bw, share = _batch(plan, order, lo, hi, first, stop)
        value, pred, grads, total = _step_gradients(plan, bx, by, bw, share,
                                                    (hi - lo, first - lo, stop - lo))
        if plan.check_finite and (step + 1) % plan.check_finite == 0:
            _check_divergence(plan, epoch, step, float(to_numpy(total)), bar)
        apply_gradients(net, plan.optimizer, grads)
        sums.add(value, pred, by, stop - first, bw)
        for cb in plan.callbacks:
            cb.on_batch_end(step, {"epoch": epoch})
        bar.step(sums)
    return sums, bar, False


def _batch(plan: _FitPlan, order: Array | None, lo: int, hi: int, first: int,
           stop: int) -> tuple[Array, Array, Array | None, Any]:
    """This rank's rows ``first:stop`` of the global batch ``lo:hi`` (in the epoch's order
    when shuffled), their weights, and their share of the global batch's loss: their
    fraction of its rows, or of its weight (every rank holds every weight)."""
    xp = plan.net.xp
    bx, by, bw = take_rows(xp, (plan.x, plan.y, plan.w), order, first, stop)
    if plan.parallel is None:
        return bx, by, bw, 1.0
    if bw is None:
        return bx, by, bw, (stop - first) / (hi - lo)
    (global_w,) = take_rows(xp, (plan.w,), order, lo, hi)
    return bx, by, bw, xp.sum(bw) / L.weight_total(xp, global_w)


def _step_gradients(plan: _FitPlan, bx: Array, by: Array, bw: Array | None, share: Any,
                    rows: tuple[int, int, int]):
    """This step's loss, prediction and gradients, and the loss of the whole global batch.

    In one process that is :func:`loss_and_gradients`. Across ranks, the global batch's
    mean loss is ``sum_r share_r L_r`` (``share_r``: a rank's fraction of the rows, or of
    the weight), so each rank backpropagates ``share_r dL_r/dpred``, the global loss's
    gradient (which BatchNorm's cross-rank statistics need), and one allreduce sums the
    parameter gradients. A rank with no rows still runs (an empty batch) and joins every
    collective.
    """
    net = plan.net
    if plan.parallel is None:
        value, pred = loss_and_gradients(net, bx, by, plan.loss, bw)
        return value, pred, net.gradients(), value
    xp = net.xp
    net.context.global_rows = rows
    pred = net.forward_checked(bx, training=True)
    if bx.shape[0]:
        value, grad = plan.loss.value_and_grad(pred, by, bw)
        grad = grad * share
    else:
        value, grad = xp.zeros((), dtype=net.dtype, device=net.device), xp.zeros_like(pred)
    net.backward(grad, need_input_grad=False)
    grads, total = plan.parallel.reduce(net.gradients(), value * share)
    return value, pred, grads, total


def take_rows(xp: Any, arrays: Sequence[Array | None], order: Array | None, lo: int,
              hi: int) -> list[Array | None]:
    """Rows ``lo:hi`` of each array (None stays None), in ``order`` if there is one."""
    if order is None:
        return [None if a is None else a[lo:hi, ...] for a in arrays]
    idx = order[lo:hi]
    return [None if a is None else xp.take(a, idx, axis=0) for a in arrays]


def _check_divergence(plan: _FitPlan, epoch: int, step: int, value: float,
                      bar: _ProgressBar) -> None:
    """Roll back and raise if ``value`` diverged; otherwise remember this step as sound."""
    if plan.guard.diverged(value):
        plan.snapshot.restore()
        bar.close()
        raise TrainingDivergedError(epoch, step, plan.optimizer.lr, value)
    plan.snapshot.take()


def _end_epoch(plan: _FitPlan, epoch: int, sums: _EpochSums, bar: _ProgressBar,
               history: History) -> None:
    """Log the epoch: its losses and metrics, validation, the history, the bar, callbacks."""
    net, comm = plan.net, None if plan.parallel is None else plan.parallel.comm
    logs = sums.result(plan.metrics, comm)
    if plan.check_finite and plan.guard.diverged(logs["loss"]):
        plan.snapshot.restore()
        bar.close()
        raise TrainingDivergedError(epoch, len(plan.bounds) - 1, plan.optimizer.lr, logs["loss"])
    if plan.validation is not None:
        val_logs = _evaluate(net, *plan.validation, plan.loss, plan.metrics, plan.batch_size,
                             plan.parallel)
        logs.update({f"val_{k}": v for k, v in val_logs.items()})
    if plan.parallel is not None:
        plan.parallel.verify(net, plan.optimizer)  # ranks never drift apart unseen
    net.epoch = epoch + 1
    history.append(epoch, logs)
    bar.finish(logs)
    if plan.verbose == 2:
        line = "  ".join(f"{k}={v:.4g}" for k, v in logs.items())
        print(f"epoch {epoch + 1}/{plan.epochs}  {line}", flush=True)
    for cb in plan.callbacks:
        cb.on_epoch_end(epoch, logs)


class _ProgressBar:
    """Progress of one epoch with ``verbose=1``: a tqdm bar on a terminal, and one line per
    epoch where stderr is not one (a log file, CI), instead of a stream of bar frames."""

    #: short names in the bar, so that its line fits 80 columns
    SHORT = {"accuracy": "acc", "val_accuracy": "val_acc"}

    def __init__(self, verbose: int, epoch: int, epochs: int, total: int):
        self._bar = self._line = None
        self._last_refresh = time.monotonic()
        if verbose != 1:
            return
        if not sys.stderr.isatty():
            self._line = f"epoch {epoch + 1}/{epochs}"
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                         leave=True, dynamic_ncols=True,
                         bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}]{postfix}")

    def step(self, sums: _EpochSums) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if time.monotonic() - self._last_refresh > 0.5:  # sync a few times a second at most
            self._bar.set_postfix_str(f"loss={sums.running_loss():.4g}", refresh=False)
            self._last_refresh = time.monotonic()

    def finish(self, logs: Mapping[str, float]) -> None:
        if self._bar is not None:  # 3 digits: the line fits 80 columns with a bar left
            self._bar.set_postfix_str(" ".join(f"{self.SHORT.get(k, k)}={v:.3g}"
                                               for k, v in logs.items()))
        elif self._line is not None:
            text = "  ".join(f"{k}={v:.4g}" for k, v in logs.items())
            print(f"{self._line}  {text}", file=sys.stderr, flush=True)
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._line = None


class _EpochSums:
    """Sums of loss and metric totals, kept on the device until the epoch ends.

    The loss is weighted by each batch's rows, or by its sample weights when given
    (whose sum is then kept on the device too); metrics by rows.
    """

    def __init__(self, metrics: Sequence[M.Metric], weighted: bool = False):
        self.loss: Array | None = None
        self.weighted = weighted  # the loss is a weighted mean (fixed, so that ranks agree)
        self.weight: Array | None = None  # the sum of the sample weights seen
        self.metrics: list[Array | None] = [None] * len(metrics)
        self.count = 0
        self.steps = 0
        self._fns = metrics

    def add(self, value: Array, pred: Array, target: Array, n: int,
            sample_weight: Array | None = None) -> None:
        if sample_weight is None:
            weighted = value * float(n)
        else:
            total = namespace_of(value).sum(sample_weight)
            self.weight = total if self.weight is None else self.weight + total
            weighted = value * total
        self.loss = weighted if self.loss is None else self.loss + weighted
        for i, m in enumerate(self._fns):
            t = m.total(pred, target)
            self.metrics[i] = t if self.metrics[i] is None else self.metrics[i] + t
        self.count += n
        self.steps += 1

    def running_loss(self) -> float:
        """This rank's mean loss so far (for the progress bar)."""
        if not self.count:
            return math.nan
        return _mean(_host(self.loss), _host(self.weight) if self.weighted else self.count)

    def result(self, metrics: Sequence[M.Metric], comm: D.Communicator | None = None
               ) -> dict[str, float]:
        """The epoch's mean loss and metrics (summed over ranks first, with ``comm``). A
        weighted loss over weights that sum to zero is undefined: NaN."""
        sums = [_host(t) for t in (self.loss, *self.metrics)] + [float(self.count)]
        if self.weighted:
            sums.append(_host(self.weight))
        if comm is not None:
            sums = comm.allreduce_host(sums)
        count = sums[len(metrics) + 1]
        if not count:
            return {"loss": math.nan}
        out = {"loss": _mean(sums[0], sums[-1] if self.weighted else count)}
        for m, total in zip(metrics, sums[1:]):
            out[m.name] = total / count
        return out


def _host(total: Array | None) -> float:
    return 0.0 if total is None else float(to_numpy(total))


def _mean(total: float, weight: float) -> float:
    return total / weight if weight else math.nan


# ------------------------------------------------------------- evaluate ----


def evaluate(
    net: Sequential,
    x: Any,
    y: Any,
    *,
    loss: str | L.Loss,
    metrics: Sequence[str | M.Metric] = (),
    batch_size: int | None = 256,
    sample_weight: Any = None,
) -> dict[str, float]:
    """Loss and metrics of ``net`` on ``(x, y)`` in evaluation mode (no dropout, running
    statistics), as a dict of floats; computed ``batch_size`` rows at a time. With
    ``sample_weight`` (one per row) the loss is the weighted mean; metrics are not weighted."""
    loss = L.get(loss)
    metric_fns = [M.get(m, loss) for m in metrics]
    xa = net.as_input(x)
    ya = net.as_target(y, xa.shape[0], loss)
    wa = sample_weights(net, sample_weight, xa.shape[0], loss)
    return _evaluate(net, xa, ya, wa, loss, metric_fns, batch_size, None)


def _evaluate(net: Sequential, xa: Array, ya: Array, wa: Array | None, loss: L.Loss,
              metrics: list[M.Metric], batch_size: int | None,
              parallel: D.DataParallel | None) -> dict[str, float]:
    """Evaluation on checked arrays; across ranks, each evaluates its share of the rows."""
    first, stop = (0, xa.shape[0]) if parallel is None else parallel.rows(0, xa.shape[0])
    xa, ya, wa = take_rows(net.xp, (xa, ya, wa), None, first, stop)
    sums = _EpochSums(metrics, weighted=wa is not None)
    for lo, hi in _batch_bounds(xa.shape[0], batch_size):
        bx, by, bw = take_rows(net.xp, (xa, ya, wa), None, lo, hi)
        pred = net.forward_checked(bx, training=False)
        sums.add(loss.value(pred, by, bw), pred, by, hi - lo, bw)
    return sums.result(metrics, None if parallel is None else parallel.comm)
