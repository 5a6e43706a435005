"""The proposal options after clustering (``cluster.*`` in the config), in the order applied:

1. **score** (``cluster``|``psi``): with ``psi`` every proposal takes Psi's corrected class and
   is ranked by Psi's class probability x predicted IoU (:mod:`minkseg.inference.psi`);
   ``psi_refine_mask`` also drops the members Psi's mask rejects.
2. voxels -> vertices: a vertex is in a proposal when its voxel is.
3. **superpoints**: each mask snapped to the scene's superpoints by the majority rule of
   :mod:`minkseg.inference.superpoints`. Masks left empty by 1-3 are dropped.
4. **taus** (several kernel thresholds, merged): class-free mask NMS at ``nms_iou``
   (:func:`minkseg.inference.masks.mask_nms`); after the snapping, so that the copies of one
   object found at several taus coincide as far as the superpoints make them.
5. **hypotheses**: each surviving mask once per plausible class
   (:mod:`minkseg.inference.hypotheses`); last, so NMS never removes a mask's second class.

Clustering itself (one greedy pass per tau) is :func:`minkseg.inference.predict.scene_proposals`,
which hands its clusters here. The result may hold overlapping masks (several taus, several
classes per mask); ScanNet's AP allows that, pseudo labelling resolves it per vertex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minkseg.config import ClusterConfig
from minkseg.data.voxelize import VoxelBatch
from minkseg.inference.cluster import Clusters
from minkseg.inference.hypotheses import class_hypotheses
from minkseg.inference.masks import MaskSet, mask_iou, mask_nms
from minkseg.inference.psi import assess_proposals, group_members
from minkseg.inference.superpoints import snap_masks_to_superpoints
from minkseg.models.model import ModelOutput, SegmentationModel
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID


@dataclass
class SceneProposals:
    """One scene's instance proposals: vertex masks (possibly overlapping), classes, scores."""

    masks: MaskSet  # over the scene's vertices
    classes: np.ndarray  # (K,) semantic train id
    scores: np.ndarray  # (K,) float32 ranking score

    @property
    def num_proposals(self) -> int:
        return len(self.classes)


def mean_class_probs(semantic_logits: torch.Tensor, members: torch.Tensor, owner: torch.Tensor, k: int
                     ) -> torch.Tensor:
    """(K, 18) mean instance-class probability over each proposal's voxels (as the cluster confidence uses)."""
    probs = torch.softmax(semantic_logits, 1)[members, FIRST_INSTANCE_TRAIN_ID:]
    sums = probs.new_zeros(k, probs.shape[1]).index_add_(0, owner, probs)
    return sums / torch.bincount(owner, minlength=k).clamp_min(1)[:, None].to(probs.dtype)


def finish_proposals(model: SegmentationModel, out: ModelOutput, batch: VoxelBatch, inverse: torch.Tensor,
                     clusters: list[Clusters], superpoint: np.ndarray | None, cfg: ClusterConfig) -> SceneProposals:
    """Steps 1-5 of the module docstring on the clusters of one scene (one ``Clusters`` per tau)."""
    members, owner, classes, scores, k = [], [], [], [], 0
    for c in clusters:
        m, o = group_members(c.voxel_instance)
        members.append(m)
        owner.append(o + k)
        classes.append(c.classes)
        scores.append(c.scores)
        k += c.num_instances
    dev = out.semantic_logits.device
    members_t = torch.cat(members) if members else torch.zeros(0, dtype=torch.long, device=dev)
    owner_t = torch.cat(owner) if owner else torch.zeros(0, dtype=torch.long, device=dev)
    classes_t = torch.cat(classes) if classes else torch.zeros(0, dtype=torch.long, device=dev)
    scores_t = torch.cat(scores).float() if scores else torch.zeros(0, device=dev)
    class_probs = None
    if cfg.score == "psi":
        psi = assess_proposals(model, out, batch, members_t, owner_t, k)
        classes_t, scores_t, class_probs = psi.classes + FIRST_INSTANCE_TRAIN_ID, psi.certainty.float(), psi.class_probs
        if cfg.psi_refine_mask:
            members_t, owner_t = members_t[psi.keep_member], owner_t[psi.keep_member]
    elif cfg.hypotheses > 1:
        class_probs = mean_class_probs(out.semantic_logits, members_t, owner_t, k)
    voxel_masks = MaskSet.from_pairs(members_t.cpu().numpy(), owner_t.cpu().numpy(), k, len(out.semantic_logits))
    masks = voxel_masks.expand(inverse.cpu().numpy())
    if cfg.superpoints:
        if superpoint is None:
            raise ValueError("cluster.superpoints=true needs the scene's superpoint array (minkseg prepare writes it)")
        masks = snap_masks_to_superpoints(masks, superpoint)
    keep = np.flatnonzero(masks.sizes() > 0)
    scores_np = scores_t.cpu().numpy()
    if cfg.taus:
        iou = mask_iou(masks.select(keep))
        keep = keep[mask_nms(iou, scores_np[keep], cfg.nms_iou)]
        keep = np.sort(keep)  # proposals stay in clustering order (tau by tau, seed by seed)
    if cfg.hypotheses > 1 and len(keep):
        keep_t = torch.as_tensor(keep, device=dev)
        index, cls, score = class_hypotheses(class_probs[keep_t], classes_t[keep_t] - FIRST_INSTANCE_TRAIN_ID,
                                             scores_t[keep_t], cfg.hypotheses, cfg.hypothesis_threshold)
        keep = keep[index.cpu().numpy()]
        classes_np, scores_np = (cls + FIRST_INSTANCE_TRAIN_ID).cpu().numpy(), score.float().cpu().numpy()
    else:
        classes_np, scores_np = classes_t.cpu().numpy()[keep], scores_np[keep]
    return SceneProposals(masks.select(keep), classes_np.astype(np.int64), scores_np.astype(np.float32))
