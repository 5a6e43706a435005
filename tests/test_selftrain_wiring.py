"""Self-training wiring, stage by stage, without training: which scenes are labelled
(``data.label_list``), what each student's dataset holds (repeats, pseudo-label files,
weights), which weights each student and the baseline start from, what the teacher is asked
for, and what the summary says. The network stages (Trainer, evaluation, the teacher's
pseudo labels) are replaced by recorders; the real ones run in test_selftrain.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from minkseg.config import load_config, to_dict
from minkseg.engine import selftrain as selftrain_module
from minkseg.engine.checkpoint import save_checkpoint
from minkseg.engine.pseudo_labels import PseudoLabels
from minkseg.engine.selftrain import (
    BASELINE,
    SelfTraining,
    _format_stats,
    _pct,
    certainty_threshold,
    format_summary,
    round_config,
)
from scannet_tools.prepare import prepared_path

# two scenes of the shipped 1 % list, three outside it, in split order
IN_LIST = ["scene0239_00", "scene0013_02"]
TRAIN = ["scene0239_00", "scene0900_00", "scene0013_02", "scene0901_00", "scene0902_00"]
VAL = ["scene0950_00"]


@pytest.fixture
def bare(tmp_path) -> Path:
    """A prepared folder whose files only exist (enough to pick scenes; nothing here reads them)."""
    d = tmp_path / "prepared"
    d.mkdir()
    for s in TRAIN + VAL:
        prepared_path(d, s).touch()
    return d


def start(cfg, resume: bool = False) -> SelfTraining:
    """A self-training run on the CPU (the device is pinned so that a GPU machine gives the same answers)."""
    return SelfTraining(cfg, resume=resume, device="cpu")


def make_cfg(bare: Path, *over: str):
    return load_config(None, [f"data.prepared={bare}", f"runs_dir={bare.parent / 'runs'}", "name=w",
                              f"data.train_split={','.join(TRAIN)}", f"data.val_split={','.join(VAL)}",
                              "data.label_list=1", "data.voxel_size=0.1", "train.seed=7", "train.epochs=4",
                              "selftrain.rounds=2", *over])


def test_label_list_picks_the_labelled_scenes_and_the_split_is_recorded(bare, monkeypatch):
    cfg = make_cfg(bare)
    asked = []
    monkeypatch.setattr(selftrain_module, "resolve_device", lambda spec: asked.append(spec) or torch.device("cpu"))
    st = start(cfg)
    assert asked == ["cpu"]
    assert st.labeled == IN_LIST and st.unlabeled == ["scene0900_00", "scene0901_00", "scene0902_00"]
    assert st.val == VAL and st.device == torch.device("cpu") and st.root == bare.parent / "runs" / "w"
    split = {"labeled": IN_LIST, "unlabeled": st.unlabeled}
    assert (st.root / "split.json").read_text() == json.dumps(split, indent=1) + "\n"
    assert to_dict(load_config(st.root / "selftrain.yaml")) == to_dict(cfg)
    # a ratio instead of the list: 2 of 5, disjoint from and together with the unlabelled ones the split
    ratio = start(make_cfg(bare, "data.label_list=0", "data.label_ratio=0.4", "name=r"))
    assert len(ratio.labeled) == 2 and sorted(ratio.labeled + ratio.unlabeled) == sorted(TRAIN)
    assert [s for s in TRAIN if s in ratio.labeled] == ratio.labeled  # split order kept


BAD_SCHEDULE = r"^selftrain: rounds >= 0, a non-empty certainty schedule and pseudo_weight >= 0 needed$"


@pytest.mark.parametrize("over,message", [
    (["selftrain.rounds=-1"], BAD_SCHEDULE),
    (["selftrain.certainty=[]"], BAD_SCHEDULE),
    (["selftrain.pseudo_weight=-0.5"], BAD_SCHEDULE),
    (["data.label_list=0", "data.label_ratio=1.0"], "^selftrain needs unlabelled scenes: set data.label_ratio < 1 "
                                                      "or data.label_list$"),
    ([f"data.train_split={','.join(TRAIN[1:2] + TRAIN[3:])}"], "^scene0900_00,scene0901_00,scene0902_00: no "
                                                               "labelled training scene \\(check data.label_list\\)$"),
])
def test_selftraining_refuses_bad_settings(bare, over, message):
    with pytest.raises(ValueError, match=message):
        start(make_cfg(bare, *over))


def test_selftraining_accepts_the_setting_limits(bare):
    st = start(make_cfg(bare, "selftrain.rounds=0", "selftrain.pseudo_weight=0"))
    assert st.cfg.selftrain.rounds == 0


def test_an_existing_run_needs_resume_and_the_same_split_and_config(bare):
    cfg = make_cfg(bare)
    start(cfg)
    with pytest.raises(FileExistsError, match=r"w already holds a self-training run; pass --resume or another name="):
        SelfTraining(cfg, device="cpu")  # not resuming is the default
    again = start(cfg, resume=True)
    assert again.labeled == IN_LIST
    with pytest.raises(ValueError, match="the run was started with a different config"):
        start(make_cfg(bare, "selftrain.pseudo_weight=0.5"), resume=True)
    with pytest.raises(ValueError, match="split.json: the run was started with another label split"):
        start(make_cfg(bare, "data.label_list=0", "data.label_ratio=0.4"), resume=True)


def test_round_config():
    cfg = load_config(None, ["name=base", "train.epochs=9", "train.val_every=3", "selftrain.epochs=2",
                             "selftrain.recorrect=false", "model.recorrector=true"])
    r0, r3 = round_config(cfg, 0), round_config(cfg, 3)
    assert (r0.name, r0.train.epochs, r0.train.val_every, r0.model.recorrector) == ("base/round_0", 9, 0, False)
    assert (r3.name, r3.train.epochs, r3.train.val_every, r3.model.recorrector) == ("base/round_3", 2, 0, False)
    assert round_config(cfg, 0, BASELINE).name == f"base/{BASELINE}"
    # the given config is left alone
    assert (cfg.name, cfg.train.epochs, cfg.train.val_every, cfg.model.recorrector) == ("base", 9, 3, True)
    same = load_config(None, ["name=base", "train.epochs=9", "selftrain.epochs=0", "selftrain.recorrect=true"])
    assert round_config(same, 2).train.epochs == 9 and round_config(same, 2).model.recorrector is True


def test_certainty_schedule_of_one_entry_and_of_several():
    cfg = load_config(None, ["selftrain.certainty=[0.2,0.6]"])
    assert [certainty_threshold(cfg, r) for r in (1, 2, 3)] == [0.2, 0.6, 0.6]


def write_pseudo(folder: Path, scenes: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        (folder / f"{s}.npz").touch()
    return folder


@pytest.mark.parametrize("repeat,pseudo_scenes,copies", [
    (0, ["scene0900_00", "scene0901_00", "scene0902_00"], 2),  # round(3 / 2) = 2 copies balance the unlabelled
    (0, ["scene0902_00"], 1),  # round(1 / 2) = 0: at least one copy
    (0, [], 1),
    (3, ["scene0901_00"], 3),  # configured
])
def test_student_dataset_repeats_labelled_scenes_and_weights_pseudo_ones(bare, repeat, pseudo_scenes, copies):
    st = start(make_cfg(bare, f"selftrain.labeled_repeat={repeat}", "selftrain.pseudo_weight=0.25",
                               "data.use_normals=true"))
    pseudo = write_pseudo(st.root / "round_2" / "pseudo", pseudo_scenes)
    ds = st.student_dataset(2, pseudo)
    labelled = [prepared_path(bare, s) for s in IN_LIST] * copies
    in_order = [s for s in st.unlabeled if s in pseudo_scenes]  # the unlabelled scenes' order, files present
    assert ds.files == labelled + [prepared_path(bare, s) for s in in_order]
    assert ds.label_files == [None] * len(labelled) + [pseudo / f"{s}.npz" for s in in_order]
    assert ds.weights == [1.0] * len(labelled) + [0.25] * len(in_order)
    assert ds.seed == 7 + 1000 * 2 and ds.voxel_size == 0.1 and ds.use_normals is True
    assert ds.augment == st.cfg.data.augment


class Recorder:
    """Stands in for SelfTraining's stages: records the calls, returns tagged values."""

    def __init__(self, st: SelfTraining, monkeypatch):
        self.trained: list[tuple] = []
        self.pseudo: list[int] = []
        self.weights: list[str] = []
        monkeypatch.setattr(st, "_train", lambda cfg, run, dataset, init, what:
                            self.trained.append((cfg, run, dataset, init, what)))
        monkeypatch.setattr(st, "pseudo_labels", self.fake_pseudo_labels)
        monkeypatch.setattr(st, "_weights", lambda run: self.weights.append(run) or {"from": run})
        self.st = st

    def fake_pseudo_labels(self, r: int) -> Path:
        self.pseudo.append(r)
        return write_pseudo(self.st.root / f"round_{r}" / "pseudo", self.st.unlabeled)


