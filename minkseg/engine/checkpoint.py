"""Checkpoints: writing them atomically, reading them without running pickled code, loading a model.

A checkpoint is a ``torch.save`` archive of tensors, plain containers and primitives only
(``model`` weights and the resolved ``config``, plus the optimizer, scheduler and position
of a resumable ``last.pth``), so ``torch.load(..., weights_only=True)`` reads it back.
"""

from __future__ import annotations

import copy
import pickle
import re
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import torch

from minkseg.config import Config, from_dict, to_dict
from minkseg.models.build import build_model
from minkseg.models.model import SegmentationModel
from scannet_tools.io import atomic_path

# train keys that say how a run is executed, not what it computes: --resume may change them
RUNTIME_KEYS = ("workers", "prefetch")


def run_identity(config: dict) -> dict:
    """A config dict without :data:`RUNTIME_KEYS`, for comparing a resumed run with its checkpoint.

    The dict goes through :class:`Config` first, so options added to minkseg after the
    checkpoint was written take their defaults on both sides and such a run still resumes.
    """
    try:
        out = to_dict(from_dict(Config, copy.deepcopy(config)))
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"the stored config is not valid ({e})") from None
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


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", tuned: bool = True,
                    allow_pretrain: bool = False) -> tuple[SegmentationModel, Config, dict]:
    """Model (eval mode) and config from a checkpoint written by :class:`minkseg.engine.train.Trainer`.

    A ``minkseg pretrain`` checkpoint (a backbone and a partition head, no segmentation
    heads) is refused with one line unless ``allow_pretrain`` (the viewer and ``visualize``
    show its partitions).

    With ``tuned`` the clustering settings ``minkseg tune`` wrote to ``tuned.yaml`` in the
    checkpoint's folder, if any, replace the stored ones (one line on stderr says so; a
    malformed file is a one-line :class:`~minkseg.config.ConfigError` naming it).
    """
    state = read_checkpoint(path, device)
    try:
        cfg = from_dict(Config, state["config"])
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: the stored config is not valid ({e})") from None
    if cfg.model.head == "partition" and not allow_pretrain:
        raise CheckpointError(f"{path}: a minkseg pretrain checkpoint has no segmentation heads; train from it "
                              f"with model.init_backbone={path}")
    if tuned:
        from minkseg.engine.tune import apply_tuned  # tune reads and writes checkpoints: imported when used

        cfg = apply_tuned(cfg, Path(path).parent)
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


def load_backbone(model: torch.nn.Module, path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Copy the ``backbone.*`` weights of a minkseg checkpoint (``minkseg pretrain``'s, or a trained
    model's) into ``model``, leaving its heads as they are; returns a record for the run folder:
    the path, the file's sha256 and the pretraining run's name and epochs.

    A backbone of another variant or input width is refused with one line naming the file.
    """
    import hashlib

    path = Path(path)
    state = read_checkpoint(path, "cpu")  # only the backbone goes to the model; optimizer state stays off the GPU
    weights = state["model"]
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: the 'model' entry is a {type(weights).__name__}, not a state dict")
    source = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    if not source:
        raise CheckpointError(f"{path}: holds no backbone.* weights")
    target = model.backbone.state_dict()
    missing = [k for k in target if k not in source]
    reshaped = [k for k in target if k in source and getattr(source[k], "shape", None) != target[k].shape]
    if missing or reshaped or len(source) != len(target):
        cfg = state["config"].get("model", {}) if isinstance(state["config"], dict) else {}
        raise CheckpointError(f"{path}: its backbone ({cfg.get('backbone', '?')}) does not fit this model's "
                              f"({len(missing)} weights missing, {len(reshaped)} of another shape, e.g. "
                              f"{(missing + reshaped + ['-'])[0]}); same model.backbone and data.use_normals needed")
    model.backbone.load_state_dict(source)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    config = state["config"] if isinstance(state["config"], dict) else {}
    return {"path": str(path), "sha256": digest.hexdigest(), "source_run": config.get("name"),
            "source_head": config.get("model", {}).get("head"), "source_epochs": state.get("epoch")}
