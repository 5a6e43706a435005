#!/usr/bin/env bash
# Does ParAE pretraining (minkseg pretrain) help at a 10% scene label ratio? On the synthetic
# dataset (--small scenes, MinkUNet14A, 10 cm voxels), both heads, seeds 0..SEEDS-1:
#   supervised from scratch | supervised from the pretrained backbone |
#   self-training from scratch | self-training from the pretrained backbone.
# One `minkseg selftrain ... selftrain.same_budget_baseline=true` run per (head, init, seed)
# yields both: its supervised_same_budget run trains on the labelled scenes only for as many
# steps as round 0 plus all students (the equal fine-tuning budget), its last round is the
# self-trained model. Pretraining uses the training scenes' geometry only (no labels) and
# its last.pth (no checkpoint selection on validation data); all metrics are on the
# synthetic val split, on which nothing was tuned. Prints a Markdown table, mean +- std over seeds.
#
#   bash benchmarks/pretrain_experiment.sh [OUT]      (default OUT: pretrain_out; ~30-40 min on 2 CPU cores)
# Cut-down smoke run:  SEEDS=1 SCENES=12 PRE_EPOCHS=2 EPOCHS0=4 ROUNDS=1 bash benchmarks/pretrain_experiment.sh /tmp/x
set -euo pipefail
out=${1:-pretrain_out}
SEEDS=${SEEDS:-3}            # fine-tuning seeds (train.seed); the labelled scenes (label_seed 0) stay the same
SCENES=${SCENES:-30}         # synthetic --small scenes (about 2/3 train, 1/3 val)
PRE_EPOCHS=${PRE_EPOCHS:-20} # pretraining epochs over all training scenes
EPOCHS0=${EPOCHS0:-60}       # round-0 (supervised) epochs on the labelled scenes
ROUNDS=${ROUNDS:-2}          # self-training rounds
EPOCHS=${EPOCHS:-2}          # student epochs per round (labelled scenes repeated to balance the pseudo-labelled)
mk=${MINKSEG:-$( [ -x .venv/bin/minkseg ] && echo .venv/bin/minkseg || echo minkseg )}
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
data=(data.root="$out/scannet" data.prepared="$out/prepared")

[ -d "$out/scannet/scans" ] || $mk synth --out "$out/scannet" --scenes "$SCENES" --seed 0 --small
$mk prepare --scans "$out/scannet/scans" --out "$out/prepared" --workers 2

# pretraining: every training scene, no labels; val_every=0 so no validation scene is looked at
pre="$out/runs/pretrain"
if [ ! -f "$pre/pretrain.json" ] || [ "$($py -c "import json,sys; print(json.load(open(sys.argv[1]))['epoch'])" \
      "$pre/pretrain.json")" != "$PRE_EPOCHS" ]; then
  $mk pretrain configs/synthetic_pretrain.yaml name=pretrain runs_dir="$out/runs" "${data[@]}" \
    train.epochs="$PRE_EPOCHS" train.val_every=0 train.save_every=5 \
    $( [ -f "$pre/last.pth" ] && echo --resume )
fi

for seed in $(seq 0 $((SEEDS - 1))); do
  for head in probabilistic margin; do
    for init in scratch pretrained; do
      name="${head}_${init}_s$seed"
      extra=()
      [ "$init" = pretrained ] && extra=(model.init_backbone="$pre/last.pth")
      [ -f "$out/runs/$name/summary.json" ] && continue
      $mk selftrain "configs/synthetic_$head.yaml" name="$name" runs_dir="$out/runs" "${data[@]}" \
        data.label_ratio=0.1 data.label_seed=0 train.seed="$seed" train.epochs="$EPOCHS0" \
        selftrain.rounds="$ROUNDS" selftrain.epochs="$EPOCHS" selftrain.same_budget_baseline=true "${extra[@]}" \
        $( [ -f "$out/runs/$name/split.json" ] && echo --resume )
    done
  done
done

$py - "$out/runs" "$SEEDS" <<'PY'
import json, statistics, sys
from pathlib import Path
runs, seeds = Path(sys.argv[1]), int(sys.argv[2])
pre = json.loads((runs / "pretrain" / "pretrain.json").read_text())
print(f"\npretraining: {pre['scenes']} training scenes, {pre['epoch']} epochs, {pre['steps']} steps, "
      f"{pre['seconds_this_call']:.0f} s in its last call (see runs/pretrain/pretrain.json)\n")
metrics = ("mAP", "AP50", "AP25", "mIoU")
print("| head | training | init | steps | " + " | ".join(metrics) + " |")
print("| --- | --- | --- | ---: | " + " | ".join("---:" for _ in metrics) + " |")
for head in ("probabilistic", "margin"):
    for kind in ("supervised", "self-training"):
        for init in ("scratch", "pretrained"):
            rows = []
            for s in range(seeds):
                summary = json.loads((runs / f"{head}_{init}_s{s}" / "summary.json").read_text())["rounds"]
                rows.append(next(r for r in summary if r["run"] == "supervised_same_budget")
                            if kind == "supervised" else [r for r in summary if r["run"].startswith("round_")][-1])
            cells = []
            for m in metrics:
                v = [100 * r[m] for r in rows]
                cells.append(f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}")
            print(f"| {head} | {kind} | {init} | {rows[0]['steps']} | " + " | ".join(cells) + " |")
PY
