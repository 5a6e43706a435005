"""The output heads, the composed model, the pretraining model and ``build_model``, checked on
values: hand-set layers give outputs known in advance (sigma parameterisation, per-scene sigma,
offsets, which tensor each head reads), and every config entry reaches the layer it sizes."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn as nn

from minkseg.config import load_config
from minkseg.models.build import build_model
from minkseg.models.heads import (
    MarginHead,
    MarginOutput,
    OffsetHead,
    ProbabilisticHead,
    ProbabilisticOutput,
    SemanticHead,
    mlp,
)
from minkseg.models.model import ModelOutput, SegmentationModel
from minkseg.models.partition import PartitionHead, PartitionModel
from minkseg.models.recorrect import ProposalRecorrector
from minkseg.sparse import ME


class Columns(nn.Module):
    """A stand-in MLP: the first ``k`` input columns, so a head's output is known from its input."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f[:, :self.k]


class PassCentres(nn.Module):
    """A stand-in offset head: mu = x."""

    def forward(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x


def pin_last_layer(seq: nn.Sequential, bias: list[float]) -> None:
    """Make an MLP output ``bias`` for every input (zero last weights)."""
    with torch.no_grad():
        seq[-1].weight.zero_()
        seq[-1].bias.copy_(torch.tensor(bias))


def layer_sizes(seq: nn.Sequential) -> list:
    return [(type(m).__name__, getattr(m, "in_features", getattr(m, "num_features", None)),
             getattr(m, "out_features", None), getattr(m, "inplace", None)) for m in seq]


# ----------------------------------------------------------------------------- mlp and offsets


def test_mlp_is_linear_batchnorm_inplace_relu_linear_with_64_hidden_units():
    assert layer_sizes(mlp(5, 7)) == [("Linear", 5, 64, None), ("BatchNorm1d", 64, None, None),
                                      ("ReLU", None, None, True), ("Linear", 64, 7, None)]
    assert layer_sizes(mlp(5, 7, hidden=9))[3] == ("Linear", 9, 7, None)


@pytest.mark.parametrize("r", [0.5, 1.0, 3.0])
def test_offset_head_is_x_plus_r_tanh_o_over_r_by_hand(r, dtype):
    head = OffsetHead(4, offset_range=r).eval()
    bias = [0.3, -2.0, 7.0]
    pin_last_layer(head, bias)
    x = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 0.5, 0.0]])
    with torch.no_grad():
        mu = head(torch.randn(2, 4), x)
    want = x + torch.tensor([r * math.tanh(b / r) for b in bias])
    assert mu.dtype == dtype
    torch.testing.assert_close(mu, want, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)
    assert float(head.offset_range) == r and head.offset_range.dtype == dtype


def test_offset_head_runs_every_layer_in_order_and_rejects_a_non_positive_range():
    head = OffsetHead(2, offset_range=2.0).eval()
    assert layer_sizes(head) == [("Linear", 2, 64, None), ("BatchNorm1d", 64, None, None),
                                 ("ReLU", None, None, True), ("Linear", 64, 3, None)]
    f = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    with torch.no_grad():
        o = head[3](torch.relu(head[1](head[0](f))))  # the MLP written out
        mu = head(f, torch.zeros(2, 3))
    torch.testing.assert_close(mu, 2.0 * torch.tanh(o / 2.0))
    assert layer_sizes(OffsetHead(2, 1.0, hidden=5))[0] == ("Linear", 2, 5, None)
    OffsetHead(2, offset_range=0.25)  # any positive length
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"^model.offset_range must be > 0 metres, got " + str(bad) + "$"):
            OffsetHead(2, offset_range=bad)


