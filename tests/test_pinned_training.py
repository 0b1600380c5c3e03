"""Behaviours of the fit loop that a mutation run found unpinned: the divergence message
in full; the rollback of parameters, optimizer state and step count (and its buffers,
allocated once); validation in batches; the progress a user reads (the bar on a
terminal with its running loss, the line per epoch off one, ``verbose=2``'s lines, each
flushed at once); ``History``'s repr and what ``History.plot`` draws.

The fits use a network whose prediction is 0 whatever its weights (zero inputs, no
bias), so that every loss is known by hand: ``mse`` of targets ``y`` is ``mean(y**2)``.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import sys
import time

import numpy as np
import pytest
from _util import host
from test_pinned import _Losses

import portanet as pn
from portanet.training import _Snapshot

# ------------------------------------------------------------------ helpers ----


def _zero_net(xp=None, device=None, outputs=1):
    """Dense(2, outputs) without bias: on zero inputs it predicts 0, and its gradient is 0."""
    return pn.Sequential([pn.Dense(2, outputs, bias=False)], backend=xp, device=device, seed=0)


class _Terminal(io.StringIO):
    """A stand-in for stderr on a terminal of ``columns[0]`` columns (which may change)."""

    def __init__(self, columns):
        super().__init__()
        self.columns = columns

    def isatty(self):
        return True

    def fileno(self):
        return 2


def _on_terminal(monkeypatch, columns=(80,)):
    columns = list(columns)
    term = _Terminal(columns)
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(os, "get_terminal_size",
                        lambda fd=None: os.terminal_size((term.columns[0], 24)))
    import tqdm.auto

    class EveryStep(tqdm.auto.tqdm):  # draws at every step, not at most 10 times a second
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, miniters=1, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", EveryStep)
    return term


def _frames(text):
    """The lines a terminal shows: what follows the last carriage return of each line."""
    return [line.split("\r")[-1].rstrip() for line in text.split("\n")]


def _drawn(text):
    """Every frame tqdm drew, in order."""
    return [f for f in re.split(r"[\r\n]", text) if f.strip()]


def _block_buffered():
    """A text stream whose writes reach ``raw`` only when flushed (or 8 KiB later)."""
    raw = io.BytesIO()
    return raw, io.TextIOWrapper(raw, encoding="utf-8", line_buffering=False)


# --------------------------------------------------------------- divergence ----


def test_the_divergence_error_names_where_and_what_to_try():
    err = pn.TrainingDivergedError(2, 4, 0.5, math.inf)
    assert (err.epoch, err.step, err.lr, err.value) == (2, 4, 0.5, math.inf)
    assert str(err) == (
        "training diverged: loss is inf at epoch 3, step 5 (learning rate 0.5); parameters "
        "and optimizer state were restored to the last checked step whose loss was finite "
        "and in range. Try a smaller learning rate or clip_norm=.")


class _PoisonAt(pn.Callback):
    """Makes every parameter NaN after the update of (``epoch``, ``step``)."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_batch_end(self, step, logs):
        if (logs["epoch"], step) == self.at:
            self.net.load_state_dict({k: v * math.nan for k, v in self.net.state_dict().items()})


