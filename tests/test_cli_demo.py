"""``minkseg demo`` (minkseg.demo.run_demo): which stage gets which arguments, in which order, and the
summary it prints. Every stage is replaced by a recorder (the stages have their own tests), so the
whole pipeline's wiring runs in well under a second."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import minkseg.data.splits
import minkseg.engine.checkpoint
import minkseg.engine.train
import minkseg.evaluation.evaluate
import minkseg.evaluation.model_eval
import minkseg.evaluation.oracle
import minkseg.evaluation.submission
import minkseg.viz.compare
import minkseg.viz.visualize
import scannet_tools.export_gt
import scannet_tools.labels
import scannet_tools.prepare
import scannet_tools.reader
import scannet_tools.synth
from minkseg.config import load_config
from minkseg.demo import CONFIGS, run_demo

VAL = ["scene0003_00", "scene0004_00"]


class _Pipeline:
    """Every stage run_demo calls, replaced by a recorder; ``calls`` lists (stage, args, kwargs) in order."""

    def __init__(self, monkeypatch, metrics: dict[str, tuple[float, float, float, float]],
                 voxel_sizes: dict[str, float] | None = None, problems: tuple[str, ...] = ()):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.trainers: list[SimpleNamespace] = []
        self.metrics, self.voxel_sizes, self.problems = metrics, voxel_sizes or {}, problems
        pipeline = self

        class Trainer:
            def __init__(self, cfg, resume, device):
                self.cfg, self.resume, self.device = cfg, resume, torch.device("cpu")
                pipeline.calls.append(("Trainer", (cfg.name,), {"resume": resume, "device": device}))
                pipeline.trainers.append(self)

            def fit(self):
                pipeline.calls.append(("fit", (self.cfg.name,), {}))
                return self.cfg.run_dir / "best.pth"

        def report(word_ok: str):
            return SimpleNamespace(summary=lambda word: f"{word_ok}-summary:{word}")

        patches = [
            (scannet_tools.synth, "synthesize", None),
            (scannet_tools.prepare, "prepare_all", report("prepare")),
            (scannet_tools.export_gt, "export_gt_all", report("export")),
            (minkseg.engine.train, "Trainer", Trainer),
            (minkseg.engine.checkpoint, "load_checkpoint", self._load_checkpoint),
            (minkseg.data.splits, "split_scenes", self._split_scenes),
            (minkseg.evaluation.model_eval, "evaluate_model", self._evaluate_model),
            (minkseg.evaluation.oracle, "prepared_ceiling", self._ceiling),
            (minkseg.evaluation.oracle, "format_ceiling", lambda c: f"CEILING {c['voxel_size']}"),
            (minkseg.evaluation.evaluate, "write_json", self._write_json),
            (minkseg.evaluation.evaluate, "format_metrics", lambda m: f"METRICS {m['instance']['mAP']}"),
            (minkseg.evaluation.submission, "predict_submission", 17),
            (scannet_tools.reader, "scene_vertex_counts", {"scene0003_00": 10, "scene0004_00": 20}),
            (minkseg.evaluation.submission, "validate_submission",
             SimpleNamespace(ok=not problems, scenes=2, masks=17, problems=list(problems))),
            (minkseg.evaluation.submission, "zip_submission", [Path("sub/semantic.zip"), Path("sub/instance.zip")]),
            (minkseg.viz.compare, "compare_runs", {}),
            (scannet_tools.labels, "read_label_table", {"chair": 5}),
            (minkseg.viz.visualize, "visualize_scene", [Path("vis/a.ply"), Path("vis/b.ply"), Path("vis/scene.png")]),
        ]
        for module, name, result in patches:
            if callable(result) and not isinstance(result, SimpleNamespace):
                monkeypatch.setattr(module, name, result)
            else:
                monkeypatch.setattr(module, name, self._recorder(name, result))

    def _recorder(self, name: str, result):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result
        return record

    def _load_checkpoint(self, path, device):
        """The checkpoint's config is the run's own (voxel size as the test sets it)."""
        self.calls.append(("load_checkpoint", (path, device), {}))
        name = Path(path).parent.name
        head = name.split("_s")[0]
        cfg = load_config(CONFIGS / f"synthetic_{head}.yaml",
                          [f"name={name}", f"data.voxel_size={self.voxel_sizes.get(head, 0.1)}"])
        return f"model:{name}", cfg, {}

    def _split_scenes(self, cfg, split):
        """The checkpoint's validation scenes: the config it is given names the run."""
        self.calls.append(("split_scenes", (cfg.name, split), {}))
        return list(VAL) if split == "val" else ["?"]

    def _evaluate_model(self, model, cfg, scenes, device):
        self.calls.append(("evaluate_model", (model, cfg.name, scenes, device), {}))
        m = self.metrics[cfg.name]
        return {"instance": {"mAP": m[0], "AP50": m[1], "AP25": m[2]}, "semantic": {"mIoU": m[3]}}

    def _ceiling(self, prepared, scenes, voxel_size):
        self.calls.append(("prepared_ceiling", (prepared, scenes, voxel_size), {}))
        return {"voxel_size": voxel_size, "mAP": 0.9, "AP50": 0.95, "AP25": 0.975, "mIoU": 0.875}

    def _write_json(self, metrics, path):
        self.calls.append(("write_json", (dict(metrics), path), {}))

    def named(self, stage: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for name, args, kwargs in self.calls if name == stage]


