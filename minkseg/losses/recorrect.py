"""Targets and loss of TWIST's proposal re-correction module Psi (supplementary Fig. 6b, Table 10).

A proposal is matched to the ground-truth instance it overlaps most (IoU over voxels).
Its targets: that instance's class when IoU >= ``positive_iou`` else "no object"; the
instance's voxels as the refined mask (positives only: a mask target for a proposal that
hits nothing would be arbitrary); the IoU itself as the certainty. The loss is
L_Psi = CE(class) + BCE(mask) + BCE(certainty, IoU), and the network is trained on
L = L_Phi + alpha L_Psi.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ProposalTargets:
    classes: torch.Tensor  # (P,) instance class 0..L-1, or L ("no object")
    iou: torch.Tensor  # (P,) IoU with the matched instance
    mask: torch.Tensor  # (V,) member row belongs to the matched instance
    positive: torch.Tensor  # (P,) iou >= positive_iou


def proposal_targets(members: torch.Tensor, owner: torch.Tensor, num_proposals: int, instance: torch.Tensor,
                     instance_class: torch.Tensor, num_classes: int, positive_iou: float = 0.5) -> ProposalTargets:
    """``instance`` (per voxel, -1 none) and ``instance_class`` (0..L-1) are one scene's truth."""
    k = len(instance_class)
    if k and (int(instance_class.min()) < 0 or int(instance_class.max()) >= num_classes):
        raise ValueError(f"proposal_targets: instance classes must lie in 0..{num_classes - 1}, got "
                         f"{sorted(set(instance_class.tolist()))} (a wall/floor/unlabelled instance?)")
    p = num_proposals
    size_p = torch.bincount(owner, minlength=p)
    if k == 0:
        iou = torch.zeros(p, device=owner.device)
        best = torch.zeros(p, dtype=torch.long, device=owner.device)
    else:
        inst = instance[members]
        hit = inst >= 0
        inter = torch.bincount(owner[hit] * k + inst[hit], minlength=p * k).view(p, k)
        size_g = torch.bincount(instance[instance >= 0], minlength=k)
        ious = inter / (size_p[:, None] + size_g[None] - inter).clamp_min(1)
        iou, best = ious.max(1)
    positive = iou >= positive_iou
    classes = torch.where(positive, instance_class[best] if k else best, torch.full_like(best, num_classes))
    mask = instance[members] == best[owner] if k else torch.zeros_like(members, dtype=torch.bool)
    return ProposalTargets(classes, iou.float(), mask, positive)


def recorrection_loss(class_logits: torch.Tensor, mask_logits: torch.Tensor, certainty_logits: torch.Tensor,
                      owner: torch.Tensor, targets: ProposalTargets) -> dict[str, torch.Tensor]:
    """L_Psi of TWIST: class cross-entropy + mask BCE over positive proposals + certainty BCE against IoU.

    All three are evaluated from logits (log-softmax / log-sigmoid inside the torch
    functions), so they are finite in float32 for any logits; targets take the logits' dtype.
    """
    zero = class_logits.sum() * 0
    if len(class_logits) == 0:
        return {"psi_class": zero, "psi_mask": zero, "psi_certainty": zero}
    rows = targets.positive[owner]
    mask = (F.binary_cross_entropy_with_logits(mask_logits[rows], targets.mask[rows].to(mask_logits.dtype))
            if rows.any() else zero)
    return {
        "psi_class": F.cross_entropy(class_logits, targets.classes),
        "psi_mask": mask,
        "psi_certainty": F.binary_cross_entropy_with_logits(certainty_logits,
                                                            targets.iou.to(certainty_logits.dtype)),
    }