@pytest.mark.parametrize("init_from_teacher", [True, False])
def test_each_student_trains_on_its_rounds_pseudo_labels_from_the_previous_round(bare, monkeypatch,
                                                                                init_from_teacher):
    st = start(make_cfg(bare, f"selftrain.init_from_teacher={init_from_teacher}", "selftrain.epochs=1"))
    rec = Recorder(st, monkeypatch)
    st.train_round(0)
    cfg, run, dataset, init, what = rec.trained[-1]
    assert (cfg.name, cfg.train.epochs, run, dataset, init, what) == ("w/round_0", 4, st.root / "round_0", None,
                                                                      None, "round 0")
    assert rec.pseudo == [] and rec.weights == []
    for r in (1, 2):
        st.train_round(r)
        cfg, run, dataset, init, what = rec.trained[-1]
        assert (cfg.name, cfg.train.epochs, run, what) == (f"w/round_{r}", 1, st.root / f"round_{r}", f"round {r}")
        assert rec.pseudo[-1] == r
        assert dataset.label_files[-3:] == [st.root / f"round_{r}" / "pseudo" / f"{s}.npz" for s in st.unlabeled]
        assert dataset.seed == 7 + 1000 * r
        assert init == ({"from": f"round_{r - 1}"} if init_from_teacher else None)
    assert rec.weights == (["round_0", "round_1"] if init_from_teacher else [])


