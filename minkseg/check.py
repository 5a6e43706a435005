"""``minkseg check``: prove the install works with one sparse convolution forward and backward."""

from __future__ import annotations

import platform

import torch

from minkseg.device import resolve_device
from minkseg.sparse import ME


def self_check(device: str | None = "auto") -> str:
    """Run a 3^3 sparse convolution on a random cloud; raise if anything is off."""
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(0)
    pts = torch.unique(torch.randint(0, 32, (2000, 3), generator=g), dim=0).int()
    coords = torch.cat([torch.zeros(len(pts), 1, dtype=torch.int32), pts], 1)
    feats = torch.randn(len(pts), 3, generator=g)
    x = ME.SparseTensor(feats.to(dev), coordinates=coords.to(dev))
    conv = ME.MinkowskiConvolution(3, 8, kernel_size=3, dimension=3).to(dev)
    y = conv(x)
    y.F.square().sum().backward()
    grad = conv.kernel.grad
    if y.F.shape != (len(pts), 8) or grad is None or not torch.isfinite(grad).all() or grad.abs().sum() == 0:
        raise RuntimeError("MinkowskiEngine self-check failed: bad output shape or gradient")
    return (f"ok: MinkowskiEngine {ME.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
            f"device {dev}; sparse conv {tuple(x.F.shape)} -> {tuple(y.F.shape)}, gradient finite")
