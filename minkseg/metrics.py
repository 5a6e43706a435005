"""ScanNet v2 benchmark metrics, identical to the official evaluation scripts.

Instance segmentation follows ``evaluate_semantic_instance.py``: ground-truth ids are
``nyu40 * 1000 + instance``; only the 18 instance classes count; regions under 100
vertices are dropped (predictions) or ignored (ground truth); a match needs IoU strictly
above the threshold; for each overlap threshold the ground-truth instances are walked in
id order and each takes the first not-yet-used prediction (in file order) above the
threshold, a further prediction above it for the same instance becomes a false positive
with the lower of the two scores; unmatched predictions count as false positives unless
the share of their vertices on ignored ground truth (small instances, and the script's
``void`` mask) exceeds the threshold; precision/recall points at every distinct score,
an artificial (recall 0, precision 1) end point, and the script's trapezoid-style
integration; AP is NaN for a class without ground truth and predictions, 0 for one with
ground truth only; mAP averages the thresholds 0.50:0.05:0.90 (``np.arange(0.5, 0.95,
0.05)``) over classes with ``nanmean``.

Semantic segmentation follows ``evaluate_semantic_label.py``: a confusion matrix over
vertices whose ground truth is one of the 20 classes; IoU = TP / (TP + FP + FN) with false
positives counted only on those vertices; NaN without ground truth or predictions.

The official scripts compare every prediction with every ground-truth instance over all
vertices (O(P * G * N)); here one sparse product gives all intersections (O(N + P * N_p)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from scannet_tools.labels import INSTANCE_NAMES, INSTANCE_NYU40_IDS, SEMANTIC_NAMES, SEMANTIC_NYU40_IDS

OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION_SIZE = 100


@dataclass
class InstancePrediction:
    """One predicted instance of a scene: a vertex mask, an NYU40 label and a confidence."""

    mask: np.ndarray  # (N,) bool, or (K,) vertex indices
    label_id: int
    confidence: float


@dataclass
class SceneMatches:
    """A scene's ground-truth instances, kept predictions and their intersections."""

    gt_label: np.ndarray  # (G,) NYU40 label of each ground-truth instance, np.unique id order
    gt_count: np.ndarray  # (G,) vertices
    pred_label: np.ndarray  # (P,) kept predictions (valid class, >= 100 vertices), input order
    pred_count: np.ndarray
    pred_conf: np.ndarray
    pred_void: np.ndarray  # (P,) vertices on the script's "void" mask
    inter: sp.csr_matrix  # (P, G) intersections with ground truth of the prediction's class
    inter_t: sp.csr_matrix  # (G, P), rows sorted by prediction index


