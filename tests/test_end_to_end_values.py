"""End to end with values known in advance: checkpoint -> ``minkseg predict`` -> submission files ->
``minkseg evaluate``, with a network whose outputs are forced to the ideal embeddings and classes.

The expected metrics do not come from the code under test: the voxelization ceiling is a plain
transcription here (each vertex takes the majority label of its voxel; an instance owns the
voxels where it has most vertices among those carrying the voxel's label), and AP follows from
the ScanNet rules in closed form: every scored instance found once with IoU above 0.95 and
nothing else gives AP 1 at every threshold; relabelling one instance of a class with n scored
instances to another class, ranked below every true instance of that class, gives the first
class AP (n - 1) / n and leaves the second at 1 (the script's curve gives a false positive
ranked last no weight).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from minkseg.cli import main
from minkseg.config import load_config, to_dict
from minkseg.data.augment import AugmentConfig
from minkseg.data.dataset import PreparedScenes
from minkseg.data.voxelize import VoxelBatch
from minkseg.engine.checkpoint import save_checkpoint
from minkseg.inference.devoxelize import devoxelize
from minkseg.models.build import build_model
from minkseg.models.heads import MarginOutput, ProbabilisticOutput
from minkseg.models.model import ModelOutput, SegmentationModel
from scannet_tools.export_gt import export_gt_all
from scannet_tools.labels import (
    FIRST_INSTANCE_TRAIN_ID,
    IGNORE_ID,
    INSTANCE_NYU40_IDS,
    SEMANTIC_NYU40_IDS,
    nyu40_to_train_id,
    train_id_to_nyu40,
)
from scannet_tools.prepare import load_prepared

VOXEL = 0.1  # metres: coarse enough that the ceiling loses some vertices (mIoU < 1), every scored instance
# still keeps IoU > 0.95 (0.99 at least on these scenes)
MIN_REGION = 100  # the benchmark's smallest scored instance and smallest kept prediction, in vertices
CLASS_LOGIT = 10.0
CLASS_PROB = float(np.exp(CLASS_LOGIT) / (np.exp(CLASS_LOGIT) + 19))  # one logit 10 against 19 zeros


# ------------------------------------------------------------------ the independent ceiling


@dataclass
class SceneTruth:
    """One prepared scene's ground truth and its voxelization ceiling, transcribed from the rules."""

    name: str
    nyu40: np.ndarray  # (N,) ground-truth NYU40 id per vertex
    instance: np.ndarray  # (N,) ground-truth instance id per vertex, -1 none
    voxel_label: np.ndarray  # (N,) majority train id of the vertex's voxel (IGNORE_ID when none)
    owner: np.ndarray  # (N,) instance owning the vertex's voxel, -1 none
    instance_nyu40: dict[int, int]  # instance id -> its ground-truth NYU40 class

    def mask(self, instance_id: int) -> np.ndarray:
        """The ceiling's mask of an instance: every vertex of the voxels it owns."""
        return self.owner == instance_id

    def scored(self, instance_id: int) -> bool:
        """Whether the benchmark scores the instance (instance class, >= 100 vertices)."""
        return (self.instance_nyu40[instance_id] in INSTANCE_NYU40_IDS
                and np.count_nonzero(self.instance == instance_id) >= MIN_REGION)


def majority(values: np.ndarray, ignore: int) -> int:
    """Most frequent value other than ``ignore`` (ties: the smallest), or ``ignore``."""
    values = values[values != ignore]
    if len(values) == 0:
        return ignore
    uniq, counts = np.unique(values, return_counts=True)
    return int(uniq[np.argmax(counts)])


