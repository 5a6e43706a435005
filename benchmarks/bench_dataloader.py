"""Data-loading workers and torch.distributed on the synthetic config, measured end to end.

    .venv/bin/python benchmarks/bench_dataloader.py                    # CPU: workers 0 vs 2, 1 vs 2 ranks
    .venv/bin/python benchmarks/bench_dataloader.py --workers 0 4 8 --ranks 1 --device cuda

Synthesizes and prepares ``--scenes`` scenes of the embedded synthetic dataset (50k-200k
vertices each, cached in ``--data``), then with ``configs/synthetic_margin.yaml``
(MinkUNet14A at 10 cm, batch 2):

1. loader: scenes/s of the training DataLoader alone (read, augment, voxelize, collate),
   one epoch per worker count, persistent workers already started;
2. train: steps/s of ``Trainer.fit`` for ``--steps`` steps per worker count (the first
   step, which starts the workers and warms up, is timed separately);
3. ranks: wall time of ``minkseg train ... --max-steps S`` as one process and under
   ``torchrun --nproc_per_node N`` (gloo on CPU), start-up included: what a user waits.

Prints a table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic_margin.yaml"


def prepare_data(data: Path, scenes: int) -> None:
    from scannet_tools.prepare import prepare_all
    from scannet_tools.synth import synthesize

    if not (data / "prepared").is_dir() or len(list((data / "prepared").glob("*.npz"))) < scenes:
        synthesize(data / "scannet", scenes, seed=0, progress=False)
        report = prepare_all(data / "scannet" / "scans", data / "prepared", data / "scannet" /
                             "scannetv2-labels.combined.tsv", workers=2)
        if not report.ok:
            raise SystemExit(report.summary())


def overrides(data: Path, runs: Path, name: str, workers: int, threads: int) -> list[str]:
    return [f"data.root={data / 'scannet'}", f"data.prepared={data / 'prepared'}", f"runs_dir={runs}",
            f"name={name}", "train.val_every=0", "train.epochs=1000", f"train.workers={workers}",
            f"train.threads={threads}"]


def time_loader(cfg, workers: int) -> float:
    """Scenes per second of one epoch of the training loader (workers started beforehand)."""
    from minkseg.data.dataset import EpochBatchSampler, PreparedScenes, training_loader

    ds = PreparedScenes(sorted(Path(cfg.data.prepared).glob("*.npz")), cfg.data.voxel_size, cfg.data.augment,
                        seed=0)
    sampler = EpochBatchSampler()
    loader = training_loader(ds, sampler, workers, prefetch=2)
    batches = [list(range(i, min(i + cfg.train.batch_size, len(ds)))) for i in range(0, len(ds),
                                                                                     cfg.train.batch_size)]
    sampler.set_epoch(0, batches[:1])
    list(loader)  # starts the persistent workers
    sampler.set_epoch(1, batches)
    t0 = time.perf_counter()
    n = sum(len(b.scenes) for b in loader)
    return n / (time.perf_counter() - t0)


def time_training(cfg, steps: int, device: str) -> tuple[float, float]:
    """(seconds of the first step, steps per second of the next ``steps``) of Trainer.fit."""
    from minkseg.engine.train import Trainer

    trainer = Trainer(cfg, device=device)
    t0 = time.perf_counter()
    trainer.fit(max_steps=1)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.fit(max_steps=steps)
    return first, steps / (time.perf_counter() - t0)


def time_command(data: Path, runs: Path, ranks: int, steps: int, workers: int, threads: int, device: str) -> float:
    """Wall seconds of ``minkseg train --max-steps steps`` as 1 process or ``ranks`` torchrun processes."""
    name = f"ranks{ranks}"
    cmd = [sys.executable, "-m", "minkseg", "train", str(CONFIG), *overrides(data, runs, name, workers, threads),
           "--max-steps", str(steps), "--device", device]
    if ranks > 1:
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [str(torchrun), "--standalone", f"--nproc_per_node={ranks}", *cmd[1:]]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/minkseg-bench-dataloader"),
                    help="cache of the synthetic scenes and their prepared files")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per case")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="process counts for the command timing")
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import tempfile

    from minkseg.config import load_config

    prepare_data(args.data, args.scenes)
    results = {"cpus": len(os.sched_getaffinity(0)), "scenes": args.scenes, "loader": {}, "train": {}, "ranks": {}}
    with tempfile.TemporaryDirectory(prefix="bench-dataloader-") as tmp:
        runs = Path(tmp)
        for w in args.workers:
            cfg = load_config(CONFIG, overrides(args.data, runs, f"w{w}", w, args.threads))
            results["loader"][w] = time_loader(cfg, w)
            first, rate = time_training(cfg, args.steps, args.device)
            results["train"][w] = {"first_step_s": first, "steps_per_s": rate,
                                   "scenes_per_s": rate * cfg.train.batch_size}
            print(f"workers {w}: loader {results['loader'][w]:.2f} scenes/s; training {rate:.3f} steps/s "
                  f"({rate * cfg.train.batch_size:.2f} scenes/s), first step {first:.1f} s", flush=True)
        for n in args.ranks:
            threads = args.threads or max(1, results["cpus"] // n)
            wall = time_command(args.data, runs, n, args.steps, 0, threads, args.device)
            results["ranks"][n] = {"wall_s": wall, "threads_per_rank": threads, "steps": args.steps,
                                   "scenes": args.steps * n * 2}
            print(f"{n} rank(s): {args.steps} steps of {n} x 2 scenes in {wall:.1f} s wall "
                  f"({threads} threads per rank, start-up included)", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
