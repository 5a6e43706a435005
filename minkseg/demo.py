"""``minkseg demo``: the pipeline end to end on the embedded synthetic dataset.

Today: synth -> prepare -> export-gt -> network forward pass (both heads) -> clustering ->
devoxelization on a prepared scene. Every stage goes through the same code as real scans.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from minkseg.cluster import cluster_margin, cluster_probabilistic
from minkseg.data.dataset import PreparedScenes
from minkseg.data.voxelize import collate
from minkseg.devoxelize import devoxelize
from minkseg.models.model import SegmentationModel
from scannet_tools.export_gt import export_gt_all
from scannet_tools.prepare import prepare_all
from scannet_tools.synth import synthesize


def _stage(name: str):
    print(f"\n== {name}", flush=True)
    return time.time()


def run_demo(out: str | Path, scenes: int = 6, seed: int = 0, small: bool = False) -> int:
    out = Path(out)
    raw, prepared, gt = out / "scannet", out / "prepared", out / "gt"
    t_all = time.time()

    t = _stage(f"synth: {scenes} synthetic scenes in the raw ScanNet layout -> {raw}")
    synthesize(raw, scenes, seed=seed, small=small)
    print(f"   {time.time() - t:.1f} s")

    t = _stage(f"prepare -> {prepared}")
    report = prepare_all(raw / "scans", prepared, raw / "scannetv2-labels.combined.tsv", workers=2)
    print(report.summary("prepared"), f"\n   {report.vertices} vertices in {time.time() - t:.1f} s")

    t = _stage(f"export-gt -> {gt}")
    report = export_gt_all(raw / "scans", gt, raw / "scannetv2-labels.combined.tsv", workers=2)
    print(report.summary("exported"), f"\n   {time.time() - t:.1f} s")

    torch.manual_seed(seed)
    ds = PreparedScenes.from_dir(prepared, voxel_size=0.02)
    scene = ds[0]
    batch = collate([scene])
    for head in ("probabilistic", "margin"):
        t = _stage(f"network: MinkUNet14A + {head} head on {scene.scene} ({len(scene.coords)} voxels at 2 cm)")
        model = SegmentationModel.build(head, "MinkUNet14A").eval()
        with torch.no_grad():
            o = model(batch)
        i = o.instance
        c = (cluster_probabilistic(i.mu, i.log_sigma, i.score_logits, o.semantic_logits, seed_threshold=0.0)
             if head == "probabilistic"
             else cluster_margin(i.embedding, i.sigma_logit, i.seed_logits, o.semantic_logits, seed_threshold=0.0))
        per_vertex = devoxelize(c.voxel_instance, scene.inverse)
        print(f"   untrained forward + clustering + devoxelization: {c.num_instances} clusters over "
              f"{len(per_vertex)} vertices in {time.time() - t:.1f} s")

    print(f"\ndone in {time.time() - t_all:.0f} s. Outputs:\n"
          f"  raw scenes      {raw / 'scans'}\n  prepared        {prepared}\n"
          f"  ground truth    {gt / 'semantic'}, {gt / 'instance'}")
    return 0
