"""minkseg.engine.tune piece by piece with exact values and stand-ins for the network and the
benchmark (test_tune.py runs the whole command on a trained model): the searched keys and their
candidates, the output cache (memory budget, spill to disk, round trip), the scoring wiring,
coordinate descent and the grid step by step, the table and tuned.yaml as text, reading
tuned.yaml back, and what tune_run passes where."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import minkseg.data.splits as splits_module
import minkseg.engine.checkpoint as checkpoint_module
from minkseg.config import ConfigError, load_config
from minkseg.data.voxelize import VoxelScene, collate, voxelize
from minkseg.engine import distributed, tune
from minkseg.engine.tune import (
    CachedScene,
    ForwardCache,
    TrialRow,
    TuneResult,
    apply_tuned,
    default_space,
    format_table,
    read_tuned,
    resolve_metric,
    search,
    searchable_keys,
    tau_key,
    with_cluster,
    write_results,
)
from minkseg.inference.predict import SceneForward
from minkseg.models.heads import MarginOutput
from minkseg.models.model import ModelOutput

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(*over: str):
    return load_config(CONFIGS / "synthetic_margin.yaml", ["model.backbone=MinkUNet14A", "cluster.tau_margin=0.45",
                                                           "cluster.seed_threshold=0.5", "cluster.min_size=20",
                                                           *over])


# ------------------------------------------------------------------------------ what is searched


def test_tau_key_follows_the_head():
    assert tau_key(config()) == "tau_margin" and tau_key(config("model.head=probabilistic")) == "tau_probabilistic"


@pytest.mark.parametrize("over, keys", [
    ((), ["tau_margin", "seed_threshold", "min_size"]),
    (("cluster.taus=[0.3,0.5]",), ["seed_threshold", "min_size"]),
    (("cluster.grouping=meanshift",), ["tau_margin", "min_size"]),
    (("cluster.hypotheses=2",), ["tau_margin", "seed_threshold", "min_size", "hypothesis_threshold"]),
    (("model.head=probabilistic", "cluster.hypotheses=1"), ["tau_probabilistic", "seed_threshold", "min_size"]),
])
def test_searchable_keys(over, keys):
    assert searchable_keys(config(*over)) == keys


def test_default_space_adds_the_runs_own_value_sorted():
    space = default_space(config("cluster.hypotheses=3", "cluster.hypothesis_threshold=0.25", "cluster.min_size=7"))
    assert space == {"tau_margin": [0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7], "seed_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
                     "min_size": [5, 7, 10, 20, 40, 80], "hypothesis_threshold": [0.1, 0.2, 0.25, 0.3, 0.5]}
    assert default_space(config("model.head=probabilistic", "cluster.tau_probabilistic=0.2")) == {
        "tau_probabilistic": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "seed_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
        "min_size": [5, 10, 20, 40, 80]}


def test_with_cluster_replaces_only_the_given_keys_and_validates():
    cfg = config()
    out = with_cluster(cfg, {"min_size": 3, "tau_margin": 0.9})
    assert (out.cluster.min_size, out.cluster.tau_margin, out.cluster.seed_threshold) == (3, 0.9, 0.5)
    assert cfg.cluster.min_size == 20 and out.model == cfg.model
    with pytest.raises(ConfigError, match=r"^cluster: unknown key\(s\) \['tau'\]"):
        with_cluster(cfg, {"tau": 0.3})


# ------------------------------------------------------------------------------ the cache


def voxel_scene(name: str = "s", n: int = 3) -> VoxelScene:
    xyz = np.arange(3 * n, dtype=np.float32).reshape(n, 3)
    return voxelize(xyz, np.ones((n, 3), np.float32), np.full(n, 5), np.arange(n) % 2, 0.5, scene=name)


def forward(n: int = 3, features: bool = True) -> SceneForward:
    batch = collate([voxel_scene(n=n)])
    m = len(batch.coords)
    out = ModelOutput(torch.arange(m * 20, dtype=torch.float32).reshape(m, 20),
                      MarginOutput(torch.ones(m, 3), torch.zeros(m, 3), torch.full((m, 18), 0.5)),
                      torch.ones(m, 4) if features else None)
    return SceneForward(batch, out, torch.arange(n))


def assert_same_forward(a: SceneForward, b: SceneForward) -> None:
    for x, y in zip(tune._to_plain(a)["batch"]["scenes"], tune._to_plain(b)["batch"]["scenes"]):
        assert x.keys() == y.keys()
    torch.testing.assert_close(a.batch.coords, b.batch.coords, rtol=0, atol=0)
    torch.testing.assert_close(a.out.semantic_logits, b.out.semantic_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.out.instance.seed_logits, b.out.instance.seed_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.inverse, b.inverse, rtol=0, atol=0)
    assert type(a.out.instance) is type(b.out.instance) and a.batch.scenes[0].scene == b.batch.scenes[0].scene


def test_nbytes_counts_tensors_arrays_and_containers():
    value = {"a": torch.zeros(3, dtype=torch.float64), "b": [np.zeros(5, np.int16), (torch.zeros(2, dtype=torch.int8),
                                                                                       "text", 7)],
             "c": SimpleNamespace(x=torch.zeros(100))}
    assert tune._nbytes(value) == 3 * 8 + 5 * 2 + 2
    assert tune._nbytes(voxel_scene()) == sum(tune._nbytes(getattr(voxel_scene(), f.name))
                                              for f in dataclasses.fields(VoxelScene))
    assert tune._nbytes(VoxelScene) == 0 and tune._nbytes(torch.zeros(2, 2)) == 16


def test_move_reaches_tensors_inside_nested_dataclasses_and_lists():
    f = forward()
    moved = tune._move(f, "meta")
    assert moved.batch.coords.device.type == "meta" and moved.out.instance.embedding.device.type == "meta"
    assert moved.batch.scenes[0].inverse.device.type == "meta" and moved.inverse.device.type == "meta"
    assert moved.batch.scenes[0].scene == "s" and moved.batch.scenes[0].voxel_size == 0.5
    assert tune._move(SceneForward, "meta") is SceneForward and tune._move("x", "meta") == "x"


def test_plain_round_trip_keeps_types_and_values():
    f = forward()
    plain = tune._to_plain({"f": f, "a": np.arange(3)}["f"])
    assert plain["__type__"] == "SceneForward" and plain["out"]["instance"]["__type__"] == "MarginOutput"
    back = tune._from_plain(plain)
    assert type(back) is SceneForward
    assert_same_forward(back, f)
    arr = tune._from_plain(tune._to_plain([np.arange(4)[::2]]))
    assert isinstance(arr[0], np.ndarray) and arr[0].tolist() == [0, 2]
    assert tune._to_plain(np.arange(4)[::2])["__numpy__"].tolist() == [0, 2]


def prepared_scene(name: str, n: int = 3) -> dict:
    return {"scene": name, "nyu40": np.array([3, 5, 39][:n], np.uint8), "instance": np.array([2, -1, 0][:n]),
            "xyz": np.zeros((n, 3), np.float32)}


def test_cache_keeps_scenes_in_memory_up_to_the_budget_then_spills(tmp_path):
    f, scene = forward(), prepared_scene("a")
    size = tune._nbytes(tune._move(f, "cpu")) + tune._nbytes(scene)
    prepared = tmp_path / "b.npz"
    np.savez(prepared, **prepared_scene("b"))
    cache = ForwardCache(size, tmp_path / "spill")
    cache.add(4, "a", f, scene, tmp_path / "a.npz")
    cache.add(9, "b", f, prepared_scene("b"), prepared)
    first, second = cache.entries
    assert cache.memory_bytes == size and first.forward is not None and first.file is None
    assert first.gt_ids.tolist() == [3002, 5000, 39000] and first.gt_ids.dtype == np.int32
    assert first.gt_nyu40.tolist() == [3, 5, 39] and first.gt_nyu40.dtype == np.int16
    assert (first.index, first.name, second.index, second.name) == (4, "a", 9, "b")
    assert second.forward is None and second.scene is None and second.file == tmp_path / "spill" / "000009.pth"
    assert cache.disk_bytes == second.file.stat().st_size > 0
    loaded, loaded_scene = cache.load(second, "cpu")
    assert_same_forward(loaded, f)
    assert loaded_scene["scene"] == "b"
    in_memory, mem_scene = cache.load(first, "meta")
    assert in_memory.out.semantic_logits.device.type == "meta" and mem_scene is scene
    assert cache.load(second, "meta")[0].batch.feats.device.type == "meta"
    cache.close()
    assert not (tmp_path / "spill").exists()
    cache.close()  # twice: nothing left to remove, no error


def test_build_cache_runs_each_scene_once_and_drops_features_psi_does_not_read(tmp_path, monkeypatch):
    names = ["scene0001_00", "scene0002_00", "scene0003_00"]
    for n in names:
        np.savez(tmp_path / f"{n}.npz", **prepared_scene(n))
    cfg = config(f"data.prepared={tmp_path}")
    calls = []
    monkeypatch.setattr(tune, "forward_scene", lambda model, scene, c, device: calls.append(
        (scene["scene"], c, device)) or forward())
    model = SimpleNamespace(recorrector=None)
    cache = tune.build_cache(model, cfg, names, "cpu", tmp_path / "spill", budget=1 << 30)
    assert calls == [(n, cfg, "cpu") for n in names]
    assert [(e.index, e.name, e.prepared) for e in cache.entries] == [
        (i, n, tmp_path / f"{n}.npz") for i, n in enumerate(names)]
    assert all(e.forward.out.features is None for e in cache.entries) and cache.spill_dir == tmp_path / "spill"
    with_psi = tune.build_cache(SimpleNamespace(recorrector="psi"), cfg, names[:1], "cpu", tmp_path / "spill")
    assert with_psi.entries[0].forward.out.features is not None and with_psi.budget == 8 << 30


def test_build_cache_over_ranks_takes_every_world_th_scene(tmp_path, monkeypatch):
    names = [f"scene000{i}_00" for i in range(5)]
    for n in names:
        np.savez(tmp_path / f"{n}.npz", **prepared_scene(n))
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(tune, "forward_scene", lambda model, scene, c, device: forward())
    cache = tune.build_cache(SimpleNamespace(recorrector=None), config(f"data.prepared={tmp_path}"), names, "cpu",
                             tmp_path / "spill", budget=0, split_over_ranks=True)
    assert [(e.index, e.name) for e in cache.entries] == [(1, names[1]), (3, names[3])]
    assert cache.spill_dir == tmp_path / "spill" / "rank1" and cache.entries[0].file.parent == cache.spill_dir
    alone = tune.build_cache(SimpleNamespace(recorrector=None), config(f"data.prepared={tmp_path}"), names, "cpu",
                             tmp_path / "spill", budget=0)
    assert len(alone.entries) == 5 and alone.spill_dir == tmp_path / "spill"


def test_score_setting_scores_every_cached_scene_in_index_order(tmp_path, monkeypatch):
    cache = ForwardCache(1 << 30, tmp_path)
    cache.entries = [CachedScene(2, "b", np.array([7]), np.array([5], np.int16), forward=forward(), scene={"s": 2}),
                     CachedScene(0, "a", np.array([8]), np.array([3], np.int16), forward=forward(), scene={"s": 0})]
    cfg, calls = config(), []
    monkeypatch.setattr(tune, "predict_from_forward", lambda model, f, scene, c: calls.append(
        ("predict", scene["s"], c, f.batch.coords.device.type, model)) or SimpleNamespace(
        instances=f"inst{scene['s']}", semantic_nyu40=f"sem{scene['s']}"))
    monkeypatch.setattr(tune, "match_scene", lambda gt, inst: ("match", int(gt[0]), inst))
    monkeypatch.setattr(tune, "semantic_confusion", lambda gt, sem: ("conf", gt.dtype, sem))
    monkeypatch.setattr(tune, "summarize_matches", lambda m, c: {"matches": m, "confusions": c})
    gathered = []
    monkeypatch.setattr(distributed, "all_gather", lambda records: gathered.append(records) or [
        records, [(1, ("match", 9, "other"), ("conf", np.int64, "x"))]])
    got = tune.score_setting("model", cfg, cache, "meta")
    assert [c[:3] for c in calls] == [("predict", 2, cfg), ("predict", 0, cfg)] and calls[0][3:] == ("meta", "model")
    assert got == {"matches": [("match", 8, "inst0"), ("match", 7, "inst2")],
                   "confusions": [("conf", np.int64, "sem0"), ("conf", np.int64, "sem2")]}
    assert gathered == []
    over = tune.score_setting("model", cfg, cache, "cpu", split_over_ranks=True)
    assert [m[1] for m in over["matches"]] == [8, 9, 7] and len(gathered) == 1


# ------------------------------------------------------------------------------ the search


def test_trial_values_and_the_metric_choice():
    row = TrialRow({"min_size": 5}, {"instance": {"AP50": 0.25, "mAP": float("nan")}}, 1.0)
    assert row.value("AP50") == 0.25 and row.value("mAP") == -math.inf and row.value("AP25") == -math.inf
    assert TrialRow({}, {}, 0.0).value("AP50") == -math.inf
    assert TuneResult("AP50", [row, TrialRow({"min_size": 9}, {}, 0.0)], 1, 0, 3).best_setting == {"min_size": 9}
    assert resolve_metric(config("train.select_metric=AP25"), None) == "AP25"
    assert resolve_metric(config("train.select_metric=mIoU"), None) == "mAP"
    assert resolve_metric(config("train.select_metric=AP25"), "AP50") == "AP50"
    with pytest.raises(ValueError) as err:
        resolve_metric(config(), "mIoU")
    assert str(err.value) == ("--metric 'mIoU': tune optimizes an instance metric (mAP, AP50, AP25); mIoU does not "
                              "depend on the clustering")


@pytest.fixture
def scored(monkeypatch):
    """score_setting replaced by a known objective of the setting; the settings scored, in order."""
    order = []

    def score(model, cfg, cache, device, split_over_ranks=False):
        c = cfg.cluster
        order.append((c.tau_margin, c.seed_threshold, c.min_size))
        value = 1.0 - (c.tau_margin - 0.7) ** 2 - (c.seed_threshold - 0.4) ** 2 - (c.min_size - 10) ** 2 / 1000
        return {"instance": {"mAP": value / 2, "AP50": value, "AP25": 1.0}}

    monkeypatch.setattr(tune, "score_setting", score)
    return order


SPACE = {"tau_margin": [0.3, 0.5, 0.7], "seed_threshold": [0.4, 0.5], "min_size": [10, 20]}


def test_coordinate_descent_step_by_step(scored):
    cfg = config("cluster.tau_margin=0.5")
    logged = []
    result = search("model", cfg, ForwardCache(0, Path("x")), SPACE, "AP50", "cpu", log=logged.append)
    # pass 1: tau 0.5 (the run's), 0.3, 0.7 -> 0.7; seed 0.5, 0.4 -> 0.4; min_size 20, 10 -> 10
    # pass 2 from (0.7, 0.4, 10): the unscored neighbours only, nothing better: stop
    assert scored == [(0.5, 0.5, 20), (0.3, 0.5, 20), (0.7, 0.5, 20), (0.7, 0.4, 20), (0.7, 0.4, 10),
                      (0.3, 0.4, 10), (0.5, 0.4, 10), (0.7, 0.5, 10)]
    assert [tuple(r.setting.values()) for r in result.rows] == scored
    assert (result.best, result.baseline, result.metric, result.scenes) == (4, 0, "AP50", 0)
    assert result.best_setting == {"tau_margin": 0.7, "seed_threshold": 0.4, "min_size": 10}
    assert len(logged) == 8 and logged[4].startswith("setting 5: tau_margin=0.7, seed_threshold=0.4, min_size=10 -> "
                                                     "AP50 100.0 (")


def test_descent_stops_after_the_given_passes(scored):
    search("model", config("cluster.tau_margin=0.5"), ForwardCache(0, Path("x")), SPACE, "AP50", "cpu", passes=1)
    assert len(scored) == 5
    scored.clear()
    search("model", config("cluster.tau_margin=0.5"), ForwardCache(0, Path("x")), SPACE, "AP50", "cpu", passes=0)
    assert scored == [(0.5, 0.5, 20)]


def test_grid_scores_every_combination_once(scored):
    cfg = config("cluster.tau_margin=0.3", "cluster.seed_threshold=0.4", "cluster.min_size=10")
    result = search("model", cfg, ForwardCache(0, Path("x")), SPACE, "AP50", "cpu", mode="grid")
    assert len(scored) == 12 and len(set(scored)) == 12 and scored[0] == (0.3, 0.4, 10)
    assert result.best_setting == {"tau_margin": 0.7, "seed_threshold": 0.4, "min_size": 10}
    assert result.baseline == 0


def test_ties_keep_the_setting_scored_first(monkeypatch):
    monkeypatch.setattr(tune, "score_setting", lambda *a, **k: {"instance": {"AP50": 0.5}})
    result = search("model", config(), ForwardCache(0, Path("x")), SPACE, "AP50", "cpu")
    # one pass from (0.45, 0.5, 20): tau 0.3, 0.5, 0.7, seed 0.4, min_size 10; nothing better: stop
    assert result.best == 0 and len(result.rows) == 6
    grid = search("model", config(), ForwardCache(0, Path("x")), SPACE, "AP50", "cpu", mode="grid")
    assert grid.best == 0


def test_search_refusals(scored):
    cache = ForwardCache(0, Path("x"))
    with pytest.raises(ValueError) as err:
        search("model", config(), cache, {"tau_probabilistic": [0.3]}, "AP50", "cpu")
    assert str(err.value) == ("cannot search cluster key(s) ['tau_probabilistic']; searchable: ['tau_margin', "
                              "'seed_threshold', 'min_size']")
    with pytest.raises(ValueError) as err:
        search("model", config(), cache, {"min_size": []}, "AP50", "cpu")
    assert str(err.value) == "every searched key needs at least one candidate value"
    with pytest.raises(ValueError) as err:
        search("model", config(), cache, {"min_size": [1]}, "AP50", "cpu", mode="random")
    assert str(err.value) == "unknown search 'random'; choose descent or grid"
    assert scored == [(0.45, 0.5, 20)]  # the baseline comes first


def test_search_passes_the_ranks_split_to_scoring(monkeypatch):
    seen = []
    monkeypatch.setattr(tune, "score_setting", lambda model, cfg, cache, device, split: seen.append(
        (model, device, split)) or {"instance": {"AP50": 0.0}})
    search("m", config(), ForwardCache(0, Path("x")), {"min_size": [20]}, "AP50", "meta", split_over_ranks=True)
    assert seen == [("m", "meta", True)]


# ------------------------------------------------------------------------------ the outputs


def two_rows() -> TuneResult:
    rows = [TrialRow({"tau_margin": 0.45, "min_size": 20}, {"instance": {"mAP": 0.1, "AP50": 0.25, "AP25": 0.5}}, 1.25),
            TrialRow({"tau_margin": 0.5, "min_size": 5}, {"instance": {"mAP": float("nan"), "AP50": 0.5,
                                                                       "AP25": 0.625}}, 12.0)]
    return TuneResult("AP50", rows, 1, 0, 3)


def test_row_line_of_a_setting_without_the_metric():
    row = TrialRow({"tau_margin": 0.5, "min_size": 10}, {"instance": {"AP25": 0.5}}, 2.25)
    assert tune._row_line(row, 3, ["min_size", "tau_margin"], "AP50") == (
        "setting 3: min_size=10, tau_margin=0.5 -> AP50 - (2.2 s)")
    assert tune._row_line(TrialRow({"min_size": 5}, {}, 0.0), 1, ["min_size"], "mAP") == (
        "setting 1: min_size=5 -> mAP - (0.0 s)")
    row = TrialRow({"min_size": 5}, {"instance": {"mAP": 0.125}}, 10.0)
    assert tune._row_line(row, 2, ["min_size"], "mAP") == "setting 2: min_size=5 -> mAP 12.5 (10.0 s)"


def test_format_table():
    assert format_table(two_rows()) == "\n".join([
        "| # | cluster.tau_margin | cluster.min_size | mAP | **AP50** | AP25 | s |  |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        "| 1 | 0.45 | 20 | 10.0 | 25.0 | 50.0 | 1.2 | run's settings |",
        "| 2 | 0.5 | 5 | - | 50.0 | 62.5 | 12.0 | **best** |"])
    same = TuneResult("mAP", two_rows().rows, 0, 0, 3)
    assert format_table(same).splitlines()[2].endswith("| **best** run's settings |")
    assert "| **mAP** | AP50 |" in format_table(same).splitlines()[0]


def test_write_results(tmp_path):
    cache = ForwardCache(0, tmp_path)
    cache.memory_bytes, cache.disk_bytes = 3 << 20, 0
    yaml_path, md_path = write_results(two_rows(), tmp_path, tmp_path / "last.pth", "val", "descent", cache, step=7,
                                       fixed={"hypotheses": 2})
    assert (yaml_path, md_path) == (tmp_path / "tuned.yaml", tmp_path / "tune.md")
    text = yaml_path.read_text()
    assert text.startswith("# written by minkseg tune: the clustering settings with the best AP50 on split 'val'; "
                           "evaluate, predict and compare apply them to every checkpoint of this folder (--no-tuned "
                           "ignores them)\n")
    assert yaml.safe_load(text) == {"cluster": {"hypotheses": 2, "tau_margin": 0.5, "min_size": 5}, "metric": "AP50",
                                    "value": 0.5, "baseline_value": 0.25, "split": "val", "scenes": 3,
                                    "checkpoint": "last.pth", "step": 7}
    assert list(yaml.safe_load(text)) == ["cluster", "metric", "value", "baseline_value", "split", "scenes",
                                          "checkpoint", "step"]
    assert md_path.read_text() == "\n".join([
        f"# Clustering search: {tmp_path.name} (last.pth), split val, 3 scenes", "",
        "Objective: **AP50** (values in %). Search: coordinate descent from the run's settings (each key in turn, "
        "the others fixed); 2 settings scored on one network pass per scene (3 MiB of cached outputs in memory). "
        "Fixed for the search (also in tuned.yaml): hypotheses=2.", "",
        format_table(two_rows()), "",
        "Best: tau_margin=0.5, min_size=5: AP50 50.0 (run's settings: 25.0), written to tuned.yaml. `minkseg "
        "evaluate`, `predict` and `compare` with a checkpoint of this run use it; `--no-tuned` ignores it.", ""])


def test_write_results_of_a_grid_with_spilled_outputs_and_no_score(tmp_path):
    result = two_rows()
    for row in result.rows:
        row.metrics["instance"]["AP50"] = float("nan")
    cache = ForwardCache(0, tmp_path)
    cache.memory_bytes, cache.disk_bytes = 0, 5 << 20
    yaml_path, md_path = write_results(result, tmp_path, tmp_path / "best.pth", "train", "grid", cache)
    data = yaml.safe_load(yaml_path.read_text())
    assert data["value"] is None and data["baseline_value"] is None and data["step"] is None
    assert data["cluster"] == {"tau_margin": 0.5, "min_size": 5}
    md = md_path.read_text()
    assert ("Search: every combination of the candidate values; 2 settings scored on one network pass per scene "
            "(0 MiB of cached outputs in memory, 5 MiB on disk).\n") in md
    assert "Fixed for the search" not in md and "AP50 - (run's settings: -)" in md


# ------------------------------------------------------------------------------ tuned.yaml read back


def test_read_tuned_refusals(tmp_path):
    path = tmp_path / "tuned.yaml"
    path.write_text("cluster: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        read_tuned(path)
    assert str(err.value).startswith(f"{path}: not valid YAML at line 2 (") and str(err.value).endswith(
        "); rerun minkseg tune or pass --no-tuned")
    for text in ("- a\n", "cluster: 3\n", "cluster: {}\n", "metric: AP50\n"):
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            read_tuned(path)
        assert str(err.value) == (f"{path}: expected a mapping with a non-empty 'cluster' section (as minkseg tune "
                                  "writes it); rerun minkseg tune or pass --no-tuned")
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=rf"^{path}: cannot be read \(UnicodeDecodeError: .*\); pass --no-tuned$"):
        read_tuned(path)
    path.write_text("cluster:\n  min_size: 3\nmetric: AP50\n")
    assert read_tuned(path) == {"cluster": {"min_size": 3}, "metric": "AP50"}


def test_apply_tuned_says_what_it_applies(tmp_path, capsys):
    cfg = config()
    assert apply_tuned(cfg, tmp_path) is cfg
    (tmp_path / "tuned.yaml").write_text("cluster:\n  min_size: 3\n  tau_margin: 0.25\nmetric: AP50\nsplit: val\n"
                                         "scenes: 4\ncheckpoint: best.pth\n")
    out = apply_tuned(cfg, tmp_path)
    assert (out.cluster.min_size, out.cluster.tau_margin) == (3, 0.25)
    assert capsys.readouterr().err == (f"using tuned clustering settings from {tmp_path / 'tuned.yaml'} (AP50, split "
                                       "val, 4 scenes, best.pth): min_size=3, tau_margin=0.25; --no-tuned ignores "
                                       "them\n")
    apply_tuned(cfg, str(tmp_path), announce=False)
    assert capsys.readouterr().err == ""
    (tmp_path / "tuned.yaml").write_text("cluster:\n  min_size: 3\n")
    apply_tuned(cfg, tmp_path)
    assert capsys.readouterr().err == (f"using tuned clustering settings from {tmp_path / 'tuned.yaml'}: min_size=3; "
                                       "--no-tuned ignores them\n")
    (tmp_path / "tuned.yaml").write_text("cluster:\n  min_size: big\n")
    with pytest.raises(ConfigError) as err:
        apply_tuned(cfg, tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'tuned.yaml'}: ") and msg.endswith("; rerun minkseg tune or pass --no-tuned")
    assert "\n" not in msg and "min_size" in msg


# ------------------------------------------------------------------------------ tune_run


@pytest.fixture
def wired(tmp_path, monkeypatch):
    """tune_run with every stage replaced by a recorder."""
    calls = {}
    cfg = config("train.select_metric=AP25")
    model = SimpleNamespace(recorrector=None)

    def load(path, device, tuned):
        calls["load"] = (path, device, tuned)
        return model, cfg, {"step": 12}

    class Cache:
        closed = False

        def close(self):
            Cache.closed = True

    def build_cache(m, c, scenes, device, spill, budget, workers, progress, split):
        calls["cache"] = (m, c, scenes, device, spill, budget, workers, progress, split)
        calls["cache_object"] = Cache()
        return calls["cache_object"]

    def fake_search(m, c, cache, space, metric, device, mode, passes, split, log):
        calls["search"] = (c, space, metric, device, mode, passes, split, log)
        calls["search_model_cache"] = (m, cache)
        return TuneResult(metric, [TrialRow({"min_size": 5}, {"instance": {"AP25": 0.5}}, 0.0)], 0, 0, 0)

    def write(result, run_dir, checkpoint, split, mode, cache, step, fixed):
        calls["write"] = (run_dir, checkpoint, split, mode, step, fixed)
        calls["write_result_cache"] = (result, cache)
        return "yaml", "md"

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", load)
    monkeypatch.setattr(splits_module, "split_scenes", lambda c, split: calls.setdefault("split", (c, split)) and [
        "s1", "s2", "s3"])
    monkeypatch.setattr(tune, "build_cache", build_cache)
    monkeypatch.setattr(tune, "search", fake_search)
    monkeypatch.setattr(tune, "write_results", write)
    calls["model"], calls["cfg"], calls["Cache"] = model, cfg, Cache
    return calls


def test_tune_run_wiring(wired, tmp_path):
    ckpt = tmp_path / "run" / "last.pth"
    result, y, m = tune.tune_run(str(ckpt), split="train", space={"tau": [0.6, 0.2, 0.6]}, mode="grid", passes=2,
                                 device="meta", prepared="P", root="R", fixed={"hypotheses": 2}, cache_bytes=99,
                                 workers=3, progress=False, log=print, metric="AP50")
    assert (y, m) == ("yaml", "md") and result.scenes == 3 and wired["Cache"].closed
    assert wired["load"] == (ckpt, "meta", False)
    cfg = wired["search"][0]
    assert (cfg.data.prepared, cfg.data.root, cfg.cluster.hypotheses) == ("P", "R", 2)
    assert wired["split"] == (cfg, "train")
    assert wired["search_model_cache"] == (wired["model"], wired["cache_object"])
    assert wired["write_result_cache"] == (result, wired["cache_object"])
    model, c, scenes, device, spill, budget, workers, progress, split = wired["cache"]
    assert (model, c, scenes, device, spill, budget, workers, progress, split) == (
        wired["model"], cfg, ["s1", "s2", "s3"], "meta", tmp_path / "run" / "tune_cache", 99, 3, False, False)
    _, space, metric, device, mode, passes, split, log = wired["search"]
    assert space == {"tau_margin": [0.2, 0.6], "seed_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
                     "min_size": [5, 10, 20, 40, 80], "hypothesis_threshold": [0.1, 0.2, 0.3, 0.5]}
    assert (metric, device, mode, passes, split, log) == ("AP50", "meta", "grid", 2, False, print)
    assert wired["write"] == (tmp_path / "run", ckpt, "train", "grid", 12, {"hypotheses": 2})


def test_tune_run_defaults(wired, tmp_path):
    tune.tune_run(tmp_path / "last.pth")
    assert wired["load"] == (tmp_path / "last.pth", "cpu", False)
    cfg = wired["search"][0]
    assert cfg is wired["cfg"] and wired["split"][1] == "val"
    assert wired["cache"][3:] == ("cpu", tmp_path / "tune_cache", 8 << 30, 0, True, False)
    assert wired["search"][2:8] == ("AP25", "cpu", "descent", 3, False, None)
    assert wired["search"][1] == default_space(cfg)
    assert wired["write"][2:] == ("val", "descent", 12, None)


def test_tune_run_refuses_keys_this_config_does_not_use(wired, tmp_path):
    with pytest.raises(ValueError) as err:
        tune.tune_run(tmp_path / "last.pth", space={"hypothesis_threshold": [0.2]})
    assert str(err.value) == ("cannot search cluster key(s) ['hypothesis_threshold'] with a margin head and taus=[], "
                              "grouping=greedy, hypotheses=1; searchable: ['tau_margin', 'seed_threshold', 'min_size']")
    assert "cache" not in wired


def test_tune_run_on_other_ranks_writes_nothing_and_closes_the_cache_on_failure(wired, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    result, y, m = tune.tune_run(tmp_path / "last.pth", split_over_ranks=True)
    assert (y, m) == (None, None) and "write" not in wired and result.scenes == 3
    assert wired["cache"][-1] is True and wired["search"][6] is True
    wired["Cache"].closed = False
    monkeypatch.setattr(tune, "search", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        tune.tune_run(tmp_path / "last.pth")
    assert wired["Cache"].closed


def test_tune_run_without_a_rank_split_writes_on_every_process(wired, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert tune.tune_run(tmp_path / "last.pth")[1:] == ("yaml", "md") and "write" in wired


def test_tune_run_records_only_an_integer_step(wired, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda path, device, tuned: (
        wired["model"], wired["cfg"], {"step": 3.5}))
    tune.tune_run(tmp_path / "last.pth")
    assert wired["write"][4] is None


def test_read_tuned_names_the_yaml_problem_or_the_error_type(tmp_path, monkeypatch):
    path = tmp_path / "tuned.yaml"
    path.write_text("cluster: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        read_tuned(path)
    assert "expected ',' or ']'" in str(err.value)  # yaml's own words for the problem

    def unmarked(text):
        raise yaml.YAMLError("no position")

    monkeypatch.setattr(yaml, "safe_load", unmarked)
    with pytest.raises(ConfigError) as err:
        read_tuned(path)
    assert str(err.value) == f"{path}: not valid YAML (YAMLError); rerun minkseg tune or pass --no-tuned"


def test_cache_spills_are_read_back_on_the_cpu(tmp_path, monkeypatch):
    prepared = tmp_path / "b.npz"
    np.savez(prepared, **prepared_scene("b"))
    cache = ForwardCache(0, tmp_path / "spill")
    cache.add(0, "b", forward(), prepared_scene("b"), prepared)
    devices, original = [], tune.read_checkpoint
    monkeypatch.setattr(tune, "read_checkpoint", lambda path, device, keys: devices.append(device) or original(
        path, device, keys))
    cache.load(cache.entries[0], "meta")
    assert devices == ["cpu"]


class RecordedBar:
    made: list[dict] = []

    def __init__(self, iterable, **kw):
        self.iterable = iterable
        RecordedBar.made.append(kw)

    def __iter__(self):
        return iter(self.iterable)


@pytest.mark.parametrize("progress, split, main, disable", [
    (None, False, True, True), (True, False, True, None), (True, True, False, True), (True, True, True, None),
    (True, False, False, None), (False, False, True, True)])
def test_build_cache_progress_bar(tmp_path, monkeypatch, progress, split, main, disable):
    names = ["scene0001_00", "scene0002_00"]
    for n in names:
        np.savez(tmp_path / f"{n}.npz", **prepared_scene(n))
    RecordedBar.made = []
    monkeypatch.setattr(tune, "tqdm", RecordedBar)
    monkeypatch.setattr(distributed, "is_main", lambda: main)
    models, reads = [], []
    monkeypatch.setattr(tune, "forward_scene", lambda model, scene, c, device: models.append(model) or forward())
    original = tune.iterate_prepared
    monkeypatch.setattr(tune, "iterate_prepared", lambda files, workers: reads.append(workers) or original(files, 0))
    model = SimpleNamespace(recorrector=None)
    kw = {} if progress is None else {"progress": progress}
    tune.build_cache(model, config(f"data.prepared={tmp_path}"), names, "cpu", tmp_path / "spill",
                     split_over_ranks=split, **kw)
    # a single process is rank 0 of 1: its share is every scene, with or without the split
    assert RecordedBar.made == [{"total": 2, "desc": "network", "unit": "scene", "disable": disable}]
    assert reads == [0] and models == [model, model]
    tune.build_cache(model, config(f"data.prepared={tmp_path}"), names, "cpu", tmp_path / "spill", workers=2)
    assert reads[-1] == 2


def test_descent_runs_at_most_three_passes_by_default(monkeypatch):
    scored = []
    # each new setting scores higher than every earlier one: the descent never settles
    monkeypatch.setattr(tune, "score_setting", lambda model, cfg, cache, device, split: scored.append(
        (cache, split)) or {"instance": {"AP50": float(len(scored))}})
    cache = ForwardCache(0, Path("x"))
    space = {"seed_threshold": [0.3, 0.4, 0.5, 0.6, 0.7], "min_size": [5, 10, 20, 40, 80]}
    three = search("model", config(), cache, space, "AP50", "cpu")
    count = len(scored)
    assert all(c is cache and split is False for c, split in scored)
    scored.clear()
    four = search("model", config(), cache, space, "AP50", "cpu", passes=4)
    assert len(three.rows) == count < len(four.rows)


def test_trial_seconds_are_the_scoring_time(monkeypatch):
    ticks = iter([10.0, 10.75, 20.0, 20.5])
    monkeypatch.setattr(tune.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(tune, "score_setting", lambda *a: {"instance": {"AP50": 0.0}})
    result = search("model", config(), ForwardCache(0, Path("x")), {"min_size": [20, 5]}, "AP50", "cpu", mode="grid")
    assert [r.seconds for r in result.rows] == [0.75, 0.5]


def test_fmt_prints_floats_short_and_others_as_text():
    assert (tune._fmt(0.1 + 0.2), tune._fmt(5.0), tune._fmt(20), tune._fmt(1e-5)) == ("0.3", "5", "20", "1e-05")


def test_format_table_of_one_setting_without_scores():
    result = TuneResult("AP50", [TrialRow({"min_size": 5}, {}, 0.5)], 0, 0, 1)
    assert format_table(result).splitlines()[2] == "| 1 | 5 | - | - | - | 0.5 | **best** run's settings |"
    partial = TuneResult("AP50", [TrialRow({"min_size": 5}, {"instance": {"AP50": 0.5}}, 0.5)], 0, 0, 1)
    assert format_table(partial).splitlines()[2] == "| 1 | 5 | - | 50.0 | - | 0.5 | **best** run's settings |"


def test_cache_adds_up_the_bytes_kept_and_moves_outputs_to_the_cpu(tmp_path, monkeypatch):
    f = forward()
    size = tune._nbytes(f) + tune._nbytes(prepared_scene("a"))
    moves, original = [], tune._move
    monkeypatch.setattr(tune, "_move", lambda value, device: moves.append(device) or original(value, device))
    cache = ForwardCache(2 * size, tmp_path / "spill")
    for i in range(4):
        cache.add(i, "a", f, prepared_scene("a"), tmp_path / "a.npz")
    assert set(moves) == {"cpu"} and cache.memory_bytes == 2 * size  # _move recurses: every level to the cpu
    files = [e.file for e in cache.entries[2:]]
    assert cache.disk_bytes == sum(p.stat().st_size for p in files) and len(set(files)) == 2