def test_divergence_restores_the_parameters_and_the_optimizer_state(xp):
    # Adam has state (m, v); the network is poisoned after global step 3 (epoch 1, step 0),
    # so step 4's loss is NaN: everything goes back to the last checked sound step, 3,
    # before its update: the state after the updates of steps 0, 1 and 2
    xs, device = xp
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))

    def make():
        return pn.Sequential([pn.Dense(3, 4, activation="tanh"), pn.Dense(4, 2)],
                             backend=xs, device=device, seed=0)

    net, opt = make(), pn.Adam(1e-2)
    with pytest.raises(pn.TrainingDivergedError, match="loss is nan at epoch 2, step 2 ") as info:
        net.fit(x, y, loss="mse", optimizer=opt, epochs=3, batch_size=4, shuffle=False,
                verbose=0, callbacks=[_PoisonAt(1, 0)])
    assert (info.value.epoch, info.value.step) == (1, 1)
    twin, twin_opt = make(), pn.Adam(1e-2)
    for lo in (0, 4, 8):
        twin.train_step(x[lo:lo + 4], y[lo:lo + 4], "mse", twin_opt)
    assert opt.step_count == twin_opt.step_count == 3
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(host(net.state_dict()[k]), host(v), err_msg=k)
    assert set(opt.state) == set(twin_opt.state) and opt.state
    for slot, arrays in twin_opt.state.items():
        assert set(opt.state[slot]) == set(arrays), slot
        for name, a in arrays.items():
            np.testing.assert_array_equal(host(opt.state[slot][name]), host(a),
                                          err_msg=f"{slot}/{name}")
    # training goes on from there as the twin does
    net.train_step(x[:4], y[:4], "mse", opt)
    twin.train_step(x[:4], y[:4], "mse", twin_opt)
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(host(net.state_dict()[k]), host(v), err_msg=k)


def test_divergence_at_the_first_step_keeps_the_optimizers_step_count():
    # nothing was checked sound in this call: the step count stays what it was (3)
    x, y = np.zeros((3, 2)), np.ones((3, 1))
    net, opt = _zero_net(), pn.SGD(0.1)
    for _ in range(3):
        net.train_step(x, y, "mse", opt)
    before = net.state_dict()
    with pytest.raises(pn.TrainingDivergedError, match="loss is nan at epoch 1, step 1 "):
        net.fit(x, y, loss=_Losses([math.nan, 1.0, 1.0]), optimizer=opt, batch_size=1,
                shuffle=False, verbose=0)
    assert opt.step_count == 3
    for k, v in before.items():
        np.testing.assert_array_equal(net.state_dict()[k], v)


def test_divergence_before_the_first_update_leaves_a_fresh_optimizer_fresh():
    # Adam makes its state at its first update: rolled back to before it, it has none
    x, y = np.zeros((3, 2)), np.ones((3, 1))
    net, opt = _zero_net(), pn.Adam(1e-2)
    with pytest.raises(pn.TrainingDivergedError, match="loss is nan at epoch 1, step 2 "):
        net.fit(x, y, loss=_Losses([1.0, math.nan, 1.0]), optimizer=opt, batch_size=1,
                shuffle=False, verbose=0)
    assert opt.step_count == 0 and not any(opt.state.values())
    twin, twin_opt = _zero_net(), pn.Adam(1e-2)
    for n, o in ((net, opt), (twin, twin_opt)):
        n.train_step(np.ones((3, 2)), y, "mse", o)
    np.testing.assert_array_equal(net.state_dict()["0.weight"], twin.state_dict()["0.weight"])


@pytest.mark.parametrize("losses, step", [([math.nan, 1.0, 1.0], 1), ([1.0, math.nan, 1.0], 2)])
def test_divergence_restores_negative_zeros_bit_for_bit(losses, step):
    # the rollback is exact: a weight of -0.0 comes back as -0.0 (1 / w = -inf), not +0.0,
    # whether it was kept at the start of fit (step 1) or at a checked step (step 2)
    net, opt = _zero_net(), pn.Adam(1e-2)
    net.load_state_dict({"0.weight": np.array([[-0.0], [2.0]])})
    opt.step(net.parameters(), {"0.weight": np.zeros((2, 1))})  # Adam's state: zeros
    opt.state = {slot: {k: -a for k, a in arrays.items()} for slot, arrays in opt.state.items()}
    x, y = np.zeros((3, 2)), np.ones((3, 1))
    with pytest.raises(pn.TrainingDivergedError, match=f"loss is nan at epoch 1, step {step} "):
        net.fit(x, y, loss=_Losses(losses), optimizer=opt, batch_size=1, shuffle=False,
                verbose=0)
    w = net.state_dict()["0.weight"]
    assert np.signbit(w[0, 0]) and w[1, 0] == 2.0
    assert opt.state
    for slot, arrays in opt.state.items():
        for name, a in arrays.items():
            assert np.all(np.signbit(pn.to_numpy(a))), f"{slot}/{name}"


