"""Instance proposals for TWIST's re-correction module Psi: training on labelled scenes and
correcting a teacher's proposals on unlabelled ones.

A set of proposals is two aligned vectors, ``members`` (voxel rows) and ``owner``
(proposal index), so any number of proposals of any size go through Psi in one call.
"""

from __future__ import annotations

import torch

from minkseg.config import ClusterConfig
from minkseg.data.voxelize import VoxelBatch
from minkseg.inference.cluster import Clusters
from minkseg.inference.predict import cluster_output
from minkseg.losses.recorrect import proposal_targets, recorrection_loss
from minkseg.models.model import ModelOutput, SegmentationModel
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID


def group_members(voxel_instance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(members, owner) of a per-voxel instance index (-1: none), grouped by instance."""
    members = (voxel_instance >= 0).nonzero(as_tuple=True)[0]
    owner = voxel_instance[members]
    order = torch.argsort(owner, stable=True)
    return members[order], owner[order]


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


@torch.no_grad()
def recorrect_clusters(model: SegmentationModel, out: ModelOutput, batch: VoxelBatch, clusters: Clusters) -> Clusters:
    """Psi applied to one scene's clusters: corrected class, refined mask, certainty.

    Certainty = (probability of the corrected class) x (predicted IoU with the true
    instance): a proposal is trusted only if Psi is sure what it is *and* that its mask is
    right. Mass on "no object" lowers the first factor, so such proposals fall below any
    certainty threshold without a separate rule. Members whose mask probability is below
    0.5 leave the proposal.
    """
    members, owner = group_members(clusters.voxel_instance)
    k = clusters.num_instances
    r = model.recorrector(out.features, batch.coords[:, 1:], batch.centers, members, owner, k)
    probs = torch.softmax(r.class_logits, 1)[:, :-1]
    cls_prob, cls = probs.max(1)
    certainty = cls_prob * torch.sigmoid(r.certainty_logits)
    voxel_instance = torch.full_like(clusters.voxel_instance, -1)
    keep = r.mask_logits > 0
    voxel_instance[members[keep]] = owner[keep]
    return Clusters(voxel_instance, cls + FIRST_INSTANCE_TRAIN_ID, certainty)
