"""The pretraining network of the ParAE pretext: the MinkUNet backbone and a J-way partition head.

Its ``backbone`` has the parameter names of :class:`~minkseg.models.model.SegmentationModel`'s,
so ``model.init_backbone`` copies it into either segmentation head's model; the partition
head is discarded after pretraining (the paper's Fig. 2: everything after f_psi's features).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from minkseg.data.voxelize import VoxelBatch
from minkseg.sparse import ME

from .heads import mlp
from .unet import build_backbone

#: ParAE Sec. 4.1: "In our experiments we set J = 32"
DEFAULT_COMPONENTS = 32


class PartitionHead(nn.Module):
    """Logits s_ij over J spatial partitions per voxel (the matrix S of the paper's Sec. 3.1)."""

    def __init__(self, cin: int, components: int = DEFAULT_COMPONENTS):
        super().__init__()
        if components < 1:
            raise ValueError(f"pretrain.components must be >= 1, got {components}")
        self.net = mlp(cin, components)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class PartitionModel(nn.Module):
    """MinkUNet features -> partition logits (M, J), one row per voxel of the batch."""

    def __init__(self, backbone: nn.Module, components: int = DEFAULT_COMPONENTS):
        super().__init__()
        self.backbone = backbone
        self.partition = PartitionHead(backbone.out_channels, components)

    @classmethod
    def build(cls, backbone: str = "MinkUNet34C", in_channels: int = 3,
              components: int = DEFAULT_COMPONENTS) -> PartitionModel:
        return cls(build_backbone(backbone, in_channels), components)

    def forward(self, batch: VoxelBatch) -> torch.Tensor:
        f = self.backbone(ME.SparseTensor(batch.feats, coordinates=batch.coords))
        return self.partition(f.F)  # stride-1 output: rows in batch order (see SegmentationModel)