def test_the_snapshot_reuses_its_buffers_while_the_arrays_keep_their_kind():
    # a rollback copy per checked step, written into buffers allocated once (no allocation
    # per step); a new buffer only where an array changed shape or dtype
    net, opt = pn.Sequential([pn.Dense(2, 3), pn.BatchNorm(3)], seed=0), pn.Adam(1e-2)
    x, y = np.ones((4, 2)), np.ones((4, 3))
    net.train_step(x, y, "mse", opt)
    snapshot = _Snapshot(net, opt)
    snapshot.take()
    kept = {**snapshot.params, **{f"b/{k}": a for k, a in snapshot.buffers.items()},
            **{f"{s}/{k}": a for s, d in snapshot.state.items() for k, a in d.items()}}
    assert len(kept) == 4 + 2 + 2 * 4 and len(snapshot.state) == 2
    net.train_step(x, y, "mse", opt)
    snapshot.take()
    again = {**snapshot.params, **{f"b/{k}": a for k, a in snapshot.buffers.items()},
             **{f"{s}/{k}": a for s, d in snapshot.state.items() for k, a in d.items()}}
    assert set(again) == set(kept)
    for name, a in kept.items():
        assert again[name] is a, name
    for name, p in net.parameters().items():  # copies, not the live arrays
        assert snapshot.params[name] is not p
        np.testing.assert_array_equal(snapshot.params[name], p)
    # a parameter of another shape or dtype gets a new buffer, holding its values
    net.parameters()["0.bias"] = np.zeros(3, dtype=np.float64)
    net.parameters()["0.weight"] = np.ones((2, 3), dtype=np.float32)
    snapshot.take()
    assert snapshot.params["0.bias"].dtype == np.float64
    assert snapshot.params["0.weight"].dtype == np.float32
    np.testing.assert_array_equal(snapshot.params["0.weight"], np.ones((2, 3)))
    # optimizer state that is gone is dropped from the snapshot too
    slot = next(iter(opt.state))
    del opt.state[slot]["0.bias"]
    snapshot.take()
    assert set(snapshot.state[slot]) == set(opt.state[slot]) == {"0.weight", "1.weight", "1.bias"}


# --------------------------------------------------------------- validation ----


def test_validation_runs_in_batches_of_batch_size(xp):
    xs, device = xp
    net = _zero_net(xs, device)
    seen = []
    real = net.forward_checked

    def spy(x, training):
        seen.append((x.shape[0], training))
        return real(x, training=training)

    net.forward_checked = spy
    x, y = np.zeros((5, 2)), np.full((5, 1), 2.0)
    history = net.fit(x, y, loss="mse", optimizer=pn.SGD(0.1), batch_size=4, shuffle=False,
                      verbose=0, validation_data=(np.zeros((6, 2)), np.full((6, 1), 3.0)))
    assert seen == [(4, True), (1, True), (4, False), (2, False)]
    assert history.history == {"loss": [4.0], "val_loss": [9.0]}


def test_across_ranks_each_rank_validates_its_share_of_the_rows(xp):
    from test_data_parallel_threads import run_ranks

    xs, device = xp

    def fit(comm):
        net = _zero_net(xs, device)
        seen = []
        real = net.forward_checked

        def spy(x, training):
            if not training:
                seen.append(x.shape[0])
            return real(x, training=training)

        net.forward_checked = spy
        history = net.fit(np.zeros((4, 2)), np.full((4, 1), 2.0), loss="mse",
                          optimizer=pn.SGD(0.1), batch_size=2, verbose=0, distributed=comm,
                          validation_data=(np.zeros((7, 2)), np.arange(7.0).reshape(7, 1)))
        return seen, history.history

    (seen0, history0), (seen1, history1) = run_ranks(fit)
    assert (seen0, seen1) == ([2, 2], [2, 1])  # rows 0-3 and 4-6, in batches of 2
    # every rank logs the mean over all 7 rows: (0 + 1 + 4 + ... + 36) / 7 = 13
    assert history0 == history1 == {"loss": [4.0], "val_loss": [13.0]}