def test_demo_runs_every_stage_with_its_arguments(tmp_path, monkeypatch, capsys):
    metrics = {"probabilistic": (0.25, 0.5, 0.75, 0.625), "margin": (0.125, 0.375, 0.5, 0.25)}
    pipeline = _Pipeline(monkeypatch, metrics, voxel_sizes={"margin": 0.05})
    out = tmp_path / "demo"
    raw, prepared, gt, table = out / "scannet", out / "prepared", out / "gt", out / "scannet" / \
        "scannetv2-labels.combined.tsv"
    (out / "runs" / "margin").mkdir(parents=True)
    (out / "runs" / "margin" / "last.pth").write_bytes(b"")  # the margin run resumes, the other starts afresh
    assert run_demo(out, scenes=3, seed=5, small=True, epochs=2, device="cpu") == 0

    cpu = torch.device("cpu")
    stages = [name for name, _, _ in pipeline.calls]
    assert stages == [
        "synthesize", "prepare_all", "export_gt_all",
        "Trainer", "fit", "load_checkpoint", "split_scenes", "evaluate_model", "split_scenes", "prepared_ceiling",
        "write_json",
        "Trainer", "fit", "load_checkpoint", "split_scenes", "evaluate_model", "split_scenes", "prepared_ceiling",
        "write_json",
        "load_checkpoint", "split_scenes", "predict_submission", "scene_vertex_counts", "validate_submission",
        "zip_submission", "compare_runs", "read_label_table", "visualize_scene"]
    assert pipeline.named("synthesize") == [((raw, 3), {"seed": 5, "small": True})]
    assert pipeline.named("prepare_all") == [((raw / "scans", prepared, table), {"workers": 2})]
    assert pipeline.named("export_gt_all") == [((raw / "scans", gt, table), {"workers": 2})]

    # each head from its shipped config, with the demo's folders, seed and epochs
    prob, margin = pipeline.trainers
    assert pipeline.named("Trainer") == [(("probabilistic",), {"resume": False, "device": cpu}),
                                         (("margin",), {"resume": True, "device": cpu})]
    for trainer, head in ((prob, "probabilistic"), (margin, "margin")):
        cfg = trainer.cfg
        assert (cfg.model.head, cfg.data.root, cfg.data.prepared, cfg.runs_dir) == (head, str(raw), str(prepared),
                                                                                    str(out / "runs"))
        assert (cfg.train.seed, cfg.train.epochs, cfg.train.val_every) == (5, 2, 2)
    # every scene list is the validation split of the checkpoint's own config
    assert [args for args, _ in pipeline.named("split_scenes")] == [("probabilistic", "val")] * 2 + [
        ("margin", "val")] * 2 + [("probabilistic", "val")]
    runs = [out / "runs" / "probabilistic" / "best.pth", out / "runs" / "margin" / "best.pth"]
    assert [args for args, _ in pipeline.named("load_checkpoint")] == [(runs[0], cpu), (runs[1], cpu), (runs[0], cpu)]
    assert [args for args, _ in pipeline.named("evaluate_model")] == [
        ("model:probabilistic", "probabilistic", VAL, cpu), ("model:margin", "margin", VAL, cpu)]
    # the voxel oracle once per voxel size, on the checkpoint's prepared data and validation scenes
    assert [args for args, _ in pipeline.named("prepared_ceiling")] == [("demo_out/prepared", VAL, 0.1),
                                                                        ("demo_out/prepared", VAL, 0.05)]
    written = pipeline.named("write_json")
    assert [args[1] for args, _ in written] == [out / "metrics" / "probabilistic.json", out / "metrics" / "margin.json"]
    assert written[0][0][0]["instance"]["mAP"] == 0.25 and written[0][0][0]["ceiling"]["voxel_size"] == 0.1
    assert written[1][0][0]["semantic"]["mIoU"] == 0.25 and written[1][0][0]["ceiling"]["voxel_size"] == 0.05

    (model, cfg, prep, scenes, sub, device), _ = pipeline.named("predict_submission")[0]
    assert (model, cfg.name, prep, scenes, sub, device) == ("model:probabilistic", "probabilistic", prepared, VAL,
                                                            out / "submission", cpu)
    assert pipeline.named("scene_vertex_counts") == [((raw / "scans", VAL), {})]
    assert pipeline.named("validate_submission") == [((out / "submission", {"scene0003_00": 10, "scene0004_00": 20}),
                                                      {})]
    assert pipeline.named("zip_submission") == [((out / "submission",), {})]
    assert pipeline.named("compare_runs") == [(([out / "runs" / "probabilistic", out / "runs" / "margin"],
                                                out / "report"), {"device": cpu})]
    assert pipeline.named("read_label_table") == [((table,), {})]
    (model, cfg, scene_dir, labels, vis, device), _ = pipeline.named("visualize_scene")[0]
    assert (model, cfg.name, scene_dir, labels, vis, device) == ("model:probabilistic", "probabilistic",
                                                                 raw / "scans" / "scene0003_00", {"chair": 5},
                                                                 out / "visualize", cpu)

    text = capsys.readouterr().out
    assert "\n== synth: 3 synthetic scenes in the raw ScanNet layout -> " in text
    assert "prepare-summary:prepared" in text and "export-summary:exported" in text
    assert "METRICS 0.25\nCEILING 0.1\n" in text and "METRICS 0.125\nCEILING 0.05\n" in text
    assert ("   valid submission: 2 scenes, 17 masks; archives sub/semantic.zip, sub/instance.zip\n" in text)
    assert "   vis/scene.png\n" in text  # the last file visualize wrote
    table_lines = text[text.index("run                 "):].splitlines()
    assert table_lines[:5] == [
        "run                      mAP    AP50    AP25    mIoU",
        "probabilistic          0.250   0.500   0.750   0.625",
        "margin                 0.125   0.375   0.500   0.250",
        # the voxel oracle's rows in the same columns as the runs'
        "ceiling 10 cm          0.900   0.950   0.975   0.875",
        "ceiling 5 cm           0.900   0.950   0.975   0.875",
    ]
    assert "head mean" not in text  # one training seed: no spread to report
    assert f"\nraw scenes    {raw / 'scans'}\nprepared      {prepared}\nground truth  {gt}\n" in text


