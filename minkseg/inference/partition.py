"""What a pretrained partition network (``minkseg pretrain``) learned: the arg-max partition of every vertex."""

from __future__ import annotations

import numpy as np
import torch

from minkseg.config import Config
from minkseg.inference.predict import forward_pass


def is_pretrain_config(cfg: Config) -> bool:
    """Whether ``cfg`` (e.g. a checkpoint's) describes the pretraining network rather than a segmentation model."""
    return cfg.model.head == "partition"


@torch.no_grad()
def predict_partition(model: torch.nn.Module, scene: dict, cfg: Config, device: torch.device | str = "cpu"
                      ) -> np.ndarray:
    """(N,) int64: the arg-max partition j of every vertex of a prepared scene (argmax_j s_ij of its voxel)."""
    if not is_pretrain_config(cfg):
        raise ValueError(f"model.head={cfg.model.head}: partitions come from a minkseg pretrain checkpoint "
                         "(model.head=partition)")
    f = forward_pass(model, scene, cfg, device)  # no test-time augmentation: partitions are per pose
    return f.out.argmax(1)[f.inverse].cpu().numpy().astype(np.int64)
