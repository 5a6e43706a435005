"""Config, training with exact resume, evaluation from files, submission writing and validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from minkseg.cli import main
from minkseg.config import ConfigError, load_config
from minkseg.engine.checkpoint import load_checkpoint
from minkseg.engine.train import Trainer
from minkseg.evaluation.evaluate import evaluate_dirs, evaluate_scenes
from minkseg.evaluation.submission import validate_submission, write_scene_submission
from minkseg.inference.instances import InstancePrediction
from minkseg.inference.predict import ScenePrediction, ground_truth_ids
from scannet_tools.export_gt import export_gt_all
from scannet_tools.labels import INSTANCE_NYU40_IDS
from scannet_tools.prepare import load_prepared
from scannet_tools.reader import ScenePaths, mesh_vertex_count


def tiny_config(raw_root, prepared_dir, tmp_path, **over):
    args = [f"data.root={raw_root}", f"data.prepared={prepared_dir}", f"runs_dir={tmp_path / 'runs'}",
            "data.voxel_size=0.1", "model.backbone=MinkUNet14A", "train.batch_size=1", "train.epochs=2",
            "train.val_every=0", "train.threads=1", "name=t"]
    return load_config(None, args + [f"{k}={v}" for k, v in over.items()])


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(Path(__file__).parents[1] / "configs" / "synthetic_margin.yaml", ["train.lr=0.01"])
    assert cfg.model.head == "margin" and cfg.train.lr == 0.01
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["model.hed=margin"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(None, ["train.epochs=1.5"])


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(head, raw_root, prepared_dir, tmp_path):
    full = Trainer(tiny_config(raw_root, prepared_dir, tmp_path, **{"model.head": head, "name": "full"}))
    full.fit()
    cfg = tiny_config(raw_root, prepared_dir, tmp_path, **{"model.head": head, "name": "cut"})
    Trainer(cfg).fit(max_steps=3)  # interrupted inside the second epoch (2 training scenes per epoch)
    with pytest.raises(FileExistsError):
        Trainer(cfg)
    resumed = Trainer(cfg, resume=True)
    assert resumed.step == 3 and resumed.epoch == 1 and resumed.epoch_step == 1
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_checkpoint_every_save_every_epochs_and_at_the_end(raw_root, prepared_dir, tmp_path, monkeypatch):
    import minkseg.engine.train

    saved = []
    real = minkseg.engine.train.save_checkpoint
    monkeypatch.setattr(minkseg.engine.train, "save_checkpoint", lambda path, state: (saved.append(state["epoch"]),
                                                                              real(path, state)))
    cfg = tiny_config(raw_root, prepared_dir, tmp_path, **{"train.epochs": 5, "train.save_every": 2})
    Trainer(cfg).fit()
    assert saved == [2, 4, 5]
    assert torch.load(cfg.run_dir / "last.pth", weights_only=True)["epoch"] == 5


def test_files_evaluate_like_memory_and_validator_accepts_own_output(raw_root, prepared_dir, tmp_path):
    gt_dir = tmp_path / "gt"
    export_gt_all(raw_root / "scans", gt_dir, raw_root / "scannetv2-labels.combined.tsv")
    rng = np.random.default_rng(0)
    rows, preds = [], []
    for f in sorted(prepared_dir.glob("*.npz")):
        s = load_prepared(f)
        gt = ground_truth_ids(s)
        inst = []
        for i in np.unique(gt[np.isin(gt // 1000, INSTANCE_NYU40_IDS)]):
            mask = (gt == i) ^ (rng.random(len(gt)) < 0.01)
            # the submission stores 6 decimals; use exactly those scores in memory too
            inst.append(InstancePrediction(mask, int(i // 1000), round(float(rng.random()), 6)))
        sem = np.where(rng.random(len(gt)) < 0.9, s["nyu40"], 1)
        p = ScenePrediction(s["scene"], sem, inst)
        preds.append(p)
        rows.append((gt, inst, s["nyu40"].astype(np.int64), sem))
    sub = tmp_path / "sub"
    for p in preds:
        write_scene_submission(p, sub)
    from_files, in_memory = evaluate_dirs(sub, gt_dir), evaluate_scenes(rows)
    assert json.dumps(from_files, sort_keys=True) == json.dumps(in_memory, sort_keys=True)  # NaN == NaN here
    assert 0 < in_memory["instance"]["mAP"] < 1 and 0 < in_memory["semantic"]["mIoU"] < 1
    counts = {p.scene: mesh_vertex_count(ScenePaths(raw_root / "scans" / p.scene).mesh, p.scene) for p in preds}
    assert validate_submission(sub, counts).ok


def _good_submission(tmp_path, n=200):
    sub = tmp_path / "sub"
    mask = np.zeros(n, bool)
    mask[:120] = True
    write_scene_submission(ScenePrediction("scene0000_00", np.full(n, 5), [InstancePrediction(mask, 5, 0.8)]), sub)
    return sub, {"scene0000_00": n}


def _corrupt(kind, sub):
    inst = sub / "instance" / "scene0000_00.txt"
    line = inst.read_text().strip()
    rel = line.split(" ")[0]
    if kind == "missing_scene":
        return {"scene0001_00": 200}
    if kind == "wrong_line_count":
        (sub / "semantic" / "scene0000_00.txt").write_text("5\n" * 199)
    elif kind == "invalid_label":
        (sub / "semantic" / "scene0000_00.txt").write_text("5\n" * 199 + "41\n")
    elif kind == "non_binary_mask":
        (sub / "instance" / rel).write_text("2\n" * 200)
    elif kind == "absolute_path":
        inst.write_text(f"{(sub / 'instance' / rel).resolve()} 5 0.8\n")
    elif kind == "outside_folder":
        inst.write_text("../../elsewhere.txt 5 0.8\n")
    elif kind == "bad_confidence":
        inst.write_text(f"{rel} 5 high\n")
    elif kind == "bad_instance_label":
        inst.write_text(f"{rel} 1 0.8\n")
    elif kind == "two_spaces":
        inst.write_text(f"{rel}  5 0.8\n")
    elif kind == "missing_mask":
        (sub / "instance" / rel).unlink()
    elif kind == "root_folder":
        shutil.move(str(sub), str(sub.parent / "tmpdir"))
        sub.mkdir()
        shutil.move(str(sub.parent / "tmpdir"), str(sub / "submission"))
    return None


CASES = {"missing_scene": "missing scene0001_00.txt", "wrong_line_count": "199 lines, the mesh has 200",
         "invalid_label": "label values outside", "non_binary_mask": "mask values outside [0, 1]",
         "absolute_path": "is absolute", "outside_folder": "points outside", "bad_confidence": "is not a number",
         "bad_instance_label": "not one of the 18 instance class ids", "two_spaces": "single spaces",
         "missing_mask": "does not exist", "root_folder": "root folder"}


@pytest.mark.parametrize("kind", list(CASES))
def test_validator_catches_broken_submissions(kind, tmp_path):
    sub, counts = _good_submission(tmp_path)
    assert validate_submission(sub, counts).ok
    counts = _corrupt(kind, sub) or counts
    report = validate_submission(sub, counts)
    assert not report.ok
    assert any(CASES[kind] in p for p in report.problems), report.problems


def test_train_evaluate_predict_cli(raw_root, prepared_dir, tmp_path, capsys):
    cfg_over = [f"data.root={raw_root}", f"data.prepared={prepared_dir}", f"runs_dir={tmp_path / 'runs'}",
                "data.voxel_size=0.1", "model.backbone=MinkUNet14A", "train.batch_size=2", "train.epochs=1",
                "train.val_every=1", "name=cli", "cluster.seed_threshold=0.0"]
    cfgfile = Path(__file__).parents[1] / "configs" / "synthetic_margin.yaml"
    assert main(["train", str(cfgfile), *cfg_over]) == 0
    ckpt = tmp_path / "runs" / "cli" / "last.pth"
    assert ckpt.is_file() and (tmp_path / "runs" / "cli" / "val" / "epoch_0001.json").is_file()
    model, cfg, state = load_checkpoint(ckpt)
    assert cfg.model.head == "margin" and state["epoch"] == 1
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", "val", "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert set(m) == {"instance", "semantic", "ceiling"} and set(m["instance"]) == {"mAP", "AP50", "AP25", "per_class"}
    assert m["ceiling"]["voxel_size"] == 0.1 and 0 < m["ceiling"]["mIoU"] <= 1
    assert "voxelization ceiling at 10 cm: mAP" in capsys.readouterr().out
    sub = tmp_path / "sub"
    assert main(["predict", "--checkpoint", str(ckpt), "--scans", str(raw_root / "scans"), "--split", "val",
                 "--out", str(sub), "--zip", "--max-masks", "5"]) == 0
    import zipfile

    names = zipfile.ZipFile(sub / "instance.zip").namelist()
    assert names and not any(n.startswith("instance/") for n in names)
    assert main(["validate-submission", str(sub), "--scans", str(raw_root / "scans"), "--split", "val"]) == 0
    assert "OK" in capsys.readouterr().out


def test_demo_runs_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--scenes", "3", "--small", "--epochs", "1"]) == 0
    text = capsys.readouterr().out
    for head in ("probabilistic", "margin"):
        m = json.loads((out / "metrics" / f"{head}.json").read_text())
        assert set(m) == {"instance", "semantic", "ceiling"}
        assert (out / "runs" / head / "last.pth").is_file()
    assert (out / "report" / "report.md").is_file() and (out / "report" / "ap_vs_iou.png").is_file()
    assert "voxelization ceiling" in (out / "report" / "report.md").read_text() and "ceiling 10 cm" in text
    assert (out / "submission" / "instance.zip").is_file() and "valid submission" in text
    assert list((out / "visualize").glob("*_pred_instance.ply"))
    # a second run resumes: nothing is retrained
    assert main(["demo", "--out", str(out), "--scenes", "3", "--small", "--epochs", "1"]) == 0


def test_demo_with_several_training_seeds_reports_each_head_over_seeds(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--scenes", "3", "--small", "--epochs", "1", "--seeds", "0,1"]) == 0
    text = capsys.readouterr().out
    for head in ("probabilistic", "margin"):
        per_seed = [json.loads((out / "metrics" / f"{head}_s{s}.json").read_text())["instance"]["AP50"] for s in (0, 1)]
        mean_line = next(line for line in text.splitlines() if line.startswith(f"{head} mean"))
        assert float(mean_line.split()[3]) == pytest.approx(np.mean(per_seed), abs=6e-4)  # columns: name, mAP, AP50
        assert any(line.startswith(f"{head} std") for line in text.splitlines())
    report = (out / "report" / "report.md").read_text()
    assert "Settings over seeds" in report and "probabilistic_s0, probabilistic_s1" in report
