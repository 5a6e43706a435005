"""Test-time augmentation: mirrored and rotated passes about the vertical axis, averaged per voxel.

Poses: ``n`` rotations about z by 360 k / n degrees (k = 0..n-1), each also mirrored (x -> -x,
applied before the rotation) when ``flip``; pose 0 is the identity. Every pose is a rigid map
of the scene (normals are mapped with it), so the network sees the same room in another
orientation; each pass voxelizes its own transformed coordinates
(:func:`minkseg.data.voxelize.voxelize`).

Averaging goes through the vertices, the only objects every pose shares: vertex v lies in voxel
``inverse_p[v]`` of pose p and in voxel ``inverse_0[v]`` of the identity pose. The averaged
probability of identity voxel j is the mean over all poses p and all vertices v of j of pose
p's probability at ``inverse_p[v]``; for the identity pose every vertex of j maps to j itself.
Averaged are the semantic class probabilities (softmax), the probabilistic head's centre-score
probabilities (softmax over the L + 1 columns) and the margin head's seed probabilities
(sigmoid per class). They are returned as logits of the averaged probabilities, so clustering
code is unchanged:

* semantic logits := log mean softmax; score logits := log mean softmax;
* seed logits := logit(mean sigmoid) = log mean sigmoid(x) - log mean sigmoid(-x).

All are computed as log-mean-exp of log-probabilities (:func:`log_mean_exp_per_group`), so they
stay finite where a probability underflows or rounds to 1.

Embeddings (mu and sigma, or e and s~) are *not* averaged: they are positions in each pose's own
coordinates, and mapping them back would average instance centres predicted from different
views into points no pass predicted. Instances are formed from the identity pass's embeddings,
with the averaged semantic probabilities (foreground, class) and the averaged seed / centre
scores (seed order and confidence).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from minkseg.models.heads import MarginOutput, ProbabilisticOutput
from minkseg.models.model import ModelOutput

Pose = tuple[bool, float]  # (mirror x before rotating, rotation about z in degrees)


def tta_poses(rotations: int, flip: bool = True) -> list[Pose]:
    """The identity first, then the other rotations by 360 / ``rotations`` degrees, each mirrored too if ``flip``."""
    if rotations < 1:
        raise ValueError(f"test-time augmentation needs >= 1 rotation, got {rotations}")
    angles = [360.0 * k / rotations for k in range(rotations)]
    return [(mirror, a) for a in angles for mirror in ((False, True) if flip else (False,))]


def pose_matrix(mirror: bool, angle_deg: float) -> np.ndarray:
    """(3, 3) R_z(angle) @ diag(-1 if mirror else 1, 1, 1): mirror x, then rotate about z."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rot @ np.diag([-1.0 if mirror else 1.0, 1.0, 1.0])


def transform_scene(scene: dict, mirror: bool, angle_deg: float) -> dict:
    """A shallow copy of a prepared scene with ``xyz`` (and ``normals``, if present) mapped by the pose."""
    m = pose_matrix(mirror, angle_deg)
    out = dict(scene)
    for key in ("xyz", "normals"):
        if key in scene:
            out[key] = (np.asarray(scene[key], np.float64) @ m.T).astype(scene[key].dtype)
    return out


def log_mean_exp_per_group(log_values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(G, C) log of the mean of exp(``log_values``) (N, C) over the rows of each group, stabilised by each
    group's maximum; a group without rows gives -inf."""
    peak = torch.full((num_groups, log_values.shape[1]), -torch.inf, dtype=log_values.dtype,
                      device=log_values.device)
    peak = peak.scatter_reduce(0, group[:, None].expand_as(log_values), log_values, "amax")
    safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    sums = torch.zeros_like(peak).index_add_(0, group, torch.exp(log_values - safe_peak[group]))
    counts = torch.bincount(group, minlength=num_groups).clamp_min(1).to(log_values.dtype)[:, None]
    return torch.log(sums) + safe_peak - torch.log(counts)


def averaged_maps(out: ModelOutput) -> dict[str, torch.Tensor]:
    """The per-voxel log-probabilities that test-time augmentation averages (module docstring)."""
    maps = {"semantic": F.log_softmax(out.semantic_logits, 1)}
    inst = out.instance
    if isinstance(inst, ProbabilisticOutput):
        maps["score"] = F.log_softmax(inst.score_logits, 1)
    elif isinstance(inst, MarginOutput):
        maps["seed"] = F.logsigmoid(inst.seed_logits)
        maps["not_seed"] = F.logsigmoid(-inst.seed_logits)
    return maps


def average_outputs(identity: ModelOutput, identity_inverse: torch.Tensor,
                    passes: Iterable[tuple[ModelOutput, torch.Tensor]]) -> ModelOutput:
    """The identity pass's outputs with the semantic and seed / centre-score maps replaced by their averages over
    the identity pass and ``passes`` ((output, vertex -> voxel inverse) of each other pose), per identity voxel
    through the vertices (module docstring). Embeddings and features stay the identity pass's.

    ``passes`` may be a generator: each pass is folded in and released before the next is computed.
    """
    m = len(identity.semantic_logits)
    group = identity_inverse
    total = {k: log_mean_exp_per_group(v[identity_inverse], group, m) for k, v in averaged_maps(identity).items()}
    n_poses = 1
    for out, inverse in passes:
        for k, v in averaged_maps(out).items():
            total[k] = torch.logaddexp(total[k], log_mean_exp_per_group(v[inverse], group, m))
        n_poses += 1
    mean = {k: v - math.log(n_poses) for k, v in total.items()}
    inst = identity.instance
    if isinstance(inst, ProbabilisticOutput):
        inst = dataclasses.replace(inst, score_logits=mean["score"])
    elif isinstance(inst, MarginOutput):
        inst = dataclasses.replace(inst, seed_logits=mean["seed"] - mean["not_seed"])
    return ModelOutput(mean["semantic"], inst, identity.features)
