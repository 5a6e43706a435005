"""Per-voxel output heads on the decoder features (plain tensors, one row per voxel).

Each head is a small MLP; the activations are those of the paper's Table 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from scannet_tools.labels import INSTANCE_NYU40_IDS, NUM_SEMANTIC

NUM_INSTANCE_CLASSES = len(INSTANCE_NYU40_IDS)


def mlp(cin: int, cout: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class SemanticHead(nn.Module):
    """Logits over the 20 benchmark classes."""

    def __init__(self, cin: int, num_classes: int = NUM_SEMANTIC):
        super().__init__()
        self.net = mlp(cin, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


@dataclass
class ProbabilisticOutput:
    mu: torch.Tensor  # (M, 3) embedding means, mu = x + tanh(o)
    log_sigma: torch.Tensor  # (M, 3) log standard deviations (equal columns when isotropic)
    score_logits: torch.Tensor  # (M, L + 1): L instance classes + "not an instance centre"


class ProbabilisticHead(nn.Module):
    """Gaussian embedding N(mu_i, diag(sigma_i^2)) per voxel and the centre score map P (Sec. 3.1, Table 3).

    ``anisotropic``: three sigmas per voxel, else one shared by the axes.
    ``heteroscedastic``: a sigma per voxel, else one per scene (the mean of the scene's
    predicted log sigmas, so it is still a function of the input cloud). These are the
    four variants of Table 2.
    """

    def __init__(self, cin: int, anisotropic: bool = True, heteroscedastic: bool = True,
                 num_classes: int = NUM_INSTANCE_CLASSES, init_log_sigma: float = -2.0):
        super().__init__()
        self.anisotropic, self.heteroscedastic = anisotropic, heteroscedastic
        self.offset = mlp(cin, 3)
        self.sigma = mlp(cin, 3 if anisotropic else 1)
        nn.init.constant_(self.sigma[-1].bias, init_log_sigma)  # start near 13 cm, the size of small parts
        self.score = mlp(cin, num_classes + 1)

    def forward(self, f: torch.Tensor, x: torch.Tensor, batch: torch.Tensor) -> ProbabilisticOutput:
        mu = x + torch.tanh(self.offset(f))
        s = self.sigma(f)
        if not self.heteroscedastic:  # one sigma per scene: scatter-mean over the batch index
            n = int(batch.max()) + 1 if batch.numel() else 0
            sums = torch.zeros(n, s.shape[1], dtype=s.dtype, device=s.device).index_add_(0, batch, s)
            counts = torch.bincount(batch, minlength=n).clamp_min(1).unsqueeze(1).to(s.dtype)
            s = (sums / counts)[batch]
        return ProbabilisticOutput(mu, s.expand(-1, 3) if s.shape[1] == 1 else s, self.score(f))


@dataclass
class MarginOutput:
    embedding: torch.Tensor  # (M, 3) e = x + tanh(o)
    sigma_logit: torch.Tensor  # (M, 3) s~; bandwidth exp(10 s~) = 1 / (2 sigma^2), see margin loss
    seed_logits: torch.Tensor  # (M, L) per-class seed maps (sigmoid)


class MarginHead(nn.Module):
    """Learnable-margin spatial embedding of Neven et al. (2019) on voxels (A.4, A.5)."""

    def __init__(self, cin: int, num_classes: int = NUM_INSTANCE_CLASSES):
        super().__init__()
        self.offset = mlp(cin, 3)
        self.sigma = mlp(cin, 3)
        self.seed = mlp(cin, num_classes)

    def forward(self, f: torch.Tensor, x: torch.Tensor, batch: torch.Tensor) -> MarginOutput:
        return MarginOutput(x + torch.tanh(self.offset(f)), self.sigma(f), self.seed(f))
