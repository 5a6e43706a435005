"""Benchmark metrics of a model (a checkpoint in memory) on prepared scenes.

Apart from :mod:`minkseg.evaluation.evaluate` so that evaluating benchmark-format files
imports neither torch nor MinkowskiEngine.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from minkseg.config import Config
from minkseg.data.dataset import iterate_prepared
from minkseg.engine import distributed  # the one upward import: see tests/test_layout.py
from minkseg.evaluation.evaluate import summarize_matches
from minkseg.evaluation.metrics import match_scene, semantic_confusion
from minkseg.inference.predict import ground_truth_ids, predict_scene
from minkseg.models.model import SegmentationModel
from scannet_tools.prepare import prepared_path


def evaluate_model(model: SegmentationModel, cfg: Config, scenes: list[str], device: torch.device | str = "cpu",
                   progress: bool = False, ap_matrix: bool = False, workers: int = 0,
                   split_over_ranks: bool = False) -> dict:
    """Benchmark metrics of a model on prepared scenes (ground truth from the prepared arrays).

    Scenes are read ahead by ``workers`` processes. With ``split_over_ranks`` (every rank
    of a torchrun job must then call this) each rank predicts every world-th scene and
    reduces it to its matches with the ground truth and its confusion matrix; those
    compact per-scene records are gathered, put back in scene order, and every rank
    computes the same metrics from all of them.
    """
    mine = distributed.rank_items(len(scenes)) if split_over_ranks else list(range(len(scenes)))
    records = []
    files = [prepared_path(cfg.data.prepared, scenes[i]) for i in mine]
    show = progress and (distributed.is_main() or not split_over_ranks)
    for i, scene in zip(mine, tqdm(iterate_prepared(files, workers), total=len(files), desc="evaluate",
                                   unit="scene", disable=not show or None)):
        pred = predict_scene(model, scene, cfg, device)
        records.append((i, match_scene(ground_truth_ids(scene), pred.instances),
                        semantic_confusion(scene["nyu40"].astype(np.int64), pred.semantic_nyu40)))
    parts = distributed.all_gather(records) if split_over_ranks else [records]
    gathered = sorted((r for part in parts for r in part), key=lambda r: r[0])
    return summarize_matches([m for _, m, _ in gathered], [c for _, _, c in gathered], ap_matrix)
