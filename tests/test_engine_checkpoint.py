"""minkseg.engine.checkpoint, function by function with exact values: what run_identity keeps,
what _plain converts, every message of read_checkpoint / load_weights / load_backbone, and
the record load_backbone returns. Small stand-in modules keep these fast; test_checkpoint.py
has the round trips through a real model and the CLI."""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from minkseg.config import load_config, to_dict
from minkseg.engine import checkpoint as ckpt
from minkseg.engine.checkpoint import (
    CheckpointError,
    load_backbone,
    load_checkpoint,
    load_weights,
    read_checkpoint,
    run_identity,
    save_checkpoint,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def small_config(*over: str):
    return load_config(CONFIGS / "synthetic_margin.yaml", ["model.backbone=MinkUNet14A", *over])


class Stand(torch.nn.Module):
    """A model with a ``backbone`` and a head whose ``offset_range`` buffer older checkpoints lack
    (filled in at load time with the legacy reach, as minkseg.models.heads.OffsetHead does)."""

    def __init__(self, width: int = 3):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(width, 2), torch.nn.BatchNorm1d(2))
        self.head = torch.nn.Linear(2, 1)
        self.head.register_buffer("offset_range", torch.tensor(3.0))
        self.head._register_load_state_dict_pre_hook(self._legacy_reach)

    @staticmethod
    def _legacy_reach(state, prefix, *args):
        state.setdefault(prefix + "offset_range", torch.tensor(1.0))


def filled(module: torch.nn.Module, start: float = 1.0) -> dict:
    """A state dict of ``module``'s shapes holding start, start + 1, ... (distinct from its own)."""
    out, value = {}, start
    for k, v in module.state_dict().items():
        out[k] = torch.full_like(v, value)
        value += 1
    return out


# ------------------------------------------------------------------------------ run_identity


def test_run_identity_drops_only_the_runtime_keys():
    base = to_dict(small_config())
    other = to_dict(small_config("train.workers=5", "train.prefetch=7"))
    assert run_identity(other) == run_identity(base)
    ident = run_identity(base)
    assert "workers" not in ident["train"] and "prefetch" not in ident["train"]
    assert ident["train"]["lr"] == base["train"]["lr"] and ident["train"]["seed"] == base["train"]["seed"]
    assert run_identity(to_dict(small_config("train.seed=3"))) != ident
    assert ckpt.RUNTIME_KEYS == ("workers", "prefetch")


def test_run_identity_does_not_touch_its_argument():
    config = to_dict(small_config())
    before = to_dict(small_config())
    run_identity(config)
    assert config == before


@pytest.mark.parametrize("change", ["unknown", "type", "section"])
def test_run_identity_of_an_invalid_config_is_a_checkpoint_error(change):
    config = to_dict(small_config())
    if change == "unknown":
        config["model"]["hed"] = 1
    elif change == "type":
        config["train"]["epochs"] = "many"
    else:
        config["train"] = 3
    with pytest.raises(CheckpointError, match=r"^the stored config is not valid \(.+\)$"):
        run_identity(config)


# ------------------------------------------------------------------------------ _plain / save


def test_plain_converts_numpy_scalars_and_paths_and_keeps_container_types():
    value = {"a": np.float64(0.25), "b": np.int32(3), "c": Path("x/y.pth"), "d": (1, [np.bool_(True), None]),
             "e": Counter({2: 1}), "f": OrderedDict(z=1), "g": torch.ones(2), "h": "s", "i": 2.5}
    out = ckpt._plain(value, "state")
    assert out["a"] == 0.25 and type(out["a"]) is float
    assert out["b"] == 3 and type(out["b"]) is int
    assert out["c"] == "x/y.pth"
    assert out["d"] == (1, [True, None]) and type(out["d"]) is tuple and type(out["d"][1][0]) is bool
    assert type(out["e"]) is Counter and out["e"] == {2: 1}
    assert type(out["f"]) is OrderedDict and out["f"] == {"z": 1}
    assert out["g"] is value["g"] and out["h"] == "s" and out["i"] == 2.5
    assert type(out) is dict


def test_plain_turns_other_mappings_into_dicts():
    class Custom(dict):
        pass

    out = ckpt._plain(Custom(a=np.float32(1.5)), "state")
    assert type(out) is dict and out == {"a": 1.5}


def test_plain_names_where_an_opaque_object_sits():
    with pytest.raises(TypeError, match=r"^checkpoint entry state\.opt\.groups\[1\] is a set; store tensors, "
                                        r"containers or primitives$"):
        ckpt._plain({"opt": {"groups": [1, {2}]}}, "state")
    with pytest.raises(TypeError, match=r"^checkpoint entry state\.opt is a frozenset; "):  # an opaque key
        ckpt._plain({"opt": {frozenset(): 1}}, "state")


