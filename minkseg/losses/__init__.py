"""Losses: pure tensor functions per scene, and :func:`batch_loss` that applies them to a batch."""

from __future__ import annotations

import torch

from minkseg.data.voxelize import VoxelBatch
from minkseg.models.heads import MarginOutput, ProbabilisticOutput
from minkseg.models.model import ModelOutput
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID

from .margin import MarginLossWeights, margin_loss
from .probabilistic import ProbabilisticLossWeights, probabilistic_loss


def batch_loss(out: ModelOutput, batch: VoxelBatch,
               weights: ProbabilisticLossWeights | MarginLossWeights | None = None,
               chunk_elements: int = 1 << 22) -> dict[str, torch.Tensor]:
    """Weighted mean over the batch's scenes of the per-scene loss of the model's instance head.

    Scenes are separated because voxel coordinates of different scenes overlap and their
    embeddings must never be compared. Each scene's terms are scaled by its ``weight``
    (self-training down-weights pseudo-labelled scenes).
    """
    terms: dict[str, torch.Tensor] = {}
    offset = 0
    for b, scene in enumerate(batch.scenes):
        rows = (batch.batch == b).nonzero(as_tuple=True)[0]
        k = scene.num_instances
        inst = batch.instance[rows]
        inst = torch.where(inst >= 0, inst - offset, inst)
        cls = batch.instance_class[offset:offset + k] - FIRST_INSTANCE_TRAIN_ID
        offset += k
        head = out.instance
        if isinstance(head, ProbabilisticOutput):
            t = probabilistic_loss(head.mu[rows], head.log_sigma[rows], head.score_logits[rows],
                                   out.semantic_logits[rows], batch.semantic[rows], inst, cls,
                                   weights or ProbabilisticLossWeights(), chunk_elements=chunk_elements,
                                   instance_known=batch.instance_known[rows])
        elif isinstance(head, MarginOutput):
            t = margin_loss(head.embedding[rows], head.sigma_logit[rows], head.seed_logits[rows],
                            out.semantic_logits[rows], batch.semantic[rows], inst, cls,
                            weights or MarginLossWeights(), chunk_elements=chunk_elements,
                            instance_known=batch.instance_known[rows])
        else:
            raise TypeError(f"unknown instance head output {type(head).__name__}")
        for name, v in t.items():
            terms[name] = terms.get(name, 0) + scene.weight * v / len(batch.scenes)
    return terms


__all__ = ["batch_loss", "margin_loss", "probabilistic_loss", "MarginLossWeights", "ProbabilisticLossWeights"]
