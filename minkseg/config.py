"""One config system: YAML files in ``configs/`` loaded into typed dataclasses, with dotted
``key=value`` overrides from the command line (``train.lr=0.01 model.head=margin``)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from minkseg.data.augment import AugmentConfig
from minkseg.losses.margin import MarginLossWeights
from minkseg.losses.probabilistic import ProbabilisticLossWeights


@dataclass
class DataConfig:
    prepared: str = "data/prepared"  # folder of minkseg prepare outputs
    root: str = ""  # raw dataset root (holds scannetv2_<split>.txt for the synthetic dataset)
    train_split: str = "train"  # train / val / test, a split file or scene ids
    val_split: str = "val"
    voxel_size: float = 0.02
    use_normals: bool = False
    # limited labels: a shipped limited-reconstruction list (1, 5, 10, 20), or a ratio and seed
    label_list: int = 0
    label_ratio: float = 1.0
    label_seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    backbone: str = "MinkUNet34C"
    head: str = "probabilistic"  # probabilistic | margin
    anisotropic: bool = True
    heteroscedastic: bool = True
    embedding_unit: float = 1.0  # metres per embedding unit (x / unit; sigmas and bandwidths in these units)
    # reach of the centre offsets in metres: mu = x + R tanh(o / R) (models.heads). Was 1 m
    # (mu = x + tanh(o), paper Table 3) before 2026-12; 3 m spans ScanNet's 5 m objects.
    # Checkpoints saved before then keep their 1-unit reach (stored in the weights).
    offset_range: float = 3.0
    # TWIST's proposal re-correction module Psi, trained with the network (L_Phi + loss.recorrect L_Psi) in
    # train and selftrain; at inference cluster.score=psi ranks proposals by it
    recorrector: bool = False
    # a minkseg pretrain checkpoint (or any minkseg checkpoint) whose backbone weights start train/selftrain;
    # the heads start fresh. The run records the path and the file's sha256 (init_backbone.json).
    init_backbone: str = ""

    def __post_init__(self) -> None:
        for key in ("embedding_unit", "offset_range"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config.model.{key}: expected a length > 0 metres, got {getattr(self, key)!r}")


@dataclass
class LossConfig:
    probabilistic: ProbabilisticLossWeights = field(default_factory=ProbabilisticLossWeights)
    margin: MarginLossWeights = field(default_factory=MarginLossWeights)
    chunk_elements: int = 1 << 22  # voxel-instance pairs per block of the pairwise terms
    recorrect: float = 1.0  # alpha of L = L_Phi + alpha L_Psi (TWIST Table 10), with model.recorrector
    recorrect_proposals: int = 32  # predicted proposals per labelled scene that train Psi (plus the true ones)


@dataclass
class ClusterConfig:
    tau_probabilistic: float = 0.35  # Sec. 3.4
    tau_margin: float = 0.5  # Neven et al.
    seed_threshold: float = 0.5
    min_size: int = 20  # voxels
    # proposal options (minkseg.inference.predict.scene_proposals), applied alike in evaluate, predict and
    # pseudo labels; the defaults: one greedy pass ranked by mean class probability x seed score, superpoint-snapped
    score: str = "cluster"  # cluster | psi: rank by Psi's class probability x predicted IoU, take its class
    psi_refine_mask: bool = False  # with score=psi: keep only the members Psi's mask accepts
    # snap each mask to the scene's superpoints (majority rule, inference.superpoints); on by default: the
    # ablation (README) found +2.5 mAP for the probabilistic and +3 for the margin head, beyond the seed spread
    superpoints: bool = True
    hypotheses: int = 1  # classes per mask: the best plus up to hypotheses-1 more with probability >= threshold
    hypothesis_threshold: float = 0.1
    taus: list[float] = field(default_factory=list)  # several kernel thresholds for the model's head ([]: one tau)
    nms_iou: float = 0.5  # with taus: drop a mask whose IoU with a higher-scored kept mask is > this
    # grouping (minkseg.inference.meanshift): greedy seeds (Sec. 3.4) or Gaussian blurring mean shift with the
    # head's kernel; meanshift_bandwidth scales that kernel's length (1: as trained), members need kernel >= tau
    grouping: str = "greedy"  # greedy | meanshift
    meanshift_bandwidth: float = 1.0
    meanshift_iterations: int = 5
    meanshift_anchors: int = 2048  # most populated embedding cells kept as weighted anchors (anchors^2 work per step)
    # test-time augmentation (minkseg.inference.tta): 0 off; n: rotations about z by 360/n degrees, each also
    # mirrored when tta_flip (2n passes); semantic and seed maps averaged, embeddings from the identity pass
    tta: int = 0
    tta_flip: bool = True

    def __post_init__(self) -> None:
        if self.score not in ("cluster", "psi"):
            raise ConfigError(f"config.cluster.score: expected cluster or psi, got {self.score!r}")
        if self.hypotheses < 1:
            raise ConfigError(f"config.cluster.hypotheses: expected >= 1, got {self.hypotheses}")
        for key in ("hypothesis_threshold", "nms_iou"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config.cluster.{key}: expected a value in [0, 1], got {getattr(self, key)!r}")
        if self.grouping not in ("greedy", "meanshift"):
            raise ConfigError(f"config.cluster.grouping: expected greedy or meanshift, got {self.grouping!r}")
        if not self.meanshift_bandwidth > 0:
            raise ConfigError(f"config.cluster.meanshift_bandwidth: expected > 0, got {self.meanshift_bandwidth!r}")
        for key in ("meanshift_iterations", "tta"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config.cluster.{key}: expected >= 0, got {getattr(self, key)!r}")
        if self.meanshift_anchors < 1:
            raise ConfigError(f"config.cluster.meanshift_anchors: expected >= 1, got {self.meanshift_anchors!r}")


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-3  # Adam, as in A.2
    weight_decay: float = 1e-4
    lr_milestones: list[int] = field(default_factory=list)  # epochs where lr *= lr_gamma
    lr_gamma: float = 0.5
    seed: int = 0
    val_every: int = 5  # epochs; 0 disables validation
    select_metric: str = "AP50"  # best checkpoint by this instance metric (mAP, AP50, AP25) or mIoU
    log_every: int = 10  # steps between TensorBoard scalars
    save_every: int = 1  # epochs between last.pth writes (the last epoch and --max-steps always write)
    threads: int = 0  # torch CPU threads (0: torch's default)
    # data-loading processes per rank (read, augment, voxelize, collate); -1: min(8, CPUs / ranks per node),
    # 0: in the training process. Not part of the run's identity: --resume may change it.
    workers: int = -1
    prefetch: int = 2  # batches each worker prepares ahead


@dataclass
class SelfTrainConfig:
    """TWIST-style self-training (minkseg selftrain); round 0 trains with ``train.epochs``."""

    rounds: int = 5  # self-training rounds after the supervised round 0
    epochs: int = 0  # student epochs per round (0: train.epochs)
    semantic_threshold: float = 0.9  # supplementary Sec. B: keep vertices with max class probability above this
    # instance certainty threshold per round 1..R (the last entry repeats); Table 9's
    # dynamic schedules are [0.1, 0.3, 0.5, 0.7, 0.9] and its reverse. Round 1 has no instances.
    certainty: list[float] = field(default_factory=lambda: [0.5])
    recorrect: bool = True  # train TWIST's re-correction module Psi and use it from round 2 on
    pseudo_weight: float = 1.0  # loss weight of a pseudo-labelled scene (a labelled one has 1)
    labeled_repeat: int = 0  # copies of each labelled scene per student epoch (0: as many as balance the unlabelled)
    init_from_teacher: bool = True  # the student starts from the teacher's weights
    min_vertices: int = 100  # drop pseudo instances smaller than this (the benchmark's minimum region)
    same_budget_baseline: bool = False  # also train supervised-only from round 0 for the students' total steps


@dataclass
class PretrainConfig:
    """Self-supervised pretraining (minkseg pretrain, model.head: partition): the ParAE pretext.

    The schedule (epochs, lr, batch size, seed, workers) is ``train``'s.
    """

    components: int = 32  # J partitions = mixture components (ParAE Sec. 4.1: J = 32)
    scenes: str = "all"  # all: every training scene (no label is read); unlabeled: those outside the labelled list
    # what the likelihood is taken over: xyz (the paper's choice, Sec. 3.1), optionally + rgb and/or normals
    inputs: list[str] = field(default_factory=lambda: ["xyz"])
    covariance_floor: float = 0.0  # m^2 added to the xyz variances; 0: voxel_size^2 / 12 (quantisation)
    feature_floor: float = 1e-3  # added to the variances of rgb ([-0.5, 0.5]) and normal components

    def __post_init__(self) -> None:
        if self.components < 1:
            raise ConfigError(f"config.pretrain.components: expected >= 1, got {self.components}")
        if self.scenes not in ("unlabeled", "all"):
            raise ConfigError(f"config.pretrain.scenes: expected unlabeled or all, got {self.scenes!r}")
        bad = [i for i in self.inputs if i not in ("xyz", "rgb", "normals")]
        if bad or "xyz" not in self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(f"config.pretrain.inputs: expected xyz plus optionally rgb and normals, each once, "
                              f"got {self.inputs!r}")
        if self.covariance_floor < 0 or not self.feature_floor > 0:
            raise ConfigError("config.pretrain: covariance_floor must be >= 0 and feature_floor > 0")


@dataclass
class Config:
    name: str = "run"
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


class ConfigError(ValueError):
    pass


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value, typ, where: str):
    """Check/convert a YAML value to the annotated field type."""
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(typ, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(typ) or (object,)
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        # YAML 1.1 (PyYAML) reads 1e-3 as a string: it wants a dot in the mantissa (1.0e-3)
        value = float(value)
    if typ in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (typ is int and isinstance(value, float)
                                                                             and not value.is_integer()):
            raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
        return typ(value)
    if typ is str:
        return str(value)
    return value


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a dict; unknown keys are errors that list the valid ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def apply_override(data: dict, override: str) -> None:
    """``a.b.c=value`` into a nested dict; the value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not key=value")
    key, raw = override.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def with_cluster_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of ``cfg`` with ``cluster.KEY=VALUE`` overrides (inference options only), validated."""
    data = to_dict(cfg)
    for o in overrides:
        if not o.startswith("cluster."):
            raise ConfigError(f"override {o!r}: only cluster.* options can change at inference")
        apply_override(data, o)
    return from_dict(Config, data)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- overrides, validated into :class:`Config`."""
    data = to_dict(Config())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        _merge(data, loaded)
    for o in overrides:
        apply_override(data, o)
    return from_dict(Config, data)


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def save_config(cfg: Config, path: str | Path) -> None:
    from scannet_tools.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
