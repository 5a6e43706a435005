"""The ``minkseg`` command line (minkseg.cli): which entry function each subcommand calls with which
arguments, what it prints and its exit status. The entry functions are replaced by recorders (each
has its own tests), so every subcommand runs in milliseconds; the clock is a fake that advances
2.5 s per reading, so the printed durations are known."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import minkseg.cli as cli
import minkseg.config
import minkseg.data.splits
import minkseg.demo
import minkseg.engine.checkpoint
import minkseg.engine.distributed
import minkseg.engine.pretrain
import minkseg.engine.selftrain
import minkseg.engine.train
import minkseg.engine.tune
import minkseg.evaluation.evaluate
import minkseg.evaluation.model_eval
import minkseg.evaluation.oracle
import minkseg.evaluation.submission
import minkseg.viz.compare
import minkseg.viz.view
import minkseg.viz.visualize
import scannet_tools.export_gt
import scannet_tools.labels
import scannet_tools.prepare
import scannet_tools.reader
import scannet_tools.splits
import scannet_tools.synth
from minkseg.engine.tune import TrialRow, TuneResult
from minkseg.evaluation.submission import ValidationReport
from scannet_tools.prepare import BatchReport
from scannet_tools.reader import SceneError

CPU = torch.device("cpu")


class Calls:
    """Replaces entry functions by recorders; ``log`` lists (name, args, kwargs) in call order."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.log: list[tuple[str, tuple, dict]] = []

    def patch(self, module, name: str, result=None, effect=None) -> None:
        """``module.name`` records its call and returns ``result`` (or ``effect(*args, **kwargs)``)."""
        def record(*args, **kwargs):
            self.log.append((name, args, kwargs))
            return effect(*args, **kwargs) if effect is not None else result
        self.monkeypatch.setattr(module, name, record)

    def __getitem__(self, name: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for n, args, kwargs in self.log if n == name]

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.log]


