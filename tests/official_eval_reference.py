"""A literal, slow transcription of the rules of ScanNet's evaluate_semantic_instance.py and
evaluate_semantic_label.py (Python 3, dict order = insertion order), used only to check
the vectorized evaluator in minkseg.metrics. Loops and names follow the script's steps."""

from __future__ import annotations

import numpy as np

VALID = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])
NAMES = [str(v) for v in VALID]
OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION = 100


def assign(gt_ids, preds, scene):
    gt_instances = {n: [] for n in NAMES}
    for inst_id in np.unique(gt_ids):
        if inst_id == 0:
            continue
        label = inst_id // 1000
        if label in VALID:
            gt_instances[str(label)].append({"instance_id": int(inst_id), "label_id": int(label),
                                             "vert_count": int((gt_ids == inst_id).sum()),
                                             "med_dist": -1, "dist_conf": 0.0, "matched_pred": []})
    pred2gt = {n: [] for n in NAMES}
    bool_void = np.isin(gt_ids, VALID)
    for k, (mask, label_id, conf) in enumerate(preds):
        if label_id not in VALID:
            continue
        mask = np.not_equal(mask, 0)
        num = int(mask.sum())
        if num < MIN_REGION:
            continue
        pred = {"filename": f"{scene}/{k}", "label_id": label_id, "vert_count": num, "confidence": conf,
                "void_intersection": int(np.logical_and(bool_void, mask).sum())}
        matched_gt = []
        for gt in gt_instances[str(label_id)]:
            inter = int(np.logical_and(gt_ids == gt["instance_id"], mask).sum())
            if inter > 0:
                g = dict(gt, intersection=inter)
                p = dict(pred, intersection=inter)
                matched_gt.append(g)
                gt["matched_pred"].append(p)
        pred["matched_gt"] = matched_gt
        pred2gt[str(label_id)].append(pred)
    return gt_instances, pred2gt


def evaluate_matches(matches):
    ap = np.zeros((len(NAMES), len(OVERLAPS)))
    for oi, th in enumerate(OVERLAPS):
        visited = {}
        for m in matches.values():
            for n in NAMES:
                for p in m["pred"][n]:
                    visited[p["filename"]] = False
        for li, n in enumerate(NAMES):
            y_true, y_score = np.empty(0), np.empty(0)
            hard_fn, has_gt, has_pred = 0, False, False
            for m in matches.values():
                preds = m["pred"][n]
                gts = [g for g in m["gt"][n] if g["instance_id"] >= 1000 and g["vert_count"] >= MIN_REGION]
                has_gt |= bool(gts)
                has_pred |= bool(preds)
                cur_true = np.ones(len(gts))
                cur_score = np.ones(len(gts)) * -np.inf
                cur_match = np.zeros(len(gts), bool)
                for gi, g in enumerate(gts):
                    found = False
                    for p in g["matched_pred"]:
                        if visited[p["filename"]]:
                            continue
                        ov = p["intersection"] / (g["vert_count"] + p["vert_count"] - p["intersection"])
                        if ov > th:
                            c = p["confidence"]
                            if cur_match[gi]:
                                hi, lo = max(cur_score[gi], c), min(cur_score[gi], c)
                                cur_score[gi] = hi
                                cur_true = np.append(cur_true, 0)
                                cur_score = np.append(cur_score, lo)
                                cur_match = np.append(cur_match, True)
                            else:
                                found = True
                                cur_match[gi] = True
                                cur_score[gi] = c
                                visited[p["filename"]] = True
                    if not found:
                        hard_fn += 1
                cur_true, cur_score = cur_true[cur_match], cur_score[cur_match]
                for p in preds:
                    found = False
                    for g in p["matched_gt"]:
                        if g["intersection"] / (g["vert_count"] + p["vert_count"] - g["intersection"]) > th:
                            found = True
                            break
                    if not found:
                        ignore = p["void_intersection"]
                        for g in p["matched_gt"]:
                            if g["instance_id"] < 1000:
                                ignore += g["intersection"]
                            if g["vert_count"] < MIN_REGION:
                                ignore += g["intersection"]
                        if ignore / p["vert_count"] <= th:
                            cur_true = np.append(cur_true, 0)
                            cur_score = np.append(cur_score, p["confidence"])
                y_true, y_score = np.append(y_true, cur_true), np.append(y_score, cur_score)
            if has_gt and has_pred:
                order = np.argsort(y_score)
                ys, yt = y_score[order], y_true[order]
                cum = np.cumsum(yt)
                _, uidx = np.unique(ys, return_index=True)
                prec, rec = np.zeros(len(uidx) + 1), np.zeros(len(uidx) + 1)
                n_ex, n_true = len(ys), cum[-1]
                cum = np.append(cum, 0)
                for r, i in enumerate(uidx):
                    c = cum[i - 1]
                    tp, fp, fn = n_true - c, n_ex - i - (n_true - c), c + hard_fn
                    with np.errstate(all="ignore"):
                        prec[r] = np.float64(tp) / (tp + fp)
                        rec[r] = np.float64(tp) / (tp + fn)
                prec[-1], rec[-1] = 1.0, 0.0
                rc = np.append(np.append(rec[0], rec), 0.0)
                ap[li, oi] = np.dot(prec, np.convolve(rc, [-0.5, 0, 0.5], "valid"))
            elif has_gt:
                ap[li, oi] = 0.0
            else:
                ap[li, oi] = np.nan
    return ap


def instance_ap(scenes):
    """scenes: list of (gt_ids, [(mask, label_id, confidence), ...])."""
    matches = {}
    for s, (gt_ids, preds) in enumerate(scenes):
        gt, pred = assign(gt_ids, preds, s)
        matches[s] = {"gt": gt, "pred": pred}
    return evaluate_matches(matches)


def semantic_ious(pairs):
    """pairs: list of (gt nyu40 ids, predicted nyu40 ids)."""
    valid = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])
    conf = np.zeros((41, 41), np.int64)
    for gt, pred in pairs:
        for g, p in zip(gt, pred):
            if g in valid:
                conf[g][p] += 1
    out = []
    for lab in valid:
        tp = conf[lab, lab]
        fn = conf[lab, :].sum() - tp
        fp = conf[[v for v in valid if v != lab], lab].sum()
        d = tp + fp + fn
        out.append(np.nan if d == 0 else tp / d)
    return np.array(out)
