"""Pseudo labels for self-training on unlabelled scenes (TWIST, supplementary Sec. B).

:func:`pseudo_label_scene` is the stage's entry: a teacher model and a prepared scene in,
per-vertex pseudo labels out. It is built from pure functions on per-vertex arrays:

* Round 1: :func:`spread_confident_semantics` keeps the vertices whose largest class
  probability exceeds 0.9 and spreads each label over its superpoint (the over-segment of
  ScanNet's ``segIndices``).
* Later rounds: instance proposals whose certainty passes a threshold become instance
  pseudo labels, and the two label kinds correct each other:
  superpoint snapping (:mod:`minkseg.inference.superpoints`, applied to every proposal by
  the shared :func:`minkseg.inference.predict.scene_proposals`) and
  :func:`trim_disagreeing` (semantic -> instance), :func:`paint_proposals` (instance -> semantic).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minkseg.config import ClusterConfig, Config
from minkseg.data.voxelize import UNKNOWN_INSTANCE
from minkseg.inference.masks import paint_by_confidence
from minkseg.inference.predict import forward_scene, scene_proposals
from minkseg.models.model import SegmentationModel
from scannet_tools.io import atomic_path
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID, IGNORE_ID


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


def paint_instances(num_vertices: int, masks: list[np.ndarray], certainty: list[float]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex instance ids of possibly overlapping masks, and the mask each id came from.

    Where masks overlap the more certain one wins (as in :func:`paint_proposals`); a mask
    left with no vertex disappears and the ids are renumbered 0..K'-1 in mask order.
    """
    owner = paint_by_confidence(num_vertices, masks, certainty)
    present, compact = np.unique(owner[owner >= 0], return_inverse=True)
    out = np.full(num_vertices, -1, np.int64)
    out[owner >= 0] = compact
    return out, present


def instance_precision_recall(pseudo: np.ndarray, pseudo_class: np.ndarray, truth: np.ndarray,
                              truth_semantic: np.ndarray, iou: float = 0.5) -> tuple[int, int, int, int]:
    """(matched pseudo, pseudo, matched true, true) instance counts at IoU >= ``iou`` and equal class.

    ``pseudo`` is 0..K-1 per vertex (negative: none), ``pseudo_class`` its train ids;
    ``truth`` the prepared instance ids (negative: none) with classes from ``truth_semantic``.
    """
    fg = truth >= 0
    ids, compact = np.unique(truth[fg], return_inverse=True)
    t = np.full(len(truth), -1, np.int64)
    t[fg] = compact
    g, k = len(ids), len(pseudo_class)
    if g == 0 or k == 0:
        return 0, k, 0, g
    true_class = np.zeros(g, np.int64)
    true_class[t[t >= 0]] = truth_semantic[t >= 0]
    both = (pseudo >= 0) & (t >= 0)
    inter = np.bincount(pseudo[both] * g + t[both], minlength=k * g).reshape(k, g)
    size_p = np.bincount(pseudo[pseudo >= 0], minlength=k)
    size_t = np.bincount(t[t >= 0], minlength=g)
    ious = inter / np.maximum(size_p[:, None] + size_t[None] - inter, 1)
    hit = (ious >= iou) & (np.asarray(pseudo_class)[:, None] == true_class[None])
    return int(hit.any(1).sum()), k, int(hit.any(0).sum()), g


@dataclass
class PseudoLabels:
    """One scene's pseudo labels, per vertex in prepared order."""

    semantic: np.ndarray  # (N,) train id, IGNORE_ID where none
    instance: np.ndarray  # (N,) 0..K-1, -1 no instance, UNKNOWN_INSTANCE instance unknown
    instance_class: np.ndarray  # (K,) train id
    certainty: np.ndarray  # (K,)
    proposals: int  # proposals before filtering

    def save(self, path: Path, stats: dict[str, float]) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, semantic=self.semantic.astype(np.int16), instance=self.instance.astype(np.int32),
                                instance_class=self.instance_class.astype(np.int16),
                                certainty=self.certainty.astype(np.float32), proposals=self.proposals,
                                stat_names=np.array(list(stats)), stat_values=np.array(list(stats.values()), float))


def load_stats(path: Path) -> dict[str, float]:
    """The quality counts stored with a pseudo-label file."""
    with np.load(path) as z:
        return dict(zip(z["stat_names"].tolist(), z["stat_values"].tolist()))


def pseudo_label_stats(labels: PseudoLabels, scene: dict) -> dict[str, float]:
    """Counts for coverage and, against the scene's ground truth where it has any, precision/recall."""
    truth = scene["semantic"].astype(np.int64)
    labelled, annotated = labels.semantic != IGNORE_ID, truth != IGNORE_ID
    inst = np.where(labels.instance >= 0, labels.instance, -1)
    mp, p, mt, t = instance_precision_recall(inst, labels.instance_class, scene["instance"].astype(np.int64), truth)
    return {"vertices": len(truth), "semantic_labelled": int(labelled.sum()),
            "semantic_checked": int((labelled & annotated).sum()), "annotated": int(annotated.sum()),
            "semantic_correct": int((labelled & annotated & (labels.semantic == truth)).sum()),
            "instance_vertices": int((inst >= 0).sum()), "proposals": labels.proposals,
            "pseudo_instances": p, "pseudo_matched": mp, "true_instances": t, "true_matched": mt}


