"""No hidden host syncs (DESIGN.md, principle 8), proven on every CI run.

On a GPU each conversion of a device array to the host stalls the device. CuPy can
refuse them (``cupyx.allow_synchronize(False)``), but CI has no GPU; array-api-strict
runs everywhere, so its array type is instrumented here: every conversion that would
move data to the host (``__bool__``, ``__float__``, ``__int__``, ``__index__``,
``__complex__``, ``__array__``, ``__dlpack__``, ``to_device``) is counted, for a network
built on array-api-strict in whatever session runs the tests.

- ``train_step``: none at all, for every optimizer, with clipping, for every loss.
- one epoch of ``fit``: one per divergence check (``check_finite=k``: every k-th step
  brings the loss to the host, by design), plus one per logged value at the epoch's end
  (the loss and each metric), and nothing else.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

import portanet as pn

strict = pytest.importorskip("array_api_strict")
ARRAY = type(strict.asarray([1.0]))
CONVERSIONS = ("__bool__", "__float__", "__int__", "__index__", "__complex__", "__array__",
               "__dlpack__", "to_device")


@pytest.fixture
def host_reads(monkeypatch):
    """A Counter of host conversions of array-api-strict arrays, by method."""
    counts: Counter = Counter()
    for name in CONVERSIONS:
        original = getattr(ARRAY, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ARRAY, name, counting)
    return counts


def test_the_counter_sees_each_kind_of_conversion(host_reads):
    a = strict.asarray([1.5, 2.0])
    float(a[0])
    bool(a[0] > 1)
    np.asarray(a)
    strict.asarray(3).__index__()
    assert host_reads["__float__"] == 1 and host_reads["__bool__"] == 1
    assert host_reads["__index__"] == 1
    assert host_reads["__array__"] + host_reads["__dlpack__"] >= 1


def _net(layers=None):
    layers = layers or [pn.Dense(6, 16, activation="gelu"), pn.Dropout(0.2),
                        pn.Dense(16, 16, activation=pn.LeakyReLU(0.1)), pn.Dense(16, 3)]
    return pn.Sequential(layers, backend="array_api_strict", dtype="float32", seed=0)


def _data(n=48, classes=3):
    rng = np.random.default_rng(0)
    x = strict.asarray(rng.normal(size=(n, 6)).astype(np.float32))
    return x, rng


OPTIMIZERS = {
    "sgd": lambda: pn.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: pn.Adam(1e-2, amsgrad=True),
    "adamw": lambda: pn.AdamW(1e-2),
    "adam-clip-norm": lambda: pn.Adam(1e-2, clip_norm=0.5),
    "sgd-clip-value": lambda: pn.SGD(0.05, clip_value=0.01),
    "adamw-both": lambda: pn.AdamW(1e-2, clip_norm=1.0, clip_value=0.1),
    "adam-schedule": lambda: pn.Adam(lr=pn.CosineAnnealing(20, warmup_steps=3, initial_lr=1e-2)),
}
LOSSES = {
    "cross_entropy": (lambda: pn.CrossEntropy(label_smoothing=0.1), "labels"),
    "mse": (pn.MSE, "values"),
    "mae": (pn.MAE, "values"),
    "huber": (lambda: pn.Huber(0.5), "values"),
    "bce_with_logits": (pn.BCEWithLogits, "probabilities"),
}


def _targets(kind, rng, n=48, k=3):
    if kind == "labels":
        return strict.asarray(rng.integers(0, k, size=n))
    if kind == "probabilities":
        return strict.asarray(rng.uniform(size=(n, k)).astype(np.float32))
    return strict.asarray(rng.normal(size=(n, k)).astype(np.float32))


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_train_step_reads_nothing_back(host_reads, opt_name, loss_name):
    make_loss, kind = LOSSES[loss_name]
    net, opt, loss = _net(), OPTIMIZERS[opt_name](), make_loss()
    x, rng = _data()
    y = _targets(kind, rng)
    ya = net.as_target(y, 48, loss)  # the labels' range is read once, at the boundary
    net.train_step(x, ya, loss, opt)  # the first step creates the optimizer state
    before = {k: v.copy() for k, v in net.state_dict().items()}
    host_reads.clear()
    for _ in range(3):
        value = net.train_step(x, ya, loss, opt)
    assert sum(host_reads.values()) == 0, dict(host_reads)
    assert math.isfinite(float(value))
    assert any(not np.array_equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("check_finite", [0, 1, 3, 7])
@pytest.mark.parametrize("opt_name", ["sgd", "adam-clip-norm", "sgd-clip-value", "adam-schedule"])
def test_one_epoch_of_fit_reads_a_counted_few(host_reads, check_finite, opt_name):
    x, rng = _data(n=45)
    y = rng.integers(0, 3, size=45)  # host labels: their range is read once, at the start
    net, opt = _net(), OPTIMIZERS[opt_name]()
    kwargs = dict(loss="cross_entropy", optimizer=opt, batch_size=5, verbose=0,
                  metrics=["accuracy"], check_finite=check_finite)
    net.fit(x, y, epochs=1, **kwargs)  # warm: optimizer state exists
    host_reads.clear()
    net.fit(x, y, epochs=2, initial_epoch=1, **kwargs)
    steps = 9  # 45 rows in batches of 5
    checks = steps // check_finite if check_finite else 0
    # one per check, and the loss and the accuracy when the epoch is logged
    assert sum(host_reads.values()) == checks + 2, dict(host_reads)


def test_image_layers_read_nothing_back_in_a_step(host_reads):
    net = pn.Sequential([pn.Conv2D(1, 4, 3, padding=1), pn.BatchNorm(4), pn.ReLU(),
                         pn.MaxPool2D(2), pn.Residual([pn.Conv2D(4, 4, 3, padding="same")]),
                         pn.AvgPool2D(2), pn.Flatten(), pn.LayerNorm(16), pn.Dense(16, 3)],
                        backend="array_api_strict", seed=0, input_shape=(1, 8, 8))
    rng = np.random.default_rng(0)
    x = strict.asarray(rng.normal(size=(6, 1, 8, 8)).astype(np.float32))
    y = net.as_target(strict.asarray(rng.integers(0, 3, size=6)), 6, pn.CrossEntropy())
    opt = pn.Adam(1e-2, clip_norm=1.0)
    net.train_step(x, y, "cross_entropy", opt)
    host_reads.clear()
    net.train_step(x, y, "cross_entropy", opt)
    assert sum(host_reads.values()) == 0, dict(host_reads)