def test_demo_with_several_seeds_trains_each_head_per_seed_and_reports_mean_and_spread(tmp_path, monkeypatch,
                                                                                       capsys):
    metrics = {"probabilistic_s0": (0.1, 0.5, 0.5, 0.25), "probabilistic_s1": (0.2, 0.5, 0.5, 0.25),
               "probabilistic_s2": (0.3, 0.8, 0.5, 0.25),
               "margin_s0": (0.0, 0.0, 0.0, 0.0), "margin_s1": (0.5, 0.5, 0.5, 0.5), "margin_s2": (1.0, 1.0, 1.0, 1.0)}
    pipeline = _Pipeline(monkeypatch, metrics)
    out = tmp_path / "demo"
    assert run_demo(out, scenes=2, seed=7, device="cpu", seeds=[0, 1, 2]) == 0
    assert [(t.cfg.name, t.cfg.model.head, t.cfg.train.seed) for t in pipeline.trainers] == [
        ("probabilistic_s0", "probabilistic", 0), ("probabilistic_s1", "probabilistic", 1),
        ("probabilistic_s2", "probabilistic", 2), ("margin_s0", "margin", 0), ("margin_s1", "margin", 1),
        ("margin_s2", "margin", 2)]
    # without --epochs the shipped configs' schedule stands
    assert {(t.cfg.train.epochs, t.cfg.train.val_every) for t in pipeline.trainers} == {(40, 20)}
    assert pipeline.named("synthesize") == [((out / "scannet", 2), {"seed": 7, "small": False})]
    assert len(pipeline.named("prepared_ceiling")) == 1  # one voxel size: one oracle run
    assert pipeline.named("load_checkpoint")[-1][0][0] == out / "runs" / "probabilistic_s0" / "best.pth"
    assert pipeline.named("compare_runs")[0][0][0] == [out / "runs" / n for n in metrics]

    lines = capsys.readouterr().out.splitlines()
    start = lines.index("run                      mAP    AP50    AP25    mIoU")
    # sample standard deviations: sqrt(((-0.1)^2 + 0 + 0.1^2) / 2) = 0.1, sqrt((2 * 0.1^2 + 0.2^2) / 2) = 0.173,
    # 0.5 for 0, 0.5, 1
    assert lines[start + 7:start + 12] == [
        "probabilistic mean     0.200   0.600   0.500   0.250",
        "probabilistic std      0.100   0.173   0.000   0.000",
        "margin mean            0.500   0.500   0.500   0.500",
        "margin std             0.500   0.500   0.500   0.500",
        "ceiling 10 cm          0.900   0.950   0.975   0.875",
    ]


