"""Training and inference throughput at ScanNet scale, on a GPU (or, smaller, on CPU).

    .venv/bin/python benchmarks/bench_gpu.py --out bench_gpu.json          # CUDA: the full sizes
    .venv/bin/python benchmarks/bench_gpu.py --small --out bench_cpu.json  # CPU: minutes on 2 cores

Full sizes (the default with CUDA): MinkUNet34C at 2 cm, synthetic 150k-vertex scenes
(``scannet_tools.synth``, prepared with ``prepare_all`` into a temporary folder), batch 4,
loader workers 0/4/8/16 (capped at the CPU count). ``--small`` (the default without CUDA):
MinkUNet14A at 10 cm, 2 scenes, batch 2, workers 0/2. Every measurement goes through the
project's own code: the training DataLoader (``PreparedScenes``/``training_loader``), the
``Trainer``'s model, DDP-ready loss module and ``train_step``, ``predict_scene`` and
``write_scene_submission``.

1. loader: scenes/s of the training DataLoader alone (read, augment, voxelize, collate),
   persistent workers started before the timed epoch;
2. train: per head, time per step and peak memory (CUDA allocator peak; process peak RSS on
   CPU) after warm-up steps, and the fraction of the step spent blocked on ``next(loader)``,
   i.e. the device waiting for data (each step ends with a synchronize, so the device is
   idle while the loop waits);
3. inference: ``predict_scene`` end to end per scene, split into read -> voxelize ->
   network -> clustering -> devoxelize -> submission files (stage boundaries are
   synchronized hooks on the model and on ``cluster_output``). The network is untrained, so
   the clustering time depends on how many seeds it happens to pass the threshold with;
4. clustering: the blocked greedy loop against the one-seed loop it replaced
   (``tests/test_cluster.py::reference_greedy``) on planted scenes of N voxels and K instances,
   both heads; the ``same`` column checks that the results are identical;
5. projection: one ScanNet epoch (1201 training scenes) and the 500-epoch schedule on 1 and
   8 GPUs from the measured step time with data loading (assumptions printed with it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from bench_network import synthetic_voxels

REPO = Path(__file__).resolve().parents[1]
SCANNET_TRAIN_SCENES = 1201
SCHEDULE_EPOCHS = 500


@dataclass
class Sizes:
    backbone: str
    voxel_size: float
    vertices: int
    scenes: int  # distinct synthetic scenes; batches reuse them
    batch: int
    workers: list[int]
    loader_batches: int  # timed loader batches, at least 3 per worker
    warmup_steps: int
    steps: int
    cluster_sizes: list[int] = field(default_factory=lambda: [10_000, 100_000])
    cluster_instances: list[int] = field(default_factory=lambda: [10, 50, 200])


FULL = Sizes("MinkUNet34C", 0.02, 150_000, 8, 4, [0, 4, 8, 16], loader_batches=8, warmup_steps=3, steps=10)
SMALL = Sizes("MinkUNet14A", 0.10, 150_000, 2, 2, [0, 2], loader_batches=3, warmup_steps=1, steps=3)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak-RSS mark VmHWM


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def make_data(root: Path, sizes: Sizes) -> None:
    from scannet_tools.prepare import prepare_all
    from scannet_tools.synth import synthesize

    synthesize(root / "scannet", sizes.scenes, seed=0, target_vertices=sizes.vertices, progress=False)
    report = prepare_all(root / "scannet" / "scans", root / "prepared", root / "scannet" /
                         "scannetv2-labels.combined.tsv", workers=min(8, os.cpu_count() or 1))
    if not report.ok:
        raise SystemExit(f"bench_gpu: preparing the synthetic scenes failed: {report.summary()}")


def make_config(root: Path, sizes: Sizes, head: str, workers: int, name: str):
    from minkseg.config import load_config

    return load_config(REPO / "configs" / f"scannet_{head}.yaml", [
        f"data.root={root / 'scannet'}", f"data.prepared={root / 'prepared'}", f"runs_dir={root / 'runs'}",
        f"name={name}", f"model.backbone={sizes.backbone}", f"data.voxel_size={sizes.voxel_size}",
        f"train.batch_size={sizes.batch}", f"train.workers={workers}", "train.val_every=0"])


def all_scenes(cfg):
    """Every synthetic scene, augmented as in training (the split of a few scenes is too short)."""
    from minkseg.data.dataset import PreparedScenes

    return PreparedScenes.from_dir(cfg.data.prepared, voxel_size=cfg.data.voxel_size, augment=cfg.data.augment,
                                   use_normals=cfg.data.use_normals, seed=cfg.train.seed)


def epoch_batches(n_batches: int, batch: int, n_scenes: int) -> list[list[int]]:
    return [[(b * batch + i) % n_scenes for i in range(batch)] for b in range(n_batches)]


def bench_loader(root: Path, sizes: Sizes, workers: int, device: torch.device) -> float:
    """Scenes per second of the training DataLoader alone, workers already running."""
    from minkseg.data.dataset import EpochBatchSampler, training_loader

    cfg = make_config(root, sizes, "probabilistic", workers, f"loader{workers}")
    dataset = all_scenes(cfg)
    sampler = EpochBatchSampler()
    loader = training_loader(dataset, sampler, workers, cfg.train.prefetch, pin_memory=device.type == "cuda")
    sampler.set_epoch(0, epoch_batches(max(1, workers), sizes.batch, len(dataset)))
    for _ in loader:  # starts the persistent workers
        pass
    # three batches per worker at least, so the rate is not one batch's latency
    sampler.set_epoch(1, epoch_batches(max(sizes.loader_batches, 3 * workers), sizes.batch, len(dataset)))
    t = time.perf_counter()
    scenes = sum(len(b.scenes) for b in loader)
    return scenes / (time.perf_counter() - t)


def bench_training(root: Path, sizes: Sizes, head: str, workers: int, device: torch.device) -> dict:
    """Step time, peak memory and data-wait fraction of ``Trainer.train_step`` fed by its DataLoader."""
    from minkseg.data.dataset import EpochBatchSampler, training_loader
    from minkseg.engine.train import Trainer

    cfg = make_config(root, sizes, head, workers, f"train_{head}_{workers}")
    trainer = Trainer(cfg, device=str(device), dataset=all_scenes(cfg))
    module = trainer.training_module()
    sampler = EpochBatchSampler()
    loader = training_loader(trainer.dataset, sampler, trainer.workers, cfg.train.prefetch,
                             pin_memory=device.type == "cuda")
    total_steps = sizes.warmup_steps + sizes.steps
    sampler.set_epoch(0, epoch_batches(total_steps, sizes.batch, len(trainer.dataset)))
    trainer.model.train()
    batches = iter(loader)
    waited, voxels = 0.0, 0
    for step in range(total_steps):
        if step == sizes.warmup_steps:
            synchronize(device)
            reset_peak_memory(device)
            start, waited, voxels = time.perf_counter(), 0.0, 0
        t = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t
        voxels += len(batch.coords)
        batch = batch.to(device, non_blocking=True)
        trainer.train_step(module, batch)
        synchronize(device)
    elapsed = time.perf_counter() - start
    del batches, loader
    return {"head": head, "workers": workers, "step_s": elapsed / sizes.steps, "wait_fraction": waited / elapsed,
            "peak_mib": peak_memory_mib(device), "voxels_per_batch": voxels / sizes.steps,
            "scenes_per_s": sizes.steps * sizes.batch / elapsed}


@contextlib.contextmanager
def stage_clock(model: torch.nn.Module, device: torch.device):
    """Synchronized time stamps at the network's start and end and around ``cluster_output``."""
    import minkseg.inference.predict as predict_module

    stamps: dict[str, float] = {}

    def stamp(key):
        synchronize(device)
        stamps[key] = time.perf_counter()

    cluster_output = predict_module.cluster_output

    def timed_cluster_output(*args, **kwargs):
        stamp("cluster_start")
        result = cluster_output(*args, **kwargs)
        stamp("cluster_end")
        return result

    hooks = [model.register_forward_pre_hook(lambda *_: stamp("network_start")),
             model.register_forward_hook(lambda *_: stamp("network_end"))]
    predict_module.cluster_output = timed_cluster_output
    try:
        yield stamps, stamp
    finally:
        predict_module.cluster_output = cluster_output
        for h in hooks:
            h.remove()