def test_a_finished_round_is_skipped(bare, monkeypatch, capsys):
    st = start(make_cfg(bare))
    rec = Recorder(st, monkeypatch)
    (st.root / "round_1").mkdir()
    (st.root / "round_1" / "metrics.json").write_text("{}")
    capsys.readouterr()
    st.train_round(1)
    assert rec.trained == [] and rec.pseudo == []
    assert "round 1: finished earlier, skipped" in capsys.readouterr().out


@pytest.mark.parametrize("student_epochs,budget", [(3, 6), (0, 8)])  # 2 rounds of 3 epochs, or of train.epochs=4
def test_same_budget_baseline_continues_round_0_on_labelled_scenes(bare, monkeypatch, student_epochs, budget):
    st = start(make_cfg(bare, f"selftrain.epochs={student_epochs}", "selftrain.labeled_repeat=2"))
    rec = Recorder(st, monkeypatch)
    write_pseudo(st.root / "round_2" / "pseudo", st.unlabeled[:2])  # 2 labelled x 2 + 2 pseudo = 6 scenes
    st.train_baseline()
    cfg, run, dataset, init, what = rec.trained[-1]
    assert (cfg.name, cfg.train.epochs, cfg.train.val_every, run, what) == (
        "w/supervised_same_budget", budget, 0, st.root / "supervised_same_budget", "supervised, same budget")
    assert init == {"from": "round_0"}
    assert dataset.files == [prepared_path(bare, s) for s in IN_LIST * 3]  # as many scenes, labelled ones only
    assert dataset.label_files == [None] * 6 and dataset.weights == [1.0] * 6
    assert dataset.seed == 7 + 1000 * 3
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    st.train_baseline()
    assert len(rec.trained) == 1  # finished: not trained again


