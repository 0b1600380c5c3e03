"""Time portanet's training step at two revisions, in alternating rounds: was a change slower?

Each round runs ``bench/train_step.py`` (this checkout's copy, one round, one
subprocess per framework) once for the *base* revision, checked out in a
temporary git worktree and put first on ``PYTHONPATH``, and once for this
working tree, in an order that alternates between rounds. A slow spell of a
shared machine then hits both sides of a round, and the table compares

- each side's median over rounds,
- ``after / before``: the median of the rounds' own ratios (above 1: slower now),
- the noise: how far each side's round medians spread, ``max / min - 1`` (the larger
  of the two), which a difference must exceed before it means anything,
- with ``--instructions``, the CPU instructions of one step of each side
  (``bench/instructions.py``, under valgrind): no noise at all, so it shows changes of
  a percent that the clock on a shared VM cannot.

Example (the structure issue's check)::

    python bench/before_after.py --base 8b64b6c --rounds 5 --instructions tiny,mnist

Output: ``bench/results/<machine-tag>/before_after/`` (``results.json``, ``results.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from train_step import machine_info  # noqa: E402


def run_side(tree: Path, args: argparse.Namespace, out: Path, bench: Path) -> dict[str, float]:
    """One round of ``train_step.py`` with ``tree``'s portanet: config -> median ms per step."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(bench / "train_step.py"), "--frameworks", args.frameworks,
               "--configs", args.configs, "--dtypes", args.dtype, "--rounds", "1",
               "--out", str(out)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=out.parent)
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {f"{r['framework']} {r['config']}": r["median_ms"] for r in rows}


def instructions(tree: Path, configs: str, bench: Path) -> dict[str, float]:
    """Instructions per step of ``tree``'s portanet (bench/instructions.py)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(bench / "instructions.py"), "--configs", configs,
                          "--json"], env=env, capture_output=True, text=True, check=True,
                         cwd=tree.parent)
    return json.loads(out.stdout)["instructions_per_step"]


def imported_from(tree: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", "import portanet; print(portanet.__file__)"],
                          env=env, capture_output=True, text=True, check=True,
                          cwd=tree.parent).stdout.strip()  # not this checkout's folder


def summarize(rounds: list[dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    rows = []
    for key in rounds[0]["before"]:
        before = [r["before"][key] for r in rounds]
        after = [r["after"][key] for r in rounds]
        rows.append({
            "row": key, "before_ms": statistics.median(before), "after_ms": statistics.median(after),
            "after_over_before": statistics.median(a / b for a, b in zip(after, before)),
            "noise": max(max(v) / min(v) - 1.0 for v in (before, after)),
            "before_rounds_ms": before, "after_rounds_ms": after,
        })
    return rows


def instruction_lines(record: dict[str, Any]) -> list[str]:
    counts = record.get("instructions")
    if not counts:
        return []
    lines = ["", "CPU instructions per training step (`bench/instructions.py`, valgrind):", "",
             "| config | before | after | after / before |", "| --- | ---: | ---: | ---: |"]
    for config, before in counts["before"].items():
        after = counts["after"][config]
        lines.append(f"| {config} | {before / 1e6:.3f} M | {after / 1e6:.3f} M | "
                     f"{after / before:.4f} |")
    return lines


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Before / after: {record['base']} -> {record['head']}", "",
             f"{record['date']}, {record['machine']['tag']}; {record['rounds']} alternating rounds "
             f"of `bench/train_step.py --frameworks {record['frameworks']} --dtypes "
             f"{record['dtype']}`; command `{record['command']}`", "",
             "| row | before ms | after ms | after / before | noise (round spread) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in record["rows"]:
        lines.append(f"| {r['row']} | {r['before_ms']:.4g} | {r['after_ms']:.4g} | "
                     f"{r['after_over_before']:.3f} | {100 * r['noise']:.1f}% |")
    return "\n".join(lines + instruction_lines(record)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the git revision to compare against")
    p.add_argument("--head", help="the revision to compare (default: this working tree; give "
                   "one to keep working in the tree while the rounds run)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--configs", default="all")
    p.add_argument("--frameworks", default="portanet-numpy")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--instructions", metavar="CONFIGS",
                   help="also count instructions per step of these configs (needs valgrind)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    machine = machine_info("cpu", {})
    out = args.out or REPO / "bench" / "results" / machine["tag"] / "before_after"
    out.mkdir(parents=True, exist_ok=True)
    head = args.head or "the working tree of " + subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "runs").mkdir()
        bench = Path(tmp) / "bench"  # this checkout's scripts, as they are now, for both sides
        shutil.copytree(HERE, bench, ignore=shutil.ignore_patterns("results", "__pycache__"))
        trees = {"before": Path(tmp) / "before", "after": Path(tmp) / "after" if args.head else REPO}
        for side, rev in (("before", args.base), ("after", args.head)):
            if rev:
                subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach",
                                str(trees[side]), rev], check=True, capture_output=True)
        try:
            for side, tree in trees.items():  # each side must import its own portanet
                assert imported_from(tree).startswith(str(tree)), (side, imported_from(tree))
            rounds = []
            for i in range(args.rounds):
                order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
                result = {side: run_side(trees[side], args, Path(tmp) / "runs" / f"{side}-{i}",
                                         bench) for side in order}
                rounds.append(result)
                print(f"round {i + 1}/{args.rounds}: {result}", file=sys.stderr, flush=True)
            counts = ({side: instructions(tree, args.instructions, bench)
                       for side, tree in trees.items()} if args.instructions else None)
        finally:
            for tree in trees.values():
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                    str(tree)], check=False, capture_output=True)
    import datetime as dt

    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "base": args.base,
              "head": head, "rounds": args.rounds, "frameworks": args.frameworks,
              "dtype": args.dtype, "machine": machine, "rows": summarize(rounds), "raw": rounds,
              "instructions": counts}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    (out / "results.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