def test_demo_defaults(tmp_path, monkeypatch):
    pipeline = _Pipeline(monkeypatch, {"probabilistic": (0.0,) * 4, "margin": (0.0,) * 4})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto: the CPU here
    assert run_demo(tmp_path / "d") == 0
    assert pipeline.named("synthesize") == [((tmp_path / "d" / "scannet", 8), {"seed": 0, "small": False})]
    assert [(t.cfg.name, t.cfg.train.seed, t.cfg.train.epochs) for t in pipeline.trainers] == [
        ("probabilistic", 0, 40), ("margin", 0, 40)]
    assert pipeline.named("compare_runs")[0][1] == {"device": torch.device("cpu")}


def test_demo_with_two_training_seeds_reports_mean_and_spread(tmp_path, monkeypatch, capsys):
    metrics = {"probabilistic_s0": (0.25,) * 4, "probabilistic_s1": (0.75,) * 4, "margin_s0": (0.5,) * 4,
               "margin_s1": (0.5,) * 4}
    _Pipeline(monkeypatch, metrics)
    run_demo(tmp_path / "d", device="cpu", seeds=[0, 1])
    text = capsys.readouterr().out
    # mean 0.5, sample standard deviation sqrt(2 * 0.25^2 / 1) = 0.354
    assert ("probabilistic mean     0.500   0.500   0.500   0.500\n"
            "probabilistic std      0.354   0.354   0.354   0.354\n"
            "margin mean            0.500   0.500   0.500   0.500\n"
            "margin std             0.000   0.000   0.000   0.000\n") in text


def test_demo_trains_from_the_shipped_configs(tmp_path, monkeypatch, capsys):
    import minkseg.demo

    configs = tmp_path / "configs"
    configs.mkdir()
    for head in ("probabilistic", "margin"):  # the shipped configs with 60 cm voxels
        text = (CONFIGS / f"synthetic_{head}.yaml").read_text()
        (configs / f"synthetic_{head}.yaml").write_text(text.replace("voxel_size: 0.1 ", "voxel_size: 0.6 "))
    monkeypatch.setattr(minkseg.demo, "CONFIGS", configs)
    pipeline = _Pipeline(monkeypatch, {"probabilistic": (0.0,) * 4, "margin": (0.0,) * 4})
    run_demo(tmp_path / "d", device="cpu")
    assert [t.cfg.data.voxel_size for t in pipeline.trainers] == [0.6, 0.6]
    text = capsys.readouterr().out
    assert "\n== train margin head: MinkUNet14A, 40 epochs, 60 cm voxels -> " in text


def test_demo_with_one_training_seed_names_the_runs_but_reports_no_spread(tmp_path, monkeypatch, capsys):
    pipeline = _Pipeline(monkeypatch, {"probabilistic_s3": (0.5,) * 4, "margin_s3": (0.25,) * 4})
    assert run_demo(tmp_path / "d", seed=1, device="cpu", seeds=[3]) == 0
    assert [(t.cfg.name, t.cfg.train.seed) for t in pipeline.trainers] == [("probabilistic_s3", 3), ("margin_s3", 3)]
    text = capsys.readouterr().out
    assert "probabilistic_s3       0.500   0.500   0.500   0.500\n" in text and " mean " not in text


def test_demo_lists_the_problems_of_an_invalid_submission(tmp_path, monkeypatch, capsys):
    metrics = {"probabilistic": (0.0,) * 4, "margin": (0.0,) * 4}
    _Pipeline(monkeypatch, metrics, problems=("scene0003_00: 9 lines, expected 10", "scene0004_00: missing"))
    assert run_demo(tmp_path / "d", scenes=1, device="cpu") == 0
    text = capsys.readouterr().out
    assert ("   INVALID submission: 2 scenes, 17 masks; archives sub/semantic.zip, sub/instance.zip\n"
            "   scene0003_00: 9 lines, expected 10\n   scene0004_00: missing\n") in text