@pytest.mark.parametrize("same_budget", [True, False])
def test_run_trains_every_round_then_the_baseline(bare, monkeypatch, capsys, same_budget):
    st = start(make_cfg(bare, f"selftrain.same_budget_baseline={same_budget}"))
    calls = []
    monkeypatch.setattr(st, "train_round", lambda r: calls.append(r))
    monkeypatch.setattr(st, "train_baseline", lambda: calls.append(BASELINE))
    monkeypatch.setattr(st, "summarize", lambda: calls.append("summary") or {"done": 1})
    capsys.readouterr()
    assert st.run() == {"done": 1}
    assert calls == [0, 1, 2] + ([BASELINE] if same_budget else []) + ["summary"]
    assert capsys.readouterr().out == (f"self-training {st.root}: 2 labelled, 3 unlabelled, 1 validation scenes; "
                                       "rounds 0..2\n")


def test_weights_are_the_final_weights_of_the_named_round(bare):
    st = start(make_cfg(bare))
    (st.root / "round_1").mkdir()
    save_checkpoint(st.root / "round_1" / "last.pth", {"model": {"w": torch.tensor([1.0, 2.0])}, "config": {}})
    assert torch.equal(st._weights("round_1")["w"], torch.tensor([1.0, 2.0]))


class FakeTrainer:
    made: list[dict] = []

    def __init__(self, cfg, resume=False, device=None, dataset=None, init_model=None):
        FakeTrainer.made.append(dict(cfg=cfg, resume=resume, device=device, dataset=dataset, init_model=init_model))
        self.model, self.dataset, self.step, self.world, self.workers = "model", [1, 2, 3], 0, 1, 5

    def fit(self):
        self.step = 42


def test_train_resumes_from_last_and_writes_the_rounds_metrics(bare, monkeypatch, capsys):
    st = start(make_cfg(bare))
    evaluated = []
    metrics = {"instance": {"mAP": 0.1, "AP50": 0.2, "AP25": 0.3}, "semantic": {"mIoU": 0.4}}

    def fake_evaluate(model, cfg, scenes, device, workers, split_over_ranks):
        evaluated.append((model, cfg, scenes, device, workers, split_over_ranks))
        return dict(metrics)

    FakeTrainer.made = []
    monkeypatch.setattr(selftrain_module, "Trainer", FakeTrainer)
    monkeypatch.setattr(selftrain_module, "evaluate_model", fake_evaluate)
    cfg = round_config(st.cfg, 1)
    run = st.root / "round_1"
    capsys.readouterr()
    st._train(cfg, run, "dataset", {"w": 1}, "round 1")
    assert capsys.readouterr().out == ("round 1: 3 scenes per epoch, 4 epochs, world size 1\n"
                                       "round 1: val mAP 0.100 AP50 0.200 AP25 0.300 mIoU 0.400 after 42 steps\n")
    assert FakeTrainer.made == [dict(cfg=cfg, resume=False, device="cpu", dataset="dataset", init_model={"w": 1})]
    assert evaluated == [("model", cfg, VAL, torch.device("cpu"), 5, True)]
    assert json.loads((run / "metrics.json").read_text()) == metrics | {"steps": 42}
    (run / "last.pth").touch()
    st._train(cfg, run, None, None, "round 1")
    assert FakeTrainer.made[-1]["resume"] is True


class FakeTqdm:
    """Records each progress bar's settings; writes lines as tqdm.write does (to stdout)."""

    bars: list[dict] = []

    def __init__(self, iterable, **settings):
        FakeTqdm.bars.append(settings)
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    @staticmethod
    def write(line: str) -> None:
        print(line)


def fake_labels(n: int) -> PseudoLabels:
    return PseudoLabels(np.zeros(n, np.int64), np.full(n, -1), np.zeros(0, np.int64), np.zeros(0, np.float32), 2)


