"""The MinkUNet variants (the examples' channel and depth tables, layer by layer), a residual
block's value computed by hand on isolated voxels, the U-Net's wiring, and the re-correction
module Psi: its layers, the inputs each stage receives, and per-proposal pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from minkseg.models.recorrect import ProposalRecorrector, RecorrectOutput, scatter_mean
from minkseg.models.unet import LAYERS, PLANES, PLANES_34, VARIANTS, BasicBlock, build_backbone, conv_bn_relu, stage
from minkseg.sparse import ME

CENTRE = 13  # kernel offset (0, 0, 0) of a 3^3 MinkowskiEngine kernel


def conv_table(net: nn.Module) -> dict[str, tuple]:
    """name -> (transposed, kernel volume, in, out, stride) of every sparse convolution."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, ME.MinkowskiConvolution | ME.MinkowskiConvolutionTranspose):
            k = m.kernel.shape
            vol, cin, cout = (1, *k) if len(k) == 2 else k
            out[name] = (m.is_transpose, vol, cin, cout, m.kernel_generator.kernel_stride[0])
    return out


def block(prefix: str, cin: int, cout: int) -> dict[str, tuple]:
    convs = {f"{prefix}.body.0": (False, 27, cin, cout, 1), f"{prefix}.body.3": (False, 27, cout, cout, 1)}
    if cin != cout:
        convs[f"{prefix}.skip.0"] = (False, 1, cin, cout, 1)
    return convs


def test_minkunet14a_layer_by_layer():
    """MinkowskiEngine's examples/minkunet.py MinkUNet14A with 3 input channels."""
    want = {"stem.0": (False, 125, 3, 32, 1)}
    enc = [(32, 32), (32, 64), (64, 128), (128, 256)]
    for i, (cin, cout) in enumerate(enc):
        want[f"down.{i}.0"] = (False, 8, cin, cin, 2)
        want |= block(f"enc.{i}.0", cin, cout)
    dec = [(256, 128, 128), (128, 128, 64), (128, 96, 32), (96, 96, 32)]  # (in, out, skip width)
    for i, (cin, cout, skip) in enumerate(dec):
        want[f"up.{i}.0"] = (True, 8, cin, cout, 2)
        want |= block(f"dec.{i}.0", cout + skip, cout)
    net = build_backbone("MinkUNet14A", 3)
    assert conv_table(net) == want
    assert net.out_channels == 96
    for name, m in net.named_modules():
        if isinstance(m, ME.MinkowskiBatchNorm):  # each convolution is normalised at its output width
            conv = dict(net.named_modules())[name.rsplit(".", 1)[0] + "." + str(int(name.rsplit(".", 1)[1]) - 1)]
            assert m.bn.num_features == conv.kernel.shape[-1], name
        if isinstance(m, ME.MinkowskiReLU):
            assert m.module.inplace, name


def test_variant_tables_are_the_examples():
    assert LAYERS == {"MinkUNet14": (1,) * 8, "MinkUNet18": (2,) * 8, "MinkUNet34": (2, 3, 4, 6, 2, 2, 2, 2)}
    assert PLANES == {"A": (32, 64, 128, 256, 128, 128, 96, 96), "B": (32, 64, 128, 256, 128, 128, 128, 128),
                      "C": (32, 64, 128, 256, 192, 192, 128, 128), "D": (32, 64, 128, 256, 384, 384, 384, 384)}
    assert PLANES_34 == {"A": (32, 64, 128, 256, 256, 128, 64, 64), "B": (32, 64, 128, 256, 256, 128, 64, 32),
                         "C": (32, 64, 128, 256, 256, 128, 96, 96)}
    assert VARIANTS == ("MinkUNet14A", "MinkUNet14B", "MinkUNet14C", "MinkUNet14D", "MinkUNet18A", "MinkUNet18B",
                        "MinkUNet18C", "MinkUNet18D", "MinkUNet34A", "MinkUNet34B", "MinkUNet34C")


