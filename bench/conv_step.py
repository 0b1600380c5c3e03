"""A LeNet-5-sized training step: portanet (NumPy) against PyTorch eager, and where the time
and the memory of portanet's convolution go.

The network: ``Conv2D(1, 6, 5) -> ReLU -> MaxPool2D(2) -> Conv2D(6, 16, 5) -> ReLU ->
MaxPool2D(2) -> Flatten -> Dense(256, 120) -> ReLU -> Dense(120, 84) -> ReLU ->
Dense(84, 10)`` on 28 x 28 images, batch 128, cross-entropy, Adam, float32.

- ``time``: each framework in its own subprocess, in rounds that alternate the order;
  the ratio is the median of each round's own ``torch ms / portanet ms`` (above 1:
  portanet is faster). portanet's step is also split into phases by timing its pieces:
  im2col (gathering the columns), the convolutions' GEMMs and the rest of their
  arithmetic, col2im (adding input gradients back), pooling, the Dense layers with
  activations and loss, and the Adam update.
- ``memory``: ``tracemalloc``'s peak of one training step of each convolution alone
  (forward and backward), against the sizes of its input and output.

Examples::

    python bench/conv_step.py time --rounds 5
    python bench/conv_step.py memory

Results go to ``bench/results/<machine-tag>/conv/`` (``time.json``, ``memory.json`` and
``results.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BATCH, CLASSES = 128, 10


def lenet(pn: Any) -> list[Any]:
    return [pn.Conv2D(1, 6, 5), pn.ReLU(), pn.MaxPool2D(2), pn.Conv2D(6, 16, 5), pn.ReLU(),
            pn.MaxPool2D(2), pn.Flatten(), pn.Dense(256, 120, activation="relu"),
            pn.Dense(120, 84, activation="relu"), pn.Dense(84, 10)]


def data(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, 1, 28, 28)).astype(np.float32)
    return x, rng.integers(0, CLASSES, size=BATCH)


# ------------------------------------------------------------------ workers ----


class PhaseClock:
    """Adds up the time spent in wrapped methods, by phase name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.inner = 0.0  # time of nested phases, to take out of the outer one

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            outer_inner, clock.inner = clock.inner, 0.0
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                clock.seconds[phase] += spent - clock.inner
                clock.inner = outer_inner + spent

        setattr(owner, name, timed)


def portanet_worker(steps: int, warmup: int, phases: bool) -> dict[str, Any]:
    import portanet as pn
    from portanet import layers

    net = pn.Sequential(lenet(pn), backend="numpy", seed=0, input_shape=(1, 28, 28))
    opt, loss = pn.Adam(1e-3), pn.CrossEntropy()
    x, y = data()
    for _ in range(warmup):
        net.train_step(x, y, loss, opt)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        net.train_step(x, y, loss, opt)
        times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"median_ms": statistics.median(times) * 1e3}
    if phases:
        clock = PhaseClock()
        conv = layers.Conv2D
        for owner, name, phase in [
            (conv, "forward", "conv GEMMs and the rest"), (conv, "backward", "conv GEMMs and the rest"),
            (conv, "_columns", "im2col"), (conv, "_col2im", "col2im"),
            (layers.MaxPool2D, "forward", "max pooling"), (layers.MaxPool2D, "backward", "max pooling"),
            (type(opt), "step", "Adam update"),
        ]:
            clock.wrap(owner, name, phase)
        t0 = time.perf_counter()
        for _ in range(steps):
            net.train_step(x, y, loss, opt)
        total = (time.perf_counter() - t0) / steps
        per_step = {k: v / steps * 1e3 for k, v in clock.seconds.items()}
        per_step["Dense, activations, loss"] = total * 1e3 - sum(per_step.values())
        out["phases_ms"] = per_step
    return out


def torch_worker(steps: int, warmup: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120),
                          nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = (torch.from_numpy(a) for a in data())
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(times) * 1e3, "torch": torch.__version__,
            "mkldnn": bool(torch.backends.mkldnn.is_available())}


