"""Count the CPU instructions of one portanet training step, under valgrind's callgrind.

Wall-clock time on a shared VM moves by tens of percent between runs; an
instruction count does not (the same binary, inputs and environment give the same
count, whatever else the machine is doing). It is the sharp before/after test for
changes to the Python around the math: a step's count is the difference between
runs of ``--steps-high`` and ``--steps-low`` steps, divided by their difference, so
start-up and warm-up cancel. BLAS runs on one thread (a spinning worker thread
would add instructions at random).

It measures instructions, not time: a GEMM that runs at a higher IPC, or memory
traffic, does not show. Use it next to ``bench/train_step.py``, not instead.

Examples::

    python bench/instructions.py                     # tiny and mnist, this checkout
    PYTHONPATH=/path/to/other/checkout python bench/instructions.py --configs tiny
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import sys
sys.path.insert(0, {here!r})
from _worker import LEARNING_RATE, host_data, portanet_network
from train_step import CONFIGS
import portanet as pn
from portanet.backend import to_array

cfg = CONFIGS[{config!r}]
net = portanet_network(list(cfg.sizes), "numpy", None, {dtype!r}, seed=0)
opt = pn.Adam(lr=LEARNING_RATE)
x, y = (to_array(a, net.xp, net.device, net.dtype) for a in host_data(list(cfg.sizes), cfg.batch, 0))
for _ in range(5 + {steps}):
    net.train_step(x, y, "mse", opt)
"""


def count(config: str, steps: int, dtype: str) -> int:
    """Instructions of a whole process that takes 5 + ``steps`` training steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    code = CHILD.format(here=str(HERE), config=config, steps=steps, dtype=dtype)
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd="/")
    match = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind failed ({out.returncode}): {out.stderr[-2000:]}")
    return int(match.group(1))


def per_step(config: str, low: int, high: int, dtype: str) -> float:
    return (count(config, high, dtype) - count(config, low, dtype)) / (high - low)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,mnist")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps-low", type=int, default=5)
    p.add_argument("--steps-high", type=int, default=25)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    import portanet

    result = {"portanet": portanet.__file__, "dtype": args.dtype, "instructions_per_step": {}}
    for config in args.configs.split(","):
        result["instructions_per_step"][config] = per_step(config, args.steps_low,
                                                           args.steps_high, args.dtype)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"portanet from {result['portanet']}")
        for config, n in result["instructions_per_step"].items():
            print(f"{config}: {n / 1e6:.3f} M instructions per training step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