COUNTS = {"vertices": 4, "semantic_labelled": 2, "semantic_checked": 2, "annotated": 4, "semantic_correct": 1,
          "instance_vertices": 1, "proposals": 2, "pseudo_instances": 1, "pseudo_matched": 1, "true_instances": 2,
          "true_matched": 1}


@pytest.mark.parametrize("r,recorrector,instances,recorrect", [(1, True, False, False), (2, True, True, True),
                                                              (3, False, True, False)])
def test_pseudo_labels_ask_the_previous_rounds_teacher(bare, monkeypatch, capsys, r, recorrector, instances,
                                                      recorrect):
    st = start(make_cfg(bare, "selftrain.certainty=[0.3,0.6,0.8]", "selftrain.recorrect=true",
                        "selftrain.rounds=3", "train.workers=3"))
    teacher = torch.nn.Module()
    teacher.recorrector = torch.nn.Linear(1, 1) if recorrector else None
    loaded, asked = [], []
    monkeypatch.setattr(selftrain_module, "load_checkpoint",
                        lambda path, device, tuned: loaded.append((path, device, tuned)) or (teacher, None, None))
    broken = st.unlabeled[1]

    def fake_iterate(files, workers, errors_as_values):
        assert errors_as_values and workers == 3  # train.workers
        for f in files:
            name = Path(f).stem
            yield OSError("truncated") if name == broken else {"scene": name, "xyz": np.zeros((4, 3))}

    def fake_label(model, data, cfg, instances_, threshold, recorrect_, device):
        asked.append((model, data["scene"], cfg.name, cfg.model.recorrector, instances_, threshold, recorrect_,
                      device))
        return fake_labels(4)

    monkeypatch.setattr(selftrain_module, "iterate_prepared", fake_iterate)
    monkeypatch.setattr(selftrain_module, "pseudo_label_scene", fake_label)
    counted = []
    monkeypatch.setattr(selftrain_module, "pseudo_label_stats", lambda labels, data: counted.append(
        (labels.proposals, data["scene"])) or COUNTS)
    FakeTqdm.bars = []
    monkeypatch.setattr(selftrain_module, "tqdm", FakeTqdm)
    capsys.readouterr()
    out = st.pseudo_labels(r)
    assert counted == [(2, s) for s in st.unlabeled if s != broken]  # each scene's labels against its own truth
    # a progress bar over the scenes (off where the output is not a terminal), a line per failed scene, the stats
    assert FakeTqdm.bars == [dict(total=3, desc=f"round {r} pseudo labels", unit="scene", disable=None)]
    stats = json.loads((out / "stats.json").read_text())
    assert capsys.readouterr().out == f"{broken}: no pseudo labels (OSError: truncated)\n" + _format_stats(stats) + "\n"
    assert out == st.root / f"round_{r}" / "pseudo"
    assert loaded == [(st.root / f"round_{r - 1}" / "last.pth", torch.device("cpu"), False)]
    threshold = [0.3, 0.6, 0.8][r - 1]
    ok = [s for s in st.unlabeled if s != broken]
    assert asked == [(teacher, s, f"w/round_{r - 1}", True, instances, threshold, recorrect, torch.device("cpu"))
                     for s in ok]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{s}.npz" for s in ok] + ["stats.json"])
    stats = json.loads((out / "stats.json").read_text())
    assert stats["scenes"] == 2 and stats["semantic_coverage"] == 0.5 and stats["instance_recall"] == 0.5
    assert (stats["round"], stats["instances"], stats["recorrect"], stats["failed"]) == (r, instances, recorrect,
                                                                                         [broken])
    assert stats["certainty_threshold"] == (threshold if instances else None)
    # finished: nothing is labelled again; unfinished: only the scenes without a file
    asked.clear()
    loaded.clear()
    assert st.pseudo_labels(r) == out and asked == [] and loaded == []  # not even the teacher is loaded
    (out / "stats.json").unlink()
    (out / f"{ok[0]}.npz").unlink()
    st.pseudo_labels(r)
    assert [a[1] for a in asked] == [ok[0]]


