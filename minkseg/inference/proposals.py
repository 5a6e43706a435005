"""Instance proposals that train TWIST's re-correction module Psi on labelled scenes (its use
at inference, as a proposal scorer, is :mod:`minkseg.inference.psi`).

A set of proposals is two aligned vectors, ``members`` (voxel rows) and ``owner``
(proposal index), so any number of proposals of any size go through Psi in one call.
"""

from __future__ import annotations

import torch

from minkseg.config import ClusterConfig
from minkseg.data.voxelize import VoxelBatch
from minkseg.inference.predict import cluster_output
from minkseg.inference.psi import group_members
from minkseg.losses.recorrect import proposal_targets, recorrection_loss
from minkseg.models.model import ModelOutput, SegmentationModel
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID


def training_proposals(out: ModelOutput, batch: VoxelBatch, cluster: ClusterConfig, max_predicted: int
                       ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Proposals of the batch's ground-truth-labelled scenes: the current model's clusters
    (at most ``max_predicted`` per scene) plus the true instances, so Psi sees good and bad
    proposals from the first step on."""
    members, owner, p = [], [], 0
    for b, scene in enumerate(batch.scenes):
        if not scene.labeled:
            continue
        rows = (batch.batch == b).nonzero(as_tuple=True)[0]
        clusters = cluster_output(out.select(rows), cluster, max_predicted)
        m, o = group_members(clusters.voxel_instance)
        members.append(rows[m])
        owner.append(o + p)
        p += clusters.num_instances
        m, o = group_members(batch.instance[rows])
        ids, o = torch.unique(o, return_inverse=True)
        members.append(rows[m])
        owner.append(o + p)
        p += len(ids)
    if not members:
        empty = torch.zeros(0, dtype=torch.long, device=batch.instance.device)
        return empty, empty, 0
    return torch.cat(members), torch.cat(owner), p


def recorrection_batch_loss(model: SegmentationModel, out: ModelOutput, batch: VoxelBatch, cluster: ClusterConfig,
                            max_predicted: int = 32) -> dict[str, torch.Tensor]:
    """L_Psi over the proposals of the batch's labelled scenes (TWIST: trained jointly with Phi)."""
    members, owner, p = training_proposals(out, batch, cluster, max_predicted)
    r = model.recorrector(out.features, batch.coords[:, 1:], batch.centers, members, owner, p)
    targets = proposal_targets(members, owner, p, batch.instance, batch.instance_class - FIRST_INSTANCE_TRAIN_ID,
                               r.class_logits.shape[1] - 1)
    return recorrection_loss(r.class_logits, r.mask_logits, r.certainty_logits, owner, targets)
