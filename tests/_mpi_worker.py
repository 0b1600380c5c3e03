"""One rank of the data-parallel tests (``tests/test_distributed.py`` launches it with
``mpiexec -n 2 python tests/_mpi_worker.py CONFIG_JSON``, or without mpiexec as the
single-process reference).

It trains a seeded network on scikit-learn's digits and writes its final parameters,
buffers and history to ``<out>/rank<r>.npz``. The config picks the network, backend,
dtype, batch size, epochs and the faults to inject.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

import portanet as pn


def network(kind: str, backend: str, dtype: str, seed: int) -> pn.Sequential:
    if kind == "mlp":
        layers = [pn.Dense(64, 32, activation="tanh"), pn.Dense(32, 10)]
        return pn.Sequential(layers, backend=backend, dtype=dtype, seed=seed)
    if kind == "dropout-bn":
        # no bias before BatchNorm: its gradient is 0 up to rounding, which Adam amplifies
        layers = [pn.Dense(64, 32, bias=False), pn.BatchNorm(32), pn.ReLU(), pn.Dropout(0.3),
                  pn.Dense(32, 10)]
        return pn.Sequential(layers, backend=backend, dtype=dtype, seed=seed)
    layers = [pn.Conv2D(1, 4, 3, padding=1, bias=False), pn.BatchNorm(4), pn.ReLU(),
              pn.MaxPool2D(2), pn.Flatten(), pn.Dropout(0.2), pn.Dense(64, 10)]
    return pn.Sequential(layers, backend=backend, dtype=dtype, seed=seed, input_shape=(1, 8, 8))


class Fault(pn.Callback):
    """Injects the configured fault at ``step`` of ``epoch`` 0 on ``rank``."""

    def __init__(self, cfg: dict, rank: int):
        self.cfg, self.rank = cfg, rank

    def on_batch_end(self, step: int, logs: dict) -> None:
        fault = self.cfg.get("fault")
        if fault is None or self.rank != self.cfg.get("fault_rank", 1) or step != 2:
            return
        if fault == "raise":
            raise RuntimeError("injected failure on one rank")
        if fault == "exit":
            os._exit(3)
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "sigint":
            os.kill(os.getpid(), signal.SIGINT)


def main() -> int:
    cfg = json.loads(sys.argv[1])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    comm = pn.distributed.init() if cfg.get("distributed", True) else None
    rank = 0 if comm is None else comm.rank
    images = cfg.get("net") == "cnn"
    x, y = pn.datasets.digits(images=images)
    if cfg.get("fault") == "bad_data" and rank == 1:
        x = x[:, :-1]  # one rank holds the wrong features: it raises before any collective
    if cfg.get("resume"):
        net, opt = pn.load(cfg["resume"], backend=cfg.get("backend", "numpy"),
                           return_optimizer=True)
    else:
        net = network(cfg.get("net", "mlp"), cfg.get("backend", "numpy"),
                      cfg.get("dtype", "float64"), seed=0)
        opt = pn.Adam(1e-2) if cfg.get("optimizer", "adam") == "adam" else pn.SGD(0.05, momentum=0.9)
    callbacks = [Fault(cfg, rank)]
    if cfg.get("checkpoint"):
        callbacks.append(pn.ModelCheckpoint(cfg["checkpoint"], monitor="loss"))
    history = net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=cfg.get("epochs", 3),
                      batch_size=cfg.get("batch", 64), metrics=["accuracy"],
                      verbose=cfg.get("verbose", 0), callbacks=callbacks, distributed=comm,
                      validation_split=cfg.get("validation_split", 0.0),
                      initial_epoch=net.epoch if cfg.get("resume") else 0)
    state = net.state_dict()
    out = {f"param/{k}": v for k, v in state.items()}
    out["loss"] = np.asarray(history.history.get("loss", []))
    out["accuracy"] = np.asarray(history.history.get("accuracy", []))
    out["interrupted"] = np.asarray(history.interrupted)
    out["steps"] = np.asarray(opt.step_count)
    np.savez(os.path.join(cfg["out"], f"rank{rank}.npz"), **out)
    if cfg.get("save") and (comm is None or comm.is_root):
        net.save(cfg["save"], optimizer=opt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
