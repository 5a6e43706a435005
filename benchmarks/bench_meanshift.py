"""Time and memory of mean-shift grouping (GBMS, minkseg.inference.meanshift) against greedy seeds.

    .venv/bin/python benchmarks/bench_meanshift.py [--sizes 20000 50000 100000 200000] [--device auto]
        [--iterations 5] [--anchors 2048] [--out FILE.md]

A synthetic scene of N foreground voxels: 40 instances of N/40 voxels whose embeddings are
Gaussian blobs (3 cm spread) around centres 0.5-8 m apart, plus 10 % voxels scattered over the
room (boundary voxels, not yet pulled to a centre), for both heads (probabilistic: sigma 5 cm;
margin: s~ with the same kernel length). Seeds: high at 5 % of each instance's voxels. Each
(head, method, N) runs in its own process, so the memory figure is that run's alone: the peak
resident-set growth on CPU, ``torch.cuda.max_memory_allocated`` on a GPU. Prints a Markdown
table (and writes it to ``--out``) with the instances found and how many planted instances were
recovered (a predicted instance with IoU >= 0.9 over the planted voxels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def scene(n: int, head: str, device, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    k = 40
    n_inst = int(n * 0.9) // k
    centres = torch.rand(k, 3, generator=g) * torch.tensor([8.0, 8.0, 2.0])
    truth = torch.cat([torch.arange(k).repeat_interleave(n_inst), torch.full((n - k * n_inst,), -1)])
    emb = torch.rand(n, 3, generator=g) * torch.tensor([8.0, 8.0, 2.0])
    inst = truth >= 0
    emb[inst] = centres[truth[inst]] + 0.03 * torch.randn(int(inst.sum()), 3, generator=g)
    sem = torch.full((n, 20), -5.0)
    sem[:, 4] = 5.0  # every voxel foreground (class train id 4)
    if head == "probabilistic":
        params = torch.full((n, 3), math.log(0.05))
        score = torch.full((n, 19), -5.0)
        score[:, -1] = 5.0
        seeds = inst & (torch.rand(n, generator=g) < 0.05)
        score[seeds, 2], score[seeds, -1] = 5.0, -5.0
    else:
        params = torch.full((n, 3), -2 * math.log(0.1 * math.sqrt(2)) / 10)  # kernel length 0.1, as 2 sigma above
        score = torch.full((n, 18), -5.0)
        score[inst & (torch.rand(n, generator=g) < 0.05), 2] = 5.0
    min_gap = float(torch.pdist(centres).min())
    return [t.to(device) for t in (emb, params, score, sem)], truth, min_gap


def run_one(head: str, method: str, n: int, device: str, iterations: int, anchors: int) -> dict:
    import torch

    from minkseg.device import resolve_device
    from minkseg.inference.cluster import cluster_margin, cluster_probabilistic
    from minkseg.inference.meanshift import meanshift_margin, meanshift_probabilistic

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dev = resolve_device(device)
    (emb, params, score, sem), truth, min_gap = scene(n, head, dev)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    if method == "greedy":
        fn = cluster_probabilistic if head == "probabilistic" else cluster_margin
        c = fn(emb, params, score, sem, min_size=10)
    else:
        fn = meanshift_probabilistic if head == "probabilistic" else meanshift_margin
        c = fn(emb, params, score, sem, iterations=iterations, max_anchors=anchors, min_size=10)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        mem_mib = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        mem_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    pred = c.voxel_instance.cpu()
    recovered = 0  # planted instances matched by a predicted one with IoU >= 0.9 (scattered voxels not counted)
    planted = truth >= 0
    for k in range(int(truth.max()) + 1):
        ids, counts = pred[truth == k].unique(return_counts=True)
        counts[ids < 0] = 0
        best = ids[counts.argmax()]
        if best >= 0:
            inter = int(counts.max())
            union = int((truth == k).sum()) + int(((pred == best) & planted).sum()) - inter
            recovered += inter / union >= 0.9
    return {"head": head, "method": method, "n": n, "seconds": seconds, "mem_mib": mem_mib,
            "instances": c.num_instances, "recovered": recovered, "planted": int(truth.max()) + 1,
            "min_gap": min_gap, "device": str(dev)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 100_000, 200_000])
    ap.add_argument("--heads", nargs="+", default=["probabilistic", "margin"])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (minkseg.device.resolve_device)")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--anchors", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: head,method,n in a child process
    args = ap.parse_args(argv)
    if args.one:
        head, method, n = args.one.split(",")
        print(json.dumps(run_one(head, method, int(n), args.device, args.iterations, args.anchors)))
        return
    rows = []
    for head in args.heads:
        for n in args.sizes:
            for method in ("greedy", "meanshift"):
                cmd = [sys.executable, __file__, "--one", f"{head},{method},{n}", "--device", args.device,
                       "--iterations", str(args.iterations), "--anchors", str(args.anchors)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{head:13s} {method:9s} N={n:7d} {row['seconds']:8.2f} s {row['mem_mib']:8.1f} MiB "
                      f"instances {row['instances']:4d} recovered {row['recovered']}/{row['planted']}", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    lines = [f"Device: {rows[0]['device']} ({threads} thread(s)); GBMS: {args.iterations} iterations, "
             f"<= {args.anchors} anchors; closest planted centres {rows[0]['min_gap']:.2f} m apart.", "",
             "| head | N voxels | greedy s | greedy MiB | GBMS s | GBMS MiB | greedy found / recovered "
             "| GBMS found / recovered |", "|---|---|---|---|---|---|---|---|"]
    by = {(r["head"], r["n"], r["method"]): r for r in rows}
    for head in args.heads:
        for n in args.sizes:
            g, m = by[head, n, "greedy"], by[head, n, "meanshift"]
            lines.append(f"| {head} | {n} | {g['seconds']:.2f} | {g['mem_mib']:.0f} | {m['seconds']:.2f} | "
                         f"{m['mem_mib']:.0f} | {g['instances']} / {g['recovered']} of {g['planted']} | "
                         f"{m['instances']} / {m['recovered']} of {m['planted']} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        from scannet_tools.io import write_text_atomic

        write_text_atomic(args.out, table)


if __name__ == "__main__":
    main()