def bench_inference(root: Path, sizes: Sizes, head: str, device: torch.device, repeats: int) -> dict:
    """``predict_scene`` + ``write_scene_submission`` per scene, split by stage (mean over scenes)."""
    from minkseg.evaluation.submission import write_scene_submission
    from minkseg.inference.predict import predict_scene
    from minkseg.models.build import build_model
    from scannet_tools.prepare import load_prepared

    cfg = make_config(root, sizes, head, 0, f"infer_{head}")
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    files = sorted((root / "prepared").glob("scene*"))
    rows, instances = [], []
    with stage_clock(model, device) as (stamps, stamp):
        for i in range(repeats + 1):  # the first pass warms up (allocator, kernels)
            stamp("start")
            scene = load_prepared(files[i % len(files)])
            stamp("read")
            pred = predict_scene(model, scene, cfg, device)
            stamp("devoxelized")
            write_scene_submission(pred, root / "submission")
            stamp("written")
            if i == 0:
                continue
            rows.append({"read": stamps["read"] - stamps["start"],
                         "voxelize": stamps["network_start"] - stamps["read"],
                         "network": stamps["network_end"] - stamps["network_start"],
                         "clustering": stamps["cluster_end"] - stamps["cluster_start"],
                         "devoxelize": (stamps["devoxelized"] - stamps["network_end"]
                                        - (stamps["cluster_end"] - stamps["cluster_start"])),
                         "submission": stamps["written"] - stamps["devoxelized"]})
            instances.append(len(pred.instances))
    stages = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return {"head": head, "stages_s": stages, "total_s": sum(stages.values()), "instances": float(np.mean(instances)),
            "vertices": sizes.vertices}


