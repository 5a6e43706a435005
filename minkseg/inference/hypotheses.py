"""Several class hypotheses per mask.

ScanNet's AP matches the predictions of each class separately, so a mask whose class is
uncertain (chair or sofa?) can be emitted once per plausible class without hurting the other
classes: the wrong copy only costs a false positive of its class, ranked by its own score.

Both scores minkseg ranks masks by are a class probability times a class-free factor: the
cluster confidence is mean class probability x seed score (``inference.cluster``) and Psi's
certainty is class probability x predicted IoU (``inference.psi``). A hypothesis of class
``c`` keeps the factor and takes its own probability:

    score_c = score x p_c / p_own            (= factor x p_c)

where ``p_own`` is the probability of the mask's own class. The own class always stays (with
its score unchanged); up to ``max_hypotheses - 1`` further classes follow in descending
probability, each only if ``p_c >= threshold``.
"""

from __future__ import annotations

import torch


def class_hypotheses(class_probs: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor, max_hypotheses: int,
                     threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask index, class, score) of every hypothesis, grouped by mask, own class first.

    ``class_probs`` (K, C): each mask's class probabilities; ``classes`` (K,) its own class
    (column index); ``scores`` (K,) its score for that class. A mask whose own class has
    probability 0 gets no further hypotheses (their score would be undefined).
    """
    if max_hypotheses < 1:
        raise ValueError(f"class_hypotheses: max_hypotheses must be >= 1, got {max_hypotheses}")
    # every tensor below is derived from the inputs (``*_like``, scatter, nonzero), so it lives on their device
    own = torch.zeros_like(class_probs, dtype=torch.bool).scatter_(1, classes[:, None], True)
    # own class first, then the others by descending probability (stable: ties go to the lower class)
    rank_key = torch.where(own, torch.full_like(class_probs, torch.inf), class_probs)
    order = torch.sort(rank_key, dim=1, descending=True, stable=True).indices[:, :max_hypotheses]
    p = class_probs.gather(1, order)
    p_own = p[:, :1]
    keep = (p >= threshold) & (p > 0) & (p_own > 0)  # a class of probability 0 is no hypothesis, even at threshold 0
    keep[:, 0] = True
    # where p_own = 0 the ratio is inf / nan, but only in entries that are not kept (column 0 is set below)
    ratio = p / p_own
    ratio[:, 0] = 1.0  # the own class keeps its score exactly
    score = scores[:, None] * ratio
    mask_index, column = keep.nonzero(as_tuple=True)  # row-major, like boolean indexing
    return mask_index, order[mask_index, column], score[mask_index, column]
