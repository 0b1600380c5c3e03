"""The ``portanet`` command: ``demo``, ``train``, ``evaluate`` and ``backends``.

User mistakes (a bad flag, a missing file, a missing extra) print one line
and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _hidden_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None,
                   help="numpy, cupy, torch, jax or array_api_strict (default: PORTANET_BACKEND or numpy)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the backend's)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="portanet", description="Train and inspect portanet networks.")
    from . import activations, optim
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"portanet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="the notebook's AND network, trained in seconds")
    _add_backend_options(demo)
    demo.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    demo.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="train a classifier on a dataset")
    train.add_argument("--dataset", default="digits", choices=["digits", "mnist", "xor", "spirals"])
    train.add_argument("--model", default="mlp", choices=["mlp", "cnn"],
                       help="mlp: Dense layers; cnn: two convolution blocks (conv, batch norm, "
                            "relu, max pool) before them, for digits and mnist")
    train.add_argument("--hidden", type=_hidden_sizes, default=None,
                       help="hidden Dense layer sizes (default: 128,64 for mlp, 128 for cnn)")
    train.add_argument("--activation", default="relu", choices=activations.names())
    train.add_argument("--dropout", type=_probability, default=None,
                       help="dropout after each hidden layer (default: 0.2 for mlp, 0.3 for cnn)")
    train.add_argument("--optimizer", default="adamw", choices=optim.OPTIMIZERS.names())
    train.add_argument("--lr", type=_positive(float), default=3e-3)
    train.add_argument("--weight-decay", type=_non_negative, default=5e-2,
                       help="AdamW's decoupled decay, or the L2 penalty of sgd and adam")
    train.add_argument("--label-smoothing", type=_probability, default=0.1)
    train.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                       help="cosine: 50 warm-up steps, then cosine decay to 0")
    train.add_argument("--epochs", type=_positive(int), default=None,
                       help="default: 40 for mlp, 30 for cnn")
    train.add_argument("--batch-size", type=_positive(int), default=64)
    _add_backend_options(train)
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--save", default=None, metavar="PATH", help="write a checkpoint (.npz)")
    train.add_argument("--plot", default=None, metavar="PATH", help="write the training curves (PNG)")
    train.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2])
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel across the ranks of mpiexec (pip install "
                            '"portanet[mpi]"; mpiexec -n 2 portanet train --distributed)')

    evaluate = sub.add_parser("evaluate", help="test accuracy of a saved checkpoint")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--dataset", default="digits", choices=["digits", "mnist", "xor", "spirals"])
    evaluate.add_argument("--seed", type=int, default=None,
                          help="seed of the train/test split (default: the checkpoint's)")
    _add_backend_options(evaluate)

    sub.add_parser("backends", help="which backends are installed, their devices and GPUs")
    return parser


# ----------------------------------------------------------------- data ----


IMAGE_DATASETS = ("digits", "mnist")


def load_dataset(name: str, seed: int, images: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` with integer labels, standardized inputs
    (``images``: digits as ``(n, 1, 8, 8)``, MNIST as ``(n, 1, 28, 28)``)."""
    from . import datasets

    if images and name not in IMAGE_DATASETS:
        raise UsageError(f"portanet: --model cnn needs images; dataset {name!r} has none "
                         f"(use {' or '.join(IMAGE_DATASETS)})")
    if name == "mnist":
        (x_tr, y_tr), (x_te, y_te) = datasets.mnist(images=images)
        return x_tr, y_tr, x_te, y_te
    if name == "digits":
        x, y = datasets.digits()
    elif name == "xor":
        x, y = datasets.logic_gate("xor", n=2000, seed=seed)
        y = y.reshape(-1).astype(np.int64)
    else:
        x, y = datasets.spirals(300, classes=3, noise=0.2, seed=seed)
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.2, seed=seed,
                                                       stratify=True)
    x_tr, x_te = datasets.standardize(x_tr, x_te)
    if images:  # standardized pixel by pixel, then back into 8 x 8 images
        x_tr, x_te = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    return x_tr, y_tr, x_te, y_te


def build_layers(model: str, input_shape: tuple[int, ...], classes: int,
                 args: argparse.Namespace) -> list[Any]:
    """The layers of ``--model``: ``mlp`` is ``--hidden`` Dense layers (each followed by
    ``--dropout``); ``cnn`` puts two convolution blocks in front of that head. A block is
    ``Conv2D(3x3, padding 1, no bias) -> BatchNorm -> ReLU -> MaxPool2D(2)``, with 32 and
    then 64 channels: digits' 8 x 8 images become 64 x 2 x 2, MNIST's 64 x 7 x 7."""
    from .layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

    layers: list[Any] = []
    width = input_shape[0]
    if model == "cnn":
        channels, (height, breadth) = input_shape[0], input_shape[1:]
        for out in (32, 64):
            layers += [Conv2D(channels, out, 3, padding=1, bias=False), BatchNorm(out), ReLU(),
                       MaxPool2D(2)]
            channels, height, breadth = out, height // 2, breadth // 2
        layers.append(Flatten())
        width = channels * height * breadth
        if args.dropout:
            layers.append(Dropout(args.dropout))
    for size in args.hidden:
        layers.append(Dense(width, size, activation=args.activation, init="he_normal"))
        if args.dropout:
            layers.append(Dropout(args.dropout))
        width = size
    layers.append(Dense(width, classes))
    return layers


