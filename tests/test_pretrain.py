"""Self-supervised pretraining (minkseg pretrain): the pretext learns coherent partitions, its
backbone starts both heads' models, and the command runs on scenes prepared without labels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minkseg.cli import main
from minkseg.config import load_config, to_dict
from minkseg.data.voxelize import collate, input_features, voxelize
from minkseg.engine.checkpoint import CheckpointError, load_backbone, load_checkpoint, save_checkpoint
from minkseg.engine.pretrain import covariance_floor
from minkseg.inference.partition import is_pretrain_config, predict_partition
from minkseg.losses.gmm import batch_partition_nll
from minkseg.models.build import build_model
from minkseg.models.partition import PartitionModel
from scannet_tools.prepare import load_prepared, prepare_all

CONFIGS = Path(__file__).parents[1] / "configs"


def spatial_coherence(coords: torch.Tensor, centers: torch.Tensor, part: torch.Tensor) -> tuple[int, float, float]:
    """(partitions used, within-partition spread / scene spread, share of face-adjacent voxel pairs
    in the same partition). Random labels give a spread ratio near 1 and agreement near 1/J."""
    spread = sum(len(x) * x.var(0, unbiased=False).sum() for x in (centers[part == j] for j in part.unique()))
    ratio = float(spread / (len(centers) * centers.var(0, unbiased=False).sum()))
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    same = pairs = 0
    for i, (x, y, z) in enumerate(coords.tolist()):
        for k in (index.get((x + 1, y, z)), index.get((x, y + 1, z)), index.get((x, y, z + 1))):
            if k is not None:
                pairs += 1
                same += int(part[i] == part[k])
    return len(part.unique()), ratio, same / pairs


def test_pretext_loss_decreases_and_partitions_become_coherent(prepared_dir):
    """60 Adam steps on one 4 m x 4 m corner of a synthetic room (about 700 voxels of 10 cm)."""
    torch.manual_seed(0)
    s = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    xyz = s["xyz"] - s["xyz"].min(0)
    keep = (xyz[:, 0] < 4) & (xyz[:, 1] < 4)
    batch = collate([voxelize(xyz[keep], input_features(s["rgb"][keep]), voxel_size=0.1)])
    model = PartitionModel.build("MinkUNet14A", 3, components=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    floor = 0.1 ** 2 / 12
    losses = []
    for _ in range(60):
        loss = batch_partition_nll(batch.centers, model(batch), [len(batch.coords)], floor)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < losses[0] - 0.5  # nats per voxel
    model.eval()
    with torch.no_grad():
        part = model(batch).argmax(1)
    used, ratio, agreement = spatial_coherence(batch.coords[:, 1:], batch.centers, part)
    assert used >= 3  # not the trivial one-partition answer (spread ratio 1, agreement 1)
    _, shuffled_ratio, shuffled_agreement = spatial_coherence(batch.coords[:, 1:], batch.centers,
                                                              part[torch.randperm(len(part))])
    assert ratio < 0.7 < shuffled_ratio  # compact partitions, where the same sizes at random places are not
    assert agreement > 0.7 and agreement > shuffled_agreement + 0.3


def _checkpoint(tmp_path: Path) -> tuple[Path, PartitionModel]:
    """A pretraining checkpoint of MinkUNet14A with 3 input channels."""
    cfg = load_config(None, ["model.head=partition", "model.backbone=MinkUNet14A"])
    torch.manual_seed(1)
    model = build_model(cfg)
    path = tmp_path / "pre.pth"
    save_checkpoint(path, {"model": model.state_dict(), "config": to_dict(cfg)})
    return path, model


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_pretrained_backbone_loads_into_both_heads(tmp_path, head):
    path, pre = _checkpoint(tmp_path)
    cfg = load_config(None, [f"model.head={head}", "model.backbone=MinkUNet14A"])
    torch.manual_seed(2)
    model = build_model(cfg)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    record = load_backbone(model, path)
    for k, v in pre.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    for k, v in model.state_dict().items():
        if not k.startswith("backbone."):
            assert torch.equal(v, heads_before[k]), k  # heads fresh
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and record["source_head"] == "partition"


def test_a_backbone_of_another_variant_is_refused_in_one_line(tmp_path):
    path, _ = _checkpoint(tmp_path)
    model = build_model(load_config(None, ["model.backbone=MinkUNet18A"]))
    with pytest.raises(CheckpointError, match=r"pre\.pth: its backbone \(MinkUNet14A\) does not fit") as e:
        load_backbone(model, path)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="does not fit"):  # 6 input channels (normals) against 3
        load_backbone(build_model(load_config(None, ["model.backbone=MinkUNet14A", "data.use_normals=true"])), path)


def test_covariance_floor_defaults_to_the_voxel_quantisation():
    cfg = load_config(None, ["data.voxel_size=0.05", "pretrain.inputs=[xyz, rgb]"])
    floor = covariance_floor(cfg)
    assert floor[:3].tolist() == pytest.approx([0.05 ** 2 / 12] * 3) and floor[3:].tolist() == pytest.approx([1e-3] * 3)
    assert covariance_floor(load_config(None, ["pretrain.covariance_floor=0.01"])).tolist() == pytest.approx([0.01] * 3)


def test_pretrain_cli_without_labels_then_train_from_it(raw_root, tmp_path, capsys):
    unlabelled = tmp_path / "prepared"
    assert prepare_all(raw_root / "scans", unlabelled, None).ok  # minkseg prepare --no-labels
    runs = tmp_path / "runs"
    common = [f"data.root={raw_root}", f"data.prepared={unlabelled}", f"runs_dir={runs}", "train.batch_size=1",
              "train.threads=1", "train.workers=0"]
    pre = [str(CONFIGS / "synthetic_pretrain.yaml"), *common, "name=pre", "train.epochs=2", "train.val_every=1",
           "pretrain.components=8"]
    assert main(["pretrain", *pre, "--max-steps", "1"]) == 0
    assert main(["pretrain", *pre]) == 2  # the run exists: one error line, no traceback
    assert "already holds a run" in capsys.readouterr().err
    assert main(["pretrain", *pre, "--resume"]) == 0
    run = runs / "pre"
    info = json.loads((run / "pretrain.json").read_text())
    assert info["epoch"] == 2 and np.isfinite(info["best_val_nll"])
    assert sorted(p.name for p in (run / "val").glob("*.json")) == ["epoch_0001.json", "epoch_0002.json"]

    with pytest.raises(CheckpointError, match="pretrain checkpoint has no segmentation heads"):
        load_checkpoint(run / "last.pth")  # evaluate / predict / compare: one line, not a traceback
    model, cfg, _ = load_checkpoint(run / "last.pth", allow_pretrain=True)
    assert is_pretrain_config(cfg)
    scene = load_prepared(sorted(unlabelled.glob("*.npz"))[0])
    part = predict_partition(model, scene, cfg)
    assert part.shape == (len(scene["xyz"]),) and part.dtype == np.int64 and 0 <= part.min() <= part.max() < 8

    ckpt = run / "last.pth"
    ft = [str(CONFIGS / "synthetic_margin.yaml"), f"data.root={raw_root}", f"data.prepared={tmp_path / 'labelled'}",
          f"runs_dir={runs}", "train.batch_size=1", "train.threads=1", "train.workers=0", "train.val_every=0",
          "name=ft", f"model.init_backbone={ckpt}"]
    assert prepare_all(raw_root / "scans", tmp_path / "labelled", raw_root / "scannetv2-labels.combined.tsv").ok
    assert main(["train", *ft, "--max-steps", "1"]) == 0
    record = json.loads((runs / "ft" / "init_backbone.json").read_text())
    assert record["path"] == str(ckpt) and record["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert load_config(runs / "ft" / "config.yaml").model.init_backbone == str(ckpt)
    # train refuses the pretraining network, in one line
    assert main(["train", *pre[:1], *common, "name=wrong"]) == 2
    assert "minkseg pretrain" in capsys.readouterr().err


class NearestAnchorPartition(torch.nn.Module):
    """A stand-in pretraining network: partition j scores -(x - 0.5 j)^2 at each voxel centre."""

    def forward(self, batch) -> torch.Tensor:
        anchors = 0.5 * torch.arange(3, dtype=batch.centers.dtype)
        return -(batch.centers[:, :1] - anchors) ** 2


def test_predict_partition_is_the_arg_max_of_each_vertexs_voxel():
    # four vertices, two of them in one 10 cm voxel; voxel centres x = 1.05, 0.05, 0.55 -> partitions 2, 0, 1
    xyz = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.02, 0.0, 0.0]])
    scene = {"scene": "scene_part", "xyz": xyz + 3.0, "rgb": np.zeros((4, 3), np.uint8),
             "normals": np.zeros((4, 3), np.float32)}
    cfg = load_config(None, ["model.head=partition", "data.voxel_size=0.1"])
    part = predict_partition(NearestAnchorPartition(), scene, cfg)  # the default device: the CPU
    assert part.dtype == np.int64 and part.tolist() == [2, 0, 1, 0]
    assert not is_pretrain_config(load_config(None, ["model.head=margin"]))
    with pytest.raises(ValueError, match=r"^model.head=probabilistic: partitions come from a minkseg pretrain "
                                         r"checkpoint \(model.head=partition\)$"):
        predict_partition(NearestAnchorPartition(), scene, load_config(None, ["model.head=probabilistic"]))
