"""``minkseg train``: supervised training with resumable runs.

A run lives in ``runs/<name>/``: ``config.yaml`` (the resolved config), ``last.pth`` and
``best.pth`` (written atomically), ``val/epoch_XXXX.json`` metrics, ``tb/`` TensorBoard
scalars. ``--resume`` restores model, optimizer, scheduler, epoch and position inside the
epoch; the data order of an epoch and every augmentation are functions of (seed, epoch,
scene), so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minkseg.config import Config, from_dict, save_config, to_dict
from minkseg.data.dataset import PreparedScenes
from minkseg.data.voxelize import VoxelBatch, collate
from minkseg.evaluate import evaluate_scenes, write_json
from minkseg.inference import ground_truth_ids, predict_scene
from minkseg.losses import batch_loss
from minkseg.models.model import SegmentationModel
from minkseg.proposals import recorrection_batch_loss
from scannet_tools.io import atomic_path
from scannet_tools.prepare import PREPARED_SUFFIX, load_prepared
from scannet_tools.splits import limited_reconstruction, resolve_split, sample_labeled


def build_model(cfg: Config) -> SegmentationModel:
    in_ch = 6 if cfg.data.use_normals else 3
    m = cfg.model
    return SegmentationModel.build(m.head, m.backbone, in_ch, m.anisotropic, m.heteroscedastic, m.embedding_unit,
                                   m.recorrector)


def split_scenes(cfg: Config, split: str) -> list[str]:
    """Scene ids of a split that have a prepared file."""
    root = cfg.data.root or None
    names = resolve_split(split, root)
    prepared = Path(cfg.data.prepared)
    have = [s for s in names if (prepared / f"{s}{PREPARED_SUFFIX}").is_file()]
    if not have:
        raise FileNotFoundError(f"{prepared}: none of the {len(names)} scenes of split {split!r} is prepared")
    return have


def labeled_scenes(cfg: Config, train: list[str]) -> list[str]:
    """The labelled part of the training scenes: a shipped list, a seeded ratio, or all."""
    if cfg.data.label_list:
        wanted = set(limited_reconstruction(cfg.data.label_list))
        return [s for s in train if s in wanted]
    if cfg.data.label_ratio < 1.0:
        return sample_labeled(train, cfg.data.label_ratio, cfg.data.label_seed)
    return list(train)


def loss_weights(cfg: Config):
    return cfg.loss.probabilistic if cfg.model.head == "probabilistic" else cfg.loss.margin


def training_loss(model: SegmentationModel, batch: VoxelBatch, cfg: Config) -> dict[str, torch.Tensor]:
    """All loss terms of one batch; ``total`` is L_Phi (+ alpha L_Psi with the re-correction module)."""
    out = model(batch)
    terms = batch_loss(out, batch, loss_weights(cfg), cfg.loss.chunk_elements)
    if model.recorrector is not None:
        psi = recorrection_batch_loss(model, out, batch, cfg.cluster, cfg.loss.recorrect_proposals)
        terms.update(psi)
        terms["total"] = terms["total"] + cfg.loss.recorrect * sum(psi.values())
    return terms


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[SegmentationModel, Config, dict]:
    """Model (eval mode) and config from a checkpoint written by :class:`Trainer`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    state = torch.load(path, map_location=device, weights_only=False)
    cfg = from_dict(Config, state["config"])
    model = build_model(cfg).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state


