"""Per-voxel output heads on the decoder features (plain tensors, one row per voxel).

Each head is a small MLP; the activations are those of the paper's Table 3, except that
the centre offset is bounded by a range R in metres rather than 1 (see below).

Offsets (both heads): ``mu = x + R tanh(o / R)`` with ``R = model.offset_range`` (3 m).
Table 3 prints ``mu = x + tanh(o)``: on PartNet shapes (about unit size) a reach of 1 is
the whole object, but with ScanNet in metres it stops at 1 m while beds, sofas, counters,
curtains and bookshelves are 2-5 m long (a voxel at the end of a 5 m counter must move
2.5 m to the centre). Why this form and not another:

* metres, not a rescaled embedding space: the probabilistic head's sigmas, the margin
  head's bandwidth exp(10 s~), the clustering thresholds and the sigma initialisation are
  all in the units of mu; dividing coordinates by a larger unit (``embedding_unit``)
  would change every one of them at once;
* ``R tanh(o / R)`` has slope 1 at o = 0, so small offsets (most voxels, and the whole
  network at initialisation) behave exactly as the paper's ``tanh(o)`` and as an
  unbounded offset, and Adam's step in metres is unchanged. Its slope at reach d is
  1 - (d / R)^2: 0.31 at 2.5 m with R = 3, the gradient the old head had at 0.83 m, so
  the largest ScanNet objects are learnable without saturating; R = 1 gives the
  paper's form exactly;
* bounded rather than unbounded (PointGroup and SoftGroup regress unbounded offsets in
  metres): an early or diverging prediction cannot throw an embedding across the room
  onto another object's centre, and the embedding of a voxel stays within R of it.

``offset_range`` is stored in the state dict: a checkpoint written before it existed
loads with range 1 (embedding unit), the reach it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from scannet_tools.labels import INSTANCE_NYU40_IDS, NUM_SEMANTIC

NUM_INSTANCE_CLASSES = len(INSTANCE_NYU40_IDS)


#: reach of the offsets of checkpoints written before ``offset_range`` existed (mu = x + tanh(o))
LEGACY_OFFSET_RANGE = 1.0


def mlp(cin: int, cout: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class OffsetHead(nn.Sequential):
    """Bounded offsets: ``forward(f, x)`` is x + R tanh(o / R), o = MLP(f) (module docstring).

    A ``Sequential`` holding the MLP's layers, so the parameter names (``offset.0.weight``
    ...) are those of the plain MLP that older checkpoints saved.
    """

    def __init__(self, cin: int, offset_range: float, hidden: int = 64):
        if not offset_range > 0:
            raise ValueError(f"model.offset_range must be > 0 metres, got {offset_range}")
        super().__init__(*mlp(cin, 3, hidden))
        self.register_buffer("offset_range", torch.tensor(float(offset_range)))

    def forward(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = f
        for layer in self:
            o = layer(o)
        r = self.offset_range.to(o.dtype)
        return x + r * torch.tanh(o / r)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before offset_range keep the reach they were trained with
        state_dict.setdefault(prefix + "offset_range", torch.tensor(LEGACY_OFFSET_RANGE))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SemanticHead(nn.Module):
    """Logits over the 20 benchmark classes."""

    def __init__(self, cin: int, num_classes: int = NUM_SEMANTIC):
        super().__init__()
        self.net = mlp(cin, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


@dataclass
class ProbabilisticOutput:
    mu: torch.Tensor  # (M, 3) embedding means, mu = x + R tanh(o / R)
    log_sigma: torch.Tensor  # (M, 3) log standard deviations (equal columns when isotropic)
    score_logits: torch.Tensor  # (M, L + 1): L instance classes + "not an instance centre"


class ProbabilisticHead(nn.Module):
    """Gaussian embedding N(mu_i, diag(sigma_i^2)) per voxel and the centre score map P (Sec. 3.1, Table 3).

    ``anisotropic``: three sigmas per voxel, else one shared by the axes.
    ``heteroscedastic``: a sigma per voxel, else one per scene (the mean of the scene's
    predicted log sigmas, so it is still a function of the input cloud). These are the
    four variants of Table 2. ``offset_range``: R of the centres, in the units of x.
    """

    def __init__(self, cin: int, anisotropic: bool = True, heteroscedastic: bool = True,
                 num_classes: int = NUM_INSTANCE_CLASSES, init_log_sigma: float = -2.0,
                 offset_range: float = 3.0):
        super().__init__()
        self.anisotropic, self.heteroscedastic = anisotropic, heteroscedastic
        self.offset = OffsetHead(cin, offset_range)
        self.sigma = mlp(cin, 3 if anisotropic else 1)
        nn.init.constant_(self.sigma[-1].bias, init_log_sigma)  # start near 13 cm, the size of small parts
        self.score = mlp(cin, num_classes + 1)

    def forward(self, f: torch.Tensor, x: torch.Tensor, batch: torch.Tensor) -> ProbabilisticOutput:
        mu = self.offset(f, x)
        s = self.sigma(f)
        if not self.heteroscedastic:  # one sigma per scene: scatter-mean over the batch index
            n = int(batch.max()) + 1 if batch.numel() else 0
            sums = torch.zeros(n, s.shape[1], dtype=s.dtype, device=s.device).index_add_(0, batch, s)
            counts = torch.bincount(batch, minlength=n).clamp_min(1).unsqueeze(1).to(s.dtype)
            s = (sums / counts)[batch]
        return ProbabilisticOutput(mu, s.expand(-1, 3) if s.shape[1] == 1 else s, self.score(f))


@dataclass
class MarginOutput:
    embedding: torch.Tensor  # (M, 3) e = x + R tanh(o / R)
    sigma_logit: torch.Tensor  # (M, 3) s~; bandwidth exp(10 s~) = 1 / (2 sigma^2), see margin loss
    seed_logits: torch.Tensor  # (M, L) per-class seed maps (sigmoid)


class MarginHead(nn.Module):
    """Learnable-margin spatial embedding of Neven et al. (2019) on voxels (A.4, A.5);
    ``offset_range`` as for :class:`ProbabilisticHead`."""

    def __init__(self, cin: int, num_classes: int = NUM_INSTANCE_CLASSES, offset_range: float = 3.0):
        super().__init__()
        self.offset = OffsetHead(cin, offset_range)
        self.sigma = mlp(cin, 3)
        self.seed = mlp(cin, num_classes)

    def forward(self, f: torch.Tensor, x: torch.Tensor, batch: torch.Tensor) -> MarginOutput:
        return MarginOutput(self.offset(f, x), self.sigma(f), self.seed(f))
