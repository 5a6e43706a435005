"""``minkseg pretrain``: self-supervised pretraining of the backbone with the ParAE pretext.

The network (``model.head: partition``, :class:`~minkseg.models.partition.PartitionModel`)
softly partitions each scene's voxels into J = ``pretrain.components`` parts; the parts
define a Gaussian mixture in closed form and the loss is the negative log-likelihood of the
voxel centres under it (:mod:`minkseg.losses.gmm`, Eqs. 5-11 of Eckart et al.). No label is
read: the scenes may be prepared with ``minkseg prepare --no-labels``.

Everything else is ``minkseg train``'s (:class:`~minkseg.engine.train.Trainer`): the run
folder ``runs/<name>/`` with config.yaml, last.pth, best.pth (lowest validation NLL) and
tb/, ``--resume``, ``--max-steps``, augmentation, DataLoader workers, torchrun. It adds
``val/epoch_XXXX.json`` with the validation NLL and ``pretrain.json`` (scenes, steps and
seconds of the last call). ``minkseg train ... model.init_backbone=runs/<name>/last.pth``
starts from the backbone.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from minkseg.config import Config
from minkseg.data.dataset import PreparedScenes, iterate_prepared
from minkseg.data.splits import labeled_scenes, split_scenes
from minkseg.data.voxelize import VoxelBatch
from minkseg.engine import distributed
from minkseg.engine.train import Trainer
from minkseg.evaluation.evaluate import write_json
from minkseg.inference.predict import forward_pass
from minkseg.losses.gmm import batch_partition_nll
from scannet_tools.prepare import prepared_path


def pretrain_scenes(cfg: Config) -> list[str]:
    """The training scenes the pretext sees: all of them, or those outside the labelled list."""
    train = split_scenes(cfg, cfg.data.train_split)
    if cfg.pretrain.scenes == "all":
        return train
    labeled = set(labeled_scenes(cfg, train))
    scenes = [s for s in train if s not in labeled]
    if not scenes:
        raise ValueError(f"pretrain.scenes=unlabeled: every scene of {cfg.data.train_split} is labelled (set "
                         "data.label_ratio < 1 or data.label_list, or pretrain.scenes=all)")
    return scenes


def covariance_floor(cfg: Config, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-dimension variance floor of the mixture: xyz in m^2 (default s^2 / 12 for voxels of width s,
    the variance of the quantisation), ``pretrain.feature_floor`` for rgb and normal components."""
    p = cfg.pretrain
    xyz = p.covariance_floor or cfg.data.voxel_size ** 2 / 12
    extra = 3 * (len(p.inputs) - 1)
    return torch.tensor([xyz] * 3 + [p.feature_floor] * extra, dtype=torch.float32, device=device)


def pretext_points(batch: VoxelBatch, cfg: Config) -> torch.Tensor:
    """What the likelihood is taken over, one row per voxel: centres in metres, then colours and
    normals as the input features hold them (``pretrain.inputs``)."""
    parts = [batch.centers]
    if "rgb" in cfg.pretrain.inputs:
        parts.append(batch.feats[:, :3])
    if "normals" in cfg.pretrain.inputs:
        parts.append(batch.feats[:, 3:6])
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def pretext_loss(model: torch.nn.Module, batch: VoxelBatch, cfg: Config, floor: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """The mean over the batch's scenes of the per-voxel NLL of each scene's mixture (Eq. 11).

    Scene sizes come from the host-side scene list, so the loss adds no device synchronisation.
    """
    logits = model(batch)
    counts = [len(s.coords) for s in batch.scenes]
    return {"total": batch_partition_nll(pretext_points(batch, cfg), logits, counts, floor)}


class PretextLoss(torch.nn.Module):
    """Model and pretext loss as one module (DistributedDataParallel wraps this, as TrainingLoss)."""

    def __init__(self, model: torch.nn.Module, cfg: Config, floor: torch.Tensor):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.register_buffer("floor", floor, persistent=False)

    def forward(self, batch: VoxelBatch) -> dict[str, torch.Tensor]:
        return pretext_loss(self.model, batch, self.cfg, self.floor)


class Pretrainer(Trainer):
    """:class:`Trainer` with the pretext loss on unlabelled scenes; validation is the mean NLL
    of the validation scenes (no augmentation), and best.pth the checkpoint of the lowest."""

    heads = ("partition",)

    def __init__(self, cfg: Config, resume: bool = False, device: str | None = None):
        if "normals" in cfg.pretrain.inputs and not cfg.data.use_normals:
            raise ValueError("pretrain.inputs holds normals: set data.use_normals=true (they come from the input "
                             "features)")
        scenes = pretrain_scenes(cfg)
        d = cfg.data
        dataset = PreparedScenes.from_dir(d.prepared, scenes, voxel_size=d.voxel_size, augment=d.augment,
                                          use_normals=d.use_normals, seed=cfg.train.seed)
        super().__init__(cfg, resume=resume, device=device, dataset=dataset)
        self.train_scenes = scenes
        self.floor = covariance_floor(cfg, self.device)
        if self.step == 0:  # best is -NLL, any real number: none yet is -inf, not train's -1
            self.best = float("-inf")

    def training_module(self) -> torch.nn.Module:
        return distributed.wrap(PretextLoss(self.model, self.cfg, self.floor), False)

    def fit(self, max_steps: int | None = None) -> Path:
        t0, steps0 = time.time(), self.step
        path = super().fit(max_steps)
        if distributed.is_main():
            write_json({"scenes": len(self.train_scenes), "epoch": self.epoch, "steps": self.step,
                        "steps_this_call": self.step - steps0, "seconds_this_call": time.time() - t0,
                        "best_val_nll": -self.best if self.best > float("-inf") else None},
                       self.run_dir / "pretrain.json")
        return path

    @torch.no_grad()
    def validation_nll(self) -> float:
        """Mean over the validation scenes of the per-voxel NLL, split over ranks."""
        mine = distributed.rank_items(len(self.val_scenes))
        files = [prepared_path(self.cfg.data.prepared, self.val_scenes[i]) for i in mine]
        values = []
        for scene in iterate_prepared(files, self.workers):
            f = forward_pass(self.model, scene, self.cfg, self.device)
            values.append(batch_partition_nll(pretext_points(f.batch, self.cfg), f.out, [len(f.batch.coords)],
                                              self.floor))
        values = torch.stack(values).tolist() if values else []  # one host sync for all scenes
        self.model.train()
        gathered = [v for part in distributed.all_gather(values) for v in part]
        return sum(gathered) / max(len(gathered), 1)

    def validate(self, writer=None) -> dict:
        nll = self.validation_nll()
        if distributed.is_main():
            write_json({"nll": nll, "scenes": len(self.val_scenes)},
                       self.run_dir / "val" / f"epoch_{self.epoch:04d}.json")
            if writer is not None:
                writer.add_scalar("val/nll", nll, self.step)
            tqdm.write(f"epoch {self.epoch}: validation NLL {nll:.4f} per voxel ({len(self.val_scenes)} scenes)")
        if nll == nll and -nll > self.best:  # NaN never wins
            self.best = -nll
            self._save("best.pth")
        return {"nll": nll}