def scene_truth(scene: dict, voxel_size: float) -> SceneTruth:
    xyz = scene["xyz"] - scene["xyz"].min(0)
    _, voxel_of = np.unique(np.floor(xyz / voxel_size).astype(np.int64), axis=0, return_inverse=True)
    voxel_of = voxel_of.reshape(-1)
    semantic, instance = scene["semantic"].astype(np.int64), scene["instance"].astype(np.int64)
    voxel_label = np.full(len(xyz), IGNORE_ID, np.int64)
    owner = np.full(len(xyz), -1, np.int64)
    order = np.argsort(voxel_of, kind="stable")
    for vertices in np.split(order, np.flatnonzero(np.diff(voxel_of[order])) + 1):
        label = majority(semantic[vertices], IGNORE_ID)
        voxel_label[vertices] = label
        if label >= FIRST_INSTANCE_TRAIN_ID:  # wall, floor and unlabelled voxels belong to no instance
            owner[vertices] = majority(instance[vertices][semantic[vertices] == label], -1)
    nyu40 = scene["nyu40"].astype(np.int64)
    classes = {int(i): majority(nyu40[instance == i], -1) for i in np.unique(instance[instance >= 0])}
    return SceneTruth(scene["scene"], nyu40, instance, voxel_label, owner, classes)


def expected_miou(truths: list[SceneTruth], relabel: tuple[str, int, int] | None = None) -> float:
    """Mean IoU over the 20 classes of the per-vertex voxel labels (classes absent on both sides left
    out); ``relabel = (scene, instance id, nyu40)`` predicts that class on the instance's voxels."""
    inter, union = np.zeros(len(SEMANTIC_NYU40_IDS)), np.zeros(len(SEMANTIC_NYU40_IDS))
    for t in truths:
        pred = train_id_to_nyu40(t.voxel_label)
        if relabel and relabel[0] == t.name:
            pred[t.mask(relabel[1])] = relabel[2]
        scored = np.isin(t.nyu40, SEMANTIC_NYU40_IDS)
        for c, cls in enumerate(SEMANTIC_NYU40_IDS):
            g, p = (t.nyu40 == cls) & scored, (pred == cls) & scored
            inter[c] += np.count_nonzero(g & p)
            union[c] += np.count_nonzero(g | p)
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


# ------------------------------------------------------------------ the network with ideal outputs


class IdealOutputs:
    """Stands in for :meth:`SegmentationModel.forward`: certain semantics (logit 10) at each voxel's
    majority label, every instance's voxels embedded at one point of their own (5 m from the next),
    seeds / centre scores on instance voxels only, with a logit per instance (``seed_logit``) so
    that the confidences are distinct and known. ``planted = (scene, instance id, train id)``
    gives that instance's voxels another class."""

    def __init__(self, truths: dict[str, SceneTruth], head: str, seed_logit: dict[tuple[str, int], float],
                 planted: tuple[str, int, int] | None = None):
        self.truths, self.head, self.seed_logit, self.planted = truths, head, seed_logit, planted

    def __call__(self, batch: VoxelBatch) -> ModelOutput:
        (vs,) = batch.scenes
        t = self.truths[vs.scene]
        inverse = vs.inverse.numpy()
        assert (inverse >= 0).all()  # predict voxelizes the whole scene, whatever data.augment.max_voxels says
        m = len(batch.coords)
        label, owner = np.full(m, IGNORE_ID), np.full(m, -1)
        label[inverse], owner[inverse] = t.voxel_label, t.owner
        # the transcription's voxels are predict's voxels: every vertex of a voxel agrees
        assert (label[inverse] == t.voxel_label).all() and (owner[inverse] == t.owner).all()
        if self.planted and self.planted[0] == vs.scene:
            label[owner == self.planted[1]] = self.planted[2]
        sem = torch.zeros(m, 20)
        known = np.flatnonzero(label != IGNORE_ID)
        sem[known, label[known]] = CLASS_LOGIT
        point = torch.full((m, 3), -100.0)  # voxels of no instance: far from every instance
        seed = torch.full((m, 18), -10.0)
        for k, instance_id in enumerate(np.unique(owner[owner >= 0])):
            member = np.flatnonzero(owner == instance_id)
            point[member] = torch.tensor([5.0 * k, 0.0, 0.0])
            seed[member, label[member[0]] - FIRST_INSTANCE_TRAIN_ID] = self.seed_logit[(vs.scene, int(instance_id))]
        if self.head == "margin":
            # bandwidth exp(10 * 0.5) = 148 / m^2: phi is 1 within an instance and 0 between instances
            return ModelOutput(sem, MarginOutput(point, torch.full((m, 3), 0.5), seed))
        # centre score e^L / (e^L + 18): the instance class at logit L, the 17 others and "no centre" at 0
        score = torch.cat([seed.clamp_min(0.0), torch.where(torch.from_numpy(owner) >= 0, 0.0, 10.0)[:, None]], 1)
        return ModelOutput(sem, ProbabilisticOutput(point, torch.full((m, 3), -3.0), score))


