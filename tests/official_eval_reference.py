"""A loop-by-loop Python 3 transcription of ScanNet's current 3D evaluation scripts, used only
to check the vectorized evaluator in :mod:`minkseg.evaluation.metrics` (tests and benchmarks/bench_evaluate.py).

Transcribed from ScanNet/ScanNet at HEAD 3830fce7f8b2e48ef047ef7fd76ea5f62903f51c:
``BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py`` (last changed by a3c66b4,
2018-11-21, "small bug fix": the void mask became ``not in1d(gt_ids // 1000, VALID_CLASS_IDS)``),
``BenchmarkScripts/3d_evaluation/evaluate_semantic_label.py`` and the helpers ``load_ids``,
``read_instance_prediction_file`` and ``get_instances`` of ``BenchmarkScripts/util_3d.py``.
The scripts are Python 2; the steps, their order and the float arithmetic are kept, the
code is ours. Dict order is insertion order here; the Python 2 script iterates a scene's
prediction dict in hash order, which can only matter when one prediction overlaps two
same-class instances with IoU above the threshold (possible at 0.25 only).

Run as a script it evaluates a submission folder like the two official scripts, for the
benchmark: ``python tests/official_eval_reference.py --pred SUB --gt GT --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

CLASS_LABELS = ["cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
                "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture"]
VALID_CLASS_IDS = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])
ID_TO_LABEL = {int(i): n for i, n in zip(VALID_CLASS_IDS, CLASS_LABELS)}
OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION_SIZE = 100
SEMANTIC_LABELS = ["wall", "floor"] + CLASS_LABELS
SEMANTIC_VALID_IDS = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])
UNKNOWN_ID = int(np.max(SEMANTIC_VALID_IDS)) + 1


# ---- util_3d helpers ----

def load_ids(filename):
    return np.array(open(filename).read().splitlines(), dtype=np.int64)


def read_instance_prediction_file(filename, pred_path):
    info = {}
    root = os.path.abspath(pred_path)
    for line in open(filename).read().splitlines():
        parts = line.split(" ")
        if len(parts) != 3:
            raise ValueError(f"{filename}: expected 3 fields per line")
        if os.path.isabs(parts[0]):
            raise ValueError(f"{filename}: mask path must be relative")
        mask_file = os.path.abspath(os.path.join(os.path.dirname(filename), parts[0]))
        if os.path.commonprefix([mask_file, root]) != root:
            raise ValueError(f"{filename}: {mask_file} points outside {root}")
        info[mask_file] = {"label_id": int(float(parts[1])), "conf": float(parts[2])}
    return info


def get_instances(ids):
    instances = {label: [] for label in CLASS_LABELS}
    for inst_id in np.unique(ids):
        if inst_id == 0:
            continue
        label_id = int(inst_id // 1000)
        if label_id in VALID_CLASS_IDS:
            instances[ID_TO_LABEL[label_id]].append({
                "instance_id": int(inst_id), "label_id": label_id, "vert_count": int((ids == inst_id).sum()),
                "med_dist": -1, "dist_conf": 0.0})
    return instances


# ---- evaluate_semantic_instance.py ----

def assign_instances_for_scan(gt_ids, pred_info, load_mask):
    """pred_info: {key: {"label_id", "conf"}} in file order; load_mask(key) gives the mask's integers."""
    gt_instances = get_instances(gt_ids)
    gt2pred = {label: [dict(gt, matched_pred=[]) for gt in gts] for label, gts in gt_instances.items()}
    pred2gt = {label: [] for label in CLASS_LABELS}
    num_pred_instances = 0
    bool_void = np.logical_not(np.isin(gt_ids // 1000, VALID_CLASS_IDS))
    for key in pred_info:
        label_id = int(pred_info[key]["label_id"])
        conf = pred_info[key]["conf"]
        if label_id not in ID_TO_LABEL:
            continue
        label_name = ID_TO_LABEL[label_id]
        pred_mask = load_mask(key)
        if len(pred_mask) != len(gt_ids):
            raise ValueError(f"wrong number of lines in {key}")
        pred_mask = np.not_equal(pred_mask, 0)
        num = np.count_nonzero(pred_mask)
        if num < MIN_REGION_SIZE:
            continue
        pred_instance = {"filename": key, "pred_id": num_pred_instances, "label_id": label_id, "vert_count": num,
                         "confidence": conf,
                         "void_intersection": np.count_nonzero(np.logical_and(bool_void, pred_mask))}
        matched_gt = []
        for gt_num, gt_inst in enumerate(gt2pred[label_name]):
            intersection = np.count_nonzero(np.logical_and(gt_ids == gt_inst["instance_id"], pred_mask))
            if intersection > 0:
                gt_copy = dict(gt_inst, intersection=intersection)
                pred_copy = dict(pred_instance, intersection=intersection)
                matched_gt.append(gt_copy)
                gt2pred[label_name][gt_num]["matched_pred"].append(pred_copy)
        pred_instance["matched_gt"] = matched_gt
        num_pred_instances += 1
        pred2gt[label_name].append(pred_instance)
    return gt2pred, pred2gt


def evaluate_matches(matches, empty_ap=None):
    """AP table (18 classes x overlaps). ``empty_ap``: None raises like the script when a class
    has ground truth and predictions but nothing to score (IndexError); a number is used instead."""
    ap = np.zeros((len(CLASS_LABELS), len(OVERLAPS)))
    for oi, overlap_th in enumerate(OVERLAPS):
        pred_visited = {}
        for m in matches:
            for label_name in CLASS_LABELS:
                for p in matches[m]["pred"][label_name]:
                    pred_visited[p["filename"]] = False
        for li, label_name in enumerate(CLASS_LABELS):
            y_true, y_score = np.empty(0), np.empty(0)
            hard_false_negatives = 0
            has_gt = has_pred = False
            for m in matches:
                pred_instances = matches[m]["pred"][label_name]
                gt_instances = [gt for gt in matches[m]["gt"][label_name]
                                if gt["instance_id"] >= 1000 and gt["vert_count"] >= MIN_REGION_SIZE
                                and gt["med_dist"] <= float("inf") and gt["dist_conf"] >= -float("inf")]
                if gt_instances:
                    has_gt = True
                if pred_instances:
                    has_pred = True
                cur_true = np.ones(len(gt_instances))
                cur_score = np.ones(len(gt_instances)) * -float("inf")
                cur_match = np.zeros(len(gt_instances), dtype=bool)
                for gti, gt in enumerate(gt_instances):
                    found_match = False
                    for pred in gt["matched_pred"]:
                        if pred_visited[pred["filename"]]:
                            continue
                        overlap = float(pred["intersection"]) / (
                            gt["vert_count"] + pred["vert_count"] - pred["intersection"])
                        if overlap > overlap_th:
                            confidence = pred["confidence"]
                            if cur_match[gti]:
                                max_score = max(cur_score[gti], confidence)
                                min_score = min(cur_score[gti], confidence)
                                cur_score[gti] = max_score
                                cur_true = np.append(cur_true, 0)
                                cur_score = np.append(cur_score, min_score)
                                cur_match = np.append(cur_match, True)
                            else:
                                found_match = True
                                cur_match[gti] = True
                                cur_score[gti] = confidence
                                pred_visited[pred["filename"]] = True
                    if not found_match:
                        hard_false_negatives += 1
                cur_true = cur_true[cur_match]
                cur_score = cur_score[cur_match]
                for pred in pred_instances:
                    found_gt = False
                    for gt in pred["matched_gt"]:
                        overlap = float(gt["intersection"]) / (
                            gt["vert_count"] + pred["vert_count"] - gt["intersection"])
                        if overlap > overlap_th:
                            found_gt = True
                            break
                    if not found_gt:
                        num_ignore = pred["void_intersection"]
                        for gt in pred["matched_gt"]:
                            if gt["instance_id"] < 1000:
                                num_ignore += gt["intersection"]
                            if gt["vert_count"] < MIN_REGION_SIZE or gt["med_dist"] > float("inf") \
                                    or gt["dist_conf"] < -float("inf"):
                                num_ignore += gt["intersection"]
                        proportion_ignore = float(num_ignore) / pred["vert_count"]
                        if proportion_ignore <= overlap_th:
                            cur_true = np.append(cur_true, 0)
                            cur_score = np.append(cur_score, pred["confidence"])
                y_true = np.append(y_true, cur_true)
                y_score = np.append(y_score, cur_score)
            if has_gt and has_pred:
                if len(y_score) == 0 and empty_ap is not None:
                    ap[li, oi] = empty_ap
                    continue
                score_arg_sort = np.argsort(y_score)
                y_score_sorted = y_score[score_arg_sort]
                y_true_sorted = y_true[score_arg_sort]
                y_true_sorted_cumsum = np.cumsum(y_true_sorted)
                _thresholds, unique_indices = np.unique(y_score_sorted, return_index=True)
                num_prec_recall = len(unique_indices) + 1
                num_examples = len(y_score_sorted)
                num_true_examples = y_true_sorted_cumsum[-1]  # IndexError when nothing was scored
                precision = np.zeros(num_prec_recall)
                recall = np.zeros(num_prec_recall)
                y_true_sorted_cumsum = np.append(y_true_sorted_cumsum, 0)
                for idx_res, idx_scores in enumerate(unique_indices):
                    cumsum = y_true_sorted_cumsum[idx_scores - 1]
                    tp = num_true_examples - cumsum
                    fp = num_examples - idx_scores - tp
                    fn = cumsum + hard_false_negatives
                    precision[idx_res] = float(tp) / (tp + fp)
                    recall[idx_res] = float(tp) / (tp + fn)
                precision[-1] = 1.0
                recall[-1] = 0.0
                recall_for_conv = np.append(np.append(recall[0], recall), 0.0)
                step_widths = np.convolve(recall_for_conv, [-0.5, 0, 0.5], "valid")
                ap[li, oi] = np.dot(precision, step_widths)
            elif has_gt:
                ap[li, oi] = 0.0
            else:
                ap[li, oi] = float("nan")
    return ap


def compute_averages(aps):
    o50 = np.where(np.isclose(OVERLAPS, 0.5))[0]
    o25 = np.where(np.isclose(OVERLAPS, 0.25))[0]
    all_but_25 = np.where(np.logical_not(np.isclose(OVERLAPS, 0.25)))[0]
    out = {"all_ap": np.nanmean(aps[:, all_but_25]), "all_ap_50%": np.nanmean(aps[:, o50]),
           "all_ap_25%": np.nanmean(aps[:, o25]), "classes": {}}
    for li, label_name in enumerate(CLASS_LABELS):
        out["classes"][label_name] = {"ap": np.average(aps[li, all_but_25]), "ap50%": np.average(aps[li, o50]),
                                      "ap25%": np.average(aps[li, o25])}
    return out


def instance_ap(scenes, empty_ap=None):
    """In memory: scenes = [(gt_ids, [(mask, label_id, confidence), ...]), ...] -> AP table."""
    matches = {}
    for s, (gt_ids, preds) in enumerate(scenes):
        pred_info = {f"{s}/{k}": {"label_id": lab, "conf": conf} for k, (_, lab, conf) in enumerate(preds)}
        masks = {f"{s}/{k}": m for k, (m, _, _) in enumerate(preds)}
        gt2pred, pred2gt = assign_instances_for_scan(np.asarray(gt_ids, np.int64), pred_info, masks.__getitem__)
        matches[s] = {"gt": gt2pred, "pred": pred2gt}
    return evaluate_matches(matches, empty_ap)


# ---- evaluate_semantic_label.py ----

def evaluate_scan(pred_ids, gt_ids, confusion):
    if not pred_ids.shape == gt_ids.shape:
        raise ValueError("number of predicted values does not match number of vertices")
    for gt_val, pred_val in zip(gt_ids.flatten(), pred_ids.flatten()):
        if gt_val not in SEMANTIC_VALID_IDS:
            continue
        if pred_val not in SEMANTIC_VALID_IDS:
            pred_val = UNKNOWN_ID
        confusion[gt_val][pred_val] += 1


def get_iou(label_id, confusion):
    tp = np.longlong(confusion[label_id, label_id])
    fn = np.longlong(confusion[label_id, :].sum()) - tp
    not_ignored = [lab for lab in SEMANTIC_VALID_IDS if not lab == label_id]
    fp = np.longlong(confusion[not_ignored, label_id].sum())
    denom = tp + fp + fn
    if denom == 0:
        return float("nan")  # the script then fails when it prints [0] of this value
    return float(tp) / denom


def semantic_ious(pairs):
    """In memory: pairs = [(gt nyu40 ids, predicted ids), ...] -> the 20 IoUs."""
    confusion = np.zeros((UNKNOWN_ID + 1, UNKNOWN_ID + 1), dtype=np.ulonglong)
    for gt, pred in pairs:
        evaluate_scan(np.asarray(pred, np.int64), np.asarray(gt, np.int64), confusion)
    return np.array([get_iou(lab, confusion) for lab in SEMANTIC_VALID_IDS])


# ---- both scripts on a submission folder ----

def _matching_files(pred_dir, gt_dir):
    names = [f for f in os.listdir(pred_dir) if f.endswith(".txt")]
    for f in names:
        if not os.path.isfile(os.path.join(gt_dir, f)):
            raise FileNotFoundError(f"Result file {f} does not match any gt file")
    return [(os.path.join(pred_dir, f), os.path.join(gt_dir, f)) for f in names]


def evaluate_folders(pred, gt):
    out = {}
    inst = os.path.join(pred, "instance")
    if os.path.isdir(inst):
        matches = {}
        for pred_file, gt_file in _matching_files(inst, os.path.join(gt, "instance")):
            pred_info = read_instance_prediction_file(pred_file, inst)
            gt2pred, pred2gt = assign_instances_for_scan(load_ids(gt_file), pred_info, load_ids)
            matches[os.path.abspath(gt_file)] = {"gt": gt2pred, "pred": pred2gt}
        avgs = compute_averages(evaluate_matches(matches))
        out["instance"] = {"mAP": avgs["all_ap"], "AP50": avgs["all_ap_50%"], "AP25": avgs["all_ap_25%"],
                           "per_class": {n: {"ap": v["ap"], "ap50": v["ap50%"], "ap25": v["ap25%"]}
                                         for n, v in avgs["classes"].items()}}
    sem = os.path.join(pred, "semantic")
    if os.path.isdir(sem):
        confusion = np.zeros((UNKNOWN_ID + 1, UNKNOWN_ID + 1), dtype=np.ulonglong)
        for pred_file, gt_file in _matching_files(sem, os.path.join(gt, "semantic")):
            evaluate_scan(load_ids(pred_file), load_ids(gt_file), confusion)
        ious = [get_iou(lab, confusion) for lab in SEMANTIC_VALID_IDS]
        out["semantic"] = {"mIoU": float(np.nanmean(ious)), "per_class": dict(zip(SEMANTIC_LABELS, ious))}
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    v = float(obj)
    return None if v != v else v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pred", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    with open(args.json, "w") as f:
        json.dump(_jsonable(evaluate_folders(args.pred, args.gt)), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