def run_worker(framework: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "OPENBLAS_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "worker", framework, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.phases:
        command.append("--phases")
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------- memory ----


def memory() -> list[dict[str, Any]]:
    """Peak traced bytes of one training step of single convolutions, against their sizes."""
    import tracemalloc

    import numpy as np

    import portanet as pn

    cases = [("LeNet conv1", (128, 1, 28, 28), lambda: pn.Conv2D(1, 6, 5)),
             ("LeNet conv2", (128, 6, 12, 12), lambda: pn.Conv2D(6, 16, 5)),
             ("CIFAR 3x3, 64 -> 64", (128, 64, 32, 32), lambda: pn.Conv2D(64, 64, 3, padding=1)),
             ("CIFAR 3x3, 3 -> 32", (128, 3, 32, 32), lambda: pn.Conv2D(3, 32, 3, padding=1))]
    rows = []
    for name, shape, make in cases:
        net = pn.Sequential([make()], seed=0, input_shape=shape[1:])
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        y = net.predict(x)
        g = np.ones(tuple(y.shape), dtype=np.float32)
        net.forward(x, training=True)
        net.backward(g)  # warm: the gradient arrays exist, as in a running training loop
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        net.forward(x, training=True)
        net.backward(g)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        layer = net.layers[0]
        rows.append({"layer": name, "input": list(shape), "output": list(y.shape),
                     "input_mb": x.nbytes / 2**20, "output_mb": y.nbytes / 2**20,
                     "peak_mb": peak / 2**20, "peak_over_input": peak / x.nbytes,
                     "peak_over_input_and_output": peak / (x.nbytes + y.nbytes),
                     "chunks": len(layer._chunks(shape[0], tuple(y.shape[2:]), x))})
    return rows


# --------------------------------------------------------------------- main ----


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["time", "memory", "worker"])
    p.add_argument("framework", nargs="?", choices=["portanet", "torch"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--phases", action="store_true", help="(worker) split the step into phases")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.what == "worker":
        result = (portanet_worker(args.steps, args.warmup, args.phases)
                  if args.framework == "portanet" else torch_worker(args.steps, args.warmup,
                                                                    args.threads))
        print(json.dumps(result))
        return 0
    from train_step import machine_info

    machine = machine_info("cpu", {})
    out = args.out or HERE / "results" / machine["tag"] / "conv"
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine,
                              "command": " ".join(["python", "bench/conv_step.py", *sys.argv[1:]])}
    if args.what == "memory":
        record["rows"] = memory()
        (out / "memory.json").write_text(json.dumps(record, indent=1))
        for r in record["rows"]:
            print(f"{r['layer']}: input {r['input']} ({r['input_mb']:.2f} MiB), output "
                  f"{r['output']} ({r['output_mb']:.2f} MiB), peak {r['peak_mb']:.2f} MiB = "
                  f"{r['peak_over_input']:.1f} x input = {r['peak_over_input_and_output']:.1f} x "
                  f"(input + output), {r['chunks']} chunk(s)")
        return 0
    rounds = []
    for i in range(args.rounds):
        order = ["portanet", "torch"] if i % 2 == 0 else ["torch", "portanet"]
        args.phases = i == 0
        result = {fw: run_worker(fw, args) for fw in order}
        rounds.append(result)
        print(f"round {i + 1}: portanet {result['portanet']['median_ms']:.2f} ms, torch "
              f"{result['torch']['median_ms']:.2f} ms", file=sys.stderr, flush=True)
    record["rounds"] = rounds
    record["portanet_ms"] = statistics.median(r["portanet"]["median_ms"] for r in rounds)
    record["torch_ms"] = statistics.median(r["torch"]["median_ms"] for r in rounds)
    record["vs_torch"] = statistics.median(r["torch"]["median_ms"] / r["portanet"]["median_ms"]
                                           for r in rounds)
    record["phases_ms"] = rounds[0]["portanet"]["phases_ms"]
    (out / "time.json").write_text(json.dumps(record, indent=1))
    print(f"LeNet-5, batch {BATCH}, float32: portanet {record['portanet_ms']:.2f} ms, torch eager "
          f"{record['torch_ms']:.2f} ms, vs torch {record['vs_torch']:.2f}")
    for phase, ms in sorted(record["phases_ms"].items(), key=lambda kv: -kv[1]):
        print(f"  {phase}: {ms:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
