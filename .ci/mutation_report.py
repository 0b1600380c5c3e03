"""The mutation score of the last ``mutmut run`` (see ``nox -s mutation``).

Reads mutmut's per-file results under ``mutants/`` and the triage in
``tests/mutation_triage/*.txt`` (one file per area), where each surviving mutant is
named with the reason (``NAME: why``, one per line; ``#`` comments): either it changes
no behaviour (*equivalent*), or it changes behaviour only where this run cannot see it
and the reason, starting ``other session:``, names the session of the default matrix
whose test fails on it (*elsewhere*: torch, JAX, array-api-strict's devices, the CuPy
stand-in). Prints one row per module and the total:

    score = caught / (mutants - equivalent)

where *caught* counts mutants killed by a failing test or a timeout, and mutants
that no test executes ("no tests") count as missed; then the score with the mutants
caught elsewhere counted as caught. Lists the survivors that are not
triaged yet and exits 1 if there are any, so that a new gap is seen, not averaged away.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIAGE = ROOT / "tests" / "mutation_triage"
# mutmut's exit codes (mutmut/stats.py): 1 and 3 kill; 0 survives; 5 and 33 mean no
# test ran the function; 24, 36, 152, 255 (and -24) are timeouts.
CAUGHT = {1: "killed", 3: "killed", 24: "timeout", -24: "timeout", 36: "timeout",
          152: "timeout", 255: "timeout", 37: "killed"}
MISSED = {0: "survived", 5: "no tests", 33: "no tests"}


def load_results(mutants: Path) -> dict[str, tuple[str, int | None]]:
    """{mutant name: (source file, exit code)} from every ``*.meta`` file."""
    results = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        source = str(meta.relative_to(mutants))[: -len(".meta")]
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            results[name] = (source, code)
    return results


def load_triage(folder: Path) -> dict[str, str]:
    """{mutant name: why it changes no behaviour} from the ``NAME: why`` lines of every
    ``*.txt`` in ``folder``."""
    triage = {}
    for path in sorted(folder.glob("*.txt")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, why = line.partition(": ")
            if not sep or not why.strip():
                raise SystemExit(f"{path.name}:{number}: write 'MUTANT_NAME: why it is equivalent'")
            triage[name.strip()] = why.strip()
    return triage


def classify(code: int | None) -> str:
    if code in CAUGHT:
        return "caught"
    if code in MISSED:
        return MISSED[code]
    return "not run" if code is None else f"exit {code}"


def main() -> int:
    mutants = ROOT / "mutants"
    results = load_results(mutants)
    if not results:
        print("no mutmut results under mutants/: run `nox -s mutation` first", file=sys.stderr)
        return 2
    equivalent = load_triage(TRIAGE)
    stale = sorted(set(equivalent) - set(results))
    per_file: dict[str, Counter] = {}
    untriaged = []
    for name, (source, code) in results.items():
        kind = classify(code)
        if name in equivalent and kind != "caught":
            # "other session: ..." names the session whose test fails on it (torch, JAX,
            # array-api-strict's devices, the CuPy stand-in): caught by the matrix, not here
            kind = "elsewhere" if equivalent[name].startswith("other session") else "equivalent"
        elif kind in ("survived", "no tests"):
            untriaged.append((name, kind))
        per_file.setdefault(source, Counter())[kind] += 1

    total = Counter()
    print(f"{'module':34} {'mutants':>8} {'caught':>7} {'equiv':>6} {'elsewh':>6} {'missed':>7} "
          f"{'score':>7}")
    for source, counts in sorted(per_file.items()):
        total.update(counts)
        print(_row(source, counts))
    print(_row("all", total))
    scored = sum(total.values()) - total["equivalent"]
    if scored:
        print(f"\nscore = caught / (mutants - equivalent), in this run (numpy, no torch); "
              f"with the {total['elsewhere']} that other sessions of the default matrix "
              f"catch: {100 * (total['caught'] + total['elsewhere']) / scored:.1f}%")
    unfinished = {k: v for k, v in total.items()
                  if k not in ("caught", "equivalent", "elsewhere", "survived", "no tests")}
    if unfinished:
        print(f"\nnot finished: {dict(unfinished)}")
    if stale:
        print(f"\n{len(stale)} triaged mutants no longer exist (code moved); re-triage:")
        print("\n".join(f"    {name}" for name in stale))
    if untriaged:
        print(f"\n{len(untriaged)} mutants missed and not triaged (`mutmut show NAME` shows one):")
        print("\n".join(f"    {name}: {kind}" for name, kind in sorted(untriaged)))
    return 1 if untriaged or unfinished else 0


def _row(label: str, counts: Counter) -> str:
    mutants = sum(counts.values())
    missed = counts["survived"] + counts["no tests"]
    scored = mutants - counts["equivalent"]
    score = f"{100 * counts['caught'] / scored:.1f}%" if scored else "-"
    return (f"{label:34} {mutants:8d} {counts['caught']:7d} {counts['equivalent']:6d} "
            f"{counts['elsewhere']:6d} {missed:7d} {score:>7}")


if __name__ == "__main__":
    sys.exit(main())
