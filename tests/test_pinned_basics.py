"""Behaviours of the basic modules that a mutation run found unpinned: metrics on
outputs of any rank."""

from __future__ import annotations

import numpy as np
import pytest
from _util import host, put

import portanet as pn
from portanet.testing import TOLERANCES, assert_close

# ----------------------------------------------------------------- metrics ----


@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 3, 4), (5,)], ids=["rows", "images", "1-d"])
def test_mse_and_mae_metrics_are_means_over_every_output(xp, float64, shape):
    xs, device = xp
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=shape), rng.normal(size=shape)
    pa, ta = put(xs, device, pred, float64), put(xs, device, target, float64)
    d = (pred - target).reshape(shape[0], -1)
    for name, per_row in (("mse", (d * d).mean(axis=1)), ("mae", np.abs(d).mean(axis=1))):
        total = pn.metrics.get(name, pn.MSE()).total(pa, ta)
        assert total.shape == ()
        assert_close(total, per_row.sum(), float64)


def test_mse_metric_of_a_convolutional_network_equals_its_mse_loss(xp, float64):
    xs, device = xp
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2, 4, 4)), rng.normal(size=(6, 3, 4, 4))
    net = pn.Sequential([pn.Conv2D(2, 3, 3, padding=1)], input_shape=(2, 4, 4), backend=xs,
                        device=device, dtype=float64, seed=0)
    result = net.evaluate(x, y, loss="mse", metrics=["mse", "mae"], batch_size=4)
    pred = host(net.predict(x))
    tol = TOLERANCES[float64]
    assert result["mse"] == pytest.approx(result["loss"], rel=tol["rtol"] * 10)  # two summation orders
    assert result["mae"] == pytest.approx(np.abs(pred - y).mean(), rel=tol["rtol"] * 10)
