"""TWIST's proposal re-correction targets and loss L_Psi on a hand-built scene with known IoUs."""

from __future__ import annotations

import math

import pytest
import torch

from minkseg.losses.recorrect import proposal_targets, recorrection_loss

# ten voxels: instance 0 = voxels 0-3 (class 4), instance 1 = voxels 4, 5 (class 9), instance 2 = 8, 9
# (class 1), voxels 6, 7 background
INSTANCE = torch.tensor([0, 0, 0, 0, 1, 1, -1, -1, 2, 2])
CLASSES = torch.tensor([4, 9, 1])
# proposals (member rows; a voxel may be in several):
#   P0 = {0, 1, 2, 6}: 3 of instance 0 -> IoU 3 / (4 + 4 - 3) = 0.6, positive, class 4
#   P1 = {4, 7}:       1 of instance 1 -> IoU 1 / (2 + 2 - 1) = 1/3, negative
#   P2 = {8, 9, 3}:    2 of instance 2 (IoU 2/3) beats 1 of instance 0 (1/6): positive, class 1
#   P3 = {6, 7}:       background only -> IoU 0, negative
#   P4 = {4}:          1 of instance 1 -> IoU 1 / (1 + 2 - 1) = 0.5, exactly the threshold: positive
MEMBERS = torch.tensor([0, 1, 2, 6, 4, 7, 8, 9, 3, 6, 7, 4])
OWNER = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4])
IOU = [0.6, 1 / 3, 2 / 3, 0.0, 0.5]


def test_targets_by_hand(dtype):
    t = proposal_targets(MEMBERS, OWNER, 5, INSTANCE, CLASSES, num_classes=18)
    assert t.iou.tolist() == pytest.approx(IOU, rel=1e-6)
    assert t.iou.dtype == torch.float32
    assert t.positive.tolist() == [True, False, True, False, True]
    assert t.classes.tolist() == [4, 18, 1, 18, 9]
    # refined-mask targets: membership of the matched instance (P1 matched instance 1, P3 instance 0)
    assert t.mask.tolist() == [True, True, True, False, True, False, True, True, False, False, False, True]


def test_a_stricter_threshold(dtype):
    t = proposal_targets(MEMBERS, OWNER, 5, INSTANCE, CLASSES, num_classes=18, positive_iou=0.65)
    assert t.positive.tolist() == [False, False, True, False, False]
    assert t.classes.tolist() == [18, 18, 1, 18, 18]


def test_instances_without_voxels_and_one_voxel_matches(dtype):
    """Instance 3 is listed but has no voxel (cropped): it matches nothing. A one-voxel proposal on a
    one-voxel instance has IoU 1 / (1 + 1 - 1) = 1."""
    instance = torch.tensor([0, 0, 1, -1, 2])
    t = proposal_targets(torch.tensor([0, 1, 2, 4]), torch.tensor([0, 0, 1, 2]), 3, instance,
                         torch.tensor([4, 9, 1, 6]), num_classes=18)
    assert t.iou.tolist() == [1.0, 1.0, 1.0]
    assert t.classes.tolist() == [4, 9, 1]


def test_a_proposal_without_members_and_a_scene_without_instances(dtype):
    t = proposal_targets(MEMBERS, OWNER, 6, INSTANCE, CLASSES, num_classes=18)  # P5 has no member row
    assert t.iou.tolist()[5] == 0 and t.classes.tolist()[5] == 18 and not t.positive[5]
    none = proposal_targets(MEMBERS, OWNER, 5, torch.full((10,), -1), torch.zeros(0, dtype=torch.long), 18)
    assert none.iou.tolist() == [0.0] * 5 and none.iou.dtype == torch.float32
    assert none.classes.tolist() == [18] * 5 and not none.positive.any()
    assert none.mask.tolist() == [False] * 12 and none.mask.dtype == torch.bool
    # class 0 and class L - 1 are valid classes
    t = proposal_targets(MEMBERS, OWNER, 5, INSTANCE, torch.tensor([0, 17, 1]), num_classes=18)
    assert t.classes.tolist() == [0, 18, 1, 18, 17]


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_loss_by_hand(dtype):
    """L_Psi = CE(class) over proposals + BCE(mask) over the member rows of positive proposals
    + BCE(certainty, IoU) over proposals, each a mean."""
    t = proposal_targets(MEMBERS, OWNER, 5, INSTANCE, CLASSES, num_classes=18)
    g = torch.Generator().manual_seed(0)
    class_logits = torch.randn(5, 19, generator=g)
    mask_logits = torch.randn(12, generator=g)
    certainty = torch.randn(5, generator=g)
    out = recorrection_loss(class_logits, mask_logits, certainty, OWNER, t)
    cls = [4, 18, 1, 18, 9]
    ce = sum(math.log(sum(math.exp(v) for v in class_logits[p].tolist())) - class_logits[p, cls[p]].item()
             for p in range(5)) / 5
    mask_target = t.mask.tolist()
    rows = [r for r in range(12) if OWNER[r].item() in (0, 2, 4)]
    mask = sum(bce(mask_logits[r].item(), float(mask_target[r])) for r in rows) / len(rows)
    cert = sum(bce(certainty[p].item(), IOU[p]) for p in range(5)) / 5
    assert out["psi_class"].item() == pytest.approx(ce, rel=1e-5)
    assert out["psi_mask"].item() == pytest.approx(mask, rel=1e-5)
    assert out["psi_certainty"].item() == pytest.approx(cert, rel=1e-5)
    assert all(v.dtype == dtype for v in out.values())


def test_loss_without_positives_or_proposals(dtype):
    t = proposal_targets(MEMBERS, OWNER, 5, INSTANCE, CLASSES, num_classes=18, positive_iou=0.9)
    mask_logits = torch.randn(12, requires_grad=True)
    out = recorrection_loss(torch.full((5, 19), 0.5), mask_logits, torch.zeros(5), OWNER, t)
    assert out["psi_mask"].item() == 0
    assert out["psi_class"].item() == pytest.approx(math.log(19), rel=1e-6)
    assert out["psi_certainty"].item() == pytest.approx(sum(bce(0.0, v) for v in IOU) / 5, rel=1e-6)
    empty = proposal_targets(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 0, INSTANCE,
                             CLASSES, num_classes=18)
    class_logits = torch.randn(0, 19, requires_grad=True)
    out = recorrection_loss(class_logits, torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), empty)
    assert set(out) == {"psi_class", "psi_mask", "psi_certainty"} and all(v.item() == 0 for v in out.values())
    sum(out.values()).backward()
    assert class_logits.grad.shape == (0, 19)


def test_targets_and_loss_follow_the_inputs_device():
    """With the default device elsewhere ("meta", standing in for a GPU/CPU mismatch) targets and
    loss are made on the inputs' device, with the same values, with and without instances."""
    for instance, classes in ((INSTANCE, CLASSES), (torch.full((10,), -1), torch.zeros(0, dtype=torch.long))):
        expected = proposal_targets(MEMBERS, OWNER, 5, instance, classes, num_classes=18)
        logits = torch.zeros(5, 19), torch.zeros(12), torch.zeros(5)
        with torch.device("meta"):
            t = proposal_targets(MEMBERS, OWNER, 5, instance, classes, num_classes=18)
            out = recorrection_loss(*logits, OWNER, t)
        for name in ("classes", "iou", "mask", "positive"):
            assert getattr(t, name).device.type == "cpu" and torch.equal(getattr(t, name), getattr(expected, name))
        assert all(v.device.type == "cpu" for v in out.values())