def test_save_names_the_opaque_entry_from_the_top(tmp_path):
    with pytest.raises(TypeError, match=r"^checkpoint entry state\.extra\[0\] is a object; "):
        save_checkpoint(tmp_path / "c.pth", {"extra": [object()]})
    assert list(tmp_path.iterdir()) == []


def test_saved_file_reads_back_with_weights_only(tmp_path):
    path = tmp_path / "sub" / "c.pth"
    path.parent.mkdir()
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "config": {"p": Path("a")}, "best": np.float64(1.5)})
    back = torch.load(path, weights_only=True)
    assert back["config"] == {"p": "a"} and back["best"] == 1.5
    torch.testing.assert_close(back["model"]["w"], torch.arange(3.0), rtol=0, atol=0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pth"]  # no temporary file left


# ------------------------------------------------------------------------------ read_checkpoint


def test_read_checkpoint_returns_the_state_on_the_device(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {}, "epoch": 4})
    state = read_checkpoint(path, "meta")
    assert state["epoch"] == 4 and state["model"]["w"].device.type == "meta"
    assert read_checkpoint(str(path), keys=("epoch",))["epoch"] == 4


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint does not exist"),
    (b"", "checkpoint file is empty"),
    (b"PK", "not a PyTorch checkpoint (no zip archive at the start: another format or random bytes)"),
    (b"model: 1\n", "not a PyTorch checkpoint (no zip archive at the start: another format or random bytes)"),
])
def test_read_checkpoint_messages_for_files_that_are_no_archive(tmp_path, content, message):
    path = tmp_path / "c.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path}: {message}"


def test_read_checkpoint_always_asks_torch_for_weights_only(tmp_path, monkeypatch):
    # torch before 2.6 defaults to full unpickling: the argument must be explicit
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"model": {}, "config": {}})
    seen, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or load(*a, **k))
    read_checkpoint(path, "meta")
    assert seen == [{"map_location": "meta", "weights_only": True}]


def test_read_checkpoint_of_a_folder_says_it_does_not_exist(tmp_path):
    with pytest.raises(CheckpointError, match=r": checkpoint does not exist$"):
        read_checkpoint(tmp_path)


def test_truncated_zip_is_called_damaged(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "config": {}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == (f"{path}: truncated or damaged checkpoint (its zip archive is incomplete: an "
                              "interrupted copy or save?)")


def test_a_zip_torch_did_not_write_is_named_so(tmp_path):
    path = tmp_path / "c.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
        z.writestr("data.pkl", "not under an archive folder")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path}: not a PyTorch checkpoint (a zip archive, but not one that torch.save wrote)"


@pytest.mark.parametrize("raised, shown", [
    (RuntimeError("\n  CUDA out of memory.\nmore detail"), "RuntimeError: CUDA out of memory."),
    (KeyError(""), "KeyError: ''"),
    (EOFError(), "EOFError: "),
    (RuntimeError("x" * 300), "RuntimeError: " + "x" * 200),
])
def test_an_intact_archive_that_fails_to_load_names_the_error(tmp_path, monkeypatch, raised, shown):
    path = tmp_path / "good.pth"
    save_checkpoint(path, {"model": {}, "config": {}})

    def failing_load(*args, **kwargs):
        raise raised

    monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path, "cuda:1")
    assert str(err.value) == f"{path}: could not be loaded onto cuda:1 ({shown})"


def test_unsafe_pickle_is_refused_naming_the_global(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"model": {}, "config": {}, "best": np.float64(0.5)}, path)  # full pickle of a numpy scalar
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    prefix, suffix = f"{path}: holds a Python object (numpy", (") beyond tensors and plain containers; refused, since "
                                                              "loading it would run code from the file")
    assert msg.startswith(prefix) and msg.endswith(suffix) and " " not in msg[len(prefix):-len(suffix)]


def test_unsafe_pickle_without_a_named_global_is_refused_too(tmp_path, monkeypatch):
    import pickle

    path = tmp_path / "c.pth"
    save_checkpoint(path, {"model": {}, "config": {}})

    def refusing_load(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed")

    monkeypatch.setattr(torch, "load", refusing_load)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == (f"{path}: holds a Python object beyond tensors and plain containers; refused, since "
                              "loading it would run code from the file")


def test_read_checkpoint_names_a_non_dict_and_the_missing_keys(tmp_path):
    path = tmp_path / "c.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path}: not a minkseg checkpoint (holds a list, not a dict)"
    torch.save({"config": {}, "epoch": 1}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path, keys=("model", "config", "optimizer"))
    assert str(err.value) == f"{path}: not a minkseg checkpoint (lacks 'model', 'optimizer')"
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)  # the default keys: model and config
    assert str(err.value) == f"{path}: not a minkseg checkpoint (lacks 'model')"


