"""Psi as a proposal scorer (inference.psi) with a re-correction module whose answers are fixed."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn as nn

from minkseg.inference.psi import assess_proposals, group_members
from minkseg.models.heads import ProbabilisticOutput
from minkseg.models.model import ModelOutput
from minkseg.models.recorrect import RecorrectOutput


def test_group_members_groups_by_instance_keeping_voxel_order():
    members, owner = group_members(torch.tensor([2, -1, 0, 2, 1, 0, -1]))
    assert members.tolist() == [2, 5, 4, 0, 3] and owner.tolist() == [0, 0, 1, 2, 2]
    # many voxels per instance: voxels stay ascending within each instance (a stable sort)
    voxel_instance = torch.arange(300) % 4 - 1  # -1, 0, 1, 2, -1, 0, ...
    members, owner = group_members(voxel_instance)
    want = [v for i in range(3) for v in range(300) if v % 4 == i + 1]
    assert members.tolist() == want and owner.tolist() == sorted(voxel_instance[voxel_instance >= 0].tolist())
    empty = group_members(torch.full((3,), -1))
    assert empty[0].tolist() == [] and empty[1].tolist() == []


class RecordingPsi(nn.Module):
    """Fixed answers; remembers what it was called with."""

    def __init__(self, answer: RecorrectOutput):
        super().__init__()
        self.answer, self.calls = answer, []

    def forward(self, *args):
        self.calls.append(args)
        return self.answer


def scene(m: int = 5):
    features = torch.arange(m * 2, dtype=torch.get_default_dtype()).reshape(m, 2)
    coords = torch.cat([torch.zeros(m, 1, dtype=torch.int32), torch.arange(m * 3, dtype=torch.int32).reshape(m, 3)], 1)
    centers = coords[:, 1:].to(torch.get_default_dtype()) + 0.5
    batch = types.SimpleNamespace(coords=coords, centers=centers)
    out = ModelOutput(torch.zeros(m, 20), ProbabilisticOutput(torch.zeros(m, 3), torch.zeros(m, 3), torch.zeros(m, 19)),
                      features)
    return out, batch


def test_certainty_is_the_corrected_class_probability_times_the_predicted_iou(dtype):
    # two proposals over three instance classes plus "no object" (last column)
    ln = math.log
    class_logits = torch.tensor([[ln(0.1), ln(0.6), ln(0.1), ln(0.2)],  # class 1, p = 0.6
                                 [ln(0.05), ln(0.05), ln(0.1), ln(0.8)]])  # mostly "no object": class 2, p = 0.1
    certainty_logits = torch.tensor([0.0, ln(3.0)])  # predicted IoU 0.5 and 0.75
    mask_logits = torch.tensor([2.0, 0.0, -1.0, 1e-3, -1e-3])  # exactly 0 is not in the refined mask
    psi = RecordingPsi(RecorrectOutput(class_logits, mask_logits, certainty_logits))
    out, batch = scene()
    members, owner = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 0, 0, 1, 1])
    a = assess_proposals(types.SimpleNamespace(recorrector=psi), out, batch, members, owner, 2)
    torch.testing.assert_close(a.class_probs, torch.tensor([[0.1, 0.6, 0.1], [0.05, 0.05, 0.1]]), rtol=1e-5, atol=0)
    assert a.classes.tolist() == [1, 2]
    torch.testing.assert_close(a.certainty, torch.tensor([0.6 * 0.5, 0.1 * 0.75]), rtol=1e-5, atol=0)
    assert a.certainty.dtype == dtype
    assert a.keep_member.tolist() == [True, False, False, True, False]
    # Psi sees the decoder features, the voxel coordinates without the batch column, the centres and the proposals
    ((features, coords, centers, m, o, k),) = psi.calls
    assert features is out.features and torch.equal(coords, batch.coords[:, 1:]) and centers is batch.centers
    assert m is members and o is owner and k == 2


def test_psi_scoring_needs_the_recorrection_module():
    out, batch = scene()
    with pytest.raises(ValueError, match=r"^cluster.score=psi needs a model with the re-correction module Psi: "
                                         r"train it with model.recorrector=true \(or minkseg selftrain\)$"):
        assess_proposals(types.SimpleNamespace(recorrector=None), out, batch, torch.zeros(0, dtype=torch.long),
                         torch.zeros(0, dtype=torch.long), 0)
