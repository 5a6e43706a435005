"""Psi (TWIST's proposal re-correction module) as a proposal scorer at inference.

For each proposal Psi gives class probabilities over the instance classes plus "no object",
a mask logit per member and a predicted IoU with the true instance. A proposal's certainty is

    certainty = p(corrected class) x predicted IoU

so it ranks high only if Psi is sure what it is *and* that its mask is right. Mass on "no
object" lowers the first factor (the instance-class probabilities are not renormalized), so
a proposal Psi rejects falls to the bottom of the ranking without a separate rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minkseg.data.voxelize import VoxelBatch
from minkseg.models.model import ModelOutput, SegmentationModel


def group_members(voxel_instance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(members, owner) of a per-voxel instance index (-1: none), grouped by instance."""
    members = (voxel_instance >= 0).nonzero(as_tuple=True)[0]
    owner = voxel_instance[members]
    order = torch.argsort(owner, stable=True)
    return members[order], owner[order]


@dataclass
class PsiAssessment:
    class_probs: torch.Tensor  # (P, L) probabilities of the L instance classes (the "no object" column dropped)
    classes: torch.Tensor  # (P,) corrected class, 0..L-1 (arg-max of class_probs)
    certainty: torch.Tensor  # (P,) p(corrected class) x predicted IoU
    keep_member: torch.Tensor  # (V,) bool: Psi's refined mask (mask probability > 0.5)


@torch.no_grad()
def assess_proposals(model: SegmentationModel, out: ModelOutput, batch: VoxelBatch, members: torch.Tensor,
                     owner: torch.Tensor, num_proposals: int) -> PsiAssessment:
    """Psi on one scene's proposals (``members`` voxel rows, ``owner`` 0..P-1; overlaps allowed)."""
    if model.recorrector is None:
        raise ValueError("cluster.score=psi needs a model with the re-correction module Psi: train it with "
                         "model.recorrector=true (or minkseg selftrain)")
    r = model.recorrector(out.features, batch.coords[:, 1:], batch.centers, members, owner, num_proposals)
    probs = torch.softmax(r.class_logits, 1)[:, :-1]
    cls_prob, cls = probs.max(1)
    return PsiAssessment(probs, cls, cls_prob * torch.sigmoid(r.certainty_logits), r.mask_logits > 0)
