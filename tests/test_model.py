"""The full model with each head: forward, loss, backward, clustering, devoxelization."""

import pytest
import torch

from minkseg.cluster import cluster_margin, cluster_probabilistic
from minkseg.data.dataset import PreparedScenes
from minkseg.data.voxelize import collate
from minkseg.devoxelize import devoxelize
from minkseg.losses import batch_loss
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
    # mu = x + tanh(o): within one unit of the voxel centre
    assert ((o.mu - batch.centers).abs() < 1).all()


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
