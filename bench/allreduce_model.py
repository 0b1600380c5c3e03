"""On paper: the step time of data-parallel training on N GPUs, from a compute time and a
ring allreduce's cost.

portanet sums the gradients once per step, after backward, in one packed buffer of
``bytes = 4 x parameters`` (float32). A ring allreduce over N ranks sends and receives
``2 (N - 1) / N x bytes`` per rank, so with a per-link bandwidth ``B`` and a latency
``a`` per hop it takes ``t_ar = 2 (N - 1) (a + bytes / (N B))``. With no overlap of the
allreduce and backward (portanet does not overlap them), one step of the *same global
batch* on N ranks takes ``t_c / N + t_ar`` (strong scaling), and one step of a per-rank
batch takes ``t_c + t_ar`` (weak scaling). Scaling stops paying when ``t_ar`` is no longer
small against ``t_c / N``.

The compute times are inputs: the measured single-rank step time (``--compute-ms``) and
the network's parameter count (``--params``). Example, the 1024-4096-4096-1024 network::

    python bench/allreduce_model.py --params 25175040 --compute-ms 370
"""

from __future__ import annotations

import argparse
import sys

#: per-link bandwidth (bytes/s) and per-hop latency (s) of two interconnect classes
LINKS = {"NVLink-class (150 GB/s, 5 us)": (150e9, 5e-6),
         "Ethernet-class (10 GB/s = 100 Gb/s, 20 us)": (10e9, 20e-6)}
RANKS = (1, 2, 4, 8, 16, 32, 64)


def allreduce_s(n: int, nbytes: float, bandwidth: float, latency: float) -> float:
    """A ring allreduce's time: 2 (N - 1) steps, each moving bytes / N over one link."""
    if n == 1:
        return 0.0
    return 2 * (n - 1) * (latency + nbytes / (n * bandwidth))


def table(params: int, compute_ms: float, bytes_per_param: int = 4) -> str:
    nbytes = params * bytes_per_param
    lines = [f"{params:,} parameters ({nbytes / 1e6:.0f} MB of gradients), one rank's step "
             f"{compute_ms:g} ms; strong scaling (the global batch split over N ranks):", "",
             "| interconnect | " + " | ".join(f"N={n}" for n in RANKS) + " |",
             "| --- | " + " | ".join("---:" for _ in RANKS) + " |"]
    for name, (bandwidth, latency) in LINKS.items():
        cells = []
        for n in RANKS:
            step = compute_ms / n + 1e3 * allreduce_s(n, nbytes, bandwidth, latency)
            cells.append(f"{step:.1f} ms ({compute_ms / step:.1f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=int, required=True)
    p.add_argument("--compute-ms", type=float, required=True)
    args = p.parse_args(argv)
    print(table(args.params, args.compute_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