def test_a_checkpoint_without_offset_range_loads_with_the_legacy_reach_of_one():
    head = OffsetHead(2, offset_range=3.0)
    state = {k: v for k, v in head.state_dict().items() if k != "offset_range"}
    assert set(head.state_dict()) - set(state) == {"offset_range"}
    loaded = OffsetHead(2, offset_range=2.5)
    loaded.load_state_dict(state)  # strict: the missing buffer is filled in, not reported
    assert float(loaded.offset_range) == 1.0
    loaded.load_state_dict(head.state_dict())
    assert float(loaded.offset_range) == 3.0


# ----------------------------------------------------------------------------- heads


def test_semantic_head_gives_twenty_logits():
    head = SemanticHead(6)
    assert layer_sizes(head.net) == layer_sizes(mlp(6, 20))
    assert layer_sizes(SemanticHead(6, num_classes=4).net)[-1] == ("Linear", 64, 4, None)
    pin_last_layer(head.net, list(range(20)))
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(head(torch.randn(3, 6)), torch.arange(20.0).expand(3, 20))


def test_probabilistic_head_defaults():
    head = ProbabilisticHead(8)
    assert head.anisotropic and head.heteroscedastic
    assert float(head.offset.offset_range) == 3.0
    assert head.sigma[-1].out_features == 3 and head.score[-1].out_features == 19  # 18 classes + "no centre"
    # sigma starts at exp(-2) = 13.5 cm whatever the input: the bias is -2 on every axis
    assert head.sigma[-1].bias.tolist() == [-2.0, -2.0, -2.0]
    iso = ProbabilisticHead(8, anisotropic=False, num_classes=4, init_log_sigma=-1.5, offset_range=0.5)
    assert not iso.anisotropic and iso.heteroscedastic
    assert iso.sigma[-1].out_features == 1 and iso.sigma[-1].bias.tolist() == [-1.5]
    assert iso.score[-1].out_features == 5 and float(iso.offset.offset_range) == 0.5
    assert not ProbabilisticHead(8, heteroscedastic=False).heteroscedastic


def test_probabilistic_head_outputs_by_hand():
    """mu from the offset head, log sigma from the sigma MLP (3 columns, or 1 broadcast to the axes),
    scores from the score MLP, each reading the features."""
    f = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, -1.0]])
    batch = torch.tensor([0, 0, 1])
    head = ProbabilisticHead(4, num_classes=2).eval()
    pin_last_layer(head.offset, [0.0, 0.0, 0.0])
    head.sigma, head.score = Columns(3), Columns(3)
    out = head(f, x, batch)
    assert isinstance(out, ProbabilisticOutput)
    torch.testing.assert_close(out.mu, x)
    torch.testing.assert_close(out.log_sigma, f[:, :3])
    torch.testing.assert_close(out.score_logits, f[:, :3])
    iso = ProbabilisticHead(4, anisotropic=False).eval()
    iso.sigma = Columns(1)
    torch.testing.assert_close(iso(f, x, batch).log_sigma, torch.tensor([[1.0] * 3, [5.0] * 3, [9.0] * 3]))


@pytest.mark.parametrize("anisotropic", [True, False])
def test_homoscedastic_sigma_is_each_scenes_mean_log_sigma(anisotropic, dtype):
    # scenes 0 (two voxels), 2 (one voxel) and 3 (three voxels), voxels interleaved; scene 1 is empty
    batch = torch.tensor([3, 0, 2, 3, 0, 3])
    f = torch.tensor([[1.0, 10.0, 0.0], [2.0, 20.0, 0.0], [3.0, 30.0, 0.0],
                      [4.0, 40.0, 0.0], [4.0, 40.0, 0.0], [7.0, 70.0, 0.0]])
    head = ProbabilisticHead(3, anisotropic=anisotropic, heteroscedastic=False).eval()
    head.sigma = Columns(2 if anisotropic else 1)
    with torch.no_grad():
        s = head(f, torch.zeros(6, 3), batch).log_sigma
    scene_mean = {0: [3.0, 30.0], 2: [3.0, 30.0], 3: [4.0, 40.0]}  # (2 + 4) / 2, 3 / 1, (1 + 4 + 7) / 3
    want = torch.tensor([scene_mean[int(b)] for b in batch])
    if not anisotropic:
        want = want[:, :1].expand(-1, 3)
    assert s.dtype == dtype
    torch.testing.assert_close(s, want)


