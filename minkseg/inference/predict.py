"""Prepared scene -> per-vertex predictions: voxelize -> network -> cluster -> devoxelize."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from minkseg.config import ClusterConfig, Config
from minkseg.data.voxelize import VoxelBatch, collate, input_features, voxelize
from minkseg.inference.cluster import Clusters, cluster_margin, cluster_probabilistic
from minkseg.inference.devoxelize import resolve_inverse
from minkseg.inference.instances import InstancePrediction
from minkseg.inference.meanshift import meanshift_margin, meanshift_probabilistic
from minkseg.inference.scene_proposals import SceneProposals, finish_proposals
from minkseg.inference.tta import average_outputs, transform_scene, tta_poses
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
    """Clustering of one scene's outputs with the head's kernel and threshold: greedy seeds, or
    Gaussian blurring mean shift when ``cfg.grouping == "meanshift"`` (:mod:`minkseg.inference.meanshift`)."""
    i = out.instance
    if cfg.grouping == "meanshift":
        ms = dict(bandwidth=cfg.meanshift_bandwidth, iterations=cfg.meanshift_iterations, min_size=cfg.min_size,
                  max_instances=max_instances, max_anchors=cfg.meanshift_anchors)
        if isinstance(i, ProbabilisticOutput):
            return meanshift_probabilistic(i.mu, i.log_sigma, i.score_logits, out.semantic_logits,
                                           cfg.tau_probabilistic, **ms)
        return meanshift_margin(i.embedding, i.sigma_logit, i.seed_logits, out.semantic_logits, cfg.tau_margin, **ms)
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
    """Voxelize one prepared scene and run the model on it in eval mode.

    With ``cfg.cluster.tta`` (test-time augmentation, :mod:`minkseg.inference.tta`) the model
    also runs on the mirrored and rotated scene, and ``out`` holds the identity pass's
    embeddings with the semantic and seed / centre-score maps averaged over all poses.
    """
    f = forward_pass(model, scene, cfg, device)
    if not cfg.cluster.tta:
        return f
    poses = tta_poses(cfg.cluster.tta, cfg.cluster.tta_flip)[1:]  # the first is the identity
    passes = ((g.out, g.inverse) for g in (forward_pass(model, transform_scene(scene, *pose), cfg, device)
                                           for pose in poses))
    return SceneForward(f.batch, average_outputs(f.out, f.inverse, passes), f.inverse)


@torch.no_grad()
def forward_pass(model: SegmentationModel, scene: dict, cfg: Config, device: torch.device | str = "cpu"
                 ) -> SceneForward:
    """One pass without augmentation: voxelize the scene (origin at its minimum corner) and run the model."""
    model.eval()
    xyz = scene["xyz"] - scene["xyz"].min(0)
    feats = input_features(scene["rgb"], scene["normals"] if cfg.data.use_normals else None)
    vox = voxelize(xyz, feats, voxel_size=cfg.data.voxel_size, scene=scene["scene"])
    batch = collate([vox]).to(device)
    return SceneForward(batch, model(batch), resolve_inverse(vox.inverse).to(device))


@torch.no_grad()
def scene_proposals(model: SegmentationModel, f: SceneForward, scene: dict, cfg: ClusterConfig) -> SceneProposals:
    """THE instance proposals of one scene, shared by evaluate, predict and pseudo labelling.

    One clustering pass at the head's tau, or one per entry of ``cfg.taus``; then the proposal
    options of :mod:`minkseg.inference.scene_proposals` (Psi scores, superpoints, NMS,
    class hypotheses). ``f`` is only read.
    """
    if cfg.taus:
        clusters = [cluster_output(f.out, dataclasses.replace(cfg, tau_probabilistic=t, tau_margin=t))
                    for t in cfg.taus]
    else:
        clusters = [cluster_output(f.out, cfg)]
    return finish_proposals(model, f.out, f.batch, f.inverse, clusters, scene.get("superpoint"), cfg)


@torch.no_grad()
def predict_scene(model: SegmentationModel, scene: dict, cfg: Config, device: torch.device | str = "cpu"
                  ) -> ScenePrediction:
    """Predictions for every mesh vertex of one prepared scene (see scannet_tools.prepare):
    :func:`forward_scene` then :func:`predict_from_forward`."""
    return predict_from_forward(model, forward_scene(model, scene, cfg, device), scene, cfg)


@torch.no_grad()
def predict_from_forward(model: SegmentationModel, f: SceneForward, scene: dict, cfg: Config) -> ScenePrediction:
    """Everything after the network: clustering, proposal options (``cfg.cluster``), devoxelization.

    Reads ``f`` without changing it, so one cached :class:`SceneForward` can be turned into
    predictions under many cluster settings (``minkseg tune``).
    """
    out, inverse = f.out, f.inverse
    proposals = scene_proposals(model, f, scene, cfg.cluster)
    sem_train = out.semantic_logits.argmax(1)[inverse].cpu().numpy()
    labels = train_id_to_nyu40(proposals.classes)
    instances = [InstancePrediction(proposals.masks.mask(k), int(labels[k]), float(proposals.scores[k]))
                 for k in range(proposals.num_proposals)]
    uncertainty = None
    if isinstance(out.instance, ProbabilisticOutput):
        uncertainty = out.instance.log_sigma.exp().mean(1)[inverse].cpu().numpy()
    return ScenePrediction(scene["scene"], train_id_to_nyu40(sem_train), instances, uncertainty)


def ground_truth_ids(scene: dict) -> np.ndarray:
    """Official-format instance ground truth (nyu40 * 1000 + instance) from a prepared scene."""
    return scene["nyu40"].astype(np.int64) * 1000 + np.maximum(scene["instance"], 0)
