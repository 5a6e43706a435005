"""``minkseg train``: supervised training with resumable runs.

A run lives in ``runs/<name>/``: ``config.yaml`` (the resolved config), ``last.pth`` and
``best.pth`` (written atomically), ``val/epoch_XXXX.json`` metrics, ``tb/`` TensorBoard
scalars. ``--resume`` restores model, optimizer, scheduler, epoch and position inside the
epoch; the data order of an epoch and every augmentation are functions of (seed, epoch,
scene), so a resumed run sees exactly the batches an uninterrupted run would.

Batches are read, augmented, voxelized and collated by ``train.workers`` DataLoader
processes. Under ``torchrun`` every rank trains a disjoint shard of each epoch's
permutation (see :mod:`minkseg.engine.distributed`) inside DistributedDataParallel; rank 0 alone
writes checkpoints, TensorBoard scalars and metrics, and validation is split over ranks.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minkseg.config import Config, save_config, to_dict
from minkseg.data.dataset import EpochBatchSampler, PreparedScenes, resolve_workers, training_loader
from minkseg.data.splits import labeled_scenes, split_scenes
from minkseg.data.voxelize import VoxelBatch
from minkseg.device import resolve_device
from minkseg.engine import distributed
from minkseg.engine.checkpoint import (
    CHECKPOINT_KEYS,
    RESUME_KEYS,
    CheckpointError,
    load_backbone,
    load_weights,
    read_checkpoint,
    run_identity,
    save_checkpoint,
)
from minkseg.evaluation.evaluate import write_json
from minkseg.evaluation.model_eval import evaluate_model
from minkseg.inference.proposals import recorrection_batch_loss
from minkseg.losses import batch_loss
from minkseg.models.build import build_model
from minkseg.models.model import SegmentationModel


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


class TrainingLoss(torch.nn.Module):
    """The model and its loss as one module: DistributedDataParallel must see every use of a
    parameter inside its forward, including Psi's, which the loss calls after clustering."""

    def __init__(self, model: SegmentationModel, cfg: Config):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, batch: VoxelBatch) -> dict[str, torch.Tensor]:
        return training_loss(self.model, batch, self.cfg)


