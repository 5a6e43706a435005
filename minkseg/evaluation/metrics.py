"""ScanNet v2 benchmark metrics, equal to the current official evaluation scripts.

Source: ``BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py`` and
``evaluate_semantic_label.py`` of ScanNet/ScanNet, unchanged since commit a3c66b4
(2018-11-21, "small bug fix", which changed the void mask) up to HEAD 3830fce (2025-11-03).

Instance segmentation (``evaluate_semantic_instance.py``): ground-truth ids are
``nyu40 * 1000 + instance``; ground-truth instances are the ids whose ``id // 1000`` is one
of the 18 instance classes. The *void* mask is ``not isin(gt_id // 1000, 18 class ids)``:
wall, floor, unannotated (0) and non-benchmark vertices. A prediction whose label is not one
of the 18 classes or with fewer than 100 nonzero mask values is dropped. For each overlap
threshold ``np.append(np.arange(0.5, 0.95, 0.05), 0.25)`` (float64 values, so 0.6 is
0.6000000000000001) and each class, the ground-truth instances of at least 100 vertices
are walked in id order; each takes the first prediction of its class, in file order, that
no ground truth has taken yet and whose IoU is strictly above the threshold; a further
such prediction for the same instance is a false positive scored with the lower of the two
confidences, the instance keeps the higher (the further prediction is not marked taken).
A ground-truth instance without a match is a false negative. A prediction whose IoU with
every instance of its class (small ones included) is at most the threshold is a false positive
unless (void vertices + vertices on same-class instances under 100 vertices) / its size
exceeds the threshold. AP integrates the precision-recall points at every distinct
confidence plus an artificial (recall 0, precision 1) point with the script's step rule;
it is NaN for a class with neither ground truth nor predictions, 0 for ground truth
without predictions. mAP is ``nanmean`` over all classes and the thresholds 0.50..0.90;
AP50 and AP25 the ``nanmean`` over classes.

Order: the script is Python 2 and walks a scene's predictions in the hash order of their
mask paths; file order is used here (as Python 3 ports do). The two differ only when one
prediction has IoU above the threshold with two same-class instances, i.e. at 0.25.

One case the script cannot score: a class with ground truth and predictions in which every
prediction is ignored and no instance is matched leaves an empty list, and the script
stops with an IndexError (``cumsum[-1]``). Here that AP is 0: no instance was found.

Semantic segmentation (``evaluate_semantic_label.py``): a confusion matrix over the
vertices whose ground truth is one of the 20 classes; a predicted id that is not one of the
20 (0 included) goes to an "unknown" column. IoU = TP / (TP + FP + FN), FP counted on those
vertices only; NaN when the denominator is 0 (the script then fails to print). The script
prints no mean; mIoU here is the ``nanmean`` of the 20 IoUs, as the benchmark reports it.

The scripts test every prediction against every ground-truth instance over all vertices
(O(P * G * N)); here each prediction costs one ``bincount`` over its own vertices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minkseg.inference.instances import InstancePrediction
from scannet_tools.labels import INSTANCE_NAMES, INSTANCE_NYU40_IDS, SEMANTIC_NAMES, SEMANTIC_NYU40_IDS

OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION_SIZE = 100
#: semantic confusion column of every predicted id outside the 20 classes (the script's UNKNOWN_ID)
UNKNOWN_SEMANTIC_ID = max(SEMANTIC_NYU40_IDS) + 1

_INSTANCE_IDS = np.asarray(INSTANCE_NYU40_IDS)


def _member_table(ids: tuple[int, ...]) -> np.ndarray:
    """Boolean table over 0..max(ids) + 1 whose last entry (and entry 0) are False."""
    table = np.zeros(max(ids) + 2, bool)
    table[list(ids)] = True
    return table


_IS_INSTANCE_CLASS = _member_table(INSTANCE_NYU40_IDS)
_IS_SEMANTIC_CLASS = _member_table(SEMANTIC_NYU40_IDS)


def _is_member(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``np.isin(values, ids)`` by table look-up: values outside the table clip onto a False entry."""
    return np.take(table, values, mode="clip")


@dataclass
class SceneMatches:
    """A scene's ground-truth instances, kept predictions and their intersections."""

    gt_label: np.ndarray  # (G,) NYU40 label of each ground-truth instance, in id order
    gt_count: np.ndarray  # (G,) vertices
    pred_label: np.ndarray  # (P,) kept predictions (instance class, >= 100 vertices), in input order
    pred_count: np.ndarray  # (P,) vertices
    pred_conf: np.ndarray  # (P,)
    pred_void: np.ndarray  # (P,) vertices on the void mask
    inter: np.ndarray  # (P, G) intersection with ground truth of the prediction's class, 0 for other classes


