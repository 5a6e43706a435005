"""``minkseg tune``: the search on cached network outputs, tuned.yaml, and its pick-up by evaluate/predict."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import minkseg.engine.tune as tune
from minkseg.cli import build_parser, main
from minkseg.config import ConfigError, load_config
from minkseg.engine.checkpoint import load_checkpoint
from minkseg.engine.train import Trainer
from minkseg.evaluation.model_eval import evaluate_model

VOXEL_SIZE = 0.1
STEPS = 80  # enough for the probabilistic head to find some instances of its training scene


@pytest.fixture(scope="module")
def trained(prepared_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A small probabilistic model fitted to one synthetic scene (no augmentation), and all the scenes."""
    scenes = sorted(p.stem for p in prepared_dir.glob("*.npz"))
    cfg = load_config(None, [
        f"data.prepared={prepared_dir}", f"data.train_split={scenes[0]}", f"data.val_split={scenes[0]}",
        f"runs_dir={tmp_path_factory.mktemp('runs')}", "name=tuned", f"data.voxel_size={VOXEL_SIZE}",
        "model.backbone=MinkUNet14A", "train.batch_size=1", f"train.epochs={STEPS}", "train.lr=0.003",
        "train.val_every=0", f"train.save_every={STEPS}", "train.threads=1", "train.workers=0",
        "data.augment.rotate_z=false", "data.augment.flip=false", "data.augment.scale=[1.0,1.0]",
        "data.augment.jitter_std=0", "data.augment.color_jitter_std=0", "cluster.min_size=5"])
    return Trainer(cfg, device="cpu").fit(), scenes


@pytest.fixture
def run(trained, tmp_path) -> tuple[Path, list[str]]:
    """A private run folder holding a copy of the trained checkpoint (tuned.yaml lands beside it)."""
    ckpt, scenes = trained
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(ckpt, folder / "last.pth")
    return folder / "last.pth", scenes


def _value(metrics: dict, metric: str) -> float:
    return metrics["instance"][metric]


