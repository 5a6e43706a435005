"""Pseudo labels for self-training on unlabelled scenes (TWIST, supplementary Sec. B).

Pure functions on per-vertex arrays; the self-training rounds that call them are not
built yet (see the project's self-training issue).

* Round 1: :func:`spread_confident_semantics` keeps the vertices whose largest class
  probability exceeds 0.9 and spreads each label over its superpoint (the over-segment of
  ScanNet's ``segIndices``).
* Later rounds: instance proposals whose certainty passes a threshold become instance
  pseudo labels, and the two label kinds correct each other:
  :func:`snap_to_superpoints` and :func:`trim_disagreeing` (semantic -> instance),
  :func:`paint_proposals` (instance -> semantic).
"""

from __future__ import annotations

import numpy as np

from scannet_tools.labels import IGNORE_ID


def spread_confident_semantics(probs: np.ndarray, superpoint: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Round-1 semantic pseudo labels (train ids, ``IGNORE_ID`` where none).

    Vertices with ``max probs > threshold`` vote with their arg-max class; every vertex of a
    superpoint holding at least one confident vertex takes the superpoint's majority vote.
    Vertices without a superpoint (-1) keep their own confident label.
    """
    probs = np.asarray(probs)
    confident = probs.max(1) > threshold
    label = np.where(confident, probs.argmax(1), IGNORE_ID).astype(np.int64)
    sp = np.asarray(superpoint, dtype=np.int64)
    has_sp = sp >= 0
    vote = confident & has_sp
    if not vote.any():
        return label
    n_sp, n_cls = int(sp.max()) + 1, probs.shape[1]
    counts = np.bincount(sp[vote] * n_cls + label[vote], minlength=n_sp * n_cls).reshape(n_sp, n_cls)
    sp_label = np.where(counts.sum(1) > 0, counts.argmax(1), IGNORE_ID)
    out = label.copy()
    out[has_sp] = sp_label[sp[has_sp]]
    return out


def keep_certain(certainty: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Indices of the proposals whose certainty is at least ``threshold`` (Table 9's default 0.5)."""
    return np.flatnonzero(np.asarray(certainty) >= threshold)


def snap_to_superpoints(mask: np.ndarray, superpoint: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """A proposal becomes the union of the superpoints it covers by more than ``min_fraction``.

    Superpoints never cross object boundaries, so snapping removes ragged borders and
    fills holes; vertices without a superpoint keep their own membership.
    """
    mask = np.asarray(mask, bool)
    sp = np.asarray(superpoint, dtype=np.int64)
    has_sp = sp >= 0
    if not has_sp.any():
        return mask.copy()
    n_sp = int(sp.max()) + 1
    inside = np.bincount(sp[has_sp & mask], minlength=n_sp)
    total = np.bincount(sp[has_sp], minlength=n_sp)
    keep_sp = inside > min_fraction * np.maximum(total, 1)
    out = mask.copy()
    out[has_sp] = keep_sp[sp[has_sp]]
    return out


def trim_disagreeing(mask: np.ndarray, proposal_class: int, semantic: np.ndarray,
                     semantic_conf: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Drop the proposal's vertices whose *confident* semantic prediction names another class."""
    mask = np.asarray(mask, bool)
    disagree = (np.asarray(semantic) != proposal_class) & (np.asarray(semantic_conf) > threshold)
    return mask & ~disagree


def paint_proposals(semantic: np.ndarray, masks: list[np.ndarray], classes: list[int],
                    certainty: list[float]) -> np.ndarray:
    """Instance -> semantic correction: a kept proposal's vertices take its class.

    Proposals are painted in increasing certainty, so where two overlap the more certain
    one decides.
    """
    out = np.asarray(semantic, dtype=np.int64).copy()
    for k in np.argsort(certainty, kind="stable"):
        out[np.asarray(masks[k], bool)] = classes[k]
    return out


def label_precision_recall(pseudo: np.ndarray, truth: np.ndarray, ignore: int = IGNORE_ID) -> tuple[float, float]:
    """Semantic pseudo-label quality: precision over labelled vertices, recall over annotated ones."""
    pseudo, truth = np.asarray(pseudo), np.asarray(truth)
    labelled, annotated = pseudo != ignore, truth != ignore
    correct = labelled & annotated & (pseudo == truth)
    precision = correct.sum() / max(int((labelled & annotated).sum()), 1)
    recall = correct.sum() / max(int(annotated.sum()), 1)
    return float(precision), float(recall)
