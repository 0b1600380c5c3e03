"""Behaviours of the fit loop that a mutation run found unpinned: the rollback of
parameters and optimizer state after divergence, bit for bit.

The fits use a network whose prediction is 0 whatever its weights (zero inputs, no
bias), so that every loss is known by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import portanet as pn

# ------------------------------------------------------------------ helpers ----


def _zero_net(xp=None, device=None, outputs=1):
    """Dense(2, outputs) without bias: on zero inputs it predicts 0, and its gradient is 0."""
    return pn.Sequential([pn.Dense(2, outputs, bias=False)], backend=xp, device=device, seed=0)


# --------------------------------------------------------------- divergence ----


class _Scripted(pn.Loss):
    """A loss whose values are scripted, step by step (its gradient is zero)."""

    def __init__(self, values):
        self.values = list(values)
        super().__init__(self._f, self._df, name="scripted")

    def _f(self, p, t):
        return self.values.pop(0)

    def _df(self, p, t):
        return p * 0.0


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
        net.fit(x, y, loss=_Scripted(losses), optimizer=opt, batch_size=1, shuffle=False,
                verbose=0)
    w = net.state_dict()["0.weight"]
    assert np.signbit(w[0, 0]) and w[1, 0] == 2.0
    assert opt.state
    for slot, arrays in opt.state.items():
        for name, a in arrays.items():
            assert np.all(np.signbit(pn.to_numpy(a))), f"{slot}/{name}"
