"""Turn one module's mutmut 3 results into a row of mutation_out/summary.md.

Called by scripts/mutation.sh after `mutmut run` in the module's scratch copy. Reads the
verdicts with `mutmut results --all true`, moves the mutants listed in
tests/equivalent_mutants.txt from "survived" to "equivalent", stores the row in
<out>/rows/<module>.json and rewrites <out>/summary.md from every row stored so far (so
running modules one at a time accumulates one table). Diffs of the surviving mutants go to
<out>/survivors/<module>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

COLUMNS = ("mutants", "killed", "survived", "timed out", "equivalent", "other")
# mutmut's "no tests" means no selected test reached the function: nothing would notice the
# mutant, so it counts as survived. "other" = suspicious, segfault, not checked, skipped.
STATUS_COLUMN = {"killed": "killed", "caught by type check": "killed", "survived": "survived",
                 "no tests": "survived", "timeout": "timed out"}


def read_equivalents(path: Path) -> dict[str, str]:
    """Mutant name -> reason, from the '#'-commented 'NAME reason' lines of `path`."""
    equivalents: dict[str, str] = {}
    if not path.exists():
        return equivalents
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            sys.exit(f"{path}:{number}: equivalent mutant {name} has no reason; add a one-line reason after the name")
        equivalents[name] = reason.strip()
    return equivalents


def mutmut_results(work: Path, mutmut: str) -> dict[str, str]:
    """Mutant name -> mutmut status, for every mutant in the scratch copy `work`."""
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, check=True,
                         capture_output=True, text=True).stdout
    statuses = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            statuses[name] = status
    return statuses


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="e.g. minkseg/inference/masks.py")
    parser.add_argument("--work", type=Path, required=True, help="the module's scratch copy (holds mutants/)")
    parser.add_argument("--out", type=Path, required=True, help="where summary.md goes")
    parser.add_argument("--equivalents", type=Path, required=True)
    parser.add_argument("--mutmut", default="mutmut")
    parser.add_argument("--seconds", type=float, default=0.0, help="wall time of the run, for the table")
    args = parser.parse_args()
    if os.sep in args.mutmut:  # it runs inside --work, so a relative path would point elsewhere
        args.mutmut = str(Path(args.mutmut).resolve())

    # a package's __init__.py mutants are named after the package (minkseg.losses.x_f__mutmut_1);
    # the "no further dot" test keeps its submodules' mutants out
    module_prefix = args.module.removesuffix(".py").removesuffix("/__init__").replace("/", ".") + "."
    statuses = {n: s for n, s in mutmut_results(args.work, args.mutmut).items()
                if n.startswith(module_prefix) and "." not in n[len(module_prefix):]}
    equivalents = read_equivalents(args.equivalents)
    row = dict.fromkeys(COLUMNS, 0)
    survivors = []
    for name, status in sorted(statuses.items()):
        row["mutants"] += 1
        column = STATUS_COLUMN.get(status, "other")
        if name in equivalents:
            if column == "killed":
                print(f"warning: {args.equivalents}: {name} is listed as equivalent but a test kills it; remove it")
            else:
                column = "equivalent"
        row[column] += 1
        if column in ("survived", "other"):
            survivors.append((name, status))
    for name in sorted(n for n in equivalents if n.startswith(module_prefix)
                       and "." not in n[len(module_prefix):] and n not in statuses):
        print(f"warning: {args.equivalents}: {name} is not a mutant of {args.module} any more; re-check the entry")
    row["seconds"] = round(args.seconds)

    slug = args.module.replace("/", "_").removesuffix(".py")
    (args.out / "rows").mkdir(parents=True, exist_ok=True)
    (args.out / "survivors").mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "rows" / f"{slug}.json", json.dumps({"module": args.module, **row}, indent=1))

    diffs = [f"# Surviving mutants of {args.module}\n"]
    for name, status in survivors:
        shown = subprocess.run([args.mutmut, "show", name], cwd=args.work, capture_output=True, text=True).stdout
        diffs.append(f"## {name} ({status})\n\n```diff\n{shown.strip()}\n```\n")
    write_atomic(args.out / "survivors" / f"{slug}.md", "\n".join(diffs))

    rows = [json.loads(p.read_text()) for p in sorted((args.out / "rows").glob("*.json"))]
    lines = ["| module | mutants | killed | survived | timed out | equivalent | other | % killed | run (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        judged = r["mutants"] - r["equivalent"]
        share = 100.0 * (r["killed"] + r["timed out"]) / judged if judged else 100.0
        lines.append(f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['survived']} | {r['timed out']} "
                     f"| {r['equivalent']} | {r['other']} | {share:.1f} | {r['seconds']} |")
    write_atomic(args.out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
