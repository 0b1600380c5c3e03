"""The ``portanet`` command: ``demo``, ``train``, ``evaluate`` and ``backends``.

User mistakes (a bad flag, a missing file, a missing extra, a wrong backend) print one
line that ends with a pointer to ``--help``, and exit with status 2, never a traceback.
Ctrl-C stops ``train`` at a step boundary and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DATASETS = ("digits", "mnist", "xor", "spirals")
IMAGE_DATASETS = ("digits", "mnist")
#: How ``portanet train`` splits a data set: the test share, then the validation share of
#: the training rows. Checkpoints record them, and ``evaluate`` tests on the same rows.
TEST_SIZE, VALIDATION_SPLIT = 0.2, 0.1
#: What --hidden, --dropout and --epochs default to, by --model.
MODEL_DEFAULTS = {"mlp": {"hidden": [128, 64], "dropout": 0.2, "epochs": 40},
                  "cnn": {"hidden": [128], "dropout": 0.3, "epochs": 30}}


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit status 2."""


class _Formatter(argparse.HelpFormatter):
    """Shows each option's default, unless its help already speaks of it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Errors as one line with a pointer to ``--help``; no abbreviated options."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _number(kind: type, what: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that must satisfy ``ok``, else '<what>, got ...'."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # what argparse would name in its own messages
    return parse


def _hidden_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 128,64, got {text!r}")
    return sizes


PROBABILITY = _number(float, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0)
NON_NEGATIVE = _number(float, "a number >= 0", lambda v: v >= 0.0)
POSITIVE_FLOAT = _number(float, "a number > 0", lambda v: 0.0 < v < float("inf"))
POSITIVE_INT = _number(int, "an integer > 0", lambda v: v > 0)
SEED = _number(int, "an integer >= 0", lambda v: v >= 0)


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None,
                   help="numpy, cupy, torch, jax or array_api_strict (default: "
                        "PORTANET_BACKEND, else numpy)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the backend's own)")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(prog="portanet", description="Train and inspect portanet networks.")
    parser.add_argument("--version", action="version", version=f"portanet {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    demo = sub.add_parser("demo", help="the notebook's AND network, trained in seconds",
                          description="Train the notebook's 2-100-1 AND network (SGD, then "
                                      "Adam) and print its truth table.")
    _add_backend_options(demo)
    demo.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                      help="floating dtype of the network")
    demo.add_argument("--seed", type=SEED, default=0, help="seed of the data and the weights")
    _add_train_options(sub.add_parser(
        "train", help="train a classifier on a data set",
        description=f"Train a classifier: {1 - TEST_SIZE:.0%} of the data trains it (of which "
                    f"{VALIDATION_SPLIT:.0%} validates each epoch), {TEST_SIZE:.0%} tests it once "
                    "at the end."))
    evaluate = sub.add_parser("evaluate", help="test a saved checkpoint on its test rows",
                              description="Test a checkpoint written by 'portanet train' on the "
                                          "test rows of the split it recorded.")
    evaluate.add_argument("checkpoint", help="a .npz written by portanet train --save")
    evaluate.add_argument("--dataset", default=None, choices=DATASETS,
                          help="default: the one the checkpoint was trained on")
    evaluate.add_argument("--seed", type=SEED, default=None,
                          help="seed of the train/test split (default: the checkpoint's; "
                               "another is refused, since it would test on training rows)")
    _add_backend_options(evaluate)
    sub.add_parser("backends", help="which backends are installed, their devices and GPUs",
                   description="List every backend: installed or not, version, devices, GPUs.")
    return parser


def _add_train_options(train: argparse.ArgumentParser) -> None:
    from . import activations, optim

    add = train.add_argument
    add("--dataset", default="digits", choices=DATASETS, help="the data set")
    add("--model", default="mlp", choices=["mlp", "cnn"],
        help="mlp: Dense layers; cnn: two convolution blocks (Conv2D, BatchNorm, ReLU, "
             "MaxPool2D) before them, for digits and mnist")
    add("--hidden", type=_hidden_sizes, default=None,
        help="hidden Dense layer sizes (default: 128,64 for mlp, 128 for cnn)")
    add("--activation", default="relu", choices=activations.names(),
        help="activation of the hidden layers")
    add("--dropout", type=PROBABILITY, default=None,
        help="dropout rate after each hidden layer (default: 0.2 for mlp, 0.3 for cnn)")
    add("--optimizer", default="adamw", choices=optim.OPTIMIZERS.names(), help="the optimizer")
    add("--lr", type=POSITIVE_FLOAT, default=3e-3, help="learning rate (the peak of --schedule)")
    add("--weight-decay", type=NON_NEGATIVE, default=5e-2,
        help="AdamW's decoupled decay, or the L2 penalty of sgd and adam")
    add("--clip-norm", type=POSITIVE_FLOAT, default=None,
        help="clip the global gradient norm to this value (default: no clipping)")
    add("--label-smoothing", type=PROBABILITY, default=0.1,
        help="label smoothing of the cross-entropy (every loss shown includes it)")
    add("--schedule", default="cosine", choices=["cosine", "constant"],
        help="cosine: a linear warm-up (at most 50 steps), then cosine decay to 0")
    add("--epochs", type=POSITIVE_INT, default=None, help="default: 40 for mlp, 30 for cnn")
    add("--batch-size", type=POSITIVE_INT, default=64, help="rows per step")
    _add_backend_options(train)
    add("--dtype", default="float32", choices=["float32", "float64"],
        help="floating dtype of the network")
    add("--seed", type=SEED, default=0, help="seed of the data split, the weights, the shuffles")
    add("--save", default=None, metavar="PATH", help="write a checkpoint (.npz)")
    add("--plot", default=None, metavar="PATH", help="write the training curves (PNG)")
    add("--verbose", type=int, default=1, choices=[0, 1, 2],
        help="0: quiet, 1: a progress bar (a line per epoch when not on a terminal), "
             "2: a line per epoch")
    add("--distributed", action="store_true",
        help='data-parallel across the ranks of mpiexec (pip install "portanet[mpi]"; '
             "mpiexec -n 2 portanet train --distributed)")


# ----------------------------------------------------------------- data ----


def load_dataset(name: str, seed: int, images: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` with integer labels, standardized inputs
    (``images``: digits as ``(n, 1, 8, 8)``, MNIST as ``(n, 1, 28, 28)``). MNIST has its own
    test set; the others are split ``TEST_SIZE`` for testing, stratified, by ``seed``."""
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
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=TEST_SIZE, seed=seed,
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

    _check_backend(args.backend, args.device, args.dtype)
    print_truth_table(train_and_gate(args.backend, args.device, args.dtype, args.seed))
    return 0


