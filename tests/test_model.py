"""The full model with each head: forward, loss, backward, clustering, devoxelization."""

import math

import pytest
import torch

from minkseg.config import ConfigError, ModelConfig, load_config
from minkseg.data.dataset import PreparedScenes
from minkseg.data.voxelize import collate
from minkseg.inference.cluster import cluster_margin, cluster_probabilistic
from minkseg.inference.devoxelize import devoxelize
from minkseg.losses import batch_loss
from minkseg.models.heads import MarginHead, ProbabilisticHead
from minkseg.models.model import SegmentationModel
from minkseg.models.unet import VARIANTS, build_backbone
from minkseg.sparse import ME


@pytest.fixture(scope="module")
def batch(prepared_dir):
    ds = PreparedScenes.from_dir(prepared_dir, voxel_size=0.05)
    return collate([ds[0], ds[1]])


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_forward_backward_cluster_devoxelize(head, batch):
    torch.manual_seed(0)
    model = SegmentationModel.build(head, "MinkUNet14A")
    out = model(batch)
    m = len(batch.coords)
    assert out.semantic_logits.shape == (m, 20)
    loss = batch_loss(out, batch)
    assert torch.isfinite(loss["total"])
    loss["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0

    model.eval()
    with torch.no_grad():
        out = model(batch)
    rows = batch.batch == 0
    if head == "probabilistic":
        o = out.instance
        c = cluster_probabilistic(o.mu[rows], o.log_sigma[rows], o.score_logits[rows], out.semantic_logits[rows],
                                  seed_threshold=0.0, min_size=1)
    else:
        o = out.instance
        c = cluster_margin(o.embedding[rows], o.sigma_logit[rows], o.seed_logits[rows], out.semantic_logits[rows],
                           seed_threshold=0.0, min_size=1)
    scene = batch.scenes[0]
    per_vertex = devoxelize(c.voxel_instance, scene.inverse)
    assert per_vertex.shape == scene.inverse.shape
    assert per_vertex.max() < max(c.num_instances, 1)


@pytest.mark.parametrize("aniso,hetero", [(True, True), (True, False), (False, True), (False, False)])
def test_four_probabilistic_variants(aniso, hetero, batch):
    model = SegmentationModel.build("probabilistic", "MinkUNet14A", anisotropic=aniso, heteroscedastic=hetero)
    model.eval()
    with torch.no_grad():
        o = model(batch).instance
    m = len(batch.coords)
    assert o.mu.shape == (m, 3) and o.log_sigma.shape == (m, 3) and o.score_logits.shape == (m, 19)
    if not aniso:
        assert torch.equal(o.log_sigma[:, 0], o.log_sigma[:, 2])
    if not hetero:
        for b in range(2):
            ls = o.log_sigma[batch.batch == b]
            assert torch.allclose(ls, ls[:1].expand_as(ls))
    # mu = x + R tanh(o / R): within R = model.offset_range (3 m) of the voxel centre
    assert ((o.mu - batch.centers).abs() < 3).all()


def test_output_rows_follow_input_rows(batch):
    x = ME.SparseTensor(batch.feats, coordinates=batch.coords)
    net = build_backbone("MinkUNet14A", 3)
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert torch.equal(y.C, batch.coords)


def test_every_backbone_variant_builds():
    assert {"MinkUNet14A", "MinkUNet18A", "MinkUNet34C"} <= set(VARIANTS)
    for name in VARIANTS:
        assert build_backbone(name, 3).out_channels > 0
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("MinkUNet99Z", 3)


def pinned_offset(head: torch.nn.Module, bias_x: float) -> torch.Tensor:
    """mu - x of a head whose offset MLP outputs o = (bias_x, 0, 0) for any input (zero last weights)."""
    head.eval()
    last = head.offset[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([bias_x, 0.0, 0.0]))
        f, x = torch.randn(5, 16), torch.rand(5, 3) * 4
        out = head(f, x, torch.zeros(5, dtype=torch.long))
    mu = out.mu if isinstance(head, ProbabilisticHead) else out.embedding
    return mu - x


def reach_along_x(head: torch.nn.Module, target: float) -> torch.Tensor:
    """mu - x of a head aimed (through the offset MLP's last bias) at ``target`` metres along x."""
    r = float(head.offset.offset_range)
    return pinned_offset(head, r * math.atanh(min(target / r, 1 - 1e-7)))


@pytest.mark.parametrize("head", [ProbabilisticHead, MarginHead])
def test_heads_reach_the_centre_of_a_5m_object(head):
    r = ModelConfig().offset_range
    assert r == 3.0
    offset = reach_along_x(head(16, offset_range=r), 2.5)  # half of a 5 m counter
    torch.testing.assert_close(offset, torch.tensor([2.5, 0.0, 0.0]).expand(5, 3), atol=1e-5, rtol=0)
    assert (reach_along_x(head(16, offset_range=1.0), 2.5)[:, 0] <= 1).all()  # the paper's tanh(o) cannot


def test_offsets_are_the_identity_near_zero_and_bounded_by_the_range():
    head = ProbabilisticHead(16, offset_range=3.0)
    # slope 1 at o = 0: small offsets are those of the paper's x + tanh(o) (and of an unbounded offset)
    torch.testing.assert_close(pinned_offset(head, 0.01)[:, 0], torch.full((5,), 0.01), atol=1e-6, rtol=0)
    torch.testing.assert_close(pinned_offset(head, 0.01), pinned_offset(ProbabilisticHead(16, offset_range=1.0), 0.01),
                               atol=1e-6, rtol=0)
    runaway = pinned_offset(head, 1e4)[:, 0]
    assert (runaway <= 3.0 + 1e-6).all() and (runaway > 2.99).all()  # 1e-6: float32 rounding of (x + 3) - x
    with pytest.raises(ValueError, match="offset_range must be > 0"):
        ProbabilisticHead(16, offset_range=0.0)
    with pytest.raises(ConfigError, match=r"config.model.offset_range: expected a length > 0 metres, got -1.0"):
        load_config(None, ["model.offset_range=-1"])


def test_checkpoints_keep_their_offset_range():
    new = MarginHead(16, offset_range=3.0)
    state = new.state_dict()
    assert "offset.0.weight" in state and float(state["offset.offset_range"]) == 3.0  # names as before
    loaded = MarginHead(16, offset_range=2.0)
    loaded.load_state_dict(state)
    assert float(loaded.offset.offset_range) == 3.0
    legacy = {k: v for k, v in state.items() if k != "offset.offset_range"}  # saved before offset_range existed
    loaded.load_state_dict(legacy)
    assert float(loaded.offset.offset_range) == 1.0  # mu = x + tanh(o), the reach it was trained with
    model = SegmentationModel.build("margin", "MinkUNet14A", offset_range=2.0, embedding_unit=0.5)
    assert float(model.instance_head.offset.offset_range) == 4.0  # in embedding units