@pytest.mark.parametrize("name,blocks,widths", [
    ("MinkUNet18D", (2,) * 8, (32, 64, 128, 256, 384, 384, 384, 384)),
    ("MinkUNet34C", (2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 96, 96)),
    ("MinkUNet34B", (2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 64, 32)),
])
def test_depth_and_width_of_each_stage(name, blocks, widths):
    net = build_backbone(name, 6)
    stages = [*net.enc, *net.dec]
    assert [len(s) for s in stages] == list(blocks)
    table = conv_table(net)
    assert table["stem.0"] == (False, 125, 6, 32, 1)
    skips = [widths[2], widths[1], widths[0], 32]
    for i in range(8):
        # an encoder stage reads the previous stage's width, a decoder stage its upsampling + skip
        first_in = [32, *widths[:3]][i] if i < 4 else widths[i] + skips[i - 4]
        assert table[f"{'enc' if i < 4 else 'dec'}.{i % 4}.0.body.0"][2:4] == (first_in, widths[i]), i
        for b in range(1, blocks[i]):  # the stage's later blocks keep its width, with identity skips
            key = f"{'enc' if i < 4 else 'dec'}.{i % 4}.{b}"
            assert table[f"{key}.body.0"][2:4] == (widths[i], widths[i]) and f"{key}.skip.0" not in table
    assert net.out_channels == widths[-1]


def test_unknown_backbones_are_one_error_listing_the_variants():
    for bad in ("MinkUNet99Z", "MinkUNet34D", "MinkUNet14", "A"):
        with pytest.raises(ValueError, match=r"^unknown backbone '" + bad + "'; choose one of MinkUNet14A, "
                                             r"MinkUNet14B, .*, MinkUNet34B, MinkUNet34C$"):
            build_backbone(bad, 3)
    assert conv_table(build_backbone("MinkUNet34A", 3))["dec.3.1.body.0"][2:4] == (64, 64)


def test_a_unet_needs_eight_stages_in_both_tables():
    from minkseg.models.unet import MinkUNet

    for layers, planes in (((1,) * 8, (32,) * 7), ((1,) * 7, (32,) * 8), ((1,) * 9, (32,) * 9)):
        with pytest.raises(AssertionError):
            MinkUNet(3, layers, planes)


def test_conv_bn_relu_layers():
    for transpose in (False, True):
        seq = conv_bn_relu(4, 6, kernel=2, stride=2, transpose=transpose)
        assert conv_table(seq) == {"0": (transpose, 8, 4, 6, 2)}
        assert seq[0].dimension == 3 and seq[1].bn.num_features == 6 and seq[2].module.inplace
    assert conv_table(conv_bn_relu(4, 6, kernel=3)) == {"0": (False, 27, 4, 6, 1)}
    assert [len(stage(4, 6, n)) for n in (1, 3)] == [1, 3]


def _isolated(feats: torch.Tensor) -> ME.SparseTensor:
    """Voxels 10 apart: a 3^3 convolution sees only its centre weight."""
    n = len(feats)
    coords = torch.cat([torch.zeros(n, 1), torch.arange(n)[:, None] * 10, torch.zeros(n, 2)], 1).int()
    return ME.SparseTensor(feats, coordinates=coords)


