"""TWIST's proposal re-correction module Psi (supplementary Fig. 6b).

A small sparse-conv encoder runs over the voxels of each instance proposal, all proposals
of a batch at once (the proposal index takes the place of the batch index, so proposals
never see each other). From the proposal's backbone features and voxel offsets to its
centroid it predicts:

* class logits over the instance classes plus "no object" (index ``L``),
* a mask logit per member voxel (the refined mask: drop the members that do not belong),
* a certainty logit, trained towards the proposal's IoU with its ground-truth instance.

Pooling is a mean over the proposal's stride-2 voxels, so the module is cheap and exact
for proposals of any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minkseg.sparse import ME

from .heads import NUM_INSTANCE_CLASSES
from .unet import BasicBlock, conv_bn_relu


@dataclass
class RecorrectOutput:
    class_logits: torch.Tensor  # (P, L + 1); column L = "no object"
    mask_logits: torch.Tensor  # (V,) one per member row
    certainty_logits: torch.Tensor  # (P,); sigmoid = predicted IoU with the true instance


def scatter_mean(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    sums = values.new_zeros(n, values.shape[1]).index_add_(0, index, values)
    return sums / torch.bincount(index, minlength=n).clamp_min(1).unsqueeze(1).to(values.dtype)


class ProposalRecorrector(nn.Module):
    """Psi: proposals (member voxel rows + owning proposal) -> corrected class, mask, certainty."""

    def __init__(self, in_channels: int, width: int = 32, num_classes: int = NUM_INSTANCE_CLASSES):
        super().__init__()
        self.stem = conv_bn_relu(in_channels + 3, width, kernel=3)
        self.block = BasicBlock(width, width)
        self.down = conv_bn_relu(width, 2 * width, kernel=2, stride=2)
        self.block_down = BasicBlock(2 * width, 2 * width)
        self.classify = nn.Linear(2 * width, num_classes + 1)
        self.certainty = nn.Linear(2 * width, 1)
        self.mask = nn.Sequential(nn.Linear(3 * width, width), nn.ReLU(inplace=True), nn.Linear(width, 1))

    def forward(self, features: torch.Tensor, coords: torch.Tensor, centers: torch.Tensor, members: torch.Tensor,
                owner: torch.Tensor, num_proposals: int) -> RecorrectOutput:
        """``features``/``coords``/``centers``: per voxel of the batch; ``members[j]`` is a voxel
        row and ``owner[j]`` its proposal (0..P-1). A voxel may appear in several proposals."""
        if len(members) == 0:
            z = features.new_zeros(0)
            return RecorrectOutput(features.new_zeros(0, self.classify.out_features), z, z)
        xyz = centers[members]
        rel = xyz - scatter_mean(xyz, owner, num_proposals)[owner]
        grid = torch.cat([owner[:, None].to(coords.dtype), coords[members]], 1)
        x = ME.SparseTensor(torch.cat([features[members], rel], 1), coordinates=grid.int())
        h = self.block(self.stem(x))  # stride 1: rows stay in member order
        y = self.block_down(self.down(h))
        pooled = scatter_mean(y.F, y.C[:, 0].long(), num_proposals)
        mask = self.mask(torch.cat([h.F, pooled[owner]], 1)).squeeze(1)
        return RecorrectOutput(self.classify(pooled), mask, self.certainty(pooled).squeeze(1))
