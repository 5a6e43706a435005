"""Checkpoints: written so that ``torch.load(..., weights_only=True)`` reads them, and every bad
file answered with one line naming it."""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from minkseg.cli import main
from minkseg.config import load_config, to_dict
from minkseg.engine.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from minkseg.models.build import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _config():
    return load_config(CONFIGS / "synthetic_margin.yaml", ["model.backbone=MinkUNet14A", "train.lr_milestones=[2,4]"])


def _trainer_like_state() -> tuple[dict, torch.nn.Module, torch.optim.Optimizer, object]:
    """What Trainer._state holds after one optimizer step, numpy scalar included (metrics are numpy)."""
    cfg = _config()
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.train.lr_milestones, 0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": 1, "epoch_step": 0, "step": 1, "best": np.float64(0.25), "config": to_dict(cfg),
             "torch_rng": torch.get_rng_state()}
    return state, model, opt, sched


def test_saved_state_loads_with_weights_only_and_restores_optimizer_and_scheduler(tmp_path):
    state, model, opt, sched = _trainer_like_state()
    path = tmp_path / "last.pth"
    save_checkpoint(path, state)
    back = torch.load(path, weights_only=True)
    assert back["best"] == 0.25 and type(back["best"]) is float
    assert back["config"] == to_dict(_config())
    torch.testing.assert_close(back["torch_rng"], state["torch_rng"], rtol=0, atol=0)
    # the scheduler's milestones are a Counter; a plain dict would break MultiStepLR's lookups
    assert isinstance(back["scheduler"]["milestones"], Counter)

    cfg = _config()
    model2 = build_model(cfg)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3, weight_decay=1e-4)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, cfg.train.lr_milestones, 0.1)
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    for _ in range(3):  # epochs 2..4 pass both milestones: lr must drop exactly as in the original
        sched.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(model2.state_dict()[k], v, rtol=0, atol=0, msg=k)
    first = next(iter(opt.state))
    torch.testing.assert_close(opt2.state[next(iter(opt2.state))]["exp_avg"], opt.state[first]["exp_avg"])


def test_load_checkpoint_gives_the_saved_model(tmp_path):
    state, model, _, _ = _trainer_like_state()
    save_checkpoint(tmp_path / "c.pth", state)
    loaded, cfg, back = load_checkpoint(tmp_path / "c.pth")
    assert cfg.model.head == "margin" and not loaded.training and back["step"] == 1
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_checkpoint_from_before_offset_range_loads_with_its_trained_reach(tmp_path):
    """A checkpoint written before model.offset_range existed (no buffer, no config key) loads
    through load_checkpoint with reach 1, as OffsetHead documents."""
    state, model, _, _ = _trainer_like_state()
    state["model"] = {k: v for k, v in state["model"].items() if not k.endswith("offset_range")}
    state["config"]["model"].pop("offset_range")
    save_checkpoint(tmp_path / "old.pth", state)
    loaded, _, _ = load_checkpoint(tmp_path / "old.pth")
    reaches = [float(b) for n, b in loaded.named_buffers() if n.endswith("offset_range")]
    assert reaches == [1.0]


def test_save_refuses_what_weights_only_could_not_read(tmp_path):
    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"state\.extra\[1\] is a Opaque"):
        save_checkpoint(tmp_path / "c.pth", {"extra": [1, Opaque()]})
    assert not (tmp_path / "c.pth").exists()


def _minimal(tmp_path) -> dict:
    cfg = _config()
    return {"model": build_model(cfg).state_dict(), "config": to_dict(cfg)}