def _randomise(module: nn.Module, seed: int) -> None:
    """Random weights and batch-norm statistics, so that every layer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            elif isinstance(m, ME.MinkowskiConvolution | ME.MinkowskiConvolutionTranspose):
                m.kernel.copy_(torch.randn(m.kernel.shape, generator=g) * 0.7)


def _bn(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


@pytest.mark.parametrize("cin,cout", [(3, 3), (2, 4)])
def test_residual_block_by_hand_on_isolated_voxels(cin, cout, dtype):
    """relu(bn(conv(relu(bn(conv x)))) + skip(x)), skip = x or bn(x W) for a width change."""
    blk = BasicBlock(cin, cout)
    _randomise(blk, seed=cin)
    blk = blk.to(dtype).eval()
    x = torch.linspace(-2, 2, 3 * cin).reshape(3, cin)
    body = blk.body
    with torch.no_grad():
        h = torch.relu(_bn(x @ body[0].kernel[CENTRE], body[1].bn))
        h = _bn(h @ body[3].kernel[CENTRE], body[4].bn)
        skip = x if cin == cout else _bn(x @ blk.skip[0].kernel, blk.skip[1].bn)
        want = torch.relu(h + skip)
        got = blk(_isolated(x)).F
    assert (want > 0).any() and (want == 0).any()  # both sides of the ReLU are exercised
    torch.testing.assert_close(got, want, rtol=1e-5 if dtype == torch.float32 else 1e-10,
                               atol=1e-5 if dtype == torch.float32 else 1e-10)
    assert isinstance(blk.skip, nn.Identity) == (cin == cout)


def test_unet_forward_is_the_u_wiring_of_its_stages():
    """stem; four (down, stage) keeping each input as a skip; four (up, concatenate with the
    matching skip, stage): the stages written out by hand give the same features."""
    net = build_backbone("MinkUNet14A", 3)
    _randomise(net, seed=1)
    net.eval()
    g = torch.Generator().manual_seed(0)
    coords = torch.cat([torch.randint(0, 2, (40, 1), generator=g), torch.randint(0, 12, (40, 3), generator=g)], 1)
    coords = torch.unique(coords, dim=0).int()
    x = ME.SparseTensor(torch.randn(len(coords), 3, generator=g), coordinates=coords)
    with torch.no_grad():
        got = net(x)
        h = net.stem(x)
        skips = []
        for i in range(4):
            skips.append(h)
            h = net.enc[i](net.down[i](h))
        for i in range(4):
            h = net.dec[i](ME.cat(net.up[i](h), skips[3 - i]))
    assert torch.equal(got.C, coords) and got.F.shape == (len(coords), 96)
    torch.testing.assert_close(got.F, h.F, rtol=0, atol=0)
    assert got.F.abs().sum() > 0


# ----------------------------------------------------------------------------- Psi


def test_scatter_mean_by_hand(dtype):
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [-1.0, 0.5]])
    got = scatter_mean(values, torch.tensor([0, 0, 2, 0]), 4)
    assert got.dtype == dtype
    # group 0: mean of rows 0, 1, 3; group 2: row 2 alone; groups 1 and 3 are empty: zeros
    torch.testing.assert_close(got, torch.tensor([[1.0, 6.5 / 3], [0.0, 0.0], [5.0, 6.0], [0.0, 0.0]]))


def test_psi_layers():
    psi = ProposalRecorrector(10)
    assert conv_table(psi) == {"stem.0": (False, 27, 13, 32, 1), "block.body.0": (False, 27, 32, 32, 1),
                               "block.body.3": (False, 27, 32, 32, 1), "down.0": (False, 8, 32, 64, 2),
                               "block_down.body.0": (False, 27, 64, 64, 1),
                               "block_down.body.3": (False, 27, 64, 64, 1)}
    assert (psi.classify.in_features, psi.classify.out_features) == (64, 19)  # 18 classes + "no object"
    assert (psi.certainty.in_features, psi.certainty.out_features) == (64, 1)
    mask = psi.mask
    assert [type(m).__name__ for m in mask] == ["Linear", "ReLU", "Linear"] and mask[1].inplace
    assert (mask[0].in_features, mask[0].out_features, mask[2].in_features, mask[2].out_features) == (96, 32, 32, 1)
    small = ProposalRecorrector(4, width=8, num_classes=3)
    assert conv_table(small)["down.0"] == (False, 8, 8, 16, 2) and small.classify.out_features == 4
    assert small.mask[0].in_features == 24


def test_psi_without_proposals_gives_empty_outputs(dtype):
    psi = ProposalRecorrector(4, width=8, num_classes=3).to(dtype)
    out = psi(torch.zeros(5, 4), torch.zeros(5, 3, dtype=torch.int32), torch.zeros(5, 3),
              torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 0)
    assert isinstance(out, RecorrectOutput)
    assert out.class_logits.shape == (0, 4) and out.mask_logits.shape == (0,) and out.certainty_logits.shape == (0,)
    assert out.class_logits.dtype == out.mask_logits.dtype == out.certainty_logits.dtype == dtype


class Recording(nn.Module):
    """Runs ``inner`` and keeps what went in and came out."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.inputs, self.outputs = inner, [], []

    def forward(self, x):
        y = self.inner(x)
        self.inputs.append(x)
        self.outputs.append(y)
        return y