# ------------------------------------------------------------- commands ----


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import print_truth_table, train_and_gate

    print_truth_table(train_and_gate(args.backend, args.device, args.dtype, args.seed))
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before training, not after it, when --save or --plot cannot be written."""
    for flag, path in (("--save", args.save), ("--plot", args.plot)):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder) or os.path.isdir(path):
                raise UsageError(f"portanet train: {flag} {path}: no such folder, or a folder")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError('portanet train: --plot needs matplotlib: pip install "portanet[plot]"'
                             ) from None


#: What --hidden, --dropout and --epochs default to, by --model.
MODEL_DEFAULTS = {"mlp": {"hidden": [128, 64], "dropout": 0.2, "epochs": 40},
                  "cnn": {"hidden": [128], "dropout": 0.3, "epochs": 30}}


def _network_and_optimizer(args: argparse.Namespace, x_tr: np.ndarray, classes: int):
    """The network of ``--model`` and the optimizer (with its learning-rate schedule)."""
    from . import optim
    from .network import Sequential

    layers = build_layers(args.model, x_tr.shape[1:], classes, args)
    net = Sequential(layers, backend=args.backend, device=args.device, dtype=args.dtype,
                     seed=args.seed, input_shape=x_tr.shape[1:])
    lr: Any = args.lr
    if args.schedule == "cosine":  # the optimizer evaluates it before each step, from its count
        steps = args.epochs * -(-len(x_tr) // args.batch_size)
        lr = optim.CosineAnnealing(steps, warmup_steps=min(50, steps // 10), initial_lr=args.lr)
    return net, optim.get(args.optimizer, lr=lr, weight_decay=args.weight_decay)


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .losses import CrossEntropy

    _check_outputs(args)
    for name, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    comm = distributed.init() if args.distributed else None
    root = comm is None or comm.is_root  # across ranks, rank 0 speaks and writes for all
    say = print if root else (lambda *a, **k: None)

    x_tr, y_tr, x_te, y_te = load_dataset(args.dataset, args.seed, images=args.model == "cnn")
    classes = int(max(y_tr.max(), y_te.max())) + 1
    net, optimizer = _network_and_optimizer(args, x_tr, classes)
    loss = CrossEntropy(label_smoothing=args.label_smoothing)
    ranks = f", {comm.size} ranks" if comm is not None and comm.size > 1 else ""
    say(f"portanet train: {args.dataset} ({len(x_tr)} train, {len(x_te)} test), "
        f"{args.model}, backend {net.backend} on {net.device}, {net.dtype_name}{ranks}")
    start = time.perf_counter()
    history = net.fit(x_tr, y_tr, loss=loss, optimizer=optimizer, epochs=args.epochs,
                      batch_size=args.batch_size, validation_data=(x_te, y_te),
                      metrics=["accuracy"], verbose=args.verbose, distributed=comm)
    seconds = time.perf_counter() - start
    result = net.evaluate(x_te, y_te, loss="cross_entropy", metrics=["accuracy"])
    say(f"test accuracy: {result['accuracy']:.4f}  test loss: {result['loss']:.4f}  "
        f"time: {seconds:.1f} s")
    if args.save and root:
        net.save(args.save, optimizer=optimizer)
        say(f"saved {args.save}")
    if args.plot and root:
        history.plot(args.plot)
        say(f"plotted {args.plot}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .io import load

    net = load(args.checkpoint, backend=args.backend, device=args.device)
    seed = args.seed if args.seed is not None else (net.seed or 0)
    _, _, x_te, y_te = load_dataset(args.dataset, seed, images=len(net.input_shape) == 3)
    if x_te.shape[1:] != net.input_shape:
        raise UsageError(f"portanet evaluate: {args.checkpoint} takes samples of shape "
                         f"{net.input_shape} but dataset {args.dataset!r} has {x_te.shape[1:]}")
    result = net.evaluate(x_te, y_te, loss="cross_entropy", metrics=["accuracy"])
    print(f"test accuracy: {result['accuracy']:.4f}  test loss: {result['loss']:.4f}  "
          f"({len(x_te)} samples, backend {net.backend})")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from .backend import available_backends

    rows = [("backend", "installed", "version", "devices", "GPU", "note")]
    for info in available_backends():
        rows.append((info.name, "yes" if info.installed else "no", info.version or "-",
                     ", ".join(info.devices) or "-", "yes" if info.gpu else "no", info.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "evaluate": cmd_evaluate,
            "backends": cmd_backends}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``portanet`` console script and ``python -m portanet``."""
    from .training import TrainingDivergedError

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # missing file or folder, permissions, no network for mnist
        where = f": {exc.filename}" if exc.filename else ""
        print(f"portanet: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("portanet: error: out of memory (are the layer sizes or the batch too large?)",
              file=sys.stderr)
        return EXIT_USAGE
    except (ImportError, ValueError, RuntimeError) as exc:
        if isinstance(exc, TrainingDivergedError):
            print(f"portanet: {exc}", file=sys.stderr)
            return 1
        print(f"portanet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("portanet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