# ------------------------------------------------------------------ progress ----


def test_verbose_two_prints_and_flushes_a_line_per_epoch(monkeypatch):
    raw, out = _block_buffered()
    monkeypatch.setattr(sys, "stdout", out)
    net = _zero_net()
    net.fit(np.zeros((3, 2)), np.array([[2.0], [1.0], [3.0]]), loss="mse", optimizer="sgd",
            epochs=2, batch_size=2, metrics=["mae"], verbose=2,
            validation_data=(np.zeros((2, 2)), np.ones((2, 1))))
    # read without flushing: fit flushed each line
    assert raw.getvalue().decode().splitlines() == [
        f"epoch {e}/2  loss=4.667  mae=2  val_loss=1  val_mae=1" for e in (1, 2)]


def test_off_a_terminal_verbose_one_writes_and_flushes_one_line_per_epoch(monkeypatch):
    raw, err = _block_buffered()
    monkeypatch.setattr(sys, "stderr", err)
    net = _zero_net()
    net.fit(np.zeros((3, 2)), np.array([[2.0], [1.0], [3.0]]), loss="mse", optimizer="sgd",
            epochs=2, batch_size=2, metrics=["mae"], verbose=1,
            validation_data=(np.zeros((2, 2)), np.ones((2, 1))))
    assert raw.getvalue().decode().splitlines() == [
        f"epoch {e}/2  loss=4.667  mae=2  val_loss=1  val_mae=1" for e in (1, 2)]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_the_bar_on_a_terminal_shows_the_running_loss(monkeypatch, weighted):
    # losses 4, 1, 9 (rows of one); running means 4, 2.5, then 14/3; with weights
    # 1, 3, 2: 4, (4 + 3) / 4 = 1.75, then (4 + 3 + 18) / 6. A step's running loss shows
    # in the next step's frame (the bar reads it at most twice a second: here every step)
    term = _on_terminal(monkeypatch)
    clock = iter(range(1000))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))  # 1 s per reading
    w = np.array([1.0, 3.0, 2.0]) if weighted else None
    _zero_net().fit(np.zeros((3, 2)), np.array([[2.0], [1.0], [3.0]]), loss="mse",
                    optimizer="sgd", batch_size=1, shuffle=False, sample_weight=w)
    running = ["loss=4", "loss=1.75"] if weighted else ["loss=4", "loss=2.5"]
    final = "loss=4.17" if weighted else "loss=4.67"
    postfixes = [f.rsplit(", ", 1)[1] for f in _drawn(term.getvalue()) if ", " in f]
    assert postfixes == [*running, final, final]  # drawn at the end, and kept on closing


def test_the_bar_on_a_terminal(monkeypatch):
    # two epochs of three steps, cross-entropy of zero logits: ln 3 = 1.0986 per row
    # (accuracy 1/3: every row is predicted class 0); the bar keeps its last frame
    term = _on_terminal(monkeypatch, columns=(60,))

    class Resize(pn.Callback):
        def on_batch_end(self, step, logs):
            term.columns[0] = 100  # the terminal grows after the first step

    net = _zero_net(outputs=3)
    net.fit(np.zeros((6, 2)), np.array([0, 1, 2, 0, 1, 2]), loss="cross_entropy",
            optimizer="sgd", epochs=2, batch_size=2, metrics=["accuracy"], callbacks=[Resize()],
            validation_data=(np.zeros((2, 2)), np.array([1, 1])))
    text = term.getvalue()
    assert text.endswith("\n")
    frames = [f for f in _frames(text) if f]
    assert len(frames) == 2
    for epoch, frame in enumerate(frames, 1):
        assert re.fullmatch(rf"epoch {epoch}/2 \S+ 3/3 \[00:0\d\], loss=1\.1 acc=0\.333 "
                            r"val_loss=1\.1 val_acc=0", frame), frame
        assert len(frame) == 99, frame  # the width of the grown terminal, less one
    first = _drawn(text)[0]
    assert first.startswith("epoch 1/2 ") and " 0/3 [00:00]" in first
    assert len(first) == 59  # drawn before the terminal grew