class Trainer:
    """Trains ``cfg`` on its labelled training scenes, or on ``dataset`` when given
    (self-training rounds); ``init_model`` is a state dict to start from (a teacher), else
    ``model.init_backbone`` names a checkpoint whose backbone a new run starts from."""

    #: the model.head values this trainer's loss trains (minkseg pretrain's subclass trains "partition")
    heads = ("probabilistic", "margin")

    def __init__(self, cfg: Config, resume: bool = False, device: str | None = None,
                 dataset: PreparedScenes | None = None, init_model: dict | None = None):
        self.cfg = cfg
        if cfg.model.head not in self.heads:
            raise ValueError(f"model.head={cfg.model.head} is not trained by this command (it trains "
                             f"{' or '.join(self.heads)}); model.head=partition is minkseg pretrain's")
        self.device = resolve_device(device)
        if self.device.type == "cuda":  # e.g. --device cuda:1: the pin-memory thread and ME use the current GPU
            torch.cuda.set_device(self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg).to(self.device)
        init_record = None
        if init_model is not None:
            self.model.load_state_dict(init_model)
        elif cfg.model.init_backbone and not resume:  # a resumed run's weights are in last.pth
            init_record = load_backbone(self.model, cfg.model.init_backbone, self.device)
        # before the optimizer is built: the conversion replaces the batch-norm modules
        self.model = distributed.sync_batchnorm(self.model, self.device)
        self.world = distributed.world_size()
        self.workers = resolve_workers(cfg.train.workers)
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
        self.epoch_scenes = 0  # scenes of the current epoch's permutation consumed by all ranks together
        last = self.run_dir / "last.pth"
        if resume:
            if not last.is_file():
                raise FileNotFoundError(f"{last}: nothing to resume")
            state = read_checkpoint(last, self.device, CHECKPOINT_KEYS + RESUME_KEYS)
            try:
                same = run_identity(state["config"]) == run_identity(to_dict(cfg))
            except CheckpointError as e:
                raise CheckpointError(f"{last}: {e}") from None
            if not same:
                raise ValueError(f"{last}: the run was started with a different config; resume with the same one")
            load_weights(self.model, state["model"], last)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.epoch_step, self.step, self.best = (state["epoch"], state["epoch_step"], state["step"],
                                                                 state["best"])
            torch.set_rng_state(state["torch_rng"].cpu())  # map_location may have moved it
            self._resume_position(state)
        elif last.is_file():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume or choose another name=")
        if distributed.is_main():
            save_config(cfg, self.run_dir / "config.yaml")
            if init_record is not None:
                write_json(init_record, self.run_dir / "init_backbone.json")

    def _resume_position(self, state: dict) -> None:
        """Where in its epoch a checkpoint stopped, in scenes, so any world size can continue it."""
        saved_world = int(state.get("world_size", 1))
        # checkpoints from before distributed training count steps of one process only
        self.epoch_scenes = int(state.get("epoch_scenes", self.epoch_step * self.cfg.train.batch_size))
        if saved_world != self.world:
            self.epoch_step = 0  # steps of another world size; the bar of this epoch restarts
            if distributed.is_main():
                bs = self.cfg.train.batch_size
                tqdm.write(f"resuming a run of world size {saved_world} with world size {self.world}: the effective "
                           f"batch changes from {saved_world * bs} to {self.world * bs} scenes, the rest of epoch "
                           f"{self.epoch + 1} continues after its first {self.epoch_scenes} scenes (exact resume "
                           f"needs the same world size; train.lr is not rescaled)")

    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "epoch_step": self.epoch_step,
                "epoch_scenes": self.epoch_scenes, "world_size": self.world,
                "step": self.step, "best": self.best, "config": to_dict(self.cfg), "torch_rng": torch.get_rng_state()}

    def batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """This rank's batches of ``epoch`` from scene ``start`` of the (seed, epoch) permutation."""
        order = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(len(self.dataset))
        return distributed.shard_batches(order, self.cfg.train.batch_size, self.world, distributed.rank(), start)

    def train_step(self, module: torch.nn.Module, batch: VoxelBatch) -> dict[str, torch.Tensor]:
        """One optimizer step on ``batch``; ``module`` is :class:`TrainingLoss`, DDP-wrapped under torchrun."""
        terms = module(batch)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        return terms

    def training_module(self) -> torch.nn.Module:
        """:class:`TrainingLoss` of the model, in DistributedDataParallel when there are several ranks.

        Psi (the re-correction module) gets no gradient on a rank whose batch yields no
        proposal, so DDP must then look for unused parameters; the heads without Psi always
        receive gradients and need no such search.
        """
        return distributed.wrap(TrainingLoss(self.model, self.cfg), self.model.recorrector is not None)

    def fit(self, max_steps: int | None = None) -> Path:
        """Train until the configured epochs are done (or ``max_steps`` more steps, for interruption)."""
        from torch.utils.tensorboard import SummaryWriter

        main = distributed.is_main()
        writer = SummaryWriter(str(self.run_dir / "tb")) if main else None
        steps_this_call = 0
        cfg = self.cfg.train
        module = self.training_module()
        sampler = EpochBatchSampler()
        loader = training_loader(self.dataset, sampler, self.workers, cfg.prefetch,
                                 pin_memory=self.device.type == "cuda")
        try:
            while self.epoch < cfg.epochs:
                self.dataset.epoch = self.epoch  # for direct indexing; the loader passes the epoch with each key
                batches = self.batches(self.epoch, self.epoch_scenes)
                # an interruption after max_steps must not load (nor prefetch) the batches after it
                todo = batches if max_steps is None else batches[:max(0, max_steps - steps_this_call)]
                sampler.set_epoch(self.epoch, todo)
                bar = tqdm(total=self.epoch_step + len(batches), initial=self.epoch_step,
                           desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch", dynamic_ncols=True,
                           disable=None if main else True)
                self.model.train()
                t0 = time.time()
                for batch in loader:
                    batch = batch.to(self.device, non_blocking=True)
                    terms = self.train_step(module, batch)
                    self.step += 1
                    self.epoch_step += 1
                    self.epoch_scenes += self.world * len(batch.scenes)
                    steps_this_call += 1
                    now = time.time()
                    bar.set_postfix(loss=f"{float(terms['total'].detach()):.3f}",
                                    scenes_per_s=f"{self.world * len(batch.scenes) / (now - t0):.2f}")
                    t0 = now
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == 1:
                        self._log_terms(writer, terms)
                bar.close()
                if len(todo) < len(batches):
                    distributed.broadcast_buffers(self.model)
                    return self._save("last.pth")
                distributed.broadcast_buffers(self.model)
                self.epoch += 1
                self.epoch_step = self.epoch_scenes = 0
                self.scheduler.step()
                if cfg.val_every and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs):
                    self.validate(writer)
                if self.epoch % cfg.save_every == 0 or self.epoch == cfg.epochs:
                    self._save("last.pth")
        finally:
            if writer is not None:
                writer.close()
        return self.run_dir / ("best.pth" if (self.run_dir / "best.pth").is_file() else "last.pth")

    def _log_terms(self, writer, terms: dict[str, torch.Tensor]) -> None:
        """Loss terms averaged over ranks (every rank must call this at the same step) to TensorBoard."""
        values = distributed.mean_over_ranks(terms)
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(f"train/{k}", v, self.step)
            writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)

    def _save(self, name: str) -> Path:
        """Rank 0 writes the checkpoint; every rank waits for it (the others may read it next)."""
        path = self.run_dir / name
        if distributed.is_main():
            save_checkpoint(path, self._state())
        distributed.barrier()
        return path

    def validate(self, writer=None) -> dict:
        """Metrics on the validation scenes, split over ranks; rank 0 writes them."""
        metrics = evaluate_model(self.model, self.cfg, self.val_scenes, self.device, workers=self.workers,
                                 split_over_ranks=True)
        key = self.cfg.train.select_metric
        value = metrics["semantic"]["mIoU"] if key == "mIoU" else metrics["instance"][key]
        if distributed.is_main():
            # the step makes learning curves comparable across batch sizes, world sizes and resumes
            write_json({**metrics, "step": self.step}, self.run_dir / "val" / f"epoch_{self.epoch:04d}.json")
            if writer is not None:
                writer.add_scalar("val/mAP", metrics["instance"]["mAP"], self.step)
                writer.add_scalar("val/AP50", metrics["instance"]["AP50"], self.step)
                writer.add_scalar("val/mIoU", metrics["semantic"]["mIoU"], self.step)
            inst = metrics["instance"]
            tqdm.write(f"epoch {self.epoch}: val mAP {inst['mAP']:.3f} AP50 {inst['AP50']:.3f} "
                       f"AP25 {inst['AP25']:.3f} mIoU {metrics['semantic']['mIoU']:.3f}")
        if value == value and value > self.best:  # NaN never wins; every rank holds the same metrics
            self.best = value
            self._save("best.pth")
        return metrics
