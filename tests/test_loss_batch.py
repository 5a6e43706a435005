"""batch_loss: the weighted mean over a batch's scenes of each scene's own loss, with instance ids
and classes taken per scene, the weights, the chunk budget and instance_known passed through."""

from __future__ import annotations

import pytest
import torch

import minkseg.losses as losses_module
from minkseg.data.voxelize import VoxelScene, collate
from minkseg.losses import (
    MarginLossWeights,
    ProbabilisticLossWeights,
    batch_loss,
    margin_loss,
    probabilistic_loss,
)
from minkseg.models.heads import MarginOutput, ProbabilisticOutput
from minkseg.models.model import ModelOutput


def scene(name: str, instance: list[int], semantic: list[int], instance_class: list[int], weight: float = 1.0,
          instance_known: list[bool] | None = None) -> VoxelScene:
    m = len(instance)
    coords = torch.stack([torch.arange(m), torch.zeros(m, dtype=torch.long), torch.zeros(m, dtype=torch.long)], 1)
    return VoxelScene(scene=name, coords=coords.int(), feats=torch.zeros(m, 3), centers=coords.float() * 0.05,
                      semantic=torch.tensor(semantic), instance=torch.tensor(instance),
                      instance_class=torch.tensor(instance_class, dtype=torch.long), inverse=torch.arange(m),
                      voxel_size=0.05,
                      instance_known=None if instance_known is None else torch.tensor(instance_known),
                      weight=weight)


def three_scenes() -> list[VoxelScene]:
    """Scene 0: two instances (train ids 5, 9); scene 1: none; scene 2: three (train ids 2, 19, 7),
    half its weight and partly pseudo-labelled. Voxel coordinates overlap across scenes."""
    return [
        scene("a", [0, 0, 1, 1, 1, -1], [5, 5, 9, 9, 9, 0], [5, 9]),
        scene("b", [-1, -1, -1], [1, 0, -100], []),
        scene("c", [2, 0, 0, 1, -1, 2, 1], [7, 2, 2, 19, 1, 7, 19], [2, 19, 7], weight=0.5,
              instance_known=[True, True, True, True, False, True, False]),
    ]


def outputs(m: int, head: str, seed: int = 0) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)
    semantic_logits = torch.randn(m, 20, generator=g)
    if head == "probabilistic":
        inst = ProbabilisticOutput(torch.rand(m, 3, generator=g), -1 + 0.3 * torch.randn(m, 3, generator=g),
                                   torch.randn(m, 19, generator=g))
    else:
        inst = MarginOutput(torch.rand(m, 3, generator=g), 0.1 * torch.randn(m, 3, generator=g),
                            torch.randn(m, 18, generator=g))
    return ModelOutput(semantic_logits, inst)


def per_scene(out: ModelOutput, scenes: list[VoxelScene], head: str, weights=None) -> list[dict[str, torch.Tensor]]:
    """Each scene's loss on its own rows, with its own 0..K-1 instance ids and 0..17 classes."""
    result, start = [], 0
    for s in scenes:
        rows = slice(start, start + len(s.coords))
        start += len(s.coords)
        known = s.instance_known if s.instance_known is not None else torch.ones(len(s.coords), dtype=torch.bool)
        args = (out.semantic_logits[rows], s.semantic, s.instance, s.instance_class - 2)
        if head == "probabilistic":
            i = out.instance
            result.append(probabilistic_loss(i.mu[rows], i.log_sigma[rows], i.score_logits[rows], *args,
                                             weights=weights, instance_known=known))
        else:
            i = out.instance
            result.append(margin_loss(i.embedding[rows], i.sigma_logit[rows], i.seed_logits[rows], *args,
                                      weights=weights, instance_known=known))
    return result


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_batch_loss_is_the_weighted_mean_of_the_scenes_losses(head, dtype):
    scenes = three_scenes()
    batch = collate(scenes)
    out = outputs(len(batch.coords), head)
    terms = batch_loss(out, batch)
    singles = per_scene(out, scenes, head)
    assert set(terms) == set(singles[0])
    for name in terms:
        expected = (singles[0][name] + singles[1][name] + 0.5 * singles[2][name]) / 3
        assert terms[name].item() == pytest.approx(expected.item(), rel=1e-5), name
    # the scenes differ, so a mix-up of their rows, ids or classes would show
    assert singles[0]["total"].item() != pytest.approx(singles[2]["total"].item(), rel=1e-3)


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_batch_loss_uses_the_given_weights(head):
    scenes = three_scenes()[:1]
    batch = collate(scenes)
    out = outputs(len(batch.coords), head, seed=1)
    weights = (ProbabilisticLossWeights(instance=2.0, score=0.5, entropy=1.0, semantic=3.0) if head == "probabilistic"
               else MarginLossWeights(instance=2.0, smooth=0.5, seed=4.0, semantic=3.0, seed_foreground=7.0))
    terms = batch_loss(out, batch, weights)
    expected = per_scene(out, scenes, head, weights)[0]
    assert terms["total"].item() == pytest.approx(expected["total"].item(), rel=1e-6)
    assert terms["total"].item() != pytest.approx(batch_loss(out, batch)["total"].item(), rel=1e-3)


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_batch_loss_passes_the_chunk_budget_and_instance_known(head, monkeypatch):
    seen = []
    name = "probabilistic_loss" if head == "probabilistic" else "margin_loss"
    original = getattr(losses_module, name)

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(losses_module, name, recording)
    scenes = three_scenes()
    batch = collate(scenes)
    batch_loss(outputs(len(batch.coords), head), batch, chunk_elements=12)
    assert [kw["chunk_elements"] for kw in seen] == [12, 12, 12]
    assert [kw["instance_known"].tolist() for kw in seen] == [[True] * 6, [True] * 3, scenes[2].instance_known.tolist()]
    seen.clear()
    batch_loss(outputs(len(batch.coords), head), batch)
    assert [kw["chunk_elements"] for kw in seen] == [1 << 22] * 3


def test_unknown_head_output_is_a_type_error():
    batch = collate(three_scenes()[:1])
    with pytest.raises(TypeError, match="unknown instance head output str"):
        batch_loss(ModelOutput(torch.zeros(6, 20), "not a head"), batch)