def test_the_bar_stays_on_the_terminal_under_an_outer_bar(monkeypatch):
    # fit inside a user's own tqdm loop: the epoch's bar is the second on screen, and
    # stays there when done (tqdm's default would clear a bar that is not the first)
    from tqdm.auto import tqdm

    term = _on_terminal(monkeypatch)
    with tqdm(total=1, desc="runs"):
        _zero_net().fit(np.zeros((3, 2)), np.array([[2.0], [1.0], [3.0]]), loss="mse",
                        optimizer="sgd", batch_size=1, shuffle=False)
    assert re.search(r"\repoch 1/1 \S+ 3/3 \[00:0\d\], loss=4\.67\n", term.getvalue())


# ------------------------------------------------------------------ history ----


def test_history_repr_counts_epochs_and_names_the_keys():
    h = pn.History()
    assert repr(h) == "History(epochs=0, keys=[])"
    h.append(0, {"loss": np.float32(0.5), "val_loss": 1})
    h.append(1, {"loss": 0.25, "val_loss": 0.75})
    assert repr(h) == "History(epochs=2, keys=['loss', 'val_loss'])"
    assert h.history == {"loss": [0.5, 0.25], "val_loss": [1.0, 0.75]} and h.epoch == [0, 1]


def test_history_plot_draws_a_panel_per_quantity(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures = []
    real_savefig = Figure.savefig

    def savefig(fig, *args, **kwargs):
        figures.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    h = pn.History()
    h.append(4, {"loss": 1.0, "mae": 0.5, "val_loss": 2.0, "val_mae": 0.25, "val_auc": 0.7,
                 "accuracy": 0.1})
    h.append(5, {"loss": 0.5, "mae": 0.4, "val_loss": 1.5, "val_mae": 0.2, "val_auc": 0.8,
                 "accuracy": 0.2})
    path = str(tmp_path / "h.png")
    assert h.plot(path) == path
    assert matplotlib.get_backend() == "Agg"  # drawn off screen, whatever the session had
    import matplotlib.pyplot as plt

    (fig,) = figures
    assert fig.number not in plt.get_fignums()  # closed
    # the loss first, then the other quantities sorted, each with its validation twin
    want = {"loss": ([1.0, 0.5], [2.0, 1.5]), "accuracy": ([0.1, 0.2], None),
            "auc": (None, [0.7, 0.8]), "mae": ([0.5, 0.4], [0.25, 0.2])}
    assert [ax.get_title() for ax in fig.axes] == list(want)
    for ax, (key, (train, val)) in zip(fig.axes, want.items()):
        assert ax.get_xlabel() == "epoch", key
        lines = [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata()),
                  ln.get_linestyle(), ln.get_marker(), ln.get_markersize()) for ln in ax.lines]
        expected = []
        if train is not None:
            expected.append(("training", [5, 6], train, "-", "o", 3.0))
        if val is not None:
            expected.append(("validation", [5, 6], val, "--", "o", 3.0))
        assert lines == expected, key
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [e[0] for e in expected]
        grid = ax.xaxis.get_gridlines() + ax.yaxis.get_gridlines()
        assert all(g.get_visible() and g.get_alpha() == 0.3 for g in grid), key
    # 5 inches wide per panel, 3.6 high, at 110 dots per inch
    assert tuple(fig.get_size_inches()) == (20.0, 3.6)
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (2200, 396)
