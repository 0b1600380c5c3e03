"""Data-parallel scaling on one machine: 2 ranks x 1 thread against 1 rank x 1 thread and
1 rank x 2 threads, on two of ``bench/train_step.py``'s networks; and the machine's ceiling
for two ranks, two independent 1-rank processes at once on half the batch each (no MPI).

Each configuration runs in its own process(es) (``mpiexec -n 2`` for two ranks), in rounds
that alternate the order; the figure is the median over rounds of the training
throughput (samples per second) of ``fit`` on a global batch, after warm-up steps. In
the two-rank runs, the time of the per-step allreduce (packing the gradients, the
allreduce itself, unpacking) is measured on rank 0: its share of the step.

Example::

    python bench/distributed.py --rounds 3

Results: ``bench/results/<machine-tag>/distributed/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONFIGS = {"wide": ((784, 1024, 1024, 10), 256), "huge": ((1024, 4096, 4096, 1024), 512)}
SETUPS = {"1 rank x 1 thread": (None, 1), "1 rank x 2 threads": (None, 2),
          "2 ranks x 1 thread": (2, 1), "2 solo processes x 1 thread": ("solo", 1)}
# "2 solo processes": two independent 1-rank processes at once, each on half the batch, no
# MPI: the machine's own ceiling for two ranks (what two cores give two processes at once).


def worker(config: str, steps: int, warmup: int, batch: int | None = None) -> dict[str, Any]:
    import numpy as np
    from _worker import portanet_network

    import portanet as pn

    sizes, default_batch = CONFIGS[config]
    batch = batch or default_batch
    comm = pn.distributed.init()
    net = portanet_network(list(sizes), "numpy", None, "float32", seed=0)
    rng = np.random.default_rng(0)
    n = batch * (steps + warmup)
    x = rng.normal(size=(n, sizes[0])).astype(np.float32)
    y = rng.normal(size=(n, sizes[-1])).astype(np.float32)
    spent = {"allreduce": 0.0}
    reduce = pn.distributed.DataParallel.reduce

    def timed(self: Any, grads: Any, loss: Any) -> Any:
        t0 = time.perf_counter()
        out = reduce(self, grads, loss)
        spent["allreduce"] += time.perf_counter() - t0
        return out

    pn.distributed.DataParallel.reduce = timed
    opt = pn.Adam(1e-3)
    fit = dict(loss="mse", optimizer=opt, batch_size=batch, verbose=0, shuffle=False,
               check_finite=0, distributed=comm)
    net.fit(x[: batch * warmup], y[: batch * warmup], **fit)
    spent["allreduce"] = 0.0
    comm.barrier()
    t0 = time.perf_counter()
    net.fit(x[batch * warmup:], y[batch * warmup:], **fit)
    comm.barrier()
    elapsed = time.perf_counter() - t0
    return {"rank": comm.rank, "ranks": comm.size, "step_ms": elapsed / steps * 1e3,
            "samples_per_s": batch * steps / elapsed,
            "allreduce_ms": spent["allreduce"] / steps * 1e3}


def run(setup: str, config: str, steps: int, warmup: int) -> dict[str, Any]:
    ranks, threads = SETUPS[setup]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "worker", "--config", config, "--steps", str(steps),
               "--warmup", str(warmup)]
    if ranks == "solo":
        return run_solo(command + ["--batch", str(CONFIGS[config][1] // 2)], env)
    if ranks is not None:
        mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
        command = [mpiexec, "-n", str(ranks), *command]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return next(r for r in rows if r["rank"] == 0)


def run_solo(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Two independent processes at once: their summed throughput, the slower one's step."""
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    rows = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, command)
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {"rank": 0, "ranks": 2, "step_ms": max(r["step_ms"] for r in rows),
            "samples_per_s": sum(r["samples_per_s"] for r in rows), "allreduce_ms": 0.0}


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Data-parallel scaling, {record['date']}, {record['machine']['tag']}", "",
             f"`{record['command']}`: median of {record['rounds']} alternating rounds, "
             f"{record['steps']} timed steps each.", "",
             "| network | batch | setup | ms per step | samples/s | vs 1 rank x 1 thread | "
             "allreduce share |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for config in record["results"]:
        sizes, batch = CONFIGS[config]
        base = record["results"][config]["1 rank x 1 thread"]["samples_per_s"]
        for setup in SETUPS:
            r = record["results"][config][setup]
            share = (f"{100 * r['allreduce_ms'] / r['step_ms']:.1f}%"
                     if SETUPS[setup][0] == 2 else "-")
            lines.append(f"| {'-'.join(map(str, sizes))} | {batch} | {setup} | "
                         f"{r['step_ms']:.1f} | {r['samples_per_s']:.0f} | "
                         f"{r['samples_per_s'] / base:.2f} | {share} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="measure", choices=["measure", "worker"])
    p.add_argument("--config", choices=list(CONFIGS))
    p.add_argument("--configs", default="wide,huge")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, help="(worker) the batch, instead of the network's")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.what == "worker":
        result = worker(args.config, args.steps, args.warmup, args.batch)
        if result["rank"] == 0:
            print(json.dumps(result), flush=True)
        return 0
    from train_step import machine_info

    machine = machine_info("cpu", {})
    out = args.out or HERE / "results" / machine["tag"] / "distributed"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i in range(args.rounds):
        order = list(SETUPS)[i % len(SETUPS):] + list(SETUPS)[:i % len(SETUPS)]
        for config in args.configs.split(","):
            for setup in order:
                r = run(setup, config, args.steps, args.warmup)
                runs.setdefault(config, {}).setdefault(setup, []).append(r)
                print(f"round {i + 1} {config} {setup}: {r['step_ms']:.1f} ms/step",
                      file=sys.stderr, flush=True)
    results = {config: {setup: {k: statistics.median(r[k] for r in rs)
                                for k in ("step_ms", "samples_per_s", "allreduce_ms")}
                        for setup, rs in by_setup.items()} for config, by_setup in runs.items()}
    record = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "rounds": args.rounds,
              "steps": args.steps, "command": " ".join(["python", "bench/distributed.py",
                                                        *(argv or sys.argv[1:])]),
              "results": results, "runs": runs}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    (out / "results.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