def write_metrics(run: Path, steps: int, value: float) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({"instance": {"mAP": value, "AP50": value + 0.1, "AP25": value + 0.2},
                                                  "semantic": {"mIoU": value + 0.3}, "steps": steps}))


def test_summary_adds_up_steps_and_carries_pseudo_stats(bare, monkeypatch, capsys):
    import minkseg.viz.compare

    st = start(make_cfg(bare))
    compared = []
    monkeypatch.setattr(minkseg.viz.compare, "compare_runs", lambda runs, out, device: compared.append(
        (runs, out, device)))
    for r, steps in enumerate((10, 4, 6)):
        write_metrics(st.root / f"round_{r}", steps, 0.1 * r)
    write_metrics(st.root / BASELINE, 12, 0.05)
    pseudo = {"round": 1, "instances": False, "semantic_coverage": 0.5}
    (st.root / "round_1" / "pseudo").mkdir()
    (st.root / "round_1" / "pseudo" / "stats.json").write_text(json.dumps(pseudo))
    capsys.readouterr()
    summary = st.summarize()
    rows = summary["rounds"]
    assert capsys.readouterr().out == format_summary(rows) + "\n"
    assert [(row["run"], row["steps"]) for row in rows] == [("round_0", 10), ("round_1", 14), ("round_2", 20),
                                                            (BASELINE, 22)]  # the baseline continues round 0
    assert rows[2]["mAP"] == pytest.approx(0.2) and rows[2]["AP50"] == pytest.approx(0.3)
    assert rows[2]["AP25"] == pytest.approx(0.4) and rows[2]["mIoU"] == pytest.approx(0.5)
    assert [row["pseudo"] for row in rows] == [None, pseudo, None, None]
    assert summary["labeled"] == IN_LIST and summary["unlabeled"] == st.unlabeled
    assert summary["config"] == to_dict(st.cfg)
    assert json.loads((st.root / "summary.json").read_text()) == summary
    assert (st.root / "summary.md").read_text() == format_summary(rows)
    assert compared == [([st.root / f"round_{r}" for r in range(3)] + [st.root / BASELINE], st.root / "compare",
                         "cpu")]
    (st.root / BASELINE / "metrics.json").unlink()  # no baseline: not summarized
    assert [row["run"] for row in st.summarize()["rounds"]] == ["round_0", "round_1", "round_2"]


def test_format_summary_table():
    rows = [{"run": "round_0", "steps": 10, "mAP": 0.1234, "AP50": 0.5, "AP25": 1.0, "mIoU": float("nan"),
             "pseudo": None},
            {"run": "round_1", "steps": 20, "mAP": 0.0, "AP50": 0.25, "AP25": 0.5, "mIoU": 0.75,
             "pseudo": {"instances": False, "semantic_coverage": 0.5, "semantic_precision": 0.9,
                        "semantic_recall": None, "pseudo_instances": 0, "instance_precision": 0.5,
                        "instance_recall": 0.5}},  # round 1: instance columns stay empty
            {"run": "round_2", "steps": 30, "mAP": 0.3, "AP50": 0.4, "AP25": 0.5, "mIoU": 0.6,
             "pseudo": {"instances": True, "semantic_coverage": 0.6, "semantic_precision": 0.7,
                        "semantic_recall": 0.8, "pseudo_instances": 12, "instance_precision": 0.125,
                        "instance_recall": 0.375}}]
    assert format_summary(rows) == (
        "| run | steps | mAP | AP50 | AP25 | mIoU | sem. coverage | sem. P | sem. R | inst. kept | inst. P "
        "| inst. R |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| round_0 | 10 | 12.3 | 50.0 | 100.0 | - | - | - | - | - | - | - |\n"
        "| round_1 | 20 | 0.0 | 25.0 | 50.0 | 75.0 | 50.0 | 90.0 | - | - | - | - |\n"
        "| round_2 | 30 | 30.0 | 40.0 | 50.0 | 60.0 | 60.0 | 70.0 | 80.0 | 12 | 12.5 | 37.5 |\n")