def use_ideal_outputs(monkeypatch: pytest.MonkeyPatch, ideal: IdealOutputs) -> None:
    """Every SegmentationModel (the one predict loads from the checkpoint) answers with ``ideal``."""
    monkeypatch.setattr(SegmentationModel, "forward", lambda model, batch: ideal(batch))


def confidence(head: str, logit: float) -> float:
    """The clustering's confidence of an ideal instance: mean class probability x seed score."""
    seed = 1 / (1 + np.exp(-logit)) if head == "margin" else np.exp(logit) / (np.exp(logit) + 18)
    return CLASS_PROB * seed


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def truths(prepared_dir) -> dict[str, SceneTruth]:
    scenes = [load_prepared(f) for f in sorted(prepared_dir.glob("*.npz"))]
    return {s["scene"]: scene_truth(s, VOXEL) for s in scenes}


@pytest.fixture(scope="module")
def gt_dir(raw_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gt")
    export_gt_all(raw_root / "scans", out, raw_root / "scannetv2-labels.combined.tsv")
    return out


def seed_logits(truths: dict[str, SceneTruth]) -> dict[tuple[str, int], float]:
    """A distinct seed logit per instance (3.0, 3.05, ...): above both heads' seed threshold, distinct confidences
    in float32 and in the submission's 6 decimals."""
    keys = [(name, i) for name, t in sorted(truths.items()) for i in np.unique(t.owner[t.owner >= 0])]
    return {(name, int(i)): 3.0 + 0.05 * j for j, (name, i) in enumerate(keys)}


def write_checkpoint(path: Path, raw_root: Path, prepared_dir: Path, head: str, *over: str) -> Path:
    """An untrained checkpoint: the test replaces the network's forward, predict does the rest."""
    cfg = load_config(None, [f"data.root={raw_root}", f"data.prepared={prepared_dir}", f"data.voxel_size={VOXEL}",
                             "model.backbone=MinkUNet14A", f"model.head={head}", *over])
    save_checkpoint(path, {"model": build_model(cfg).state_dict(), "config": to_dict(cfg)})
    return path


def predict(ckpt: Path, raw_root: Path, scenes: list[str], out: Path, *extra: str) -> Path:
    # min_size 1: the ceiling keeps instances of any voxel count; no superpoint snapping: the ceiling has none
    assert main(["predict", "--checkpoint", str(ckpt), "--scans", str(raw_root / "scans"), "--split",
                 ",".join(scenes), "--out", str(out), "--no-tuned", *extra, "cluster.min_size=1",
                 "cluster.superpoints=false"]) == 0
    return out


def evaluate(sub: Path, gt_dir: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"{sub.name}.json"
    assert main(["evaluate", "--pred", str(sub), "--gt", str(gt_dir), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def read_instances(sub: Path, scene: str) -> list[tuple[str, np.ndarray, int, float]]:
    """(mask path, mask, label, confidence) of each line of a scene's instance file."""
    rows = []
    for line in (sub / "instance" / f"{scene}.txt").read_text().splitlines():
        rel, label, conf = line.split(" ")
        mask = np.loadtxt(sub / "instance" / rel, dtype=np.int64).astype(bool)
        rows.append((rel, mask, int(label), float(conf)))
    return rows


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("head", ["margin", "probabilistic"])
def test_ideal_outputs_score_ap_1_and_the_ceiling_miou_through_predict_and_evaluate(
        head, truths, gt_dir, raw_root, prepared_dir, tmp_path, monkeypatch):
    names = sorted(truths)
    scored = [(n, i) for n in names for i in truths[n].instance_nyu40 if truths[n].scored(i)]
    # the premises of AP 1 at every threshold, facts of the synthetic scenes at 10 cm
    assert len(scored) >= 5 and len({truths[n].instance_nyu40[i] for n, i in scored}) >= 3
    assert all(iou(truths[n].mask(i), truths[n].instance == i) > 0.95 for n, i in scored)
    unscored_big = [(n, i) for n in names for i in np.unique(truths[n].owner[truths[n].owner >= 0])
                    if not truths[n].scored(i) and truths[n].mask(i).sum() >= MIN_REGION]
    assert not unscored_big  # no mask that the benchmark would count as a false positive
    logits = seed_logits(truths)
    use_ideal_outputs(monkeypatch, IdealOutputs(truths, head, logits))
    # the crop of training (data.augment.max_voxels, far below the scenes' voxel counts) must not reach predict
    ckpt = write_checkpoint(tmp_path / "ideal.pth", raw_root, prepared_dir, head, "data.augment.max_voxels=50")
    sub = predict(ckpt, raw_root, names, tmp_path / "ideal")

    for name in names:
        t = truths[name]
        semantic = np.loadtxt(sub / "semantic" / f"{name}.txt", dtype=np.int64)
        labelled = t.voxel_label != IGNORE_ID
        # NYU40 ids, not train ids: every vertex (cropped or not) gets its voxel's label
        np.testing.assert_array_equal(semantic[labelled], train_id_to_nyu40(t.voxel_label[labelled]))
        rows = read_instances(sub, name)
        assert len({rel for rel, *_ in rows}) == len(rows)  # one file per mask
        owners = [int(i) for i in np.unique(t.owner[t.owner >= 0])]
        assert len(rows) == len(owners)
        by_conf = sorted(owners, key=lambda i: -logits[(name, i)])
        for (_, mask, label, conf), i in zip(rows, by_conf):  # written best first
            np.testing.assert_array_equal(mask, t.mask(i))
            assert label == t.instance_nyu40[i] and label in INSTANCE_NYU40_IDS
            assert conf == pytest.approx(confidence(head, logits[(name, i)]), abs=1.5e-6)  # 6 decimals, float32

    m = evaluate(sub, gt_dir, tmp_path)
    assert m["instance"]["mAP"] == m["instance"]["AP50"] == m["instance"]["AP25"] == 1.0
    assert m["semantic"]["mIoU"] == pytest.approx(expected_miou(list(truths.values())), abs=1e-12)
    assert m["semantic"]["mIoU"] < 1.0  # the ceiling is not perfect at 10 cm: the voxels are seen


def test_a_planted_wrong_class_costs_the_hand_computed_ap(truths, gt_dir, raw_root, prepared_dir, tmp_path,
                                                          monkeypatch):
    names = sorted(truths)
    scored = [(n, i) for n in names for i in truths[n].instance_nyu40 if truths[n].scored(i)]
    per_class: dict[int, list[tuple[str, int]]] = {}
    for n, i in scored:
        per_class.setdefault(truths[n].instance_nyu40[i], []).append((n, i))
    # the class with most scored instances loses one to the class with the next most
    (c, victims), (d, _) = sorted(per_class.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:2]
    n_c, k = len(victims), len(per_class)
    assert n_c >= 2
    victim = victims[0]
    logits = seed_logits(truths)
    logits[victim] = 2.9  # the lowest confidence of all: the false positive is ranked below every match
    d_train = int(nyu40_to_train_id(np.array([d]))[0])
    use_ideal_outputs(monkeypatch, IdealOutputs(truths, "margin", logits, (*victim, d_train)))
    ckpt = write_checkpoint(tmp_path / "planted.pth", raw_root, prepared_dir, "margin")
    m = evaluate(predict(ckpt, raw_root, names, tmp_path / "planted"), gt_dir, tmp_path)
    expected = (k - 1 + (n_c - 1) / n_c) / k
    for key in ("mAP", "AP50", "AP25"):
        assert m["instance"][key] == pytest.approx(expected, abs=1e-12), key
    assert m["semantic"]["mIoU"] == pytest.approx(expected_miou(list(truths.values()), (*victim, d)), abs=1e-12)


def test_max_masks_keeps_the_highest_confidence_masks(truths, raw_root, prepared_dir, tmp_path, monkeypatch):
    names = sorted(truths)
    logits = seed_logits(truths)
    # reverse the natural order so that the best masks are not simply the first clusters
    logits = {key: 10.0 - v for key, v in logits.items()}
    use_ideal_outputs(monkeypatch, IdealOutputs(truths, "margin", logits))
    ckpt = write_checkpoint(tmp_path / "ideal.pth", raw_root, prepared_dir, "margin")
    sub = predict(ckpt, raw_root, names, tmp_path / "top2", "--max-masks", "2")
    for name in names:
        t = truths[name]
        owners = [int(i) for i in np.unique(t.owner[t.owner >= 0])]
        best = sorted(owners, key=lambda i: -logits[(name, i)])[:2]
        rows = read_instances(sub, name)
        assert len(rows) == min(2, len(owners))
        for (_, mask, _, conf), i in zip(rows, best):
            np.testing.assert_array_equal(mask, t.mask(i))
            assert conf == pytest.approx(confidence("margin", logits[(name, i)]), abs=1.5e-6)


def test_cropped_training_scenes_devoxelize_every_vertex_to_its_nearest_voxel(prepared_dir):
    # the training loader's crop (data.augment.max_voxels, as in the ScanNet configs), without other augmentation
    aug = AugmentConfig(rotate_z=False, flip=False, scale=[1.0, 1.0], jitter_std=0.0, color_jitter_std=0.0,
                        max_voxels=150)
    files = sorted(prepared_dir.glob("*.npz"))
    vox = PreparedScenes(files[:1], voxel_size=0.05, augment=aug)[0]
    scene = load_prepared(files[0])
    xyz = (scene["xyz"] - scene["xyz"].min(0)).astype(np.float32)
    inverse = vox.inverse.numpy()
    cropped = inverse < 0
    assert 0 < cropped.sum() < len(xyz)
    # per-voxel "outputs": each voxel's own row index, so every vertex reports the voxel it got
    got = devoxelize(torch.arange(len(vox.coords)), vox.inverse, xyz, vox.centers.numpy()).numpy()
    np.testing.assert_array_equal(got[~cropped], inverse[~cropped])
    centres = vox.centers.numpy().astype(np.float64)
    dist = np.linalg.norm(xyz[cropped][:, None].astype(np.float64) - centres[None], axis=2)
    np.testing.assert_allclose(dist[np.arange(len(dist)), got[cropped]], dist.min(1), rtol=1e-6)
    # the fallback needs both arrays: either alone is one clear error
    for coordinates in ((xyz, None), (None, vox.centers.numpy())):
        with pytest.raises(ValueError, match="vertices have no voxel"):
            devoxelize(vox.semantic, vox.inverse, *coordinates)
    # labels travel the same way: a cropped vertex takes its nearest voxel's label
    labels = devoxelize(vox.semantic, vox.inverse, xyz, vox.centers.numpy()).numpy()
    np.testing.assert_array_equal(labels, vox.semantic.numpy()[got])
