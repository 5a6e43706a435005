"""Prepared scene -> per-vertex predictions: voxelize -> network -> cluster -> devoxelize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minkseg.config import ClusterConfig, Config
from minkseg.data.voxelize import VoxelBatch, collate, input_features, voxelize
from minkseg.inference.cluster import Clusters, cluster_margin, cluster_probabilistic
from minkseg.inference.devoxelize import resolve_inverse
from minkseg.inference.instances import InstancePrediction
from minkseg.models.heads import ProbabilisticOutput
from minkseg.models.model import ModelOutput, SegmentationModel
from scannet_tools.labels import train_id_to_nyu40


@dataclass
class ScenePrediction:
    scene: str
    semantic_nyu40: np.ndarray  # (N,) per vertex
    instances: list[InstancePrediction]  # vertex masks with NYU40 labels and confidences
    uncertainty: np.ndarray | None = None  # (N,) mean predicted sigma (probabilistic head)


def cluster_output(out: ModelOutput, cfg: ClusterConfig, max_instances: int = 500) -> Clusters:
    """Greedy clustering of one scene's outputs with the head's kernel and threshold."""
    i = out.instance
    if isinstance(i, ProbabilisticOutput):
        return cluster_probabilistic(i.mu, i.log_sigma, i.score_logits, out.semantic_logits,
                                     cfg.tau_probabilistic, cfg.seed_threshold, cfg.min_size, max_instances)
    return cluster_margin(i.embedding, i.sigma_logit, i.seed_logits, out.semantic_logits,
                          cfg.tau_margin, cfg.seed_threshold, cfg.min_size, max_instances)


@dataclass
class SceneForward:
    batch: VoxelBatch  # the scene as a one-scene batch, on the model's device
    out: ModelOutput
    inverse: torch.Tensor  # (N,) voxel of every vertex (cropped-away vertices resolved)


@torch.no_grad()
def forward_scene(model: SegmentationModel, scene: dict, cfg: Config, device: torch.device | str = "cpu"
                  ) -> SceneForward:
    """Voxelize one prepared scene (no augmentation) and run the model on it in eval mode."""
    model.eval()
    xyz = scene["xyz"] - scene["xyz"].min(0)
    feats = input_features(scene["rgb"], scene["normals"] if cfg.data.use_normals else None)
    vox = voxelize(xyz, feats, voxel_size=cfg.data.voxel_size, scene=scene["scene"])
    batch = collate([vox]).to(device)
    return SceneForward(batch, model(batch), resolve_inverse(vox.inverse).to(device))


@torch.no_grad()
def predict_scene(model: SegmentationModel, scene: dict, cfg: Config, device: torch.device | str = "cpu"
                  ) -> ScenePrediction:
    """Predictions for every mesh vertex of one prepared scene (see scannet_tools.prepare)."""
    f = forward_scene(model, scene, cfg, device)
    out, inverse = f.out, f.inverse
    xyz = scene["xyz"]
    clusters = cluster_output(out, cfg.cluster)
    sem_train = out.semantic_logits.argmax(1)[inverse].cpu().numpy()
    vertex_instance = clusters.voxel_instance[inverse].cpu().numpy()
    # one pass groups vertices by instance: masks without a K x N dense matrix
    order = np.argsort(vertex_instance, kind="stable")
    bounds = np.searchsorted(vertex_instance[order], np.arange(clusters.num_instances + 1))
    labels = train_id_to_nyu40(clusters.classes.cpu().numpy())
    scores = clusters.scores.cpu().numpy()
    instances = []
    for k in range(clusters.num_instances):
        mask = np.zeros(len(xyz), bool)
        mask[order[bounds[k]:bounds[k + 1]]] = True
        instances.append(InstancePrediction(mask, int(labels[k]), float(scores[k])))
    uncertainty = None
    if isinstance(out.instance, ProbabilisticOutput):
        uncertainty = out.instance.log_sigma.exp().mean(1)[inverse].cpu().numpy()
    return ScenePrediction(scene["scene"], train_id_to_nyu40(sem_train), instances, uncertainty)


def ground_truth_ids(scene: dict) -> np.ndarray:
    """Official-format instance ground truth (nyu40 * 1000 + instance) from a prepared scene."""
    return scene["nyu40"].astype(np.int64) * 1000 + np.maximum(scene["instance"], 0)