def _check_backend(backend: str | None, device: str | None, dtype: str) -> None:
    """Fail now, before any data loads, when the backend, device or dtype cannot be used."""
    from .backend import get_namespace, resolve_device, resolve_dtype

    xp = get_namespace(backend)
    resolve_dtype(xp, dtype, resolve_device(xp, device))


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before training, not after it, when --save or --plot cannot be written."""
    for flag, path in (("--save", args.save), ("--plot", args.plot)):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder) or os.path.isdir(path):
                raise UsageError(f"portanet train: {flag} {path}: no such folder, or a folder "
                                 "(see portanet train --help)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError('portanet train: --plot needs matplotlib: pip install '
                             '"portanet[plot]"') from None


def _network_and_optimizer(args: argparse.Namespace, x_tr: np.ndarray, classes: int):
    """The network of ``--model`` and the optimizer (with its learning-rate schedule)."""
    from . import optim
    from .network import Sequential

    layers = build_layers(args.model, x_tr.shape[1:], classes, args)
    net = Sequential(layers, backend=args.backend, device=args.device, dtype=args.dtype,
                     seed=args.seed, input_shape=x_tr.shape[1:])
    lr: Any = args.lr
    steps = args.epochs * -(-int(len(x_tr) * (1 - VALIDATION_SPLIT)) // args.batch_size)
    if args.schedule == "cosine":  # the optimizer evaluates it before each step, from its count
        lr = optim.CosineAnnealing(steps, warmup_steps=min(50, steps // 10), initial_lr=args.lr)
    return net, optim.get(args.optimizer, lr=lr, weight_decay=args.weight_decay,
                          clip_norm=args.clip_norm)


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .losses import CrossEntropy

    for name, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    _check_outputs(args)
    _check_backend(args.backend, args.device, args.dtype)
    comm = distributed.init() if args.distributed else None
    say = print if comm is None or comm.is_root else _quiet  # rank 0 speaks for all
    x_tr, y_tr, x_te, y_te = load_dataset(args.dataset, args.seed, images=args.model == "cnn")
    net, optimizer = _network_and_optimizer(args, x_tr, int(max(y_tr.max(), y_te.max())) + 1)
    loss = CrossEntropy(label_smoothing=args.label_smoothing)
    ranks = f", {comm.size} ranks" if comm is not None and comm.size > 1 else ""
    say(f"portanet train: {args.dataset} ({len(x_tr)} train of which {VALIDATION_SPLIT:.0%} "
        f"validate, {len(x_te)} test), {args.model}, backend {net.backend} on {net.device}, "
        f"{net.dtype_name}{ranks}")
    start = time.perf_counter()
    history = net.fit(x_tr, y_tr, loss=loss, optimizer=optimizer, epochs=args.epochs,
                      batch_size=args.batch_size, validation_split=VALIDATION_SPLIT,
                      metrics=["accuracy"], verbose=args.verbose, distributed=comm)
    seconds = time.perf_counter() - start
    if history.interrupted:
        return _interrupted(args, net, optimizer, len(history.epoch), comm)
    result = net.evaluate(x_te, y_te, loss=loss, metrics=["accuracy"])
    smoothing = f" (with label smoothing {args.label_smoothing:g})" if args.label_smoothing else ""
    say(f"test accuracy: {result['accuracy']:.4f}  test loss: {result['loss']:.4f}{smoothing}  "
        f"time: {seconds:.1f} s")
    if comm is None or comm.is_root:
        _write_outputs(args, net, optimizer, history, interrupted=False)
    return 0


def _quiet(*args: Any, **kwargs: Any) -> None:
    """``print`` on the ranks other than 0."""


def _interrupted(args: argparse.Namespace, net: Any, optimizer: Any, done: int,
                 comm: Any) -> int:
    """After a Ctrl-C: say where training stopped, save only if asked (and say so), 130."""
    if comm is None or comm.is_root:
        print(f"portanet train: interrupted in epoch {done + 1} of {args.epochs} "
              f"({done} completed); no test result", file=sys.stderr)
        _write_outputs(args, net, optimizer, None, interrupted=True, done=done)
    return EXIT_INTERRUPTED


def _write_outputs(args: argparse.Namespace, net: Any, optimizer: Any, history: Any,
                   interrupted: bool, done: int | None = None) -> None:
    """The checkpoint (with the data split it was trained on) and the plot, as asked."""
    if args.save:
        info = {"dataset": args.dataset, "split_seed": args.seed, "test_size": TEST_SIZE,
                "validation_split": VALIDATION_SPLIT, "model": args.model,
                "label_smoothing": args.label_smoothing, "interrupted": interrupted,
                "epochs": args.epochs}
        net.save(args.save, optimizer=optimizer, info=info)
        note = f" (an interrupted run: {done} of {args.epochs} epochs)" if interrupted else ""
        print(f"saved {args.save}{note}", file=sys.stderr if interrupted else sys.stdout)
    if args.plot and history is not None:
        history.plot(args.plot)
        print(f"plotted {args.plot}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .io import load, read_metadata

    info = read_metadata(args.checkpoint).get("info", {})
    dataset, seed = _recorded_split(args, info)
    net = load(args.checkpoint, backend=args.backend, device=args.device)
    seed = seed if seed is not None else (net.seed or 0)
    _, _, x_te, y_te = load_dataset(dataset, seed, images=len(net.input_shape) == 3)
    if x_te.shape[1:] != net.input_shape:
        raise UsageError(f"portanet evaluate: {args.checkpoint} takes samples of shape "
                         f"{net.input_shape} but dataset {dataset!r} has {x_te.shape[1:]} "
                         "(see portanet evaluate --help)")
    from .losses import CrossEntropy

    smoothing = float(info.get("label_smoothing", 0.0))  # the loss it was trained with
    result = net.evaluate(x_te, y_te, loss=CrossEntropy(smoothing), metrics=["accuracy"])
    label = f" (with label smoothing {smoothing:g})" if smoothing else ""
    note = " (an interrupted run)" if info.get("interrupted") else ""
    print(f"test accuracy: {result['accuracy']:.4f}  test loss: {result['loss']:.4f}{label}  "
          f"({len(x_te)} test samples of {dataset}, split seed {seed}, backend "
          f"{net.backend}){note}")
    return 0


def _recorded_split(args: argparse.Namespace, info: dict[str, Any]) -> tuple[str, int | None]:
    """The data set and split seed to test on: the checkpoint's; a conflicting flag is an
    error, since another split would put training rows into the test set."""
    recorded_set, recorded_seed = info.get("dataset"), info.get("split_seed")
    dataset = args.dataset or recorded_set or "digits"
    if recorded_set is not None and dataset != recorded_set:
        raise UsageError(f"portanet evaluate: {args.checkpoint} was trained on "
                         f"{recorded_set!r}, not {dataset!r} (see portanet evaluate --help)")
    if recorded_seed is not None and args.seed is not None and args.seed != recorded_seed \
            and dataset != "mnist":
        raise UsageError(f"portanet evaluate: {args.checkpoint} was trained on the split of "
                         f"seed {recorded_seed}; --seed {args.seed} would test on rows it trained "
                         "on (leave --seed out to use the recorded split)")
    return dataset, args.seed if args.seed is not None else recorded_seed


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
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command is None and not extra:  # bare "portanet": say what it can do
            print(parser.format_help(), file=sys.stderr)
            return EXIT_USAGE
        if extra:  # named in the command's own words, not the top parser's
            prog = f"portanet {args.command}" if args.command else "portanet"
            raise UsageError(f"{prog}: unrecognized arguments: {' '.join(extra)} "
                             f"(see {prog} --help)")
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("portanet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes one line
        return _report(exc)


def _report(exc: Exception) -> int:
    """One line for an error, and the exit status: 1 when training diverged, else 2."""
    from .training import TrainingDivergedError

    if isinstance(exc, TrainingDivergedError):
        print(f"portanet: {exc} (see portanet train --help: --lr, --clip-norm)", file=sys.stderr)
        return 1
    if isinstance(exc, UsageError):
        print(str(exc), file=sys.stderr)
    elif isinstance(exc, OSError):  # missing file or folder, permissions, no network
        where = f": {exc.filename}" if exc.filename else ""
        print(f"portanet: error: {exc.strerror or exc}{where}", file=sys.stderr)
    elif isinstance(exc, MemoryError):
        print("portanet: error: out of memory (are the layer sizes or the batch too large?)",
              file=sys.stderr)
    elif isinstance(exc, (ImportError, ValueError, RuntimeError)):
        print(f"portanet: error: {exc}", file=sys.stderr)
    else:
        raise exc
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
