"""The notebook, rebuilt: a 2-100-1 network learns AND, first with SGD, then with Adam.

``portanet demo`` and ``examples/and_gate.py`` run this.
"""

from __future__ import annotations

from typing import Any

from . import datasets
from .backend import to_numpy
from .layers import Dense, LeakyReLU
from .network import Sequential
from .optim import SGD, Adam

TRUTH_TABLE = [[0, 0], [0, 1], [1, 0], [1, 1]]


def train_and_gate(
    backend: Any = None,
    device: Any = None,
    dtype: str = "float32",
    seed: int = 0,
    sgd_steps: int = 200,
    adam_steps: int = 300,
    progress: bool = True,
) -> list[float]:
    """Train the notebook's AND network and return its predictions for the truth table.

    As in the notebook: 100 random rows of the AND table, a 2-100-1 network
    with leaky ReLU (slope 0.1), mean squared error, full-batch SGD and then
    Adam, with a tqdm bar showing the loss.
    """
    x, y = datasets.logic_gate("and", n=100, seed=seed)
    net = Sequential(
        [Dense(2, 100, activation=LeakyReLU(0.1), init="he_normal"), Dense(100, 1)],
        backend=backend, device=device, dtype=dtype, seed=seed,
    )
    for name, optimizer, steps in (("SGD", SGD(lr=0.05), sgd_steps),
                                   ("Adam", Adam(lr=1e-2), adam_steps)):
        _train(net, x, y, optimizer, steps, name, progress)
    return [float(v) for v in to_numpy(net.predict(TRUTH_TABLE)).ravel()]


def _train(net: Sequential, x: Any, y: Any, optimizer: Any, steps: int, name: str,
           progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=name, disable=not progress)
    for i in range(steps):
        loss = net.train_step(x, y, "mse", optimizer)
        if i % 50 == 0 or i == steps - 1:  # the loss reaches the host only here
            bar.set_description(f"{name} loss: {float(loss):.4f}", refresh=False)
        bar.update(1)  # counted by hand: the bar shows each step, not 0 until the end
    bar.close()


def print_truth_table(predictions: list[float]) -> None:
    for (i, j), p in zip(TRUTH_TABLE, predictions):
        p = 0.0 if abs(p) < 5e-6 else p  # print 0.00000, not -0.00000
        print(f"{i} AND {j} is {p:.5f}")
