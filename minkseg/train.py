"""``minkseg train``: supervised training with resumable runs.

A run lives in ``runs/<name>/``: ``config.yaml`` (the resolved config), ``last.pth`` and
``best.pth`` (written atomically), ``val/epoch_XXXX.json`` metrics, ``tb/`` TensorBoard
scalars. ``--resume`` restores model, optimizer, scheduler, epoch and position inside the
epoch; the data order of an epoch and every augmentation are functions of (seed, epoch,
scene), so a resumed run sees exactly the batches an uninterrupted run would.

Batches are read, augmented, voxelized and collated by ``train.workers`` DataLoader
processes. Under ``torchrun`` every rank trains a disjoint shard of each epoch's
permutation (see :mod:`minkseg.distributed`) inside DistributedDataParallel; rank 0 alone
writes checkpoints, TensorBoard scalars and metrics, and validation is split over ranks.
"""

from __future__ import annotations

import copy
import pickle
import re
import time
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minkseg import distributed
from minkseg.config import Config, from_dict, save_config, to_dict
from minkseg.data.dataset import (
    EpochBatchSampler,
    PreparedScenes,
    iterate_prepared,
    resolve_workers,
    training_loader,
)
from minkseg.data.voxelize import VoxelBatch
from minkseg.device import resolve_device
from minkseg.evaluate import summarize_matches, write_json
from minkseg.inference import ground_truth_ids, predict_scene
from minkseg.losses import batch_loss
from minkseg.metrics import match_scene, semantic_confusion
from minkseg.models.model import SegmentationModel
from minkseg.proposals import recorrection_batch_loss
from scannet_tools.io import atomic_path
from scannet_tools.prepare import PREPARED_SUFFIX
from scannet_tools.splits import limited_reconstruction, resolve_split, sample_labeled


def build_model(cfg: Config) -> SegmentationModel:
    in_ch = 6 if cfg.data.use_normals else 3
    m = cfg.model
    return SegmentationModel.build(m.head, m.backbone, in_ch, m.anisotropic, m.heteroscedastic, m.embedding_unit,
                                   m.recorrector, m.offset_range)


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


class TrainingLoss(torch.nn.Module):
    """The model and its loss as one module: DistributedDataParallel must see every use of a
    parameter inside its forward, including Psi's, which the loss calls after clustering."""

    def __init__(self, model: SegmentationModel, cfg: Config):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, batch: VoxelBatch) -> dict[str, torch.Tensor]:
        return training_loss(self.model, batch, self.cfg)


# train keys that say how a run is executed, not what it computes: --resume may change them
RUNTIME_KEYS = ("workers", "prefetch")