def test_homoscedastic_sigma_keeps_the_heads_dtype_and_device():
    """In float64 under a float32 default (and with the default device elsewhere), the per-scene
    sums are made like the sigmas: a sum made in the default dtype or on the default device fails."""
    head = ProbabilisticHead(3, heteroscedastic=False).double().eval()
    # only the per-scene mean runs under "meta": the offset's range buffer is a CPU scalar here
    head.offset, head.score = PassCentres(), Columns(1)
    f = torch.randn(5, 3, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    with torch.no_grad():
        want = head(f, torch.zeros(5, 3, dtype=torch.float64), batch).log_sigma
        with torch.device("meta"):
            got = head(f, torch.zeros(5, 3, dtype=torch.float64), batch).log_sigma
    assert got.device == want.device and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(want[:2], want[:1].expand(2, 3), rtol=0, atol=0)
    torch.testing.assert_close(want[2:], want[2:3].expand(3, 3), rtol=0, atol=0)


def test_homoscedastic_sigma_of_an_empty_batch():
    head = ProbabilisticHead(3, heteroscedastic=False).eval()
    with torch.no_grad():
        out = head(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert out.log_sigma.shape == (0, 3) and out.mu.shape == (0, 3) and out.score_logits.shape == (0, 19)


def test_margin_head_outputs_by_hand():
    head = MarginHead(4)
    assert float(head.offset.offset_range) == 3.0
    assert head.sigma[-1].out_features == 3 and head.seed[-1].out_features == 18
    assert head.seed[0].in_features == 4 and head.sigma[0].in_features == 4
    small = MarginHead(4, num_classes=2, offset_range=0.5)
    assert small.seed[-1].out_features == 2 and float(small.offset.offset_range) == 0.5
    head.eval()
    pin_last_layer(head.offset, [0.0, 0.0, 0.0])
    head.sigma, head.seed = Columns(3), Columns(2)
    f = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    x = torch.tensor([[0.5, 1.5, 2.5], [-1.0, 0.0, 1.0]])
    out = head(f, x, torch.zeros(2, dtype=torch.long))
    assert isinstance(out, MarginOutput)
    torch.testing.assert_close(out.embedding, x)
    torch.testing.assert_close(out.sigma_logit, f[:, :3])
    torch.testing.assert_close(out.seed_logits, f[:, :2])


# ----------------------------------------------------------------------------- the composed model


def test_model_output_select_takes_the_same_rows_of_every_field():
    rows = torch.tensor([2, 0])
    sem = torch.arange(12.0).reshape(3, 4)
    prob = ProbabilisticOutput(torch.arange(9.0).reshape(3, 3), -torch.arange(9.0).reshape(3, 3),
                               torch.arange(6.0).reshape(3, 2))
    out = ModelOutput(sem, prob, torch.tensor([[1.0], [2.0], [3.0]])).select(rows)
    assert isinstance(out.instance, ProbabilisticOutput)
    assert out.semantic_logits.tolist() == [[8.0, 9.0, 10.0, 11.0], [0.0, 1.0, 2.0, 3.0]]
    assert out.instance.mu.tolist() == [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    assert out.instance.log_sigma.tolist() == [[-6.0, -7.0, -8.0], [-0.0, -1.0, -2.0]]
    assert out.instance.score_logits.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    assert out.features.tolist() == [[3.0], [1.0]]
    margin = MarginOutput(torch.arange(6.0).reshape(2, 3), torch.ones(2, 3), torch.tensor([[1.0], [2.0]]))
    out = ModelOutput(torch.zeros(2, 20), margin).select(torch.tensor([1]))
    assert isinstance(out.instance, MarginOutput) and out.features is None
    assert out.instance.embedding.tolist() == [[3.0, 4.0, 5.0]] and out.instance.seed_logits.tolist() == [[2.0]]


def _batch(m: int = 6) -> types.SimpleNamespace:
    """Two scenes of isolated voxels (what SegmentationModel.forward reads of a VoxelBatch)."""
    b = torch.tensor([0] * (m // 2) + [1] * (m - m // 2))
    xyz = torch.stack([torch.arange(m) * 7, torch.arange(m) % 3, torch.zeros(m, dtype=torch.long)], 1)
    coords = torch.cat([b[:, None], xyz], 1).int()
    return types.SimpleNamespace(coords=coords, feats=torch.linspace(-1, 1, m * 3).reshape(m, 3),
                                 centers=xyz.float() * 0.05 + 0.025, batch=b)


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_model_forward_feeds_the_backbone_features_and_scaled_centres_to_the_heads(head):
    torch.manual_seed(0)
    model = SegmentationModel.build(head, "MinkUNet14A", embedding_unit=0.5).eval()
    pin_last_layer(model.instance_head.offset, [0.0, 0.0, 0.0])
    batch = _batch()
    with torch.no_grad():
        out = model(batch)
        f = model.backbone(ME.SparseTensor(batch.feats, coordinates=batch.coords)).F
        semantic = model.semantic(f)
    torch.testing.assert_close(out.features, f, rtol=0, atol=0)
    torch.testing.assert_close(out.semantic_logits, semantic, rtol=0, atol=0)
    mu = out.instance.mu if head == "probabilistic" else out.instance.embedding
    torch.testing.assert_close(mu, batch.centers * 2)  # centres in embedding units of 0.5 m
    assert mu.shape == (6, 3) and out.semantic_logits.shape == (6, 20)


def test_model_forward_gives_the_per_scene_sigma_from_the_batch_index():
    torch.manual_seed(0)
    model = SegmentationModel.build("probabilistic", "MinkUNet14A", heteroscedastic=False).eval()
    with torch.no_grad():
        s = model(_batch()).instance.log_sigma
    torch.testing.assert_close(s[:3], s[:1].expand(3, 3), rtol=0, atol=0)
    torch.testing.assert_close(s[3:], s[3:4].expand(3, 3), rtol=0, atol=0)
    assert not torch.equal(s[0], s[3])


def test_segmentation_model_build_defaults():
    model = SegmentationModel.build()
    assert model.backbone.stem[0].kernel.shape == (125, 3, 32)  # 3 input channels (no normals)
    assert model.backbone.out_channels == 96 and len(model.backbone.enc[3]) == 6  # MinkUNet34C
    head = model.instance_head
    assert isinstance(head, ProbabilisticHead) and head.anisotropic and head.heteroscedastic
    assert float(head.offset.offset_range) == 3.0 and model.embedding_unit == 1.0 and model.recorrector is None
    assert model.semantic.net[0].in_features == 96 and head.score[0].in_features == 96
    plain = SegmentationModel(model.backbone, head)  # built directly: metres, no re-correction module
    assert plain.embedding_unit == 1.0 and plain.recorrector is None and plain.instance_head is head


def test_segmentation_model_build_passes_every_option_on():
    model = SegmentationModel.build("probabilistic", "MinkUNet14B", in_channels=6, anisotropic=False,
                                    heteroscedastic=False, embedding_unit=0.25, recorrector=True, offset_range=2.0)
    assert model.backbone.stem[0].kernel.shape == (125, 6, 32) and model.backbone.out_channels == 128
    head = model.instance_head
    assert not head.anisotropic and not head.heteroscedastic and head.sigma[-1].out_features == 1
    assert float(head.offset.offset_range) == 8.0  # 2 m in units of 0.25 m
    assert model.embedding_unit == 0.25
    assert isinstance(model.recorrector, ProposalRecorrector)
    assert model.recorrector.stem[0].kernel.shape == (27, 128 + 3, 32)  # decoder features + offsets
    margin = SegmentationModel.build("margin", "MinkUNet14A", offset_range=1.5, embedding_unit=0.5)
    assert isinstance(margin.instance_head, MarginHead) and float(margin.instance_head.offset.offset_range) == 3.0
    assert margin.instance_head.seed[0].in_features == 96
    with pytest.raises(ValueError, match=r"^unknown head 'partition'; choose probabilistic or margin$"):
        SegmentationModel.build("partition", "MinkUNet14A")


# ----------------------------------------------------------------------------- pretraining model


def test_partition_head_gives_j_logits_and_needs_at_least_one():
    assert layer_sizes(PartitionHead(5).net) == layer_sizes(mlp(5, 32))  # ParAE's J = 32
    one = PartitionHead(5, components=1).eval()
    pin_last_layer(one.net, [4.0])
    with torch.no_grad():
        assert one(torch.randn(3, 5)).tolist() == [[4.0]] * 3
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"^pretrain.components must be >= 1, got {bad}$"):
            PartitionHead(5, components=bad)


def test_partition_model_defaults_and_forward():
    model = PartitionModel.build()
    assert model.backbone.stem[0].kernel.shape == (125, 3, 32) and len(model.backbone.enc[3]) == 6
    assert model.partition.net[0].in_features == 96 and model.partition.net[-1].out_features == 32
    model = PartitionModel.build("MinkUNet14A", in_channels=3, components=4).eval()
    pin_last_layer(model.partition.net, [1.0, 2.0, 3.0, 4.0])
    with torch.no_grad():
        logits = model(_batch())
    assert logits.tolist() == [[1.0, 2.0, 3.0, 4.0]] * 6  # one row per voxel, from the partition head
    model.partition = nn.Identity()
    batch = _batch()
    with torch.no_grad():  # the head reads the backbone's stride-1 features, rows in batch order
        torch.testing.assert_close(model(batch), model.backbone(ME.SparseTensor(batch.feats,
                                                                                coordinates=batch.coords)).F)
    assert PartitionModel(model.backbone, components=3).partition.net[-1].out_features == 3


# ----------------------------------------------------------------------------- build_model


def _cfg(*overrides: str):
    return load_config(None, ["model.backbone=MinkUNet14A", *overrides])


def test_build_model_chooses_the_head_from_the_config():
    model = build_model(_cfg("model.head=margin", "model.offset_range=2.0", "model.embedding_unit=0.5"))
    assert isinstance(model, SegmentationModel) and isinstance(model.instance_head, MarginHead)
    assert model.backbone.stem[0].kernel.shape == (125, 3, 32) and model.backbone.out_channels == 96
    assert float(model.instance_head.offset.offset_range) == 4.0 and model.embedding_unit == 0.5
    assert model.recorrector is None
    model = build_model(_cfg("model.head=probabilistic", "model.anisotropic=false", "model.heteroscedastic=false",
                             "model.recorrector=true", "data.use_normals=true", "model.backbone=MinkUNet18B"))
    head = model.instance_head
    assert isinstance(head, ProbabilisticHead) and not head.anisotropic and not head.heteroscedastic
    assert model.backbone.stem[0].kernel.shape == (125, 6, 32)  # rgb + normals
    assert len(model.backbone.enc[0]) == 2 and model.backbone.out_channels == 128  # MinkUNet18B
    assert isinstance(model.recorrector, ProposalRecorrector)
    aniso = build_model(_cfg()).instance_head
    assert aniso.anisotropic and aniso.heteroscedastic and float(aniso.offset.offset_range) == 3.0


def test_build_model_gives_the_pretraining_network_for_the_partition_head():
    model = build_model(_cfg("model.head=partition", "pretrain.components=5", "data.use_normals=true"))
    assert isinstance(model, PartitionModel)
    assert model.partition.net[-1].out_features == 5 and model.backbone.stem[0].kernel.shape == (125, 6, 32)
    assert model.backbone.out_channels == 96
