"""The MinkUNet family of MinkowskiEngine's examples (Choy et al. 2019), written compactly.

Encoder: a 5^3 stem, then four stages each opening with a stride-2 2^3 convolution and a
stack of residual blocks; decoder: four stride-2 transposed convolutions, each
concatenated with the matching encoder skip and followed by residual blocks. The variant
tables below give the blocks per stage (14/18/34) and the widths (A-D) exactly as the
examples name them; ``MinkUNet34C`` is the ScanNet workhorse.
"""

from __future__ import annotations

import torch.nn as nn

from minkseg.sparse import ME

LAYERS = {
    "MinkUNet14": (1, 1, 1, 1, 1, 1, 1, 1),
    "MinkUNet18": (2, 2, 2, 2, 2, 2, 2, 2),
    "MinkUNet34": (2, 3, 4, 6, 2, 2, 2, 2),
}
PLANES = {
    "A": (32, 64, 128, 256, 128, 128, 96, 96),
    "B": (32, 64, 128, 256, 128, 128, 128, 128),
    "C": (32, 64, 128, 256, 192, 192, 128, 128),
    "D": (32, 64, 128, 256, 384, 384, 384, 384),
}
# MinkUNet34's own width tables differ from 14/18's in the examples.
PLANES_34 = {
    "A": (32, 64, 128, 256, 256, 128, 64, 64),
    "B": (32, 64, 128, 256, 256, 128, 64, 32),
    "C": (32, 64, 128, 256, 256, 128, 96, 96),
}
VARIANTS = tuple(f"{d}{w}" for d in LAYERS for w in (PLANES_34 if d == "MinkUNet34" else PLANES))


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, transpose: bool = False) -> nn.Sequential:
    conv = ME.MinkowskiConvolutionTranspose if transpose else ME.MinkowskiConvolution
    return nn.Sequential(conv(cin, cout, kernel_size=kernel, stride=stride, dimension=3),
                         ME.MinkowskiBatchNorm(cout), ME.MinkowskiReLU(inplace=True))


class BasicBlock(nn.Module):
    """Two 3^3 convolutions with a residual connection (1^3 projection when widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            ME.MinkowskiConvolution(cin, cout, kernel_size=3, dimension=3), ME.MinkowskiBatchNorm(cout),
            ME.MinkowskiReLU(inplace=True),
            ME.MinkowskiConvolution(cout, cout, kernel_size=3, dimension=3), ME.MinkowskiBatchNorm(cout),
        )
        self.skip = (nn.Identity() if cin == cout else
                     nn.Sequential(ME.MinkowskiConvolution(cin, cout, kernel_size=1, dimension=3),
                                   ME.MinkowskiBatchNorm(cout)))
        self.relu = ME.MinkowskiReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


def stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout) for i in range(blocks)])


class MinkUNet(nn.Module):
    """Sparse U-Net; ``forward`` returns the stride-1 decoder features (``out_channels`` wide)."""

    def __init__(self, in_channels: int, layers: tuple[int, ...], planes: tuple[int, ...], init_dim: int = 32):
        super().__init__()
        assert len(layers) == 8 and len(planes) == 8
        self.stem = conv_bn_relu(in_channels, init_dim, kernel=5)
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        c = init_dim
        for i in range(4):
            self.down.append(conv_bn_relu(c, c, kernel=2, stride=2))
            self.enc.append(stage(c, planes[i], layers[i]))
            c = planes[i]
        skips = [planes[2], planes[1], planes[0], init_dim]
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(4):
            self.up.append(conv_bn_relu(c, planes[4 + i], kernel=2, stride=2, transpose=True))
            self.dec.append(stage(planes[4 + i] + skips[i], planes[4 + i], layers[4 + i]))
            c = planes[4 + i]
        self.out_channels = c

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for down, enc in zip(self.down, self.enc):
            skips.append(x)
            x = enc(down(x))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(ME.cat(up(x), skip))
        return x


def build_backbone(name: str, in_channels: int) -> MinkUNet:
    """``MinkUNet14A`` ... ``MinkUNet34C`` by name."""
    depth, width = name[:-1], name[-1:]
    table = PLANES_34 if depth == "MinkUNet34" else PLANES
    if depth not in LAYERS or width not in table:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(VARIANTS)}")
    return MinkUNet(in_channels, LAYERS[depth], table[width])
