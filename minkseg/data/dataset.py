"""Prepared scenes as a dataset of :class:`VoxelScene` (augmented when training), and the
DataLoaders that read, augment, voxelize and collate them in worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from scannet_tools.prepare import PREPARED_SUFFIX, load_prepared, prepared_path

from .augment import AugmentConfig, augment
from .voxelize import VoxelScene, collate, input_features, voxelize


class PreparedScenes(torch.utils.data.Dataset):
    """Voxelized prepared scenes; with ``augment`` set, each access draws a new augmentation.

    Augmentation randomness is a function of (``seed``, epoch, item): an item is fetched by
    its index (with the ``epoch`` attribute) or by an ``(epoch, index)`` key, the form
    :class:`EpochBatchSampler` hands to DataLoader workers, whose copy of the dataset never
    sees the attribute change. A run is thus reproducible from its seed and resumable from
    any step, with or without workers.

    ``label_files[i]`` (self-training) replaces item i's ground truth by the per-vertex
    ``semantic`` and ``instance`` arrays of a pseudo-label file, and ``weights[i]`` scales
    its loss. The same scene may appear several times (each occurrence is augmented anew).
    """

    def __init__(self, files: list[Path], voxel_size: float = 0.02, augment: AugmentConfig | None = None,
                 use_normals: bool = False, seed: int = 0, label_files: list[Path | None] | None = None,
                 weights: list[float] | None = None):
        if not files:
            raise ValueError("no prepared scenes given")
        self.files = [Path(f) for f in files]
        self.voxel_size, self.augment, self.use_normals, self.seed = voxel_size, augment, use_normals, seed
        self.label_files = list(label_files) if label_files is not None else [None] * len(self.files)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.files)
        if not len(self.label_files) == len(self.weights) == len(self.files):
            raise ValueError("files, label_files and weights must have the same length")
        self.epoch = 0

    @classmethod
    def from_dir(cls, prepared_dir: str | Path, scenes: list[str] | None = None, **kw) -> PreparedScenes:
        d = Path(prepared_dir)
        if scenes is None:
            files = sorted(d.glob(f"scene*{PREPARED_SUFFIX}"))
        else:
            files = [prepared_path(d, s) for s in scenes]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{d}: {len(missing)} prepared scenes missing, e.g. {missing[:3]}")
        return cls(files, **kw)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> VoxelScene:
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        s = load_prepared(self.files[i])
        semantic, instance = s["semantic"], s["instance"]
        if self.label_files[i] is not None:
            semantic, instance = load_pseudo_labels(self.label_files[i], len(semantic))
        xyz, rgb, keep = s["xyz"], s["rgb"], None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, i])
            xyz, rgb, keep = augment(xyz, rgb, self.augment, rng)
        else:
            xyz = xyz - xyz.min(0)
        feats = input_features(rgb, s["normals"] if self.use_normals else None)
        vox = voxelize(xyz, feats, semantic, instance, self.voxel_size, scene=s["scene"], keep=keep)
        vox.labeled, vox.weight = self.label_files[i] is None, float(self.weights[i])
        return vox


def load_pseudo_labels(path: Path, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex ``semantic`` and ``instance`` of a pseudo-label file (see minkseg.engine.pseudo_labels)."""
    with np.load(path) as z:
        semantic, instance = z["semantic"], z["instance"]
    if len(semantic) != num_vertices or len(instance) != num_vertices:
        raise ValueError(f"{path}: {len(semantic)} pseudo labels for a scene of {num_vertices} vertices")
    return semantic, instance


def default_workers() -> int:
    """Data-loading processes per rank when the config says -1: the CPUs this process may use,
    shared among the ranks of this node (torchrun's LOCAL_WORLD_SIZE), at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(0, min(8, cpus // max(int(ranks_here) if ranks_here.isdigit() else 1, 1)))


def resolve_workers(workers: int) -> int:
    """``train.workers`` as a process count: -1 means :func:`default_workers`."""
    if workers < -1:
        raise ValueError(f"train.workers={workers}: use -1 (from the CPU count), 0 (no workers) or a count")
    return default_workers() if workers == -1 else workers


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields one epoch's batches as lists of ``(epoch, index)`` keys.

    The batches are fixed in advance (:meth:`set_epoch`): the trainer computes them from the
    (seed, epoch) permutation, this rank's shard and the position to resume from, so
    skipped batches are never loaded. The sampler lives in the main process; only the
    keys travel to the workers, which is how the epoch reaches persistent workers.
    """

    def __init__(self) -> None:
        self.epoch, self.batches = 0, []

    def set_epoch(self, epoch: int, batches: Sequence[Sequence[int]]) -> None:
        self.epoch, self.batches = epoch, [list(b) for b in batches]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in self.batches:
            yield [(self.epoch, int(i)) for i in b]

    def __len__(self) -> int:
        return len(self.batches)


def training_loader(dataset: PreparedScenes, sampler: EpochBatchSampler, workers: int = 0, prefetch: int = 2,
                    pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of :class:`VoxelBatch` collated in ``workers`` persistent processes (0: in this one)."""
    if prefetch < 1:
        raise ValueError(f"train.prefetch={prefetch}: each worker must prepare at least one batch ahead")
    extra = {"persistent_workers": True, "prefetch_factor": prefetch} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                       pin_memory=pin_memory, **extra)


class PreparedFiles(torch.utils.data.Dataset):
    """The arrays of prepared scenes, unchanged (evaluation, prediction, pseudo-labelling).

    With ``errors_as_values`` a file that cannot be read yields its exception instead of
    raising it, so one damaged scene does not end a pass over thousands.
    """

    def __init__(self, files: Sequence[Path], errors_as_values: bool = False):
        self.files, self.errors_as_values = [Path(f) for f in files], errors_as_values

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict | Exception:
        try:
            return load_prepared(self.files[i])
        except Exception as e:
            if not self.errors_as_values:
                raise
            return e


def _as_is(item):
    return item


def iterate_prepared(files: Sequence[Path], workers: int = 0, prefetch: int = 2,
                     errors_as_values: bool = False) -> Iterator[dict | Exception]:
    """Prepared scenes in the order of ``files``, read ahead by ``workers`` processes (0: read here)."""
    if not files:
        return iter(())
    extra = {"prefetch_factor": prefetch} if workers > 0 else {}
    # batch_size=None: one scene per item; _as_is keeps numpy arrays as they are
    loader = torch.utils.data.DataLoader(PreparedFiles(files, errors_as_values), batch_size=None, collate_fn=_as_is,
                                         num_workers=min(workers, len(files)), **extra)
    return iter(loader)