def match_scene(gt: np.ndarray, preds: list[InstancePrediction]) -> SceneMatches:
    """Intersections of one scene's predictions with its ground truth (one sparse product)."""
    gt = np.asarray(gt, dtype=np.int64)
    gt_ids, gt_inv, gt_count = np.unique(gt, return_inverse=True, return_counts=True)
    keep_gt = np.flatnonzero((gt_ids != 0) & np.isin(gt_ids // 1000, INSTANCE_NYU40_IDS))
    gt_col = np.full(len(gt_ids), -1)
    gt_col[keep_gt] = np.arange(len(keep_gt))
    vert_gt = gt_col[gt_inv.reshape(-1)]
    gt_label = gt_ids[keep_gt] // 1000
    # the script's void mask compares full ids with class ids, so it is true only for ids 3..39
    void = np.isin(gt, INSTANCE_NYU40_IDS)

    kept = []
    for p in preds:
        mask = np.asarray(p.mask)
        if len(mask) != len(gt):
            raise ValueError(f"prediction mask has {len(mask)} values, the scene has {len(gt)} vertices")
        idx = np.flatnonzero(mask)
        if int(p.label_id) in INSTANCE_NYU40_IDS and len(idx) >= MIN_REGION_SIZE:
            kept.append((idx, int(p.label_id), float(p.confidence)))
    # (P, N) prediction masks times (N, G) same-class ground-truth indicators
    pred_rows = np.concatenate([np.full(len(idx), k) for k, (idx, _, _) in enumerate(kept)] + [np.zeros(0, int)])
    verts = np.concatenate([idx for idx, _, _ in kept] + [np.zeros(0, int)])
    pred_label = np.asarray([lab for _, lab, _ in kept], dtype=np.int64)
    g = vert_gt[verts]
    same = g >= 0
    same[same] = gt_label[g[same]] == pred_label[pred_rows[same]]
    inter = sp.csr_matrix((np.ones(int(same.sum()), np.int64), (pred_rows[same], g[same])),
                          shape=(len(kept), len(keep_gt)))
    inter.sum_duplicates()
    inter_t = inter.T.tocsr()
    inter_t.sort_indices()
    return SceneMatches(
        gt_label, gt_count[keep_gt], pred_label, np.asarray([len(i) for i, _, _ in kept], np.int64),
        np.asarray([c for _, _, c in kept], float),
        np.asarray([int(void[idx].sum()) for idx, _, _ in kept], np.int64), inter, inter_t,
    )


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    """The official script's precision-recall curve and its integration."""
    order = np.argsort(y_score, kind="quicksort")
    y_score, y_true = y_score[order], y_true[order]
    cum = np.cumsum(y_true)
    _, unique_idx = np.unique(y_score, return_index=True)
    n_examples, n_true = len(y_score), cum[-1]
    cum = np.append(cum, 0)  # cum[idx - 1] for idx = 0 reads this 0
    before = cum[unique_idx - 1]
    tp = n_true - before
    fp = n_examples - unique_idx - tp
    fn = before + hard_fn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.append(tp / (tp + fp), 1.0)
        recall = np.append(tp / (tp + fn), 0.0)
    r = np.concatenate([[recall[0]], recall, [0.0]])
    step = np.convolve(r, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, step))


def instance_ap(scenes: list[SceneMatches]) -> np.ndarray:
    """AP per (class, overlap threshold) over a list of matched scenes: shape (18, len(OVERLAPS))."""
    ap = np.zeros((len(INSTANCE_NYU40_IDS), len(OVERLAPS)))
    for oi, th in enumerate(OVERLAPS):
        visited = [np.zeros(len(s.pred_label), bool) for s in scenes]  # shared by all classes
        for li, label in enumerate(INSTANCE_NYU40_IDS):
            y_true, y_score = [], []
            hard_fn, has_gt, has_pred = 0, False, False
            for s, used in zip(scenes, visited):
                gts = np.flatnonzero((s.gt_label == label) & (s.gt_count >= MIN_REGION_SIZE))
                preds = np.flatnonzero(s.pred_label == label)
                has_gt |= len(gts) > 0
                has_pred |= len(preds) > 0
                cur_true, cur_score = [], []
                for g in gts:  # ground truth in id order, candidates in prediction order
                    lo, hi = s.inter_t.indptr[g], s.inter_t.indptr[g + 1]
                    matched, score = False, -np.inf
                    for p, i in zip(s.inter_t.indices[lo:hi], s.inter_t.data[lo:hi]):
                        if used[p]:
                            continue
                        if i / (s.gt_count[g] + s.pred_count[p] - i) > th:
                            c = s.pred_conf[p]
                            if matched:  # a second prediction for this ground truth: the lower score is FP
                                cur_true.append(0)
                                cur_score.append(min(score, c))
                                score = max(score, c)
                            else:
                                matched, score = True, c
                                used[p] = True
                    if matched:
                        cur_true.append(1)
                        cur_score.append(score)
                    else:
                        hard_fn += 1
                # unmatched predictions: false positives unless mostly on ignored ground truth
                for p in preds:
                    lo, hi = s.inter.indptr[p], s.inter.indptr[p + 1]
                    g, i = s.inter.indices[lo:hi], s.inter.data[lo:hi]
                    iou = i / (s.gt_count[g] + s.pred_count[p] - i)
                    if (iou > th).any():
                        continue
                    ignore = s.pred_void[p] + i[s.gt_count[g] < MIN_REGION_SIZE].sum()
                    if ignore / s.pred_count[p] <= th:
                        cur_true.append(0)
                        cur_score.append(s.pred_conf[p])
                y_true += cur_true
                y_score += cur_score
            if has_gt and has_pred:
                ap[li, oi] = _average_precision(np.asarray(y_true, float), np.asarray(y_score, float), hard_fn)
            elif has_gt:
                ap[li, oi] = 0.0
            else:
                ap[li, oi] = np.nan
    return ap


def summarize_instance(ap: np.ndarray) -> dict:
    """mAP (0.50:0.90), AP50, AP25 and per-class values, averaged as the official script does."""
    o50 = np.flatnonzero(np.isclose(OVERLAPS, 0.5))
    o25 = np.flatnonzero(np.isclose(OVERLAPS, 0.25))
    rest = np.flatnonzero(~np.isclose(OVERLAPS, 0.25))
    with np.errstate(all="ignore"), _quiet_nanmean():
        out = {"mAP": float(np.nanmean(ap[:, rest])), "AP50": float(np.nanmean(ap[:, o50])),
               "AP25": float(np.nanmean(ap[:, o25])), "per_class": {}}
        for li, name in enumerate(INSTANCE_NAMES):
            out["per_class"][name] = {"ap": float(np.average(ap[li, rest])), "ap50": float(ap[li, o50][0]),
                                      "ap25": float(ap[li, o25][0])}
    return out


class _quiet_nanmean:
    """nanmean of an all-NaN slice warns; the official script's value (NaN) is what we want."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def semantic_confusion(gt: np.ndarray, pred: np.ndarray, num: int = 41) -> np.ndarray:
    """Confusion counts [gt NYU40, pred NYU40] over vertices whose ground truth is a benchmark class.

    Predicted ids outside 0..40 are counted in a last column (they can only be false negatives).
    """
    gt, pred = np.asarray(gt, np.int64), np.asarray(pred, np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"{len(pred)} predicted values for {len(gt)} vertices")
    keep = np.isin(gt, SEMANTIC_NYU40_IDS)
    p = np.where((pred >= 0) & (pred < num), pred, num)[keep]
    return np.bincount(gt[keep] * (num + 1) + p, minlength=num * (num + 1)).reshape(num, num + 1)


def summarize_semantic(confusion: np.ndarray) -> dict:
    """Per-class IoU and their mean (NaN classes left out of the mean)."""
    ids = np.asarray(SEMANTIC_NYU40_IDS)
    tp = confusion[ids, ids].astype(np.float64)
    fn = confusion[ids].sum(1) - tp
    fp = confusion[ids][:, ids].sum(0) - tp
    denom = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(denom > 0, tp / denom, np.nan)
    with _quiet_nanmean():
        miou = float(np.nanmean(iou))
    return {"mIoU": miou, "per_class": {n: float(v) for n, v in zip(SEMANTIC_NAMES, iou)}}