def test_tune_writes_the_grid_best_and_runs_the_network_once_per_scene(run, monkeypatch):
    ckpt, scenes = run
    seen = []
    real = tune.forward_scene
    monkeypatch.setattr(tune, "forward_scene", lambda model, scene, cfg, device: (
        seen.append(scene["scene"]), real(model, scene, cfg, device))[1])
    space = {"tau": [0.1, 0.35], "seed_threshold": [0.5], "min_size": [5, 60]}  # 4 settings, the run's among them
    result, yaml_path, md_path = tune.tune_run(ckpt, ",".join(scenes), "AP50", space, "grid", progress=False)

    assert sorted(seen) == scenes  # one network pass per scene for all the settings
    assert len(result.rows) == 4 and result.rows[result.baseline].setting == {
        "tau_probabilistic": 0.35, "seed_threshold": 0.5, "min_size": 5}

    # every row is what evaluate_model says for that setting, and tuned.yaml holds the best of them
    model, cfg, _ = load_checkpoint(ckpt, tuned=False)
    rechecked = []
    for row in result.rows:
        metrics = evaluate_model(model, tune.with_cluster(cfg, row.setting), scenes)
        assert _value(metrics, "AP50") == _value(row.metrics, "AP50"), row.setting
        rechecked.append(_value(metrics, "AP50"))
    assert len(set(rechecked)) > 1, "the settings must differ for the test to tell them apart"
    written = yaml.safe_load(yaml_path.read_text())
    best = next(r for r in result.rows if r.setting == written["cluster"])
    assert _value(best.metrics, "AP50") == max(rechecked)
    assert written["metric"] == "AP50" and written["scenes"] == len(scenes) and written["checkpoint"] == "last.pth"
    assert written["value"] == pytest.approx(max(rechecked))

    rows = [line for line in md_path.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4
    assert sum("**best**" in r for r in rows) == 1 and sum("run's settings" in r for r in rows) == 1
    assert not (ckpt.parent / tune.CACHE_DIR).exists()


def test_outputs_spilled_to_disk_score_like_those_in_memory(run, tmp_path):
    ckpt, scenes = run
    model, cfg, _ = load_checkpoint(ckpt, tuned=False)
    in_memory = tune.build_cache(model, cfg, scenes, "cpu", tmp_path / "memory")
    on_disk = tune.build_cache(model, cfg, scenes, "cpu", tmp_path / "disk", budget=0)
    assert in_memory.disk_bytes == 0 and in_memory.memory_bytes > 0
    assert on_disk.memory_bytes == 0 and len(list((tmp_path / "disk").glob("*.pth"))) == len(scenes)
    for setting in ({"tau_probabilistic": 0.2}, {"tau_probabilistic": 0.35, "min_size": 60}):
        c = tune.with_cluster(cfg, setting)
        a, b = tune.score_setting(model, c, in_memory, "cpu"), tune.score_setting(model, c, on_disk, "cpu")
        for metric in ("mAP", "AP50", "AP25"):
            assert _value(a, metric) == _value(b, metric) or (math.isnan(_value(a, metric))
                                                            and math.isnan(_value(b, metric)))
        np.testing.assert_array_equal(list(a["semantic"]["per_class"].values()),
                                      list(b["semantic"]["per_class"].values()))
    on_disk.close()
    assert not (tmp_path / "disk").exists()


def _search_with_scores(monkeypatch, score, space: dict, mode: str = "descent", **cluster):
    """tune.search with a hand-made objective in place of the network and the benchmark."""
    cfg = load_config(None, [f"cluster.{k}={v}" for k, v in cluster.items()])
    calls = []

    def fake(model, c, cache, device, split_over_ranks=False):
        setting = (c.cluster.tau_probabilistic, c.cluster.seed_threshold, c.cluster.min_size)
        calls.append(setting)
        return {"instance": {"mAP": score(*setting), "AP50": 0.0, "AP25": 0.0}}

    monkeypatch.setattr(tune, "score_setting", fake)
    result = tune.search(None, cfg, tune.ForwardCache(0, Path("unused")), space, "mAP", "cpu", mode)
    return result, calls


def test_coordinate_descent_finds_the_optimum_and_scores_each_setting_once(monkeypatch):
    # separable objective with its maximum at tau 0.4, seed 0.6, min_size 40
    def score(tau, seed, size):
        return 1 - (tau - 0.4) ** 2 - (seed - 0.6) ** 2 - (math.log2(size) - math.log2(40)) ** 2 / 100

    space = {"tau_probabilistic": [0.2, 0.3, 0.4, 0.5], "seed_threshold": [0.4, 0.5, 0.6], "min_size": [10, 20, 40]}
    result, calls = _search_with_scores(monkeypatch, score, space)
    assert result.best_setting == {"tau_probabilistic": 0.4, "seed_threshold": 0.6, "min_size": 40}
    assert len(calls) == len(set(calls)) == len(result.rows)
    assert len(calls) < 4 * 3 * 3  # fewer than the grid
    grid, _ = _search_with_scores(monkeypatch, score, space, "grid")
    assert len(grid.rows) == 4 * 3 * 3 + 1  # the grid and the run's settings (0.35, 0.5, 20), scored first
    assert grid.best_setting == result.best_setting


def test_a_tie_keeps_the_runs_settings_and_nan_never_wins(monkeypatch):
    result, _ = _search_with_scores(monkeypatch, lambda tau, seed, size: 0.5,
                                    {"tau_probabilistic": [0.2, 0.35, 0.5], "seed_threshold": [0.5], "min_size": [20]})
    assert result.best == result.baseline
    result, _ = _search_with_scores(monkeypatch, lambda tau, seed, size: float("nan") if tau == 0.5 else tau,
                                    {"tau_probabilistic": [0.2, 0.35, 0.5], "seed_threshold": [0.5], "min_size": [20]})
    assert result.best_setting["tau_probabilistic"] == 0.35


def test_searched_keys_follow_the_settings_that_use_them():
    cfg = load_config(None, [])
    assert tune.searchable_keys(cfg) == ["tau_probabilistic", "seed_threshold", "min_size"]
    assert tune.searchable_keys(load_config(None, ["model.head=margin"]))[0] == "tau_margin"
    if hasattr(cfg.cluster, "hypotheses"):
        assert "hypothesis_threshold" in tune.searchable_keys(load_config(None, ["cluster.hypotheses=3"]))
    if hasattr(cfg.cluster, "grouping"):  # mean shift has no seeds
        assert "seed_threshold" not in tune.searchable_keys(load_config(None, ["cluster.grouping=meanshift"]))
    space = tune.default_space(load_config(None, ["cluster.tau_probabilistic=0.33"]))
    assert 0.33 in space["tau_probabilistic"] and space["min_size"] == sorted(space["min_size"])


def _write_tuned(folder: Path, text: str) -> Path:
    path = folder / tune.TUNED_FILE
    path.write_text(text)
    return path


TUNED = ("cluster:\n  tau_probabilistic: 0.25\n  min_size: 7\nmetric: AP50\nsplit: val\nscenes: 3\n"
         "checkpoint: last.pth\n")


def test_load_checkpoint_applies_tuned_yaml_and_says_so_once(run, capsys):
    ckpt, _ = run
    path = _write_tuned(ckpt.parent, TUNED)
    _, cfg, _ = load_checkpoint(ckpt)
    assert (cfg.cluster.tau_probabilistic, cfg.cluster.min_size) == (0.25, 7)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "tau_probabilistic=0.25" in err[0] and "--no-tuned" in err[0]
    _, cfg, _ = load_checkpoint(ckpt, tuned=False)
    assert (cfg.cluster.tau_probabilistic, cfg.cluster.min_size) == (0.35, 5)
    assert capsys.readouterr().err == ""


def test_evaluate_and_predict_use_tuned_settings_unless_told_not_to(run, raw_root, tmp_path, monkeypatch, capsys):
    import minkseg.evaluation.model_eval
    import minkseg.evaluation.submission

    ckpt, scenes = run
    _write_tuned(ckpt.parent, TUNED)
    used = []
    real_eval, real_predict = evaluate_model, minkseg.evaluation.submission.predict_submission
    monkeypatch.setattr(minkseg.evaluation.model_eval, "evaluate_model", lambda model, cfg, *a, **k: (
        used.append((cfg.cluster.tau_probabilistic, cfg.cluster.min_size)), real_eval(model, cfg, *a, **k))[1])
    monkeypatch.setattr(minkseg.evaluation.submission, "predict_submission", lambda model, cfg, *a, **k: (
        used.append((cfg.cluster.tau_probabilistic, cfg.cluster.min_size)), real_predict(model, cfg, *a, **k))[1])

    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", scenes[0]]) == 0
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", scenes[0], "--no-tuned"]) == 0
    predict = ["predict", "--checkpoint", str(ckpt), "--scans", str(raw_root / "scans"), "--split", scenes[0]]
    assert main(predict + ["--out", str(tmp_path / "a")]) == 0
    assert main(predict + ["--out", str(tmp_path / "b"), "--no-tuned"]) == 0
    assert used == [(0.25, 7), (0.35, 5), (0.25, 7), (0.35, 5)]
    assert capsys.readouterr().err.count("using tuned clustering settings from") == 2


def test_compare_and_visualize_accept_no_tuned():
    parser = build_parser()
    for argv in (["compare", "r", "--out", "o", "--no-tuned"],
                 ["visualize", "--checkpoint", "c", "--scans", "s", "--scene", "x", "--out", "o", "--no-tuned"]):
        assert parser.parse_args(argv).no_tuned


@pytest.mark.parametrize("text, problem", [
    ("cluster: [1, 2\n", "not valid YAML"),
    ("- a list\n", "'cluster' section"),
    ("metric: AP50\n", "'cluster' section"),
    ("cluster:\n  tau_probabilistic: high\n", "expected float"),
    ("cluster:\n  tau: 0.3\n", "unknown key"),
])
def test_malformed_tuned_yaml_is_one_line_naming_the_file(run, capsys, text, problem):
    ckpt, scenes = run
    path = _write_tuned(ckpt.parent, text)
    with pytest.raises(ConfigError, match=problem):
        load_checkpoint(ckpt)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", scenes[0]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:") and problem in err[0]
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", scenes[0], "--no-tuned"]) == 0


def test_tune_command_writes_files_that_evaluate_picks_up(run, capsys):
    ckpt, scenes = run
    split = ",".join(scenes)
    assert main(["tune", str(ckpt.parent), "--split", split, "--search", "grid", "--tau", "0.1,0.35",
                 "--seed-threshold", "0.5", "--min-size", "5"]) == 0
    out = capsys.readouterr().out
    assert "**best**" in out and (ckpt.parent / "tune.md").is_file()
    written = yaml.safe_load((ckpt.parent / tune.TUNED_FILE).read_text())
    assert set(written["cluster"]) == {"tau_probabilistic", "seed_threshold", "min_size"}
    _, cfg, _ = load_checkpoint(ckpt)
    assert cfg.cluster.tau_probabilistic == written["cluster"]["tau_probabilistic"]
    assert main(["tune", str(ckpt.parent), "train.lr=1"]) == 2  # only cluster options can be fixed
    assert "cluster.* options only" in capsys.readouterr().err
