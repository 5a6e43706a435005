"""A :class:`SegmentationModel` built from the ``model`` and ``data`` sections of a config
(a :class:`PartitionModel` for ``model.head: partition``, the pretraining network)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .model import SegmentationModel
from .partition import PartitionModel

if TYPE_CHECKING:  # annotation only: the config module sits above the models stage
    from minkseg.config import Config


def build_model(cfg: Config) -> SegmentationModel | PartitionModel:
    """The network ``cfg`` describes (6 input channels with normals, 3 without), untrained."""
    in_ch = 6 if cfg.data.use_normals else 3
    m = cfg.model
    if m.head == "partition":
        return PartitionModel.build(m.backbone, in_ch, cfg.pretrain.components)
    return SegmentationModel.build(m.head, m.backbone, in_ch, m.anisotropic, m.heteroscedastic, m.embedding_unit,
                                   m.recorrector, m.offset_range)