# ------------------------------------------------------------------------------ load_weights


def test_load_weights_copies_every_tensor():
    model = Stand()
    weights = filled(model)
    load_weights(model, weights, "m.pth")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0, msg=k)


def test_load_weights_without_offset_range_takes_the_legacy_reach():
    model = Stand()
    weights = {k: v for k, v in filled(model).items() if not k.endswith("offset_range")}
    load_weights(model, weights, "m.pth")
    assert float(model.head.offset_range) == 1.0
    torch.testing.assert_close(model.head.weight, weights["head.weight"], rtol=0, atol=0)


def test_load_weights_counts_and_names_the_problems():
    model = Stand()
    weights = filled(model)
    del weights["head.weight"], weights["backbone.0.bias"]
    weights["extra.w"] = torch.zeros(1)
    weights["head.bias"] = torch.zeros(4)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, weights, "m.pth")
    assert str(err.value) == ("m.pth: the weights do not fit the model its config builds (2 missing, e.g. "
                              "backbone.0.bias; 1 unexpected, e.g. extra.w; 1 of another shape, e.g. head.bias)")
    with pytest.raises(CheckpointError) as err:
        load_weights(model, {**filled(model), "backbone.1.weight": [1.0, 2.0]}, "m.pth")  # no shape at all
    assert str(err.value) == ("m.pth: the weights do not fit the model its config builds (1 of another shape, e.g. "
                              "backbone.1.weight)")
    with pytest.raises(CheckpointError) as err:
        load_weights(model, [torch.zeros(1)], "m.pth")
    assert str(err.value) == "m.pth: the 'model' entry is a list, not a state dict"


# ------------------------------------------------------------------------------ load_backbone


def save_source(path: Path, weights, config=None, epoch=None) -> None:
    state = {"model": weights, "config": config if config is not None else {"name": "pre", "model": {
        "head": "partition", "backbone": "MinkUNet14A"}}}
    if epoch is not None:
        state["epoch"] = epoch
    save_checkpoint(path, state)


def test_load_backbone_copies_the_backbone_only_and_records_its_source(tmp_path):
    source = Stand()
    weights = filled(source, start=10.0)
    path = tmp_path / "pre.pth"
    save_source(path, weights, epoch=12)
    model = Stand()
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    record = load_backbone(model, path)
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, weights[f"backbone.{k}"], rtol=0, atol=0, msg=k)
    for k, v in model.head.state_dict().items():
        torch.testing.assert_close(v, head_before[k], rtol=0, atol=0, msg=k)
    assert record == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "source_run": "pre", "source_head": "partition", "source_epochs": 12}


def test_load_backbone_hashes_files_larger_than_one_read_block(tmp_path):
    source = Stand(width=200_000)  # a 1.6 MB weight: the file spans two 1 MiB blocks
    path = tmp_path / "big.pth"
    save_source(path, filled(source), config={})
    record = load_backbone(Stand(width=200_000), path)
    assert path.stat().st_size > 1 << 20
    assert record == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "source_run": None, "source_head": None, "source_epochs": None}


def test_load_backbone_refusals_name_the_file_and_the_problem(tmp_path):
    path = tmp_path / "pre.pth"
    save_source(path, [1, 2])
    with pytest.raises(CheckpointError) as err:
        load_backbone(Stand(), path)
    assert str(err.value) == f"{path}: the 'model' entry is a list, not a state dict"

    save_source(path, {"head.weight": torch.zeros(1, 2)})
    with pytest.raises(CheckpointError) as err:
        load_backbone(Stand(), path)
    assert str(err.value) == f"{path}: holds no backbone.* weights"

    other = filled(Stand(width=5))  # another input width: one weight of another shape
    save_source(path, other)
    with pytest.raises(CheckpointError) as err:
        load_backbone(Stand(), path)
    assert str(err.value) == (f"{path}: its backbone (MinkUNet14A) does not fit this model's (0 weights missing, 1 of "
                              "another shape, e.g. 0.weight); same model.backbone and data.use_normals needed")

    fewer = {k: v for k, v in filled(Stand()).items() if k != "backbone.1.running_mean"}
    save_source(path, fewer, config={"model": {}})
    with pytest.raises(CheckpointError) as err:
        load_backbone(Stand(), path)
    assert str(err.value) == (f"{path}: its backbone (?) does not fit this model's (1 weights missing, 0 of another "
                              "shape, e.g. 1.running_mean); same model.backbone and data.use_normals needed")

    more = {**filled(Stand()), "backbone.9.weight": torch.zeros(1)}
    save_source(path, more, config={"name": "x"})
    with pytest.raises(CheckpointError) as err:
        load_backbone(Stand(), path)
    assert str(err.value) == (f"{path}: its backbone (?) does not fit this model's (0 weights missing, 0 of another "
                              "shape, e.g. -); same model.backbone and data.use_normals needed")