def _psi_scene():
    """Six voxels; proposal 0 = voxels 0, 1, 2; proposal 1 = voxels 2, 4 (voxel 2 is in both)."""
    features = torch.linspace(-1, 1, 24).reshape(6, 4)
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [5, 5, 5], [3, 0, 0], [9, 9, 9]], dtype=torch.int32)
    centers = coords.float() * 0.1 + torch.tensor([0.05, 0.05, 0.5])
    members, owner = torch.tensor([0, 1, 2, 2, 4]), torch.tensor([0, 0, 0, 1, 1])
    return features, coords, centers, members, owner


def test_psi_stages_receive_features_offsets_and_proposal_pooled_codes():
    torch.manual_seed(0)
    psi = ProposalRecorrector(4, width=8, num_classes=3)
    _randomise(psi, seed=2)
    psi.eval()
    for name in ("stem", "block", "block_down", "classify", "certainty", "mask"):
        setattr(psi, name, Recording(getattr(psi, name)))
    features, coords, centers, members, owner = _psi_scene()
    with torch.no_grad():
        out = psi(features, coords, centers, members, owner, 2)
    (x,) = psi.stem.inputs
    # offsets to the proposal's mean centre, by hand: proposal 0's centre is voxels 0-2's mean
    c0 = (centers[0] + centers[1] + centers[2]) / 3
    c1 = (centers[2] + centers[4]) / 2
    rel = torch.stack([centers[0] - c0, centers[1] - c0, centers[2] - c0, centers[2] - c1, centers[4] - c1])
    torch.testing.assert_close(x.F, torch.cat([features[members], rel], 1))
    # the proposal index takes the place of the batch index: proposals never share a voxel
    assert x.C.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [1, 3, 0, 0]]
    (h,) = psi.block.outputs
    (y,) = psi.block_down.outputs
    assert y.tensor_stride == [2, 2, 2]
    pooled = torch.stack([y.F[y.C[:, 0] == p].mean(0) for p in range(2)])
    (classify_in,) = psi.classify.inputs
    (certainty_in,) = psi.certainty.inputs
    (mask_in,) = psi.mask.inputs
    torch.testing.assert_close(classify_in, pooled)
    torch.testing.assert_close(certainty_in, pooled)
    torch.testing.assert_close(mask_in, torch.cat([h.F, pooled[owner]], 1))  # member rows in member order
    torch.testing.assert_close(out.class_logits, psi.classify.outputs[0])
    torch.testing.assert_close(out.certainty_logits, psi.certainty.outputs[0][:, 0])
    torch.testing.assert_close(out.mask_logits, psi.mask.outputs[0][:, 0])
    assert out.class_logits.shape == (2, 4) and out.mask_logits.shape == (5,) and out.certainty_logits.shape == (2,)


def test_psi_proposals_are_independent_and_translation_invariant():
    psi = ProposalRecorrector(4, width=8, num_classes=3)
    _randomise(psi, seed=3)
    psi.eval()
    features, coords, centers, members, owner = _psi_scene()
    with torch.no_grad():
        both = psi(features, coords, centers, members, owner, 2)
        alone = psi(features, coords, centers, members[:3], owner[:3], 1)
        shifted = psi(features, coords, centers + torch.tensor([3.0, -2.0, 1.0]), members, owner, 2)
    torch.testing.assert_close(alone.class_logits, both.class_logits[:1])
    torch.testing.assert_close(alone.certainty_logits, both.certainty_logits[:1])
    torch.testing.assert_close(alone.mask_logits, both.mask_logits[:3])
    assert not torch.allclose(both.class_logits[0], both.class_logits[1])
    for a, b in ((shifted.class_logits, both.class_logits), (shifted.mask_logits, both.mask_logits),
                 (shifted.certainty_logits, both.certainty_logits)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