def planted_outputs(n: int, k: int, device: torch.device):
    """Head outputs for n voxels with k planted instances (bench_network's scene)."""
    x, inst, _, _ = synthetic_voxels(n, k, device)
    g = torch.Generator().manual_seed(1)
    semantic_logits = torch.full((n, 20), -5.0, device=device)
    semantic_logits[inst >= 0, 4] = 5.0
    score_logits = torch.full((n, 19), -5.0, device=device)
    score_logits[inst >= 0, 2] = 5.0 + torch.rand(int((inst >= 0).sum()), generator=g).to(device)
    return x, semantic_logits, score_logits


def bench_clustering(sizes: Sizes, device: torch.device) -> list[dict]:
    """The blocked greedy loop against the one-seed loop (before), both heads, identical results checked."""
    import minkseg.inference.cluster as cluster_module

    sys.path.insert(0, str(REPO))
    from tests.test_cluster import reference_greedy

    def one_seed_loop(*args, **kwargs):
        return cluster_module.Clusters(*reference_greedy(*args, **kwargs))

    def timed(fn):
        fn()  # warm-up
        synchronize(device)
        t = time.perf_counter()
        result = fn()
        synchronize(device)
        return time.perf_counter() - t, result

    rows = []
    for n in sizes.cluster_sizes:
        for k in sizes.cluster_instances:
            x, semantic_logits, score_logits = planted_outputs(n, k, device)
            log_sigma = torch.full_like(x, float(np.log(0.1)))
            sigma_logit = torch.full_like(x, 0.3)
            runs = {"probabilistic": lambda: cluster_module.cluster_probabilistic(x, log_sigma, score_logits,
                                                                                  semantic_logits),
                    "margin": lambda: cluster_module.cluster_margin(x, sigma_logit, score_logits[:, :18],
                                                                    semantic_logits)}
            for head, run in runs.items():
                after_s, after = timed(run)
                blocked = cluster_module.greedy_cluster
                cluster_module.greedy_cluster = one_seed_loop
                try:
                    before_s, before = timed(run)
                finally:
                    cluster_module.greedy_cluster = blocked
                same = all(torch.equal(getattr(before, f), getattr(after, f))
                           for f in ("voxel_instance", "classes", "scores"))
                rows.append({"n": n, "k": k, "head": head, "before_s": before_s, "after_s": after_s,
                             "instances": after.num_instances, "same": same})
    return rows


