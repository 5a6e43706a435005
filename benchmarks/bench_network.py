"""Time and peak memory of the instance losses, clustering and one MinkUNet34C step.

    .venv/bin/python benchmarks/bench_network.py            # CPU, all cases
    .venv/bin/python benchmarks/bench_network.py --device cuda

Losses and clustering run for N in {1e4, 1e5} voxels and K in {10, 50} instances, forward
+ backward. Each loss is also run with one chunk holding all N rows (the dense N x K
reference) in the same process, and the table prints the ratios chunked / dense, so the
effect of chunking is measured, not assumed. Peak memory is the CUDA allocator's peak on
GPU and the peak resident-set growth (sampled every millisecond) on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from minkseg.inference.cluster import cluster_margin, cluster_probabilistic
from minkseg.losses.margin import margin_loss
from minkseg.losses.probabilistic import probabilistic_loss


class PeakMemory:
    """Peak memory growth inside a ``with`` block, in MiB.

    CUDA: the caching allocator's own peak counter. CPU: the kernel's peak-RSS mark
    (VmHWM, reset at entry through /proc/self/clear_refs) minus the RSS at entry. Each
    case runs in a fresh process with a fixed malloc mmap threshold (see
    :func:`in_subprocess`), so large tensors are returned to the kernel when freed and
    RSS follows the live tensors.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak-RSS mark
            self.base = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.peak = (_status_kib("VmHWM") - self.base) / 1024


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def in_subprocess(case: str, device: torch.device) -> tuple[float, float, str]:
    """Run one ``--case`` in a fresh interpreter; returns (ms, peak MiB, note)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, __file__, "--device", str(device), "--case", case],
                         capture_output=True, text=True, check=True, env=env).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["ms"], r["mib"], r.get("note", "")


def synthetic_voxels(n: int, k: int, device: torch.device, seed: int = 0):
    """n voxels, k planted instances covering 60 % of them, the rest background."""
    g = torch.Generator().manual_seed(seed)
    inst = torch.randint(0, k, (n,), generator=g)
    inst[torch.rand(n, generator=g) < 0.4] = -1
    centers = torch.rand(k, 3, generator=g) * 8
    x = torch.where(inst[:, None] >= 0, centers[inst.clamp(min=0)], torch.rand(n, 3, generator=g) * 8)
    x = x + 0.05 * torch.randn(n, 3, generator=g)
    sem = torch.where(inst >= 0, 4, 0)
    cls = torch.full((k,), 2)
    return [t.to(device) for t in (x, inst, sem, cls)]


def timed(fn, device: torch.device, repeat: int = 2) -> tuple[float, float]:
    fn()  # warm-up: lazy initialisation and thread pools are not the algorithm's memory
    with PeakMemory(device) as mem:
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    return best * 1e3, mem.peak


def run_case(case: str, device: torch.device) -> dict:
    """One measurement: ``kind:n:k``, kind in prob, prob-dense, margin, margin-dense, cluster-prob, cluster-margin."""
    kind, n, k = case.split(":")
    n, k = int(n), int(k)
    x, inst, sem, cls = synthetic_voxels(n, k, device)
    note = ""
    if kind.startswith(("prob", "margin")):
        mu = (x + 0.01 * torch.randn_like(x)).requires_grad_()
        ls = torch.full_like(x, -2.0, requires_grad=True)
        score = torch.randn(n, 19, device=device, requires_grad=True)
        seed = torch.randn(n, 18, device=device, requires_grad=True)
        semlog = torch.randn(n, 20, device=device, requires_grad=True)
        if kind.startswith("prob"):
            elements = n * k if kind.endswith("dense") else 1 << 20
            fn = lambda: probabilistic_loss(mu, ls, score, semlog, sem, inst, cls,  # noqa: E731
                                            chunk_elements=elements)["total"].backward()
        else:
            elements = n * k if kind.endswith("dense") else 1 << 20
            fn = lambda: margin_loss(mu, ls, seed, semlog, sem, inst, cls,  # noqa: E731
                                     chunk_elements=elements)["total"].backward()
    else:
        sl = torch.full((n, 20), -5.0, device=device)
        sl[inst >= 0, 4] = 5.0
        sc = torch.full((n, 19), -5.0, device=device)
        sc[inst >= 0, 2] = 5.0 + torch.rand(int((inst >= 0).sum()), device=device)
        if kind == "cluster-prob":
            ls0 = torch.full_like(x, np.log(0.1))
            fn = lambda: cluster_probabilistic(x, ls0, sc, sl)  # noqa: E731
        else:
            fn = lambda: cluster_margin(x, torch.full_like(x, 0.3), sc[:, :18], sl)  # noqa: E731
        note = f"{fn().num_instances} instances found"
    ms, mib = timed(fn, device)
    return {"ms": ms, "mib": mib, "note": note}


def bench_losses(device: torch.device, sizes, ks) -> None:
    print(f"{'case':<34}{'ms':>9}{'peak MiB':>10}{'dense ms':>10}{'dense MiB':>10}{'t ratio':>9}{'mem ratio':>10}")
    for n in sizes:
        for k in ks:
            for kind, name in (("prob", "probabilistic loss fwd+bwd"), ("margin", "margin loss fwd+bwd")):
                t1, m1, _ = in_subprocess(f"{kind}:{n}:{k}", device)
                t0, m0, _ = in_subprocess(f"{kind}-dense:{n}:{k}", device)
                print(f"{name + f' N={n:.0e} K={k}':<34}{t1:>9.1f}{m1:>10.1f}{t0:>10.1f}{m0:>10.1f}"
                      f"{t1 / t0:>9.2f}{m1 / max(m0, 1e-3):>10.2f}", flush=True)
            for kind, name in (("cluster-prob", "cluster probabilistic"), ("cluster-margin", "cluster margin")):
                t1, m1, note = in_subprocess(f"{kind}:{n}:{k}", device)
                print(f"{name + f' N={n:.0e} K={k}':<34}{t1:>9.1f}{m1:>10.1f}   ({note})", flush=True)


def bench_backbone(device: torch.device, vertices: int) -> None:
    """One forward+backward of MinkUNet34C + probabilistic head on a synthetic ScanNet scene."""
    import tempfile
    from pathlib import Path

    from minkseg.data.dataset import PreparedScenes
    from minkseg.data.voxelize import collate
    from minkseg.losses import batch_loss
    from minkseg.models.model import SegmentationModel
    from scannet_tools.prepare import prepare_all
    from scannet_tools.synth import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize(root, 1, seed=0, target_vertices=vertices, progress=False)
        prepare_all(root / "scans", root / "prep", root / "scannetv2-labels.combined.tsv")
        scene = PreparedScenes.from_dir(root / "prep", voxel_size=0.02)[0]
    batch = collate([scene]).to(device)
    for head in ("probabilistic", "margin"):
        model = SegmentationModel.build(head, "MinkUNet34C").to(device)

        def step():
            model.zero_grad()
            batch_loss(model(batch), batch)["total"].backward()

        t, m = timed(step, device, repeat=1)
        print(f"MinkUNet34C + {head} head fwd+bwd, {len(scene.inverse)} vertices / {len(batch.coords)} voxels: "
              f"{t:.0f} ms, peak {m:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--ks", default="10,50")
    ap.add_argument("--vertices", type=int, default=150_000)
    ap.add_argument("--skip-backbone", action="store_true")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.case:
        print(json.dumps(run_case(args.case, device)))
        return
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"device: {device} ({name}), torch {torch.__version__}")
    bench_losses(device, [int(s) for s in args.sizes.split(",")], [int(k) for k in args.ks.split(",")])
    if not args.skip_backbone:
        bench_backbone(device, args.vertices)


if __name__ == "__main__":
    main()