def test_load_backbone_reads_on_the_cpu_and_reports_weights_without_a_shape(tmp_path, monkeypatch):
    path = tmp_path / "pre.pth"
    weights = filled(Stand())
    weights["backbone.0.bias"] = [1.0, 2.0]
    save_source(path, weights)
    devices, read = [], ckpt.read_checkpoint
    monkeypatch.setattr(ckpt, "read_checkpoint", lambda p, device, *a: devices.append(device) or read(p, device, *a))
    with pytest.raises(CheckpointError, match=r"\(0 weights missing, 1 of another shape, e\.g\. 0\.bias\)"):
        load_backbone(Stand(), path, device="meta")
    assert devices == ["cpu"]  # whatever the model's device: optimizer state and heads stay off the GPU


def test_load_backbone_with_a_config_that_is_no_dict(tmp_path):
    path = tmp_path / "pre.pth"
    save_source(path, {"backbone.x": torch.zeros(1)}, config=[1])
    with pytest.raises(CheckpointError, match=r"its backbone \(\?\) does not fit"):
        load_backbone(Stand(), path)
    save_source(path, filled(Stand()), config=[1], epoch=2)
    record = load_backbone(Stand(), path)
    assert (record["source_run"], record["source_head"], record["source_epochs"]) == (None, None, 2)


# ------------------------------------------------------------------------------ load_checkpoint


def test_load_checkpoint_refuses_a_pretrain_checkpoint_unless_allowed(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(ckpt, "build_model", lambda cfg: built.append(cfg) or Stand())
    cfg = small_config("model.head=partition")
    path = tmp_path / "pre.pth"
    save_checkpoint(path, {"model": filled(Stand()), "config": to_dict(cfg)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path}: a minkseg pretrain checkpoint has no segmentation heads; train from it "
                              f"with model.init_backbone={path}")
    assert built == []
    model, got, state = load_checkpoint(path, allow_pretrain=True)
    assert got == cfg and built == [cfg] and not model.training and state["config"] == to_dict(cfg)
    torch.testing.assert_close(model.head.weight, filled(Stand())["head.weight"], rtol=0, atol=0)


def test_load_checkpoint_applies_tuned_settings_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ckpt, "build_model", lambda cfg: Stand())
    cfg = small_config()
    path = tmp_path / "best.pth"
    save_checkpoint(path, {"model": filled(Stand()), "config": to_dict(cfg)})
    (tmp_path / "tuned.yaml").write_text("cluster:\n  min_size: 77\n")
    assert load_checkpoint(path)[1].cluster.min_size == 77
    assert load_checkpoint(path, tuned=False)[1].cluster.min_size == cfg.cluster.min_size != 77


def test_load_checkpoint_builds_and_loads_on_the_device(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "build_model", lambda cfg: Stand())
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"model": filled(Stand()), "config": to_dict(small_config())})
    model, _, state = load_checkpoint(path, device="meta", tuned=False)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert state["model"]["head.weight"].device.type == "meta"


def test_load_checkpoint_with_weights_that_do_not_fit_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "build_model", lambda cfg: Stand())
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"model": {"x": torch.zeros(1)}, "config": to_dict(small_config())})
    with pytest.raises(CheckpointError, match=rf"^{path}: the weights do not fit the model its config builds \(9 "
                                              r"missing, e\.g\. backbone\.0\.weight; 1 unexpected, e\.g\. x\)$"):
        load_checkpoint(path, tuned=False)


def test_load_checkpoint_with_an_invalid_config_names_the_file(tmp_path):
    path = tmp_path / "c.pth"
    config = to_dict(small_config())
    config["cluster"]["min_size"] = "big"
    save_checkpoint(path, {"model": {}, "config": config})
    with pytest.raises(CheckpointError, match=rf"^{path}: the stored config is not valid \(.+\)$"):
        load_checkpoint(path)