def projection(train: list[dict], workers: int, gpus: list[int], ddp_efficiency: float) -> dict:
    """Epoch and schedule hours from the measured step (data wait included) at ``workers``."""
    out = {}
    for row in train:
        if row["workers"] != workers:
            continue
        for n in gpus:
            scenes_per_s = row["scenes_per_s"] * n * (ddp_efficiency if n > 1 else 1.0)
            epoch_h = SCANNET_TRAIN_SCENES / scenes_per_s / 3600
            out[f"{row['head']}_{n}gpu"] = {"epoch_h": epoch_h, "schedule_h": epoch_h * SCHEDULE_EPOCHS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="CPU sizes (the default without CUDA)")
    ap.add_argument("--inference-scenes", type=int, default=0, help="scenes timed per head (default 4; small 1)")
    ap.add_argument("--ddp-efficiency", type=float, default=0.9,
                    help="assumed per-GPU throughput kept with 8 GPUs (all-reduce, stragglers); not measured here")
    ap.add_argument("--skip-clustering", action="store_true")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    device = torch.device(args.device)
    sizes = SMALL if args.small or device.type != "cuda" else FULL
    cpus = os.cpu_count() or 1
    sizes.workers = sorted({min(w, cpus) for w in sizes.workers})
    infer_scenes = args.inference_scenes or (1 if sizes is SMALL else 4)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), {cpus} CPUs, torch {torch.__version__}; {'small' if sizes is SMALL else 'full'} "
          f"sizes: {sizes.backbone} at {sizes.voxel_size * 100:.0f} cm, {sizes.scenes} synthetic scenes of "
          f"~{sizes.vertices} vertices, batch {sizes.batch}, workers {sizes.workers}, "
          f"{sizes.warmup_steps} warm-up + {sizes.steps} timed steps", flush=True)
    result: dict = {"device": str(device), "device_name": name, "cpus": cpus, "sizes": asdict(sizes)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_data(root, sizes)
        print(f"synthesized and prepared in {time.perf_counter() - t:.0f} s", flush=True)

        print("\nloader (read, augment, voxelize, collate)\n  workers  scenes/s")
        result["loader"] = []
        for w in sizes.workers:
            rate = bench_loader(root, sizes, w, device)
            result["loader"].append({"workers": w, "scenes_per_s": rate})
            print(f"  {w:7d}  {rate:8.2f}", flush=True)

        print(f"\ntraining step (batch {sizes.batch}; synchronized; warm-up excluded)\n"
              "  head           workers  step s  scenes/s  waits for data  peak MiB  voxels/batch")
        result["train"] = []
        train_workers = sorted({sizes.workers[0], min(8, sizes.workers[-1])})
        for head in ("probabilistic", "margin"):
            for w in train_workers:
                r = bench_training(root, sizes, head, w, device)
                result["train"].append(r)
                print(f"  {head:13s}  {w:7d}  {r['step_s']:6.3f}  {r['scenes_per_s']:8.2f}  "
                      f"{100 * r['wait_fraction']:13.1f}%  {r['peak_mib']:8.0f}  {r['voxels_per_batch']:12.0f}",
                      flush=True)

        print(f"\ninference per scene ({infer_scenes} scenes after one warm-up; untrained weights), seconds\n"
              "  head           read  voxelize  network  clustering  devoxelize  submission  total  instances")
        result["inference"] = []
        for head in ("probabilistic", "margin"):
            r = bench_inference(root, sizes, head, device, infer_scenes)
            result["inference"].append(r)
            s = r["stages_s"]
            print(f"  {head:13s} {s['read']:5.3f}  {s['voxelize']:8.3f}  {s['network']:7.3f}  {s['clustering']:10.3f}"
                  f"  {s['devoxelize']:10.3f}  {s['submission']:10.3f}  {r['total_s']:5.3f}  {r['instances']:9.0f}",
                  flush=True)

    if not args.skip_clustering:
        print("\nclustering: one-seed loop (before) vs blocked loop (after), seconds\n"
              "        N    K  head            before   after  instances  same")
        result["clustering"] = bench_clustering(sizes, device)
        for r in result["clustering"]:
            print(f"  {r['n']:7d}  {r['k']:3d}  {r['head']:13s}  {r['before_s']:6.3f}  {r['after_s']:6.3f}  "
                  f"{r['instances']:9d}  {r['same']}", flush=True)

    proj_workers = train_workers[-1]
    result["projection"] = projection(result["train"], proj_workers, [1, 8], args.ddp_efficiency)
    result["projection_assumptions"] = (
        f"{SCANNET_TRAIN_SCENES} training scenes per epoch at the measured scenes/s with {proj_workers} loader "
        f"workers per GPU (data wait included, validation excluded); ScanNet scenes assumed as costly as these "
        f"{sizes.vertices}-vertex synthetic ones; 8 GPUs keep {args.ddp_efficiency:.0%} of 8x one GPU's throughput "
        f"(assumed, not measured); {SCHEDULE_EPOCHS} epochs.")
    print(f"\nprojection ({sizes.backbone} at {sizes.voxel_size * 100:.0f} cm, batch {sizes.batch} per GPU)\n"
          "  head           GPUs  epoch h  500 epochs h")
    for key, p in result["projection"].items():
        head, gpus = key.rsplit("_", 1)
        print(f"  {head:13s}  {gpus[:-3]:>4s}  {p['epoch_h']:7.2f}  {p['schedule_h']:12.1f}")
    print(f"  assumptions: {result['projection_assumptions']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