def truncated(path: Path, tmp_path: Path) -> None:
    save_checkpoint(path, _minimal(tmp_path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path: Path, tmp_path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def empty(path: Path, tmp_path: Path) -> None:
    path.write_bytes(b"")


def text_file(path: Path, tmp_path: Path) -> None:
    path.write_text("model: not really\n")


def zip_of_other_things(path: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")


def not_a_dict(path: Path, tmp_path: Path) -> None:
    torch.save([torch.zeros(3)], path)


def missing_keys(path: Path, tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, path)


def unsafe_object(path: Path, tmp_path: Path) -> None:
    state = _minimal(tmp_path)
    state["best"] = np.float64(0.5)  # full pickle: unpickling it runs numpy's reconstruction code
    torch.save(state, path)


def wrong_weights(path: Path, tmp_path: Path) -> None:
    state = _minimal(tmp_path)
    state["model"] = {"conv.weight": torch.zeros(2)}
    torch.save(state, path)


def reshaped_weights(path: Path, tmp_path: Path) -> None:
    state = _minimal(tmp_path)
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(7, 7)
    torch.save(state, path)


def bad_config(path: Path, tmp_path: Path) -> None:
    state = _minimal(tmp_path)
    state["config"]["model"]["hed"] = "margin"
    torch.save(state, path)


BAD = {
    truncated: "truncated or damaged checkpoint",
    random_bytes: "not a PyTorch checkpoint",
    empty: "checkpoint file is empty",
    text_file: "not a PyTorch checkpoint",
    zip_of_other_things: "a zip archive, but not one that torch.save wrote",
    not_a_dict: "not a minkseg checkpoint (holds a list",
    missing_keys: "not a minkseg checkpoint (lacks 'model', 'config')",
    unsafe_object: "beyond tensors and plain containers",
    wrong_weights: "do not fit the model its config builds (",
    reshaped_weights: "(1 of another shape, e.g. backbone.",
    bad_config: "the stored config is not valid",
}


@pytest.mark.parametrize("make", list(BAD), ids=[f.__name__ for f in BAD])
def test_bad_checkpoint_is_one_line_naming_the_file(make, tmp_path, capsys):
    path = tmp_path / "bad.pth"
    make(path, tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and BAD[make] in msg and "\n" not in msg

    rc = main(["evaluate", "--checkpoint", str(path), "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 2 and out.err == f"error: {msg}\n"


def test_a_good_checkpoint_that_fails_to_load_is_not_called_damaged(tmp_path, monkeypatch):
    """A device or memory error while loading an intact file names that error, not the file's format."""
    path = tmp_path / "good.pth"
    save_checkpoint(path, _minimal(tmp_path))

    def failing_load(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore torch detail")

    monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path, "cpu")
    msg = str(err.value)
    assert msg == f"{path}: could not be loaded onto cpu (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB)"


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    path = tmp_path / "nowhere" / "best.pth"
    with pytest.raises(CheckpointError, match="checkpoint does not exist"):
        read_checkpoint(path)
    assert main(["predict", "--checkpoint", str(path), "--scans", str(tmp_path), "--out", str(tmp_path / "s"),
                 "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"error: {path}: checkpoint does not exist\n"


def test_resume_needs_the_resume_keys(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(path, _minimal(tmp_path))
    with pytest.raises(CheckpointError, match="lacks 'optimizer', 'scheduler', 'epoch'"):
        read_checkpoint(path, keys=("model", "config", "optimizer", "scheduler", "epoch"))


def test_every_torch_load_in_the_project_is_weights_only():
    root = Path(__file__).resolve().parents[1]
    call = re.compile(r"torch\.load\((?:[^()]|\([^()]*\))*\)")  # arguments may hold one level of calls
    calls = [(str(path.relative_to(root)), m.group(0))
             for folder in ("minkseg", "scannet_tools", "tests", "benchmarks", "scripts") if (root / folder).is_dir()
             for path in sorted((root / folder).rglob("*.py")) for m in call.finditer(path.read_text())]
    assert len(calls) >= 2, "the scan found no torch.load: the pattern is broken"
    assert [(p, c) for p, c in calls if "weights_only=True" not in c] == []


def test_run_identity_fills_options_added_after_the_checkpoint():
    """A checkpoint written before a release that adds config options (cluster.taus, model.init_backbone,
    pretrain) still resumes: missing keys take their defaults; a changed value still differs."""
    from minkseg.engine.checkpoint import run_identity

    current = to_dict(_config())
    old = to_dict(_config())
    del old["cluster"]["taus"], old["model"]["init_backbone"], old["pretrain"]
    old["train"]["workers"] = 7  # a runtime key: never part of the identity
    assert run_identity(old) == run_identity(current)
    old["cluster"]["min_size"] += 1
    assert run_identity(old) != run_identity(current)