def test_demo_prints_each_stage_its_time_and_where_everything_is(tmp_path, monkeypatch, capsys):
    import minkseg.demo

    clock = iter(100.0 + 1.5 * i for i in range(100))  # every reading 1.5 s after the one before
    monkeypatch.setattr(minkseg.demo, "time", SimpleNamespace(time=lambda: next(clock)))
    _Pipeline(monkeypatch, {"probabilistic": (0.25, 0.5, 0.75, 0.625), "margin": (0.125, 0.375, 0.5, 0.25)})
    out = tmp_path / "d"
    run_demo(out, scenes=2, device="cpu", epochs=3)
    assert capsys.readouterr().out == DEMO_OUTPUT.format(out=out)


def test_demo_flushes_each_stage_heading(tmp_path, monkeypatch):
    """A stage's heading shows before the stage's own (possibly long, possibly unbuffered) output."""
    import minkseg.demo

    flushed: list[str] = []

    def print_and_record(*args, **kwargs):
        if kwargs.get("flush") is True:
            flushed.append(" ".join(str(a) for a in args))

    monkeypatch.setattr(minkseg.demo, "print", print_and_record, raising=False)
    _Pipeline(monkeypatch, {"probabilistic": (0.0,) * 4, "margin": (0.0,) * 4})
    run_demo(tmp_path / "d", scenes=1, device="cpu")
    assert [line.split(":")[0].split(" ->")[0] for line in flushed] == [
        "\n== synth", "\n== prepare", "\n== export-gt", "\n== train probabilistic head",
        "\n== evaluate probabilistic on the validation scenes", "\n== train margin head",
        "\n== evaluate margin on the validation scenes",
        "\n== predict a benchmark submission (probabilistic head, validation scenes) and validate it",
        "\n== compare the two heads on the same scenes", "\n== visualize a validation scene"]


def test_demo_refuses_a_bad_device_before_any_work(tmp_path, monkeypatch):
    pipeline = _Pipeline(monkeypatch, {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        run_demo(tmp_path / "d", device="cuda")
    assert pipeline.calls == [] and not (tmp_path / "d").exists()


# run_demo's whole output with the recorders above, two scenes, 3 epochs and a clock that advances 1.5 s per
# reading: each stage's heading, its time (one reading at the start, one at the end of the stage: 1.5 s;
# "2 s" when rounded to whole seconds; 19 readings after the first in all: "done in 28 s", 28.5 rounded half
# to even), the tables and where everything is
DEMO_OUTPUT = """
== synth: 2 synthetic scenes in the raw ScanNet layout -> {out}/scannet
   1.5 s

== prepare -> {out}/prepared
prepare-summary:prepared
   1.5 s

== export-gt -> {out}/gt
export-summary:exported
   1.5 s

== train probabilistic head: MinkUNet14A, 3 epochs, 10 cm voxels -> {out}/runs/probabilistic
   2 s, checkpoint {out}/runs/probabilistic/best.pth

== evaluate probabilistic on the validation scenes
METRICS 0.25
CEILING 0.1
   1.5 s -> {out}/metrics/probabilistic.json

== train margin head: MinkUNet14A, 3 epochs, 10 cm voxels -> {out}/runs/margin
   2 s, checkpoint {out}/runs/margin/best.pth

== evaluate margin on the validation scenes
METRICS 0.125
CEILING 0.1
   1.5 s -> {out}/metrics/margin.json

== predict a benchmark submission (probabilistic head, validation scenes) and validate it
   valid submission: 2 scenes, 17 masks; archives sub/semantic.zip, sub/instance.zip

== compare the two heads on the same scenes
   1.5 s -> {out}/report/index.html, viewer {out}/report/viewer

== visualize a validation scene
   vis/scene.png

done in 28 s

run                      mAP    AP50    AP25    mIoU
probabilistic          0.250   0.500   0.750   0.625
margin                 0.125   0.375   0.500   0.250
ceiling 10 cm          0.900   0.950   0.975   0.875

raw scenes    {out}/scannet/scans
prepared      {out}/prepared
ground truth  {out}/gt
runs          {out}/runs  (tensorboard --logdir {out}/runs)
metrics       {out}/metrics
submission    {out}/submission
report        {out}/report/index.html (+ report.md)
3D viewer     {out}/report/viewer/index.html  (minkseg view {out}/runs/* --serve)
visualization {out}/visualize
"""
