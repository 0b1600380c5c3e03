"""Data-parallel training of a digits classifier over MPI ranks.

    pip install ".[mpi,datasets]"
    mpiexec -n 2 python examples/distributed_digits.py      # two processes, one global batch
    python examples/distributed_digits.py                   # the same script, one process

Every rank loads the same data and builds the same seeded network; ``fit`` gives each rank
its share of every global batch of 64 rows and sums the gradients over the ranks once per
step, so both runs train the same weights (up to rounding). Only rank 0 prints and saves.
"""

from __future__ import annotations

import argparse
import sys

import portanet as pn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--save", default=None, help="checkpoint to write (rank 0)")
    args = parser.parse_args(argv)

    try:
        comm = pn.distributed.init()  # a one-rank world without mpiexec
        x, y = pn.datasets.digits()
    except ImportError as exc:  # scikit-learn (the datasets extra) is missing
        print(f"distributed_digits.py: {exc}", file=sys.stderr)
        return 2
    x_tr, x_te, y_tr, y_te = pn.datasets.train_test_split(x, y, test_size=0.2, seed=0,
                                                           stratify=True)
    x_tr, x_te = pn.datasets.standardize(x_tr, x_te)
    net = pn.Sequential([pn.Dense(64, 128, activation="relu"), pn.Dropout(0.2),
                         pn.Dense(128, 10)], seed=0)
    opt = pn.AdamW(3e-3)
    history = net.fit(x_tr, y_tr, loss="cross_entropy", optimizer=opt, epochs=args.epochs,
                      batch_size=64, validation_data=(x_te, y_te), metrics=["accuracy"],
                      verbose=2, distributed=comm)
    if comm.is_root:
        print(f"{comm.size} rank(s): validation accuracy "
              f"{history.history['val_accuracy'][-1]:.4f}")
        if args.save:
            net.save(args.save, optimizer=opt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