def run_identity(config: dict) -> dict:
    """A config dict without :data:`RUNTIME_KEYS`, for comparing a resumed run with its checkpoint."""
    out = copy.deepcopy(config)
    for k in RUNTIME_KEYS:
        out.get("train", {}).pop(k, None)
    return out


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or not written by minkseg; ``str()`` is one line naming the file."""


#: Keys every minkseg checkpoint holds; a resumable one (``last.pth``) also holds RESUME_KEYS.
CHECKPOINT_KEYS = ("model", "config")
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "epoch_step", "step", "best", "torch_rng")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def _plain(value, where: str):
    """``value`` as tensors, plain containers and primitives only, so that
    ``torch.load(..., weights_only=True)`` reads it back; numpy scalars and paths are converted,
    anything else is a programming error caught at save time rather than at load time."""
    if isinstance(value, np.generic):  # first: np.float64 is also a float, yet pickles as a numpy object
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):  # Counter and OrderedDict keep their type: the unpickler allows both
        out = type(value)() if type(value) in (dict, Counter, OrderedDict) else {}
        for k, v in value.items():
            out[_plain(k, where)] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"checkpoint entry {where} is a {type(value).__name__}; store tensors, containers or primitives")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically in a form ``torch.load(..., weights_only=True)`` accepts."""
    plain = _plain(state, "state")
    with atomic_path(path) as tmp:
        torch.save(plain, tmp)


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu",
                    keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """The state dict of a minkseg checkpoint, loaded without running pickled code (weights_only).

    A missing, empty, truncated, foreign or unsafe file, or one without ``keys``, raises
    :class:`CheckpointError` with one line naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if not head:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    if head != _ZIP_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (no zip archive at the start: another format "
                              "or random bytes)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: holds a Python object{what} beyond tensors and plain containers; refused, "
                              "since loading it would run code from the file") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError... with messages of its internals
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                written_by_torch = any(n.endswith("/data.pkl") for n in z.namelist())
            if written_by_torch:  # an intact torch archive: the failure is the load (device, memory), not the file
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise CheckpointError(f"{path}: could not be loaded onto {device} ({type(e).__name__}: {first})"
                                      ) from None
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (a zip archive, but not one that torch.save "
                                  "wrote)") from None
        raise CheckpointError(f"{path}: truncated or damaged checkpoint (its zip archive is incomplete: an "
                              "interrupted copy or save?)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a minkseg checkpoint (holds a {type(state).__name__}, not a dict)")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a minkseg checkpoint (lacks {', '.join(map(repr, missing))})")
    return state


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[SegmentationModel, Config, dict]:
    """Model (eval mode) and config from a checkpoint written by :class:`Trainer`."""
    state = read_checkpoint(path, device)
    try:
        cfg = from_dict(Config, state["config"])
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: the stored config is not valid ({e})") from None
    model = build_model(cfg).to(device)
    load_weights(model, state["model"], path)
    return model.eval(), cfg, state


def load_weights(model: torch.nn.Module, weights, path: str | Path) -> None:
    """``model.load_state_dict(weights)`` with a one-line :class:`CheckpointError` when they do not fit."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: the 'model' entry is a {type(weights).__name__}, not a state dict")
    expected = model.state_dict()
    # checkpoints from before model.offset_range lack that buffer; OffsetHead supplies the old reach
    missing = [k for k in expected if k not in weights and not k.endswith(".offset_range")]
    unexpected = [k for k in weights if k not in expected]
    reshaped = [k for k in expected if k in weights and getattr(weights[k], "shape", None) != expected[k].shape]
    problems = [f"{len(names)} {what}, e.g. {names[0]}" for names, what in
                ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if names]
    if problems:
        raise CheckpointError(f"{path}: the weights do not fit the model its config builds "
                              f"({'; '.join(problems)})")
    model.load_state_dict(weights)


class Trainer:
    """Trains ``cfg`` on its labelled training scenes, or on ``dataset`` when given
    (self-training rounds); ``init_model`` is a state dict to start from (a teacher)."""

    def __init__(self, cfg: Config, resume: bool = False, device: str | None = None,
                 dataset: PreparedScenes | None = None, init_model: dict | None = None):
        self.cfg = cfg
        self.device = resolve_device(device)
        if self.device.type == "cuda":  # e.g. --device cuda:1: the pin-memory thread and ME use the current GPU
            torch.cuda.set_device(self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg).to(self.device)
        if init_model is not None:
            self.model.load_state_dict(init_model)
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
            if run_identity(state["config"]) != run_identity(to_dict(cfg)):
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
            write_json(metrics, self.run_dir / "val" / f"epoch_{self.epoch:04d}.json")
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
    prepared = Path(cfg.data.prepared)
    mine = distributed.rank_items(len(scenes)) if split_over_ranks else list(range(len(scenes)))
    records = []
    files = [prepared / f"{scenes[i]}{PREPARED_SUFFIX}" for i in mine]
    show = progress and (distributed.is_main() or not split_over_ranks)
    for i, scene in zip(mine, tqdm(iterate_prepared(files, workers), total=len(files), desc="evaluate",
                                   unit="scene", disable=not show or None)):
        pred = predict_scene(model, scene, cfg, device)
        records.append((i, match_scene(ground_truth_ids(scene), pred.instances),
                        semantic_confusion(scene["nyu40"].astype(np.int64), pred.semantic_nyu40)))
    parts = distributed.all_gather(records) if split_over_ranks else [records]
    gathered = sorted((r for part in parts for r in part), key=lambda r: r[0])
    return summarize_matches([m for _, m, _ in gathered], [c for _, _, c in gathered], ap_matrix)

