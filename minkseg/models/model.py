"""Backbone + semantic head + one instance head, composed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from minkseg.data.voxelize import VoxelBatch
from minkseg.sparse import ME

from .heads import MarginHead, MarginOutput, ProbabilisticHead, ProbabilisticOutput, SemanticHead
from .recorrect import ProposalRecorrector
from .unet import build_backbone


@dataclass
class ModelOutput:
    semantic_logits: torch.Tensor  # (M, 20)
    instance: ProbabilisticOutput | MarginOutput
    features: torch.Tensor | None = None  # (M, C) decoder features (input of the re-correction module)

    def select(self, rows: torch.Tensor) -> ModelOutput:
        """The outputs of some voxels (e.g. one scene of a batch)."""
        inst = type(self.instance)(**{f.name: getattr(self.instance, f.name)[rows]
                                      for f in dataclasses.fields(self.instance)})
        return ModelOutput(self.semantic_logits[rows], inst, None if self.features is None else self.features[rows])


class SegmentationModel(nn.Module):
    """MinkUNet features -> semantic logits and an instance head (probabilistic or margin).

    Embeddings are mu = x / unit + (R / unit) tanh(o / (R / unit)) with ``offset_range`` R in
    metres (default 3 m, the reach ScanNet's 5 m objects need; see
    :mod:`minkseg.models.heads`) and ``embedding_unit`` in metres per embedding unit
    (default 1: embeddings, sigmas and bandwidths in metres). Checkpoints written
    before ``offset_range`` existed load with reach 1 embedding unit, their trained meaning.
    ``recorrector`` (self-training) is TWIST's proposal re-correction module, or None.
    """

    def __init__(self, backbone: nn.Module, instance_head: nn.Module, embedding_unit: float = 1.0,
                 recorrector: ProposalRecorrector | None = None):
        super().__init__()
        self.backbone = backbone
        self.semantic = SemanticHead(backbone.out_channels)
        self.instance_head = instance_head
        self.embedding_unit = embedding_unit
        self.recorrector = recorrector

    @classmethod
    def build(cls, head: str = "probabilistic", backbone: str = "MinkUNet34C", in_channels: int = 3,
              anisotropic: bool = True, heteroscedastic: bool = True, embedding_unit: float = 1.0,
              recorrector: bool = False, offset_range: float = 3.0) -> SegmentationModel:
        net = build_backbone(backbone, in_channels)
        reach = offset_range / embedding_unit  # the heads work in embedding units
        if head == "probabilistic":
            inst = ProbabilisticHead(net.out_channels, anisotropic=anisotropic, heteroscedastic=heteroscedastic,
                                     offset_range=reach)
        elif head == "margin":
            inst = MarginHead(net.out_channels, offset_range=reach)
        else:
            raise ValueError(f"unknown head {head!r}; choose probabilistic or margin")
        return cls(net, inst, embedding_unit, ProposalRecorrector(net.out_channels) if recorrector else None)

    def forward(self, batch: VoxelBatch) -> ModelOutput:
        x = ME.SparseTensor(batch.feats, coordinates=batch.coords)
        f = self.backbone(x)
        # MinkowskiEngine keeps the input row order for the stride-1 output of the same
        # coordinate map, so f.F rows line up with batch rows.
        feats = f.F
        inst = self.instance_head(feats, batch.centers / self.embedding_unit, batch.batch)
        return ModelOutput(self.semantic(feats), inst, feats)