def test_pseudo_label_stats_line():
    semantic = {"round": 2, "scenes": 3, "semantic_coverage": 0.5, "semantic_precision": float("nan"),
                "semantic_recall": 0.125, "instances": False}
    assert _format_stats(semantic) == ("round 2 pseudo labels on 3 scenes: semantic coverage 50.0%, precision -%, "
                                       "recall 12.5%; no instance pseudo labels in this round")
    both = semantic | {"instances": True, "pseudo_instances": 4, "proposals": 9, "instance_precision": 0.75,
                       "instance_recall": 1.0}
    assert _format_stats(both) == ("round 2 pseudo labels on 3 scenes: semantic coverage 50.0%, precision -%, "
                                   "recall 12.5%; 4 of 9 proposals kept, instance precision 75.0%, recall 100.0%")
    measured = semantic | {"semantic_precision": 0.875}  # a measured precision is printed, not dropped
    assert _format_stats(measured) == ("round 2 pseudo labels on 3 scenes: semantic coverage 50.0%, precision 87.5%, "
                                       "recall 12.5%; no instance pseudo labels in this round")
    assert [_pct(v) for v in (None, math.nan, 0.0, 0.5, 1)] == ["-", "-", "0.0", "50.0", "100.0"]


def test_a_rank_other_than_0_labels_its_scenes_but_writes_nothing_shared(bare, monkeypatch, capsys):
    cfg = make_cfg(bare)
    st = start(cfg)  # rank 0 set the run up
    written = {f: ((st.root / f).stat().st_ino, (st.root / f).read_text()) for f in ("split.json", "selftrain.yaml")}
    monkeypatch.setattr(selftrain_module.distributed, "is_main", lambda: False)
    again = start(cfg, resume=True)
    assert again.unlabeled == st.unlabeled
    assert {f: ((st.root / f).stat().st_ino, (st.root / f).read_text()) for f in written} == written  # not rewritten
    monkeypatch.setattr(selftrain_module, "load_checkpoint", lambda path, device, tuned: (torch.nn.Module(), None,
                                                                                         None))
    monkeypatch.setattr(selftrain_module, "iterate_prepared", lambda files, workers, errors_as_values: (
        {"scene": Path(f).stem} for f in files))
    monkeypatch.setattr(selftrain_module, "pseudo_label_scene", lambda *args: fake_labels(4))
    monkeypatch.setattr(selftrain_module, "pseudo_label_stats", lambda labels, data: COUNTS)
    FakeTqdm.bars = []
    monkeypatch.setattr(selftrain_module, "tqdm", FakeTqdm)
    capsys.readouterr()
    out = again.pseudo_labels(1)
    assert FakeTqdm.bars[0]["disable"] is True  # one progress bar per node, rank 0's
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.npz" for s in st.unlabeled)  # no stats.json
    assert again.summarize() == {}
    monkeypatch.setattr(again, "train_round", lambda r: None)
    monkeypatch.setattr(again, "summarize", lambda: {})
    again.run()
    assert capsys.readouterr().out == ""  # progress lines come from rank 0 alone
    FakeTrainer.made = []
    monkeypatch.setattr(selftrain_module, "Trainer", FakeTrainer)
    monkeypatch.setattr(selftrain_module, "evaluate_model", lambda *a, **k: {
        "instance": {"mAP": 0.1, "AP50": 0.2, "AP25": 0.3}, "semantic": {"mIoU": 0.4}})
    again._train(round_config(cfg, 0), st.root / "round_0", None, None, "round 0")
    assert FakeTrainer.made and not (st.root / "round_0" / "metrics.json").exists()


def test_weights_are_read_onto_the_runs_device(bare, monkeypatch):
    st = start(make_cfg(bare))
    st.device = torch.device("meta")  # stands for a GPU: the weights must be mapped to the run's device
    read = []
    monkeypatch.setattr(selftrain_module, "read_checkpoint", lambda path, *a, **k: read.append((path, a, k)) or {
        "model": {"w": 1}})
    assert st._weights("round_3") == {"w": 1}
    assert read == [(st.root / "round_3" / "last.pth", (torch.device("meta"),), {})]
