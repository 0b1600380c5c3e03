"""Pinned behaviour of the normalization layers across ranks: what the mutation run found
no test for beyond ``tests/test_pinned_image_layers.py``.

``BatchNorm`` in data-parallel training normalizes by the statistics of the global batch
(every rank's rows), moves its running statistics by them (the unbiased variance with the
global count of values), and backpropagates through the global means. Two ranks run as
threads (``tests/test_data_parallel_threads.py``'s communicator); each drives its own
one-layer network with the layer protocol (``forward`` in training, then ``backward``),
and the results are checked against plain NumPy on the global batch: the textbook
formulas of batch normalization and of its gradient. The ranks hold different numbers of
rows and start from nonzero running statistics, so a statistic taken over one rank's rows,
or counted wrongly, shows; inputs are ``(n, C)`` and ``(n, C, H, W)`` with ``H != W != C``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _util import host, put
from test_data_parallel_threads import run_ranks

import portanet as pn
from portanet.testing import assert_close


def _batchnorm_reference(x, g, weight, bias, mean0, var0, momentum, eps):
    """Batch normalization of the global batch ``x`` (float64, channels on axis 1): the
    output, ``dL/dx``, ``dL/dweight`` and ``dL/dbias`` of ``L = sum(y * g)``, and the
    running mean and variance after the step (torch's rule: the unbiased variance)."""
    axes = (0,) + tuple(range(2, x.ndim))
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(per_channel)) * inv_std.reshape(per_channel)
    y = xhat * weight.reshape(per_channel) + bias.reshape(per_channel)
    gh = g * weight.reshape(per_channel)
    # dL/dx = (1 / (m sigma)) (m gh - sum(gh) - xhat sum(gh xhat)), sums over the m values
    dx = inv_std.reshape(per_channel) / m * (
        m * gh - gh.sum(axis=axes, keepdims=True)
        - xhat * (gh * xhat).sum(axis=axes, keepdims=True))
    running_mean = (1 - momentum) * mean0 + momentum * mean
    running_var = (1 - momentum) * var0 + momentum * var * m / (m - 1)
    return y, dx, xhat, running_mean, running_var


@pytest.mark.parametrize("sample", [(3,), (3, 4, 2)], ids=["vectors", "images"])
def test_batchnorm_across_ranks_uses_the_global_batch(xp, float64, sample):
    xs, device = xp
    rng = np.random.default_rng(40)
    x = rng.normal(1.5, 2.0, size=(5, *sample))
    g = rng.normal(size=x.shape)
    c = sample[0]
    weight, bias = rng.normal(size=c), rng.normal(size=c)
    mean0, var0 = rng.normal(size=c), rng.uniform(0.5, 2.0, size=c)
    momentum, eps = 0.3, 0.25
    state = {"0.weight": weight, "0.bias": bias, "0.running_mean": mean0, "0.running_var": var0}
    bounds = [0, 3, 5]  # rank 0 holds rows 0-2, rank 1 rows 3-4

    def step(comm):
        lo, hi = bounds[comm.rank], bounds[comm.rank + 1]
        net = pn.Sequential([pn.BatchNorm(c, momentum=momentum, eps=eps)], backend=xs,
                            device=device, dtype=float64, seed=0, input_shape=sample)
        net.load_state_dict(state)
        net.context.sync, net.context.global_rows = comm.allreduce, (len(x), lo, hi)
        y = net.forward(put(xs, device, x[lo:hi], float64), training=True)
        dx = net.backward(put(xs, device, g[lo:hi], float64))
        return (host(y), host(dx), {k: host(v) for k, v in net.gradients().items()},
                {k: host(v) for k, v in net.buffers().items()})

    y, dx, xhat, running_mean, running_var = _batchnorm_reference(
        x, g, weight, bias, mean0, var0, momentum, eps)
    axes = (0,) + tuple(range(2, x.ndim))
    for rank, (y_r, dx_r, grads, buffers) in enumerate(run_ranks(step)):
        rows = slice(bounds[rank], bounds[rank + 1])
        assert_close(y_r, y[rows], float64, scale=10, err_msg=f"rank {rank} y")
        assert_close(dx_r, dx[rows], float64, scale=10, err_msg=f"rank {rank} dL/dx")
        # each rank's share of the parameter gradients (fit sums them over the ranks)
        assert_close(grads["0.weight"], (g[rows] * xhat[rows]).sum(axis=axes), float64,
                     scale=10, err_msg=f"rank {rank} dL/dweight")
        assert_close(grads["0.bias"], g[rows].sum(axis=axes), float64, scale=10,
                     err_msg=f"rank {rank} dL/dbias")
        assert_close(buffers["0.running_mean"], running_mean, float64, scale=10,
                     err_msg=f"rank {rank} running_mean")
        assert_close(buffers["0.running_var"], running_var, float64, scale=10,
                     err_msg=f"rank {rank} running_var")


# -------------------------------------------------------------- Residual ----


class _Doubling(pn.Layer):
    """``y = 2 x``, a layer as a user might write one, that records each ``backward``'s
    ``need_input_grad``."""

    keeps_shape = True

    def forward(self, x, training=False):
        return x * 2.0

    def backward(self, grad_out, need_input_grad=True):
        self.asked = [*getattr(self, "asked", []), need_input_grad]
        return grad_out * 2.0 if need_input_grad else None


def test_a_residual_asks_only_its_first_layers_to_skip_the_input_gradient(xp, float64):
    # The first layer of a training step needs no dL/dx: a Residual there passes that on to
    # its first layer and its projection, while the layers after them must still send
    # dL/dx back to the layer before
    xs, device = xp
    layers, projection = [_Doubling(), _Doubling(), _Doubling()], _Doubling()
    block = pn.Residual(layers, projection=projection)
    net = pn.Sequential([block], backend=xs, device=device, dtype=float64, seed=0,
                        input_shape=(3,))
    x, g = [[1.0, -2.0, 0.5]], [[0.25, 3.0, -1.0]]
    y = net.forward(put(xs, device, x, float64), training=True)
    assert_close(y, 10.0 * np.array(x), float64)  # f(x) = 8 x, P(x) = 2 x
    assert net.backward(put(xs, device, g, float64), need_input_grad=False) is None
    assert [layer.asked for layer in layers] == [[False], [True], [True]]
    assert projection.asked == [False]
    # asked for it, or by default, dL/dx = 8 g + 2 g
    assert_close(net.backward(put(xs, device, g, float64)), 10.0 * np.array(g), float64)
    assert_close(block.backward(put(xs, device, g, float64)), 10.0 * np.array(g), float64)
    assert [layer.asked for layer in layers] == [[False, True, True], [True] * 3, [True] * 3]
    assert projection.asked == [False, True, True]