@pytest.fixture
def calls(monkeypatch) -> Calls:
    clock = iter(100.0 + 2.5 * i for i in range(1000))
    monkeypatch.setattr(cli, "time", SimpleNamespace(time=lambda: next(clock)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device auto is the CPU
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return Calls(monkeypatch)


@pytest.fixture
def flushed(monkeypatch) -> list[str]:
    """The lines cli prints with flush=True: those that must show before a long step's own output (the
    trainer's, the server's) under torchrun or a pipe."""
    lines: list[str] = []

    def print_and_record(*args, **kwargs):
        if kwargs.get("flush") is True:
            lines.append(" ".join(str(a) for a in args))
        print(*args, **kwargs)

    monkeypatch.setattr(cli, "print", print_and_record, raising=False)
    return lines


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------------------- main


def test_no_command_prints_the_help_and_fails(capsys):
    rc, out, err = run([], capsys)
    assert rc == 2 and out.startswith("usage: minkseg [-h] [--version] COMMAND ...") and err == ""
    assert "typical use on a real ScanNet v2 download" in out


def test_version(capsys):
    from minkseg import __version__

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"minkseg {__version__}\n"


@pytest.mark.parametrize("error", [ValueError("bad value"), FileNotFoundError("no file"),
                                   FileExistsError("exists"), minkseg.config.ConfigError("bad key")])
def test_user_errors_are_one_line_and_status_2(error, calls, capsys):
    calls.patch(scannet_tools.synth, "synthesize", effect=lambda *a, **k: (_ for _ in ()).throw(error))
    rc, out, err = run(["synth", "--out", "x"], capsys)
    assert (rc, out, err) == (2, "", f"error: {error}\n")


def test_an_interrupt_is_status_130(calls, capsys):
    calls.patch(scannet_tools.synth, "synthesize", effect=lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run(["synth", "--out", "x"], capsys) == (130, "", "interrupted\n")


def test_other_exceptions_are_not_swallowed(calls, capsys):
    calls.patch(scannet_tools.synth, "synthesize", effect=lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        cli.main(["synth", "--out", "x"])


def test_a_command_returning_none_is_status_0(calls, capsys, monkeypatch):
    monkeypatch.setattr(cli, "cmd_check", lambda args: None)
    monkeypatch.setattr(cli, "build_parser", _parser_with_func("check", cli.cmd_check))
    assert cli.main(["check"]) == 0


def _parser_with_func(command: str, func):
    build = cli.build_parser

    def patched():
        parser = build()
        action = next(a for a in parser._actions if a.dest == "command")
        action.choices[command].set_defaults(func=func)
        return parser
    return patched


# ------------------------------------------------------------------------------ data commands


def test_synth(calls, capsys):
    calls.patch(scannet_tools.synth, "synthesize", ["scene0000_00", "scene0001_00"])
    rc, out, _ = run(["synth", "--out", "raw", "--scenes", "2", "--seed", "4", "--small", "--vertices", "900"],
                     capsys)
    assert rc == 0
    assert calls["synthesize"] == [((Path("raw"), 2), {"seed": 4, "small": True, "target_vertices": 900})]
    assert out == ("wrote 2 scenes to raw/scans in 2.5 s (label table, scannetv2_train.txt and scannetv2_val.txt "
                   "beside it)\n")


def test_synth_defaults(calls, capsys):
    calls.patch(scannet_tools.synth, "synthesize", [])
    assert run(["synth", "--out", "raw"], capsys)[0] == 0
    assert calls["synthesize"] == [((Path("raw"), 8), {"seed": 0, "small": False, "target_vertices": None})]


def _report(done: int = 2, failed: dict | None = None, vertices: int = 5000) -> BatchReport:
    return BatchReport(done=[f"scene{i:04d}_00" for i in range(done)], failed=failed or {}, vertices=vertices)


def test_prepare_with_every_option(calls, capsys):
    calls.patch(scannet_tools.labels, "find_label_table", Path("table.tsv"))
    calls.patch(scannet_tools.splits, "resolve_split", ["scene0001_00"])
    calls.patch(scannet_tools.prepare, "prepare_all", _report())
    rc, out, _ = run(["prepare", "--scans", "raw/scans", "--out", "prep", "--labels", "t.tsv", "--workers", "3",
                      "--split", "val", "--overwrite", "--unknown-category", "otherprop", "--align"], capsys)
    assert rc == 0
    assert calls["find_label_table"] == [((Path("raw/scans"), Path("t.tsv")), {})]
    assert calls["resolve_split"] == [(("val", Path("raw")), {})]  # split files live beside scans/
    assert calls["prepare_all"] == [((Path("raw/scans"), Path("prep"), Path("table.tsv")), {
        "workers": 3, "align": True, "scenes": ["scene0001_00"], "overwrite": True, "unknown": "otherprop"})]
    # 5000 vertices in 2.5 s
    assert out == ("prepared 2, skipped 0 (already done), failed 0\n"
                   "5000 vertices in 2.5 s (2,000 vertices/s) -> prep\n")


def test_prepare_faster_than_the_clock_still_prints_a_rate(calls, capsys, monkeypatch):
    monkeypatch.setattr(cli, "time", SimpleNamespace(time=lambda: 100.0))  # no time passes
    calls.patch(scannet_tools.labels, "find_label_table", Path("table.tsv"))
    calls.patch(scannet_tools.prepare, "prepare_all", _report(vertices=3))
    rc, out, _ = run(["prepare", "--scans", "raw/scans", "--out", "prep"], capsys)
    # the elapsed time is floored at 1e-9 s: 3 vertices / 1e-9 s
    assert rc == 0 and out.endswith("\n3 vertices in 0.0 s (3,000,000,000 vertices/s) -> prep\n")


def test_prepare_defaults_without_labels_and_a_failure(calls, capsys):
    calls.patch(scannet_tools.labels, "find_label_table", Path("table.tsv"))
    calls.patch(scannet_tools.splits, "resolve_split", [])
    calls.patch(scannet_tools.prepare, "prepare_all", _report(done=0, failed={"s": "s: mesh.ply: broken"}))
    rc, out, _ = run(["prepare", "--scans", "raw/scans", "--out", "prep", "--no-labels"], capsys)
    assert rc == 1
    assert calls.names == ["prepare_all"]  # no label table looked up, no split resolved
    assert calls["prepare_all"] == [((Path("raw/scans"), Path("prep"), None), {
        "workers": 1, "align": False, "scenes": None, "overwrite": False, "unknown": "error"})]
    assert out == "prepared 0, skipped 0 (already done), failed 1\n  FAILED s: mesh.ply: broken\n"


def test_export_gt(calls, capsys):
    calls.patch(scannet_tools.labels, "find_label_table", Path("table.tsv"))
    calls.patch(scannet_tools.splits, "resolve_split", ["a", "b"])
    calls.patch(scannet_tools.export_gt, "export_gt_all", _report(done=2))
    rc, out, _ = run(["export-gt", "--scans", "raw/scans", "--out", "gt", "--workers", "2", "--split", "a,b",
                      "--unknown-category", "ignore", "--overwrite"], capsys)
    assert rc == 0
    assert calls["find_label_table"] == [((Path("raw/scans"), None), {})]
    assert calls["resolve_split"] == [(("a,b", Path("raw")), {})]
    assert calls["export_gt_all"] == [((Path("raw/scans"), Path("gt"), Path("table.tsv")), {
        "workers": 2, "scenes": ["a", "b"], "overwrite": True, "unknown": "ignore"})]
    assert out == "exported 2, skipped 0 (already done), failed 0\nground truth in gt/semantic and gt/instance\n"


def test_export_gt_defaults_and_a_failure(calls, capsys):
    calls.patch(scannet_tools.labels, "find_label_table", Path("table.tsv"))
    calls.patch(scannet_tools.export_gt, "export_gt_all", _report(done=1, failed={"x": "x: bad"}))
    rc, out, _ = run(["export-gt", "--scans", "raw/scans", "--out", "gt", "--labels", "l.tsv"], capsys)
    assert rc == 1
    assert calls["find_label_table"] == [((Path("raw/scans"), Path("l.tsv")), {})]
    assert calls["export_gt_all"][0][1] == {"workers": 1, "scenes": None, "overwrite": False, "unknown": "error"}


def test_check(calls, capsys):
    import minkseg.check

    calls.patch(minkseg.check, "self_check", "ok: all good")
    assert run(["check", "--device", "cuda:1"], capsys) == (0, "ok: all good\n", "")
    assert calls["self_check"] == [(("cuda:1",), {})]
    run(["check"], capsys)
    assert calls["self_check"][-1] == (("auto",), {})


def test_demo(calls, capsys):
    calls.patch(minkseg.demo, "run_demo", 0)
    assert run(["demo", "--out", "d", "--scenes", "3", "--seed", "2", "--small", "--epochs", "5", "--device", "cpu",
                "--seeds", "0, 1,,2"], capsys)[0] == 0
    assert calls["run_demo"] == [((Path("d"),), {"scenes": 3, "seed": 2, "small": True, "epochs": 5,
                                                 "device": "cpu", "seeds": [0, 1, 2]})]
    calls.patch(minkseg.demo, "run_demo", 3)
    assert run(["demo"], capsys)[0] == 3  # run_demo's status is the command's
    assert calls["run_demo"][-1] == ((Path("demo_out"),), {"scenes": 8, "seed": 0, "small": False, "epochs": None,
                                                           "device": "auto", "seeds": None})


# --------------------------------------------------------------------------- training commands


class _Trainer:
    """Stands in for Trainer and Pretrainer: records how it was built and fitted."""

    made: list = []

    def __init__(self, cfg, resume, device):
        self.cfg, self.resume, self.device = cfg, resume, device
        self.world, self.workers = 2, 3
        self.train_scenes, self.val_scenes = ["a", "b", "c"], ["d"]
        self.max_steps = "not fitted"
        _Trainer.made.append(self)

    def fit(self, max_steps=None):
        self.max_steps = max_steps
        return Path("runs/x/last.pth")


@pytest.fixture
def single_process(monkeypatch) -> list:
    """The process group as one process (rank 0, or another rank when the test says so)."""
    groups: list = []
    monkeypatch.setattr(_Trainer, "made", [])

    @contextlib.contextmanager
    def process_group(device):
        groups.append(device)
        yield False

    monkeypatch.setattr(minkseg.engine.distributed, "process_group", process_group)
    monkeypatch.setattr(minkseg.engine.distributed, "is_main", lambda: True)
    monkeypatch.setattr(minkseg.engine.distributed, "world_size", lambda: 1)
    return groups


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("name: fromfile\nmodel:\n  backbone: MinkUNet14A\n")
    return path


def test_train(calls, capsys, single_process, config_file, monkeypatch, flushed):
    monkeypatch.setattr(minkseg.engine.train, "Trainer", _Trainer)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    rc, out, _ = run(["train", config_file, "name=t1", "train.batch_size=5", "--max-steps", "7", "--resume",
                      "--device", "cpu"], capsys)
    assert rc == 0
    (trainer,) = _Trainer.made
    assert (trainer.cfg.name, trainer.cfg.train.batch_size, trainer.cfg.model.backbone) == ("t1", 5, "MinkUNet14A")
    assert (trainer.resume, trainer.device, trainer.max_steps) == (True, CPU, 7)
    assert single_process == [CPU]
    assert os.environ["OMP_NUM_THREADS"] == "4"  # only --deterministic pins it
    assert out == ("run runs/t1: world size 2 (effective batch 2 x 5), 3 data workers per rank, 3 labelled "
                   "training scenes, 1 validation scenes, MinkUNet14A + probabilistic head on cpu\n"
                   "checkpoint: runs/x/last.pth\n")
    assert flushed == [out.splitlines()[0]]


def test_train_defaults_deterministic_and_recorrector(calls, capsys, single_process, config_file, monkeypatch):
    monkeypatch.setattr(minkseg.engine.train, "Trainer", _Trainer)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    rc, out, _ = run(["train", config_file, "model.recorrector=true", "--deterministic"], capsys)
    assert rc == 0 and os.environ["OMP_NUM_THREADS"] == "1"
    (trainer,) = _Trainer.made
    assert (trainer.cfg.name, trainer.resume, trainer.device, trainer.max_steps) == ("fromfile", False, CPU, None)
    assert out.splitlines()[0].endswith("MinkUNet14A + probabilistic head + re-correction module Psi on cpu")


def test_train_prints_only_on_rank_0(calls, capsys, single_process, config_file, monkeypatch):
    monkeypatch.setattr(minkseg.engine.train, "Trainer", _Trainer)
    monkeypatch.setattr(minkseg.engine.distributed, "is_main", lambda: False)
    assert run(["train", config_file], capsys) == (0, "", "")
    assert _Trainer.made[0].max_steps is None  # it still trains


def test_pretrain(calls, capsys, single_process, config_file, monkeypatch, flushed):
    monkeypatch.setattr(minkseg.engine.pretrain, "Pretrainer", _Trainer)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    rc, out, _ = run(["pretrain", config_file, "model.head=partition", "pretrain.inputs=[xyz, rgb]",
                      "pretrain.components=8", "--max-steps", "3", "--deterministic"], capsys)
    assert rc == 0 and os.environ["OMP_NUM_THREADS"] == "1"
    (trainer,) = _Trainer.made
    assert (trainer.resume, trainer.max_steps) == (False, 3)
    assert out == ("pretrain runs/fromfile: world size 2, 3 data workers per rank, 3 training scenes (all), no labels "
                   "read, MinkUNet14A + 8-way partition head, likelihood over xyz+rgb, on cpu; fine-tune from its "
                   "checkpoint with: minkseg train CONFIG model.init_backbone=CHECKPOINT\n"
                   "checkpoint: runs/x/last.pth\n")
    assert flushed == [out.splitlines()[0]]


def test_selftrain(calls, capsys, single_process, config_file, monkeypatch, flushed):
    made = []

    class SelfTraining:
        def __init__(self, cfg, resume, device):
            made.append((cfg.name, cfg.data.label_ratio, resume, device))

        def run(self):
            made.append("ran")

    monkeypatch.setattr(minkseg.engine.selftrain, "SelfTraining", SelfTraining)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    rc, out, _ = run(["selftrain", config_file, "data.label_ratio=0.25", "--resume", "--deterministic"], capsys)
    assert rc == 0 and os.environ["OMP_NUM_THREADS"] == "1"
    assert made == [("fromfile", 0.25, True, CPU), "ran"] and single_process == [CPU]
    assert out == ("self-training runs/fromfile: world size 1 on cpu\n"
                   "summary: runs/fromfile/summary.md; comparison: runs/fromfile/compare/report.md\n")
    assert flushed == ["self-training runs/fromfile: world size 1 on cpu"]
    monkeypatch.setattr(minkseg.engine.distributed, "is_main", lambda: False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert run(["selftrain", config_file], capsys) == (0, "", "")
    assert made[-2] == ("fromfile", 1.0, False, CPU) and os.environ["OMP_NUM_THREADS"] == "4"


def test_a_bad_override_is_one_line(calls, capsys, single_process, config_file, monkeypatch):
    monkeypatch.setattr(minkseg.engine.train, "Trainer", _Trainer)
    rc, out, err = run(["train", config_file, "train.epochs=many"], capsys)
    assert (rc, out, err) == (2, "", "error: config.train.epochs: expected int, got 'many'\n")
    assert _Trainer.made == []


# --------------------------------------------------------------------------------- evaluation


def _metrics_fakes(calls: Calls) -> None:
    calls.patch(minkseg.evaluation.evaluate, "format_metrics", effect=lambda m: f"METRICS {sorted(m)}")
    calls.patch(minkseg.evaluation.evaluate, "write_json")
    calls.patch(minkseg.evaluation.oracle, "format_ceiling", effect=lambda c: f"CEILING {c}")


def test_evaluate_files(calls, capsys, tmp_path):
    _metrics_fakes(calls)
    calls.patch(minkseg.evaluation.evaluate, "evaluate_dirs", {"instance": 1})
    calls.patch(minkseg.evaluation.evaluate, "missing_scenes_line", "2 scenes missing")
    rc, out, err = run(["evaluate", "--pred", "p", "--gt", "g", "--workers", "3", "--json", tmp_path / "m.json"],
                       capsys)
    assert rc == 0 and err == "2 scenes missing\n"
    assert calls["evaluate_dirs"] == [((Path("p"), Path("g")), {"workers": 3})]
    assert calls["missing_scenes_line"] == [(({"instance": 1},), {})]
    assert calls["write_json"] == [(({"instance": 1}, tmp_path / "m.json"), {})]
    assert out == f"METRICS ['instance']\nevaluated in 2.5 s\nmetrics written to {tmp_path / 'm.json'}\n"


def test_evaluate_files_defaults_without_missing_scenes(calls, capsys):
    _metrics_fakes(calls)
    calls.patch(minkseg.evaluation.evaluate, "evaluate_dirs", {"semantic": 1})
    calls.patch(minkseg.evaluation.evaluate, "missing_scenes_line", "")
    rc, out, err = run(["evaluate", "--pred", "p", "--gt", "g"], capsys)
    assert (rc, err) == (0, "") and calls["evaluate_dirs"][0][1] == {"workers": 1}
    assert calls["write_json"] == [] and out == "METRICS ['semantic']\nevaluated in 2.5 s\n"


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--pred", "p"], "error: --pred needs --gt (a folder written by minkseg export-gt)\n"),
    (["evaluate"], "error: give --checkpoint CKPT (with --split), or --pred DIR --gt DIR\n"),
])
def test_evaluate_needs_both_folders_or_a_checkpoint(argv, message, calls, capsys):
    calls.patch(minkseg.evaluation.evaluate, "evaluate_dirs", {})
    assert run(argv, capsys) == (2, "", message)
    assert calls.log == []


def _checkpoint_fakes(calls: Calls) -> minkseg.config.Config:
    cfg = minkseg.config.load_config(None, ["data.prepared=stored/prep", "data.root=stored/root",
                                            "data.voxel_size=0.05", "name=ck"])
    calls.patch(minkseg.engine.checkpoint, "load_checkpoint", ("MODEL", cfg, {}))
    return cfg


def test_evaluate_checkpoint(calls, capsys, tmp_path):
    _metrics_fakes(calls)
    _checkpoint_fakes(calls)
    calls.patch(minkseg.data.splits, "split_scenes", effect=lambda cfg, split: [f"{split}:{cfg.data.root}"])
    calls.patch(minkseg.evaluation.model_eval, "evaluate_model", effect=lambda *a, **k: {"instance": {}})
    calls.patch(minkseg.evaluation.oracle, "prepared_ceiling", "CEIL")
    rc, out, err = run(["evaluate", "--checkpoint", "ck.pth", "--split", "train", "--prepared", "new/prep/",
                        "--root", "./new/root", "--no-tuned", "--device", "cpu", "--json", tmp_path / "m.json",
                        "cluster.min_size=3", "cluster.taus=[0.3,0.4]"], capsys)
    assert (rc, err) == (0, "")
    assert calls["load_checkpoint"] == [((Path("ck.pth"), CPU), {"tuned": False})]
    (model, cfg, scenes, device), kwargs = calls["evaluate_model"][0]
    assert (model, scenes, device, kwargs) == ("MODEL", ["train:new/root"], CPU, {"progress": True})
    assert (cfg.cluster.min_size, cfg.cluster.taus, cfg.data.prepared, cfg.data.root) == (3, [0.3, 0.4], "new/prep",
                                                                                         "new/root")
    assert calls["prepared_ceiling"] == [(("new/prep", ["train:new/root"], 0.05), {})]
    assert calls["write_json"] == [(({"instance": {}, "ceiling": "CEIL"}, tmp_path / "m.json"), {})]
    assert out == ("METRICS ['ceiling', 'instance']\nCEILING CEIL\nevaluated in 2.5 s\n"
                   f"metrics written to {tmp_path / 'm.json'}\n")


def test_evaluate_checkpoint_defaults_keep_the_stored_folders(calls, capsys):
    _metrics_fakes(calls)
    _checkpoint_fakes(calls)
    calls.patch(minkseg.data.splits, "split_scenes", effect=lambda cfg, split: [split])
    calls.patch(minkseg.evaluation.model_eval, "evaluate_model", effect=lambda *a, **k: {})
    calls.patch(minkseg.evaluation.oracle, "prepared_ceiling", "C")
    assert run(["evaluate", "--checkpoint", "ck.pth"], capsys)[0] == 0
    assert calls["load_checkpoint"] == [((Path("ck.pth"), CPU), {"tuned": True})]
    (_, cfg, scenes, _), _ = calls["evaluate_model"][0]
    assert (cfg.data.prepared, cfg.data.root, scenes) == ("stored/prep", "stored/root", ["val"])
    assert calls["prepared_ceiling"] == [(("stored/prep", ["val"], 0.05), {})]


def test_evaluate_checkpoint_refuses_non_cluster_overrides(calls, capsys):
    _checkpoint_fakes(calls)
    rc, out, err = run(["evaluate", "--checkpoint", "ck.pth", "train.lr=1"], capsys)
    assert (rc, err) == (2, "error: override 'train.lr=1': only cluster.* options can change at inference\n")


# -------------------------------------------------------------------------- predict, validate


def _scans_with_meshes(root: Path, counts: dict[str, int | None]) -> Path:
    """A scans/ folder whose scenes have PLY headers with these vertex counts (None: no mesh)."""
    scans = root / "scans"
    for scene, n in counts.items():
        (scans / scene).mkdir(parents=True)
        if n is not None:
            (scans / scene / f"{scene}_vh_clean_2.ply").write_bytes(
                f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\nend_header\n".encode())
    return scans


def test_split_vertex_counts_reads_each_mesh_header(tmp_path, monkeypatch):
    scans = _scans_with_meshes(tmp_path, {"scene0001_00": 12, "scene0002_00": 7})
    asked = []
    monkeypatch.setattr(scannet_tools.splits, "resolve_split",
                        lambda split, root: asked.append((split, root)) or ["scene0001_00", "scene0002_00"])
    assert cli._split_vertex_counts(scans, "val") == {"scene0001_00": 12, "scene0002_00": 7}
    assert asked == [("val", tmp_path)]


@pytest.mark.parametrize("missing, names", [(1, "scene0000_00"), (3, "scene0000_00, scene0001_00, scene0002_00"),
                                            (4, "scene0000_00, scene0001_00, scene0002_00, ...")])
def test_split_vertex_counts_names_the_scenes_without_a_mesh(missing, names, tmp_path, monkeypatch):
    counts = {f"scene{i:04d}_00": (None if i < missing else 5) for i in range(5)}
    scans = _scans_with_meshes(tmp_path, counts)
    monkeypatch.setattr(scannet_tools.splits, "resolve_split", lambda split, root: list(counts))
    with pytest.raises(ValueError) as err:
        cli._split_vertex_counts(scans, "test")
    assert str(err.value) == (f"{scans}: {missing} of the 5 scenes of split 'test' have no readable mesh ({names}; "
                              f"first: scene0000_00: scene0000_00_vh_clean_2.ply: file is missing); is --scans the "
                              "folder of this split?")


def test_split_vertex_counts_lets_other_errors_through(tmp_path, monkeypatch):
    monkeypatch.setattr(scannet_tools.splits, "resolve_split", lambda split, root: ["s"])
    monkeypatch.setattr(scannet_tools.reader, "mesh_vertex_count",
                        lambda path, scene: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError):
        cli._split_vertex_counts(tmp_path / "scans", "val")
    monkeypatch.setattr(scannet_tools.reader, "mesh_vertex_count",
                        lambda path, scene: (_ for _ in ()).throw(SceneError(scene, path, "bad")))
    with pytest.raises(ValueError, match=r"1 of the 1 scenes"):
        cli._split_vertex_counts(tmp_path / "scans", "val")


def _predict_fakes(calls: Calls, prepare: BatchReport, check: ValidationReport, masks: int = 9):
    cfg = _checkpoint_fakes(calls)
    calls.patch(scannet_tools.splits, "resolve_split", ["scene0001_00", "scene0002_00"])
    calls.patch(scannet_tools.prepare, "prepare_all", prepare)
    calls.patch(minkseg.evaluation.submission, "predict_submission", masks)
    calls.patch(minkseg.evaluation.submission, "validate_submission", check)
    calls.patch(minkseg.evaluation.submission, "zip_submission", [])
    calls.patch(cli, "_split_vertex_counts", {"scene0001_00": 4})
    return cfg


def test_predict(calls, capsys, tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "semantic.zip").write_bytes(b"\0" * (3 * 2**20 // 2))
    _predict_fakes(calls, _report(), ValidationReport(scenes=2, masks=9))
    calls.patch(minkseg.evaluation.submission, "zip_submission", [sub / "semantic.zip"])
    rc, out, err = run(["predict", "--checkpoint", "ck.pth", "--scans", "raw/scans", "--split", "val", "--out", sub,
                        "--zip", "--max-masks", "5", "--min-score", "0.25", "--align", "--workers", "2",
                        "--no-tuned", "--device", "cpu", "cluster.min_size=4"], capsys)
    assert (rc, err) == (0, "")
    assert calls.names == ["load_checkpoint", "resolve_split", "prepare_all", "predict_submission",
                           "_split_vertex_counts", "validate_submission", "zip_submission"]
    assert calls["load_checkpoint"] == [((Path("ck.pth"), CPU), {"tuned": False})]
    assert calls["resolve_split"] == [(("val", Path("raw")), {})]
    (scans, tmp, table), kwargs = calls["prepare_all"][0]
    assert (scans, table, kwargs) == (Path("raw/scans"), None, {"workers": 2, "align": True,
                                                                "scenes": ["scene0001_00", "scene0002_00"]})
    (model, cfg, prepared, scenes, out_dir, device, max_masks, min_score), kwargs = calls["predict_submission"][0]
    assert (model, cfg.cluster.min_size, prepared, scenes, out_dir, device, max_masks, min_score, kwargs) == (
        "MODEL", 4, Path(tmp), ["scene0001_00", "scene0002_00"], sub, CPU, 5, 0.25, {"workers": 2})
    assert not Path(tmp).exists()  # the prepared copies are temporary,
    assert Path(tmp).name.startswith("minkseg-predict-")  # in a folder named for whoever finds one left over
    assert calls["_split_vertex_counts"] == [((Path("raw/scans"), "val"), {})]
    assert calls["validate_submission"] == [((sub, {"scene0001_00": 4}), {})]
    assert calls["zip_submission"] == [((sub,), {})]
    assert out == f"wrote 2 scenes, 9 instance masks to {sub} in 2.5 s\narchive {sub / 'semantic.zip'} (1.5 MiB)\n"


def test_predict_defaults(calls, capsys):
    _predict_fakes(calls, _report(), ValidationReport(scenes=2, masks=9))
    assert run(["predict", "--checkpoint", "ck.pth", "--scans", "raw/scans", "--out", "sub"], capsys)[0] == 0
    assert calls["load_checkpoint"][0][1] == {"tuned": True}
    assert calls["resolve_split"] == [(("test", Path("raw")), {})]
    assert calls["prepare_all"][0][1] == {"workers": 1, "align": False, "scenes": ["scene0001_00", "scene0002_00"]}
    assert calls["predict_submission"][0][0][6:] == (0, 0.0) and calls["predict_submission"][0][1] == {"workers": 1}
    assert calls["zip_submission"] == []  # no --zip


def test_predict_stops_when_a_scan_cannot_be_prepared(calls, capsys):
    _predict_fakes(calls, _report(done=1, failed={"s": "s: mesh: broken"}), ValidationReport())
    rc, out, _ = run(["predict", "--checkpoint", "ck.pth", "--scans", "raw/scans", "--out", "sub"], capsys)
    assert rc == 1 and out == "prepared 1, skipped 0 (already done), failed 1\n  FAILED s: mesh: broken\n"
    assert "predict_submission" not in calls.names


def test_predict_fails_on_an_invalid_submission(calls, capsys):
    _predict_fakes(calls, _report(), ValidationReport(problems=["p1", "p2"]))
    rc, out, _ = run(["predict", "--checkpoint", "ck.pth", "--scans", "raw/scans", "--out", "sub", "--zip"], capsys)
    assert rc == 1 and out.endswith("\np1\np2\n") and "zip_submission" not in calls.names


def test_validate_submission(calls, capsys):
    calls.patch(cli, "_split_vertex_counts", {"a": 1})
    calls.patch(minkseg.evaluation.submission, "validate_submission",
                ValidationReport(problems=["bad a"], warnings=["label 0"], scenes=1, masks=3))
    rc, out, _ = run(["validate-submission", "sub", "--scans", "raw/scans", "--split", "val"], capsys)
    assert rc == 1 and out == "warning: label 0\nbad a\nINVALID: 1 scenes, 3 masks checked, 1 problems\n"
    assert calls["_split_vertex_counts"] == [((Path("raw/scans"), "val"), {})]
    assert calls["validate_submission"] == [((Path("sub"), {"a": 1}), {})]
    calls.patch(minkseg.evaluation.submission, "validate_submission", ValidationReport(scenes=2, masks=0))
    assert run(["validate-submission", "sub", "--scans", "raw/scans"], capsys) == (
        0, "OK: 2 scenes, 0 masks checked, 0 problems\n", "")
    assert calls["_split_vertex_counts"][-1] == ((Path("raw/scans"), "test"), {})


# ----------------------------------------------------------------- compare, tune, visualize, view


def _compare_result(voxel: float, m: float) -> dict:
    return {"instance": {"mAP": m, "AP50": m + 0.25, "AP25": m + 0.5}, "semantic": {"mIoU": m / 2},
            "ceiling": {"voxel_size": voxel}}


def test_compare(calls, capsys):
    calls.patch(minkseg.evaluation.oracle, "format_ceiling", effect=lambda c: f"CEILING {c['voxel_size']}")
    calls.patch(minkseg.viz.compare, "compare_runs", {"a": _compare_result(0.1, 0.5), "b": _compare_result(0.1, 0.25),
                                                      "c": _compare_result(0.05, 0.125)})
    rc, out, _ = run(["compare", "runs/a", "runs/b", "--out", "rep", "--split", "test", "--prepared", "p/",
                      "--root", "./r", "--device", "cpu", "--no-tuned", "--thumbnails", "0", "--no-viewer"], capsys)
    assert rc == 0
    # folder names as paths: "p/" is p, "./r" is r
    assert calls["compare_runs"] == [(([Path("runs/a"), Path("runs/b")], Path("rep"), "test", "p", "r", "cpu"),
                                      {"tuned": False, "thumbnails": 0, "viewer": False})]
    assert out == (
        "a                            mAP 0.500  AP50 0.750  AP25 1.000  mIoU 0.250\n"
        "b                            mAP 0.250  AP50 0.500  AP25 0.750  mIoU 0.125\n"
        "c                            mAP 0.125  AP50 0.375  AP25 0.625  mIoU 0.062\n"
        "CEILING 0.1\nCEILING 0.05\n"
        "report: rep/index.html (one page: tables, plots, learning curves, scene thumbnails linking to the 3D "
        "viewer); also report.md, report.csv\n")


def test_compare_defaults(calls, capsys):
    calls.patch(minkseg.evaluation.oracle, "format_ceiling", "")
    calls.patch(minkseg.viz.compare, "compare_runs", {})
    assert run(["compare", "runs/a", "--out", "rep"], capsys)[0] == 0
    assert calls["compare_runs"] == [(([Path("runs/a")], Path("rep"), None, None, None, "auto"),
                                      {"tuned": True, "thumbnails": 4, "viewer": True})]


def test_candidates():
    assert cli._candidates(None, "--tau", float) is None
    assert cli._candidates("0.25, 0.5,", "--tau", float) == [0.25, 0.5]
    assert cli._candidates("5,10", "--min-size", int) == [5, 10]
    with pytest.raises(ValueError) as err:
        cli._candidates("5,x", "--min-size", int)
    assert str(err.value) == "--min-size '5,x': expected comma-separated int values" and err.value.__cause__ is None
    with pytest.raises(ValueError, match=r"^--tau: no values given$"):
        cli._candidates(" , ", "--tau", float)


def _tune_result() -> TuneResult:
    rows = [TrialRow({"tau": 0.3, "min_size": 10}, {"instance": {"mAP": 0.25}}, 1.0),
            TrialRow({"tau": 0.5, "min_size": 20}, {"instance": {"mAP": 0.625}}, 1.0)]
    return TuneResult(metric="mAP", rows=rows, best=1, baseline=0, scenes=4)


def test_tune(calls, capsys, single_process, flushed):
    calls.patch(minkseg.viz.compare, "run_checkpoint", Path("runs/p/best.pth"))
    calls.patch(minkseg.engine.tune, "tune_run", (_tune_result(), Path("runs/p/tuned.yaml"), Path("runs/p/tune.md")))
    calls.patch(minkseg.engine.tune, "format_table", "TABLE")
    rc, out, _ = run(["tune", "runs/p", "cluster.hypotheses=3", "cluster.superpoints=false", "--split", "train",
                      "--metric", "AP50", "--search", "grid", "--passes", "2", "--tau", "0.3,0.5",
                      "--seed-threshold", "0.4", "--min-size", "10,20", "--hypothesis-threshold", "0.2",
                      "--cache-gib", "0.5", "--prepared", "p/", "--root", "./r", "--workers", "2", "--device", "cpu"],
                     capsys)
    assert rc == 0 and single_process == [CPU]
    assert calls["run_checkpoint"] == [((Path("runs/p"),), {})]
    args, kwargs = calls["tune_run"][0]
    assert args == (Path("runs/p/best.pth"), "train", "AP50",
                    {"tau": [0.3, 0.5], "seed_threshold": [0.4], "min_size": [10, 20],
                     "hypothesis_threshold": [0.2]}, "grid", 2, CPU, "p", "r",
                    {"hypotheses": 3, "superpoints": False}, 2**29, 2)
    assert set(kwargs) == {"progress", "split_over_ranks", "log"}
    assert (kwargs["progress"], kwargs["split_over_ranks"]) == (True, False)
    assert calls["format_table"] == [((_tune_result(),), {})]  # the search's own result
    # best mAP 62.5 over 4 scenes, 2 settings; the clock read twice around the search
    assert out == (
        "TABLE\nbest mAP 62.5 over 4 scenes (2 settings, 2.5 s): tau=0.5, min_size=20\n"
        "wrote runs/p/tuned.yaml and runs/p/tune.md; evaluate/predict/compare with runs/p use it (--no-tuned "
        "ignores it)\n")
    kwargs["log"]("a line")  # the search's progress lines go to stdout on rank 0
    assert capsys.readouterr().out == "a line\n" and flushed == ["a line"]


def test_tune_defaults_and_other_ranks(calls, capsys, single_process, monkeypatch):
    calls.patch(minkseg.viz.compare, "run_checkpoint", Path("r/last.pth"))
    calls.patch(minkseg.engine.tune, "tune_run", (_tune_result(), None, None))
    calls.patch(minkseg.engine.tune, "format_table", "TABLE")
    monkeypatch.setattr(minkseg.engine.distributed, "is_main", lambda: False)

    @contextlib.contextmanager
    def several(device):
        yield True

    monkeypatch.setattr(minkseg.engine.distributed, "process_group", several)
    assert run(["tune", "r"], capsys) == (0, "", "")
    args, kwargs = calls["tune_run"][0]
    assert args == (Path("r/last.pth"), "val", None, {}, "descent", 3, CPU, None, None, None, 8 * 2**30, 0)
    assert kwargs == {"progress": False, "split_over_ranks": True, "log": None}


@pytest.mark.parametrize("argv, message", [
    (["tune", "r", "train.lr=1"], "error: override 'train.lr=1': tune fixes cluster.* options only\n"),
    (["tune", "r", "--tau", "a"], "error: --tau 'a': expected comma-separated float values\n"),
    (["tune", "r", "--seed-threshold", "a"], "error: --seed-threshold 'a': expected comma-separated float values\n"),
    (["tune", "r", "--min-size", "0.5"], "error: --min-size '0.5': expected comma-separated int values\n"),
    (["tune", "r", "--hypothesis-threshold", ","], "error: --hypothesis-threshold: no values given\n"),
])
def test_tune_refuses_bad_options_before_any_work(argv, message, calls, capsys, single_process):
    calls.patch(minkseg.viz.compare, "run_checkpoint", Path("r/last.pth"))
    assert run(argv, capsys) == (2, "", message)
    assert calls.log == []


def test_visualize(calls, capsys):
    _checkpoint_fakes(calls)
    calls.patch(scannet_tools.labels, "find_label_table", Path("t.tsv"))
    calls.patch(scannet_tools.labels, "read_label_table", {"chair": 5})
    calls.patch(minkseg.viz.visualize, "visualize_scene", [Path("o/a.ply"), Path("o/s.png")])
    rc, out, _ = run(["visualize", "--checkpoint", "ck.pth", "--scans", "raw/scans", "--scene", "scene0001_00",
                      "--out", "o", "--labels", "l.tsv", "--no-png", "--no-tuned", "--device", "cpu"], capsys)
    assert (rc, out) == (0, "o/a.ply\no/s.png\n")
    assert calls["load_checkpoint"] == [((Path("ck.pth"), CPU), {"tuned": False, "allow_pretrain": True})]
    assert calls["find_label_table"] == [((Path("raw/scans"), Path("l.tsv")), {})]
    assert calls["read_label_table"] == [((Path("t.tsv"),), {})]
    (model, cfg, scene_dir, labels, out_dir, device), kwargs = calls["visualize_scene"][0]
    assert (model, cfg.name, scene_dir, labels, out_dir, device, kwargs) == (
        "MODEL", "ck", Path("raw/scans/scene0001_00"), {"chair": 5}, Path("o"), CPU, {"png": False})
    run(["visualize", "--checkpoint", "ck.pth", "--scans", "raw/scans", "--scene", "s", "--out", "o"], capsys)
    assert calls["load_checkpoint"][-1][1] == {"tuned": True, "allow_pretrain": True}
    assert calls["find_label_table"][-1] == ((Path("raw/scans"), None), {})
    assert calls["visualize_scene"][-1][1] == {"png": True}


def _view_fakes(calls: Calls, tmp_path: Path) -> Path:
    bundle = tmp_path / "tmp_bundle"

    def export(sources, out, *args, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        (out / "index.html").write_bytes(b"\0" * 2**19)
        (out / "data").mkdir(exist_ok=True)
        (out / "data" / "s.bin").write_bytes(b"\0" * 2**20)
        return out / "index.html"

    calls.patch(minkseg.viz.view, "export_viewer", effect=export)
    calls.patch(minkseg.viz.view, "temporary_bundle_dir", bundle)
    calls.patch(minkseg.viz.view, "remove_bundle_dir")
    calls.patch(minkseg.viz.view, "serve", effect=lambda out, host, port, ready: ready(f"http://{host}:{port}/"))
    return bundle


def test_view_writes_a_bundle(calls, capsys, tmp_path):
    _view_fakes(calls, tmp_path)
    out = tmp_path / "v"
    rc, printed, _ = run(["view", "runs/a", "sub", "--scenes", "s1, s2,", "--split", "train", "--scans", "raw/scans",
                          "--out", out, "--max-vertices", "1000", "--max-scenes", "3", "--prepared", "p", "--root", "r",
                          "--no-tuned", "--device", "cpu"], capsys)
    assert rc == 0
    assert calls["export_viewer"] == [(([Path("runs/a"), Path("sub")], out, ["s1", "s2"], "train", Path("raw/scans"),
                                        "cpu", 1000, 3, Path("p"), Path("r")), {"tuned": False})]
    assert calls.names == ["export_viewer"]  # neither served nor removed
    assert printed == f"wrote {out / 'index.html'} (1.5 MiB) in 2.5 s\n"


def test_view_serves_a_temporary_bundle_and_removes_it(calls, capsys, tmp_path, flushed):
    bundle = _view_fakes(calls, tmp_path)
    rc, printed, _ = run(["view", "runs/a", "--serve", "--port", "0", "--host", "0.0.0.0"], capsys)
    assert rc == 0
    assert calls.names == ["temporary_bundle_dir", "export_viewer", "serve", "remove_bundle_dir"]
    assert calls["export_viewer"] == [(([Path("runs/a")], bundle, None, None, None, "auto", 500_000, 10, None, None),
                                       {"tuned": True})]
    assert calls["serve"][0][0][:3] == (bundle, "0.0.0.0", 0)
    assert calls["remove_bundle_dir"] == [((bundle,), {})]
    assert printed == f"wrote {bundle / 'index.html'} (1.5 MiB) in 2.5 s\nserving http://0.0.0.0:0/  (Ctrl-C stops)\n"
    assert flushed == ["serving http://0.0.0.0:0/  (Ctrl-C stops)"]


def test_view_removes_the_temporary_bundle_even_when_export_fails(calls, capsys, tmp_path):
    bundle = _view_fakes(calls, tmp_path)
    calls.patch(minkseg.viz.view, "export_viewer", effect=lambda *a, **k: (_ for _ in ()).throw(ValueError("no")))
    assert run(["view", "runs/a", "--serve"], capsys) == (2, "", "error: no\n")
    assert calls["remove_bundle_dir"] == [((bundle,), {})]


def test_view_needs_out_or_serve(calls, capsys, tmp_path):
    _view_fakes(calls, tmp_path)
    assert run(["view", "runs/a"], capsys) == (
        2, "", "error: give --out DIR (a static bundle: DIR/index.html) or --serve (a local server), or both\n")
    assert calls.log == []


def test_view_serves_a_kept_bundle(calls, capsys, tmp_path):
    _view_fakes(calls, tmp_path)
    out = tmp_path / "v"
    assert run(["view", "runs/a", "--out", out, "--serve"], capsys)[0] == 0
    assert calls.names == ["export_viewer", "serve"] and calls["serve"][0][0][:3] == (out, "127.0.0.1", 8000)


# ------------------------------------------------------------------- --device on a machine with a GPU


@pytest.fixture
def a_gpu(monkeypatch) -> torch.device:
    """torch sees one GPU, so --device auto would take it: a command that dropped --device cpu would too."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return torch.device("cuda", 0)


def test_an_explicit_cpu_is_obeyed_where_a_gpu_is(calls, capsys, a_gpu, single_process, config_file, monkeypatch):
    monkeypatch.setattr(minkseg.engine.train, "Trainer", _Trainer)
    monkeypatch.setattr(minkseg.engine.pretrain, "Pretrainer", _Trainer)
    run(["train", config_file, "--device", "cpu"], capsys)
    run(["pretrain", config_file, "--device", "cpu"], capsys)
    run(["train", config_file], capsys)
    assert [t.device for t in _Trainer.made] == [CPU, CPU, a_gpu] and single_process == [CPU, CPU, a_gpu]

    made = []
    monkeypatch.setattr(minkseg.engine.selftrain, "SelfTraining",
                        lambda cfg, resume, device: made.append(device) or SimpleNamespace(run=lambda: None))
    run(["selftrain", config_file, "--device", "cpu"], capsys)
    assert made == [CPU] and single_process[-1] == CPU

    _checkpoint_fakes(calls)
    calls.patch(scannet_tools.labels, "find_label_table", Path("t.tsv"))
    calls.patch(scannet_tools.labels, "read_label_table", {})
    calls.patch(minkseg.viz.visualize, "visualize_scene", [])
    run(["visualize", "--checkpoint", "c", "--scans", "s", "--scene", "x", "--out", "o", "--device", "cpu"], capsys)
    assert calls["load_checkpoint"][-1][0][1] == CPU and calls["visualize_scene"][-1][0][5] == CPU

    _metrics_fakes(calls)
    calls.patch(minkseg.data.splits, "split_scenes", [])
    calls.patch(minkseg.evaluation.model_eval, "evaluate_model", {})
    calls.patch(minkseg.evaluation.oracle, "prepared_ceiling", {})
    run(["evaluate", "--checkpoint", "c", "--device", "cpu"], capsys)
    assert calls["load_checkpoint"][-1][0][1] == CPU and calls["evaluate_model"][-1][0][3] == CPU

    _predict_fakes(calls, _report(), ValidationReport())
    run(["predict", "--checkpoint", "c", "--scans", "raw/scans", "--out", "o", "--device", "cpu"], capsys)
    assert calls["load_checkpoint"][-1][0][1] == CPU and calls["predict_submission"][-1][0][5] == CPU

    calls.patch(minkseg.viz.compare, "run_checkpoint", Path("r/last.pth"))
    calls.patch(minkseg.engine.tune, "tune_run", (_tune_result(), None, None))
    calls.patch(minkseg.engine.tune, "format_table", "")
    run(["tune", "r", "--device", "cpu"], capsys)
    assert calls["tune_run"][-1][0][6] == CPU and single_process[-1] == CPU
