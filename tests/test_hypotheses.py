"""Class hypotheses per mask (inference.hypotheses) on hand-built probabilities, and against a
straightforward transcription of the rule on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minkseg.inference.hypotheses import class_hypotheses


def transcription(probs: list[list[float]], classes: list[int], scores: list[float], max_hypotheses: int,
                  threshold: float) -> list[tuple[int, int, float]]:
    """The module docstring's rule, mask by mask in plain Python: (mask, class, score) triples."""
    out = []
    for k, (p, own, score) in enumerate(zip(probs, classes, scores)):
        out.append((k, own, score))
        if p[own] <= 0:
            continue
        # others by descending probability; sorted() is stable, so ties keep the lower class first
        others = sorted((c for c in range(len(p)) if c != own), key=lambda c: -p[c])
        for c in others[:max_hypotheses - 1]:
            if p[c] >= threshold and p[c] > 0:
                out.append((k, c, score * p[c] / p[own]))
    return out


def test_a_plausible_second_class_gets_the_class_free_factor_times_its_probability(dtype):
    # chair 0.6 / sofa 0.3 / table 0.1, score 0.48 = factor 0.8 x p_own 0.6
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    idx, cls, score = class_hypotheses(probs, torch.tensor([0]), torch.tensor([0.48]), 2, 0.2)
    assert idx.tolist() == [0, 0] and cls.tolist() == [0, 1]
    assert idx.dtype == cls.dtype == torch.int64 and score.dtype == dtype
    torch.testing.assert_close(score, torch.tensor([0.48, 0.24]), rtol=1e-6, atol=0)  # 0.8 x 0.3


def test_zero_probabilities_are_never_hypotheses_even_at_threshold_zero(dtype):
    probs = torch.tensor([[0.7, 0.0, 0.3, 0.0],
                          [0.0, 1.0, 0.0, 0.0]])  # own class 0 has probability 0: score undefined
    idx, cls, score = class_hypotheses(probs, torch.tensor([0, 0]), torch.tensor([0.35, 0.9]), 4, 0.0)
    assert idx.tolist() == [0, 0, 1] and cls.tolist() == [0, 2, 0]
    torch.testing.assert_close(score, torch.tensor([0.35, 0.15, 0.9]), rtol=1e-6, atol=0)
    assert torch.isfinite(score).all()


def test_ties_go_to_the_lower_class_and_the_own_class_leads_whatever_its_probability():
    c = 40  # many equal probabilities: an unstable sort would reorder them
    probs = torch.full((1, c), 0.5 / (c - 1))
    probs[0, 7] = 0.5
    idx, cls, score = class_hypotheses(probs, torch.tensor([c - 1]), torch.tensor([0.1]), 6, 0.0)
    assert cls.tolist() == [c - 1, 7, 0, 1, 2, 3] and idx.tolist() == [0] * 6
    torch.testing.assert_close(score, torch.tensor([0.1, 0.1 * (c - 1), 0.1, 0.1, 0.1, 0.1]), rtol=1e-5, atol=0)
    assert score[0] == torch.tensor(0.1)  # the own class keeps its score exactly


def test_max_hypotheses_counts_the_own_class_and_may_exceed_the_classes():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    for m, n in ((1, 1), (2, 2), (3, 3), (4, 4), (9, 4)):
        assert class_hypotheses(probs, torch.tensor([0]), torch.tensor([1.0]), m, 0.0)[1].tolist() == [0, 3, 2, 1][:n]
    with pytest.raises(ValueError, match=r"^class_hypotheses: max_hypotheses must be >= 1, got 0$"):
        class_hypotheses(probs, torch.tensor([0]), torch.tensor([1.0]), 0, 0.0)


def test_no_masks():
    idx, cls, score = class_hypotheses(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), torch.zeros(0), 3, 0.1)
    assert idx.shape == cls.shape == score.shape == (0,)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), k=st.integers(1, 5), c=st.integers(1, 6), max_hypotheses=st.integers(1, 7),
       threshold=st.sampled_from([0.0, 0.1, 0.25, 0.5]))
def test_class_hypotheses_match_the_transcription(data, k, c, max_hypotheses, threshold):
    # probabilities on a 1/8 grid: exact in float64, with ties, zeros and values at the thresholds
    grid = data.draw(st.lists(st.lists(st.integers(0, 8), min_size=c, max_size=c), min_size=k, max_size=k))
    probs = [[v / 8 for v in row] for row in grid]
    classes = data.draw(st.lists(st.integers(0, c - 1), min_size=k, max_size=k))
    scores = data.draw(st.lists(st.sampled_from([0.0, 0.125, 0.5, 1.0]), min_size=k, max_size=k))
    idx, cls, score = class_hypotheses(torch.tensor(probs, dtype=torch.float64), torch.tensor(classes),
                                       torch.tensor(scores, dtype=torch.float64), max_hypotheses, threshold)
    want = transcription(probs, classes, scores, max_hypotheses, threshold)
    assert list(zip(idx.tolist(), cls.tolist())) == [(m, c) for m, c, _ in want]
    np.testing.assert_allclose(score.numpy(), [s for _, _, s in want], rtol=1e-12, atol=0)
