"""Where one portanet training step spends its time, phase by phase, on the CPU.

    python bench/step_breakdown.py mnist            # 784-256-10, batch 128, float32
    python bench/step_breakdown.py wide --dtype float64 --steps 50

Each timed step is split at the optimizer: forward + loss + backward, then the
update. In the same loop, the step's GEMMs run alone (the set that
``bench/train_step.py`` calls the ceiling), so the rest of forward + backward
(bias, activation, loss, reductions) is the difference. The update is timed
where it really runs, right after backward, with whatever the GEMMs left in the
caches. This is a profiling aid for one process, not a comparison: for the
comparison with torch use ``bench/train_step.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worker import LEARNING_RATE, host_data, portanet_gemms, portanet_network  # noqa: E402
from train_step import CONFIGS  # noqa: E402


def measure(config: str, backend: str = "numpy", dtype: str = "float32",
            batch: int | None = None, steps: int = 300) -> dict[str, float]:
    """Median ms of each phase: ``forward+loss+backward``, ``update`` and ``GEMMs alone``."""
    import portanet as pn
    from portanet.backend import to_array

    sizes = list(CONFIGS[config].sizes)
    batch = batch or CONFIGS[config].batch
    net = portanet_network(sizes, backend, None, dtype, seed=0)
    opt = pn.Adam(lr=LEARNING_RATE)
    loss = pn.losses.get("mse")
    x, y = (to_array(a, net.xp, net.device, net.dtype) for a in host_data(sizes, batch, 0))
    gemms = portanet_gemms(net, sizes, batch, seed=0)  # the set train_step.py times

    for _ in range(5):
        net.train_step(x, y, loss, opt)
    phases: dict[str, list[float]] = {"forward+loss+backward": [], "update": [], "GEMMs alone": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        pn.training.loss_and_gradients(net, x, y, loss)  # train_step's two halves, without its checks
        t1 = time.perf_counter()
        pn.training.apply_gradients(net, opt)
        t2 = time.perf_counter()
        gemms()
        t3 = time.perf_counter()
        phases["forward+loss+backward"].append(t1 - t0)
        phases["update"].append(t2 - t1)
        phases["GEMMs alone"].append(t3 - t2)
    return {k: statistics.median(v) * 1e3 for k, v in phases.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", choices=list(CONFIGS))
    p.add_argument("--backend", default="numpy", choices=["numpy", "torch", "array_api_strict"],
                   help="a backend that computes eagerly on the CPU (default numpy)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch", type=int, help="batch size (default: the config's)")
    p.add_argument("--steps", type=int, default=300, help="timed steps (default 300)")
    args = p.parse_args(argv)

    med = measure(args.config, args.backend, args.dtype, args.batch, args.steps)
    cfg = CONFIGS[args.config]
    step = med["forward+loss+backward"] + med["update"]
    print(f"{cfg.name} {cfg.label}, batch {args.batch or cfg.batch}, {args.dtype}, "
          f"{args.backend}, Adam; median of {args.steps} steps")
    rows = [("step (forward+loss+backward + update)", step),
            ("  forward+loss+backward", med["forward+loss+backward"]),
            ("    of which GEMMs (timed alone)", med["GEMMs alone"]),
            ("    of which the rest (bias, activation, loss, sums)",
             med["forward+loss+backward"] - med["GEMMs alone"]),
            ("  update (Adam)", med["update"])]
    for label, ms in rows:
        print(f"{label:<54} {ms:9.3f} ms  {ms / step:6.1%}")
    print(f"GEMM ceiling (GEMMs / step): {med['GEMMs alone'] / step:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
