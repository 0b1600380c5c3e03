"""The notebook "Neural Net Built From Scratch", rebuilt on portanet.

    python examples/and_gate.py --backend numpy
    python examples/and_gate.py --backend torch --device cpu

A 2-100-1 network with leaky ReLU (slope 0.1) learns AND from 100 random rows,
trained first with SGD and then with Adam; it prints the truth table.
The code it runs is portanet/demo.py.
"""

import argparse
import sys

from portanet.demo import print_truth_table, train_and_gate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--backend", default=None, help="numpy, cupy, torch, jax, array_api_strict")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        predictions = train_and_gate(args.backend, args.device, args.dtype, args.seed)
    except (ImportError, RuntimeError, ValueError) as exc:  # a missing backend, no GPU, ...
        print(f"and_gate.py: {exc}", file=sys.stderr)
        return 2
    print_truth_table(predictions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