def match_scene(gt: np.ndarray, preds: list[InstancePrediction]) -> SceneMatches:
    """Intersections of one scene's predictions with its ground-truth instances (Sec. "assign" of the script)."""
    gt = np.asarray(gt, dtype=np.int64)
    if len(gt) and gt.min() >= 0 and gt.max() < 1 << 22:  # ScanNet ids (< 41000): a table instead of a sort
        id_counts = np.bincount(gt)
        gt_ids = np.flatnonzero(id_counts)
        gt_count = id_counts[gt_ids]
        lookup = np.zeros(len(id_counts), np.int64)
        lookup[gt_ids] = np.arange(len(gt_ids))
        gt_inv = lookup[gt]
    else:
        gt_ids, gt_inv, gt_count = np.unique(gt, return_inverse=True, return_counts=True)
    keep_gt = np.flatnonzero(_is_member(gt_ids // 1000, _IS_INSTANCE_CLASS))  # id 0 (unannotated) is 0 // 1000
    n_gt = len(keep_gt)
    gt_col = np.full(len(gt_ids), n_gt)  # column n_gt collects vertices of no ground-truth instance
    gt_col[keep_gt] = np.arange(n_gt)
    vert_col = gt_col[gt_inv]
    gt_label = gt_ids[keep_gt] // 1000
    void = ~_is_member(gt // 1000, _IS_INSTANCE_CLASS)

    labels, counts, confs, voids, rows = [], [], [], [], []
    for p in preds:
        mask = np.asarray(p.mask)
        if len(mask) != len(gt):
            raise ValueError(f"prediction mask has {len(mask)} values, the scene has {len(gt)} vertices")
        label = int(p.label_id)
        if label not in INSTANCE_NYU40_IDS:
            continue
        idx = np.flatnonzero(mask)
        if len(idx) < MIN_REGION_SIZE:
            continue
        per_gt = np.bincount(vert_col[idx], minlength=n_gt)[:n_gt]  # vert_col is at most n_gt
        rows.append(np.where(gt_label == label, per_gt, 0))
        labels.append(label)
        counts.append(len(idx))
        confs.append(float(p.confidence))
        voids.append(int(np.count_nonzero(void[idx])))
    inter = np.asarray(rows, dtype=np.int64).reshape(len(rows), n_gt)
    return SceneMatches(gt_label, gt_count[keep_gt], np.asarray(labels, np.int64), np.asarray(counts, np.int64),
                        np.asarray(confs), np.asarray(voids, np.int64), inter)


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    """The script's precision-recall curve and its integration.

    Points at the first index of every distinct confidence in ascending order (ties are
    counted together, so their order does not matter), then the artificial (0, 1) point;
    AP = sum_i precision_i * (recall_{i-1} - recall_{i+1}) / 2 with recall_{-1} = recall_0
    and a trailing recall 0.
    """
    if len(y_score) == 0:  # the script raises IndexError here; nothing was found: AP 0
        return 0.0
    order = np.argsort(y_score)
    y_score, y_true = y_score[order], y_true[order]
    cum = np.cumsum(y_true)
    _, unique_idx = np.unique(y_score, return_index=True)
    n_examples, n_true = len(y_score), cum[-1]
    cum = np.append(cum, 0)  # cum[idx - 1] for idx = 0 reads this 0
    before = cum[unique_idx - 1]
    tp = n_true - before
    fp = n_examples - unique_idx - tp
    fn = before + hard_fn
    precision = np.append(tp / (tp + fp), 1.0)  # tp + fp = n_examples - idx > 0
    recall = np.append(tp / (tp + fn), 0.0)  # tp + fn = n_true + hard_fn > 0 when a class has ground truth
    r = np.concatenate([[recall[0]], recall, [0.0]])
    step = np.convolve(r, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, step))


def _scene_outcomes(s: SceneMatches, th: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One scene at one threshold: (class, is_true, score) of each scored entry and the unmatched gt labels.

    The entries come grouped (matches, duplicates, false positives): the AP does not depend on their order.
    """
    # the denominator is at least pred_count >= 100: no division by zero
    above = s.inter / (s.gt_count[None, :] + s.pred_count[:, None] - s.inter) > th  # 0 intersections: IoU 0
    taken: set[int] = set()
    hit, hit_score, duplicate, duplicate_score, missed = [], [], [], [], []
    for g in np.flatnonzero(s.gt_count >= MIN_REGION_SIZE):  # id order
        best = None  # the confidence this instance keeps, once matched
        for p in np.flatnonzero(above[:, g]):  # file order
            if p in taken:
                continue
            c = s.pred_conf[p]
            if best is None:
                best = c
                taken.add(p)
            else:  # a further prediction of this instance: the lower score is a false positive
                duplicate.append(g)
                duplicate_score.append(min(best, c))
                best = max(best, c)
        if best is None:
            missed.append(g)
        else:
            hit.append(g)
            hit_score.append(best)
    # predictions above the threshold with no instance: false positive unless mostly on ignored vertices
    small = s.gt_count < MIN_REGION_SIZE
    ignored = s.pred_void + s.inter[:, small].sum(1)
    fp = ~above.any(1) & (ignored / s.pred_count <= th)  # kept predictions have >= 100 vertices
    cls = np.concatenate([s.gt_label[hit], s.gt_label[duplicate], s.pred_label[fp]])
    true = np.concatenate([np.ones(len(hit)), np.zeros(len(duplicate) + int(fp.sum()))])
    score = np.concatenate([hit_score, duplicate_score, s.pred_conf[fp]])
    return cls, true, score, s.gt_label[missed]


def instance_ap(scenes: list[SceneMatches]) -> np.ndarray:
    """AP per (class, overlap threshold) over matched scenes: shape (18, len(OVERLAPS))."""
    has_gt = np.zeros(len(INSTANCE_NYU40_IDS), bool)
    has_pred = np.zeros(len(INSTANCE_NYU40_IDS), bool)
    for s in scenes:
        has_gt |= np.isin(_INSTANCE_IDS, s.gt_label[s.gt_count >= MIN_REGION_SIZE])
        has_pred |= np.isin(_INSTANCE_IDS, s.pred_label)
    # ground truth without predictions: 0; no ground truth: NaN (left out of the means)
    ap = np.repeat(np.where(has_gt, 0.0, np.nan)[:, None], len(OVERLAPS), 1)
    scored = np.flatnonzero(has_gt & has_pred)
    if len(scored):  # (then there is at least one scene to concatenate)
        for oi, th in enumerate(OVERLAPS):
            cls, true, score, missed = (np.concatenate(part) for part in zip(*(_scene_outcomes(s, th) for s in scenes)))
            for li in scored:
                label = _INSTANCE_IDS[li]
                sel = cls == label
                ap[li, oi] = _average_precision(true[sel], score[sel], int(np.count_nonzero(missed == label)))
    return ap


def _nanmean(values: np.ndarray) -> float:
    """``np.nanmean`` without its warning when every value is NaN (the script's value, NaN, then)."""
    return float(np.nanmean(values)) if not np.isnan(values).all() else np.nan


def summarize_instance(ap: np.ndarray) -> dict:
    """mAP (0.50:0.90), AP50, AP25 and per-class values, averaged as the script's ``compute_averages``."""
    o50 = np.flatnonzero(np.isclose(OVERLAPS, 0.5))
    o25 = np.flatnonzero(np.isclose(OVERLAPS, 0.25))
    rest = np.flatnonzero(~np.isclose(OVERLAPS, 0.25))
    out = {"mAP": _nanmean(ap[:, rest]), "AP50": _nanmean(ap[:, o50]), "AP25": _nanmean(ap[:, o25]), "per_class": {}}
    for li, name in enumerate(INSTANCE_NAMES):
        out["per_class"][name] = {"ap": float(np.average(ap[li, rest])), "ap50": float(ap[li, o50][0]),
                                  "ap25": float(ap[li, o25][0])}
    return out


def semantic_confusion(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Confusion counts [gt NYU40, pred NYU40], (41, 41), over vertices whose ground truth is one of the 20 classes.

    Predicted ids that are not one of the 20 classes (0 and 40 included) are counted in
    column ``UNKNOWN_SEMANTIC_ID`` (40): they can only be false negatives.
    """
    gt, pred = np.asarray(gt, np.int64), np.asarray(pred, np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"{len(pred)} predicted values for {len(gt)} vertices")
    keep = _is_member(gt, _IS_SEMANTIC_CLASS)
    p = pred[keep]
    p = np.where(_is_member(p, _IS_SEMANTIC_CLASS), p, UNKNOWN_SEMANTIC_ID)
    n = UNKNOWN_SEMANTIC_ID + 1
    return np.bincount(gt[keep] * n + p, minlength=n * n).reshape(n, n)


def summarize_semantic(confusion: np.ndarray) -> dict:
    """Per-class IoU = TP / (TP + FP + FN) (the script's ``get_iou``) and their nanmean."""
    ids = np.asarray(SEMANTIC_NYU40_IDS)
    tp = confusion[ids, ids]
    fn = confusion[ids].sum(1) - tp
    fp = confusion[ids][:, ids].sum(0) - tp
    denom = tp + fp + fn
    iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)  # NaN: neither in the ground truth nor predicted
    return {"mIoU": _nanmean(iou), "per_class": {n: float(v) for n, v in zip(SEMANTIC_NAMES, iou)}}