def summarize_stats(counts: list[dict[str, float]]) -> dict[str, float]:
    """Coverage and micro-averaged precision/recall over scenes (NaN where undefined)."""
    tot = {k: sum(c[k] for c in counts) for k in (counts[0] if counts else [])}

    def ratio(a: str, b: str) -> float:
        return tot[a] / tot[b] if tot.get(b) else float("nan")

    return {"scenes": len(counts), "semantic_coverage": ratio("semantic_labelled", "vertices"),
            "semantic_precision": ratio("semantic_correct", "semantic_checked"),
            "semantic_recall": ratio("semantic_correct", "annotated"),
            "instance_coverage": ratio("instance_vertices", "vertices"),
            "proposals": int(tot.get("proposals", 0)), "pseudo_instances": int(tot.get("pseudo_instances", 0)),
            "instance_precision": ratio("pseudo_matched", "pseudo_instances"),
            "instance_recall": ratio("true_matched", "true_instances")}


def pseudo_label_cluster_config(cfg: Config, recorrect: bool) -> ClusterConfig:
    """``cfg.cluster`` with the choices pseudo labels always make: masks snapped to superpoints,
    Psi's class, certainty and refined mask exactly when ``recorrect``, and one class per mask
    (a pseudo instance has one class; a second hypothesis of the same mask would survive
    :func:`trim_disagreeing` as a fragment of the wrong class)."""
    return dataclasses.replace(cfg.cluster, superpoints=True, score="psi" if recorrect else "cluster",
                               psi_refine_mask=recorrect, hypotheses=1)


@torch.no_grad()
def pseudo_label_scene(model: SegmentationModel, scene: dict, cfg: Config, instances: bool,
                       certainty_threshold: float = 0.5, recorrect: bool = False,
                       device: torch.device | str = "cpu") -> PseudoLabels:
    """A teacher's pseudo labels for one prepared scene (TWIST, supplementary Sec. B).

    Semantics: vertices with max class probability > ``selftrain.semantic_threshold``,
    spread over superpoints. With ``instances`` (rounds >= 2): the teacher's proposals, made
    by :func:`minkseg.inference.predict.scene_proposals` exactly as evaluate and predict make
    them under :func:`pseudo_label_cluster_config` (superpoint-snapped; Psi's class, certainty
    and refined mask when ``recorrect``; ``cluster.taus``/``hypotheses`` as configured), with
    certainty >= ``certainty_threshold`` are trimmed of confidently disagreeing vertices and
    kept if they still have ``selftrain.min_vertices``; their vertices take their class.
    Certainty is Psi's (class probability x predicted IoU) or, without Psi, the cluster
    confidence (mean class probability x seed score). Proposals may overlap (several taus or
    class hypotheses); pseudo labels need disjoint instances, so each vertex goes to the most
    certain kept proposal that covers it (:func:`paint_instances`): a mask's lower class
    hypotheses lose every vertex to its best one and vanish. Vertices whose semantic pseudo label is an
    instance class but that no kept proposal covers get ``UNKNOWN_INSTANCE``: an object
    the teacher could not delineate is not evidence of "no object there".
    """
    st = cfg.selftrain
    n = len(scene["xyz"])
    f = forward_scene(model, scene, cfg, device)
    out, inverse = f.out, f.inverse
    probs = torch.softmax(out.semantic_logits, 1)[inverse].cpu().numpy()
    superpoint = scene["superpoint"]
    semantic = spread_confident_semantics(probs, superpoint, st.semantic_threshold)
    if not instances:
        return PseudoLabels(semantic, np.full(n, UNKNOWN_INSTANCE, np.int64), np.zeros(0, np.int64),
                            np.zeros(0, np.float32), 0)
    proposals = scene_proposals(model, f, scene, pseudo_label_cluster_config(cfg, recorrect))
    classes, certainty = proposals.classes, proposals.scores
    arg, conf = probs.argmax(1), probs.max(1)
    masks, kept_cls, kept_cert = [], [], []
    for k in keep_certain(certainty, certainty_threshold):
        mask = trim_disagreeing(proposals.masks.mask(k), int(classes[k]), arg, conf, st.semantic_threshold)
        if mask.sum() >= st.min_vertices:
            masks.append(mask)
            kept_cls.append(int(classes[k]))
            kept_cert.append(float(certainty[k]))
    instance, present = paint_instances(n, masks, kept_cert)
    semantic = paint_proposals(semantic, masks, kept_cls, kept_cert)
    instance[(instance < 0) & (semantic >= FIRST_INSTANCE_TRAIN_ID)] = UNKNOWN_INSTANCE
    return PseudoLabels(semantic, instance, np.asarray(kept_cls, np.int64)[present],
                        np.asarray(kept_cert, np.float32)[present], proposals.num_proposals)