class Trainer:
    """Trains ``cfg`` on its labelled training scenes, or on ``dataset`` when given
    (self-training rounds); ``init_model`` is a state dict to start from (a teacher)."""

    def __init__(self, cfg: Config, resume: bool = False, device: str | None = None,
                 dataset: PreparedScenes | None = None, init_model: dict | None = None):
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg).to(self.device)
        if init_model is not None:
            self.model.load_state_dict(init_model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.train.lr_milestones,
                                                              cfg.train.lr_gamma)
        train = split_scenes(cfg, cfg.data.train_split)
        self.train_scenes = labeled_scenes(cfg, train)
        self.val_scenes = split_scenes(cfg, cfg.data.val_split) if cfg.train.val_every else []
        self.dataset = dataset or PreparedScenes.from_dir(
            cfg.data.prepared, self.train_scenes, voxel_size=cfg.data.voxel_size, augment=cfg.data.augment,
            use_normals=cfg.data.use_normals, seed=cfg.train.seed)
        self.epoch, self.epoch_step, self.step, self.best = 0, 0, 0, -1.0
        last = self.run_dir / "last.pth"
        if resume:
            if not last.is_file():
                raise FileNotFoundError(f"{last}: nothing to resume")
            state = torch.load(last, map_location=self.device, weights_only=False)
            if state["config"] != to_dict(cfg):
                raise ValueError(f"{last}: the run was started with a different config; resume with the same one")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.epoch_step, self.step, self.best = (state["epoch"], state["epoch_step"], state["step"],
                                                                 state["best"])
            torch.set_rng_state(state["torch_rng"])
        elif last.is_file():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume or choose another name=")
        save_config(cfg, self.run_dir / "config.yaml")

    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "epoch_step": self.epoch_step,
                "step": self.step, "best": self.best, "config": to_dict(self.cfg), "torch_rng": torch.get_rng_state()}

    def batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(len(self.dataset))
        bs = self.cfg.train.batch_size
        return [order[i:i + bs].tolist() for i in range(0, len(order), bs)]

    def fit(self, max_steps: int | None = None) -> Path:
        """Train until the configured epochs are done (or ``max_steps`` more steps, for interruption)."""
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run_dir / "tb"))
        steps_this_call = 0
        cfg = self.cfg.train
        try:
            while self.epoch < cfg.epochs:
                self.dataset.epoch = self.epoch
                batches = self.batches(self.epoch)
                bar = tqdm(total=len(batches), initial=self.epoch_step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                           unit="batch", dynamic_ncols=True, disable=None)
                self.model.train()
                for b in batches[self.epoch_step:]:
                    if max_steps is not None and steps_this_call >= max_steps:
                        bar.close()
                        return self._save("last.pth")
                    t0 = time.time()
                    batch = collate([self.dataset[i] for i in b]).to(self.device)
                    terms = training_loss(self.model, batch, self.cfg)
                    self.optimizer.zero_grad(set_to_none=True)
                    terms["total"].backward()
                    self.optimizer.step()
                    self.step += 1
                    self.epoch_step += 1
                    steps_this_call += 1
                    loss = float(terms["total"].detach())
                    bar.set_postfix(loss=f"{loss:.3f}", scenes_per_s=f"{len(b) / (time.time() - t0):.2f}")
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == 1:
                        for k, v in terms.items():
                            writer.add_scalar(f"train/{k}", float(v.detach()), self.step)
                        writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
                bar.close()
                self.epoch += 1
                self.epoch_step = 0
                self.scheduler.step()
                if cfg.val_every and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs):
                    self.validate(writer)
                if self.epoch % cfg.save_every == 0 or self.epoch == cfg.epochs:
                    self._save("last.pth")
        finally:
            writer.close()
        return self.run_dir / ("best.pth" if (self.run_dir / "best.pth").is_file() else "last.pth")

    def _save(self, name: str) -> Path:
        path = self.run_dir / name
        save_checkpoint(path, self._state())
        return path

    def validate(self, writer=None) -> dict:
        metrics = evaluate_model(self.model, self.cfg, self.val_scenes, self.device)
        write_json(metrics, self.run_dir / "val" / f"epoch_{self.epoch:04d}.json")
        key = self.cfg.train.select_metric
        value = metrics["semantic"]["mIoU"] if key == "mIoU" else metrics["instance"][key]
        if writer is not None:
            writer.add_scalar("val/mAP", metrics["instance"]["mAP"], self.step)
            writer.add_scalar("val/AP50", metrics["instance"]["AP50"], self.step)
            writer.add_scalar("val/mIoU", metrics["semantic"]["mIoU"], self.step)
        inst = metrics["instance"]
        tqdm.write(f"epoch {self.epoch}: val mAP {inst['mAP']:.3f} AP50 {inst['AP50']:.3f} AP25 {inst['AP25']:.3f}"
                   f" mIoU {metrics['semantic']['mIoU']:.3f}")
        if value == value and value > self.best:  # NaN never wins
            self.best = value
            self._save("best.pth")
        return metrics


def evaluate_model(model: SegmentationModel, cfg: Config, scenes: list[str], device: torch.device | str = "cpu",
                   progress: bool = False, ap_matrix: bool = False) -> dict:
    """Benchmark metrics of a model on prepared scenes (ground truth from the prepared arrays)."""
    rows = []
    for name in tqdm(scenes, desc="evaluate", unit="scene", disable=not progress or None):
        scene = load_prepared(Path(cfg.data.prepared) / f"{name}{PREPARED_SUFFIX}")
        pred = predict_scene(model, scene, cfg, device)
        rows.append((ground_truth_ids(scene), pred.instances, scene["nyu40"].astype(np.int64), pred.semantic_nyu40))
    return evaluate_scenes(rows, ap_matrix)
