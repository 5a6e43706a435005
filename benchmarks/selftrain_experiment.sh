#!/usr/bin/env bash
# Self-training at a 10% scene label ratio on the synthetic dataset, both heads:
# supervised-only (round 0, then continued on the labelled scenes for the students' steps)
# against rounds 1..5. Prints each run's summary table and writes a comparison report.
#
#   bash benchmarks/selftrain_experiment.sh [OUT]      (default OUT: selftrain_out; about 45 min on 2 CPU cores)
set -euo pipefail
out=${1:-selftrain_out}
mk=${MINKSEG:-$( [ -x .venv/bin/minkseg ] && echo .venv/bin/minkseg || echo minkseg )}
$mk synth --out "$out/scannet" --scenes 24 --seed 0
$mk prepare --scans "$out/scannet/scans" --out "$out/prepared" --workers 2
for head in probabilistic margin; do
  $mk selftrain "configs/synthetic_$head.yaml" name="st10_$head" runs_dir="$out/runs" \
    data.root="$out/scannet" data.prepared="$out/prepared" data.label_ratio=0.1 data.label_seed=0 \
    train.epochs=150 selftrain.rounds=5 selftrain.epochs=2 selftrain.same_budget_baseline=true "${@:2}" \
    $( [ -f "$out/runs/st10_$head/split.json" ] && echo --resume )
done
r="$out/runs"
$mk compare "$r/st10_probabilistic/supervised_same_budget" "$r/st10_probabilistic/round_5" \
  "$r/st10_margin/supervised_same_budget" "$r/st10_margin/round_5" --out "$out/compare"
for head in probabilistic margin; do echo "== $head"; cat "$r/st10_$head/summary.md"; done
