"""``minkseg view``: layer math on hand-built scenes, the bundle's encoding, every SOURCE kind,
and the page itself in headless Chromium (file:// and --serve)."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minkseg.inference.masks import paint_by_confidence
from minkseg.viz.colors import SEMANTIC_LUT, instance_palette
from minkseg.viz.view import (
    ERROR_CATEGORIES,
    PredictedInstances,
    SceneGeometry,
    SceneView,
    best_match_iou,
    decimation,
    error_categories,
    export_viewer,
    prediction_layers,
    rgb_layer,
    scene_payload,
    semantic_layer,
)
from tests.browser import require_chromium, screenshot

CORRECT, WRONG_CLASS, WRONG_INSTANCE, WRONG_BOTH, NOT_EVALUATED = range(5)
CHAIR, TABLE, WALL = 5, 7, 1  # NYU40 ids


# ---------------------------------------------------------------- layer math


def test_best_match_iou_counts_overlaps_by_hand():
    gt = np.array([0, 0, 0, 0, 1, 1, -1, -1])
    masks = [np.array([1, 1, 1, 0, 0, 0, 0, 0], bool),  # 3 of instance 0's 4: IoU 3/4
             np.array([0, 0, 0, 1, 1, 1, 1, 0], bool),  # 1 of 0 (1/7), both of 1: 2 / (4 + 2 - 2) = 1/2
             np.array([0, 0, 0, 0, 0, 0, 0, 1], bool),  # only unlabelled vertices
             np.zeros(8, bool)]  # empty
    best, iou = best_match_iou(masks, gt)
    assert best.tolist() == [0, 1, -1, -1]
    np.testing.assert_allclose(iou, [3 / 4, 1 / 2, 0, 0])


def test_best_match_iou_without_ground_truth_instances():
    best, iou = best_match_iou([np.ones(4, bool)], np.full(4, -1))
    assert best.tolist() == [-1] and iou.tolist() == [0.0]


def test_paint_by_confidence_shows_the_most_confident_of_overlapping_masks():
    masks = [np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])]
    assert paint_by_confidence(4, masks, [0.9, 0.5]).tolist() == [0, 0, 1, -1]
    assert paint_by_confidence(4, masks, [0.2, 0.5]).tolist() == [0, 1, 1, -1]


def test_error_categories_on_a_hand_built_scene():
    #              v0     v1     v2     v3     v4    v5    v6  v7 (unannotated)  v8 (otherprop)
    gt_nyu40 = np.array([CHAIR, CHAIR, CHAIR, TABLE, WALL, WALL, TABLE, 0, 40])
    gt_inst = np.array([0, 0, 0, 1, -1, -1, 1, -1, -1])
    pred_nyu40 = np.array([CHAIR, CHAIR, TABLE, TABLE, WALL, CHAIR, TABLE, CHAIR, CHAIR])
    # prediction 0 matches GT 0, prediction 1 matches nothing; v6 is in no prediction
    pred_inst = np.array([0, 0, 0, 1, 1, -1, -1, 0, 0])
    matched = np.array([0, -1])
    cats = error_categories(gt_nyu40, gt_inst, pred_nyu40, pred_inst, matched)
    assert cats.tolist() == [CORRECT, CORRECT, WRONG_CLASS, WRONG_INSTANCE, WRONG_INSTANCE, WRONG_CLASS,
                             WRONG_INSTANCE, NOT_EVALUATED, NOT_EVALUATED]
    # semantic-only and instance-only predictions judge only their half
    assert error_categories(gt_nyu40, gt_inst, pred_nyu40, None, None).tolist()[:7] == [0, 0, 1, 0, 0, 1, 0]
    both = error_categories(gt_nyu40, gt_inst, None, pred_inst, matched)
    assert both.tolist()[:7] == [0, 0, 0, 2, 2, 0, 2]
    # wrong class and wrong instance at once
    assert error_categories(np.array([CHAIR]), np.array([0]), np.array([TABLE]), np.array([-1]),
                            np.zeros(0, np.int64)).tolist() == [WRONG_BOTH]
    assert len(ERROR_CATEGORIES) == 5


def test_decimation_keeps_a_uniform_sorted_subset():
    assert decimation(1000, 1000) is None and decimation(10, 0) is None
    keep = decimation(100_000, 20_000)
    assert len(keep) == 20_000 and len(np.unique(keep)) == 20_000 and np.all(np.diff(keep) > 0)
    # uniform: each tenth of the vertex range keeps about a tenth of the budget
    per_tenth = np.bincount(keep // 10_000, minlength=10)
    assert np.all(np.abs(per_tenth - 2_000) < 200), per_tenth


def _scene(n: int = 40, seed: int = 0) -> SceneGeometry:
    rng = np.random.default_rng(seed)
    gt_nyu40 = np.where(np.arange(n) < n // 2, CHAIR, WALL)
    gt_inst = np.where(np.arange(n) < n // 4, 0, np.where(np.arange(n) < n // 2, 1, -1))
    faces = np.stack([np.arange(n - 2), np.arange(1, n - 1), np.arange(2, n)], 1)
    return SceneGeometry("scene9999_00", rng.normal(size=(n, 3)).astype(np.float32),
                         rng.integers(0, 256, (n, 3)).astype(np.uint8), rng.normal(size=(n, 3)), faces,
                         gt_nyu40, gt_inst)


def test_scene_view_decimation_says_so_and_keeps_layers_aligned():
    geo = _scene(1000)
    layers = [rgb_layer(geo.rgb), semantic_layer("s", "s", "g", geo.gt_nyu40)]
    shown = SceneView(geo, layers).decimated(300)
    assert len(shown.geometry.xyz) == 300 and shown.geometry.faces is None  # drawn as points
    assert shown.total_vertices == 1000 and "300 of 1,000 vertices" in shown.note
    keep = decimation(1000, 300)
    for before, after in zip(layers, shown.layers):
        np.testing.assert_array_equal(after.colors(), before.colors()[keep])
    full = SceneView(geo, layers).decimated(5000)
    assert full.note == "" and full.geometry.faces is not None


def test_prediction_layers_name_class_score_and_iou():
    geo = _scene(40)
    masks = [np.arange(40) < 8, (np.arange(40) >= 10) & (np.arange(40) < 20), np.arange(40) >= 30]
    inst = PredictedInstances(masks, [CHAIR, CHAIR, TABLE], [0.9, 0.7, 0.4])
    layers = {layer.key: layer for layer in prediction_layers("run", geo, np.full(40, CHAIR), inst)}
    assert set(layers) == {"run/semantic", "run/instances", "run/errors"}
    names = layers["run/instances"].names
    assert names[0] == "no instance"
    assert names[1] == "chair #0 · score 0.90 · IoU 0.80 with GT chair #0"  # 8 of instance 0's 10
    assert names[2] == "chair #1 · score 0.70 · IoU 1.00 with GT chair #1"
    assert names[3] == "table #2 · score 0.40 · no ground-truth overlap"
    # instance colours are the PLYs' (instance k -> instance_palette k), semantics the benchmark LUT
    inst_layer = layers["run/instances"]
    np.testing.assert_array_equal(inst_layer.colors()[0], instance_palette(3)[0])
    np.testing.assert_array_equal(layers["run/semantic"].colors()[0], SEMANTIC_LUT[CHAIR])
    errors = layers["run/errors"].values
    assert errors[0] == CORRECT and errors[8] == WRONG_INSTANCE  # chair vertex 8: instance 0 missed it
    assert errors[35] == WRONG_BOTH  # a wall called chair, inside a predicted (table) instance


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_payload_round_trips_positions_and_layers(dtype):
    geo = _scene(50)
    geo.xyz = (geo.xyz * 3).astype(dtype)
    layer = semantic_layer("s", "s", "g", geo.gt_nyu40)
    payload = json.loads(json.dumps(scene_payload(SceneView(geo, [layer]))))

    def decode(entry):
        raw = gzip.decompress(base64.b64decode(entry["b64gz"]))
        return np.frombuffer(raw, np.dtype(entry["dtype"]).newbyteorder("<"))

    q = decode(payload["positions"]).reshape(-1, 3).astype(np.float64)
    xyz = np.asarray(payload["origin"]) + q * np.asarray(payload["scale"])
    step = np.asarray(payload["scale"])
    assert np.all(np.abs(xyz - geo.xyz) <= step / 2 + 1e-6 * np.abs(geo.xyz).max())
    entry = payload["layers"][0]
    colours = np.asarray(entry["palette"], np.uint8)[decode(entry["values"])]
    np.testing.assert_array_equal(colours, layer.colors())
    np.testing.assert_array_equal(decode(payload["faces"]).reshape(-1, 3), geo.faces)


def test_payload_of_a_degenerate_scene():
    """One vertex (zero extent) and no faces: finite positions, no faces entry."""
    geo = SceneGeometry("scene9999_01", np.ones((1, 3), np.float32), np.zeros((1, 3), np.uint8))
    payload = scene_payload(SceneView(geo, [rgb_layer(geo.rgb)]))
    assert "faces" not in payload and np.all(np.isfinite(payload["scale"])) and payload["vertices"] == 1


# ---------------------------------------------------------------- sources and the bundle


@pytest.fixture(scope="module")
def sources(raw_root, prepared_dir, tmp_path_factory):
    """A tiny untrained checkpoint (probabilistic head), a submission written from hand-made
    predictions, and a self-training round folder with pseudo labels, all on scene0000_00."""
    import torch

    from minkseg.config import load_config, save_config, to_dict
    from minkseg.engine.checkpoint import save_checkpoint
    from minkseg.engine.pseudo_labels import PseudoLabels
    from minkseg.evaluation.submission import write_scene_submission
    from minkseg.inference.instances import InstancePrediction
    from minkseg.inference.predict import ScenePrediction
    from minkseg.models.build import build_model
    from scannet_tools.prepare import load_prepared, prepared_path

    root = tmp_path_factory.mktemp("view")
    cfg = load_config(None, [f"data.root={raw_root}", f"data.prepared={prepared_dir}", "data.voxel_size=0.1",
                             "model.backbone=MinkUNet14A", "model.head=probabilistic"])
    torch.manual_seed(0)
    run = root / "runs" / "prob"
    save_checkpoint(run / "last.pth", {"model": build_model(cfg).state_dict(), "config": to_dict(cfg)})

    scene = load_prepared(prepared_path(prepared_dir, "scene0000_00"))
    n = len(scene["xyz"])
    chair = scene["nyu40"] == CHAIR
    pred = ScenePrediction("scene0000_00", np.where(chair, CHAIR, scene["nyu40"]).astype(np.int64),
                           [InstancePrediction(chair, CHAIR, 0.8)])
    sub = root / "submission"
    write_scene_submission(pred, sub)

    rnd = root / "runs" / "st" / "round_1"
    save_config(cfg, rnd.parent / "selftrain.yaml")
    semantic = np.where(np.arange(n) % 3 == 0, -100, 4).astype(np.int64)  # chair (train id 4) or ignored
    instance = np.where(np.arange(n) < n // 3, 0, np.where(np.arange(n) < n // 2, -2, -1))
    PseudoLabels(semantic, instance, np.array([4]), np.array([0.75], np.float32), 3).save(
        rnd / "pseudo" / "scene0000_00.npz", {"vertices": n})
    return {"run": run, "sub": sub, "round": rnd, "scans": raw_root / "scans", "n": n}


@pytest.fixture(scope="module")
def bundle(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    index = export_viewer([sources["run"], sources["sub"], sources["round"]], out, scenes=["scene0000_00"],
                          scans=sources["scans"], device="cpu")
    return index


def _manifest(index: Path) -> dict:
    text = (index.parent / "manifest.js").read_text()
    return json.loads(text[text.index("=") + 1:].rstrip().rstrip(";"))


def test_bundle_has_every_sources_layers(bundle, sources):
    manifest = _manifest(bundle)
    (scene,) = manifest["scenes"]
    keys = [k for k, _, _ in scene["layers"]]
    assert keys[:3] == ["rgb", "gt_semantic", "gt_instance"]
    assert {"prob/semantic", "prob/instances", "prob/errors", "prob/sigma"} <= set(keys)
    assert {"submission/semantic", "submission/instances", "submission/errors"} <= set(keys)
    assert {"round_1/pseudo_semantic", "round_1/pseudo_instances"} <= set(keys)
    assert scene["vertices"] == sources["n"] and scene["note"] == ""
    for name in ("index.html", "viewer.js", "viewer.css", scene["file"]):
        assert (bundle.parent / name).is_file()
    html = (bundle.parent / "index.html").read_text() + (bundle.parent / "viewer.js").read_text()
    assert "http://" not in html and "https://" not in html and 'type="module"' not in html  # offline, file://


def test_submission_and_pseudo_layers_read_their_files(bundle):
    text = (bundle.parent / "scenes" / "scene0000_00.js").read_text()
    payload = json.loads(text[text.index("] = ") + 4:].rstrip().rstrip(";"))
    layers = {entry["key"]: entry for entry in payload["layers"]}
    names = layers["submission/instances"]["names"]
    assert names[1].startswith("chair #0 · score 0.80 · IoU ")
    assert layers["round_1/pseudo_instances"]["names"] == [
        "no instance", "unknown (an instance class no kept proposal covers)", "kept chair #0 · certainty 0.75"]
    assert "ignored (no pseudo label)" in layers["round_1/pseudo_semantic"]["names"]
    assert "faces" in payload  # the raw mesh was found: drawn as triangles


def test_cli_errors_are_one_line(sources, tmp_path, capsys):
    from minkseg.cli import main

    assert main(["view", str(sources["sub"]), "--out", str(tmp_path / "v")]) == 2
    assert "needs --scans" in capsys.readouterr().err
    assert main(["view", str(sources["run"])]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert main(["view", str(tmp_path), "--out", str(tmp_path / "v")]) == 2
    assert "not a run folder" in capsys.readouterr().err


# ---------------------------------------------------------------- in the browser

SIZE = (900, 600)
PANEL = 270  # px of the side panel; the canvas is right of it


def _canvas(img: np.ndarray) -> np.ndarray:
    return img[:, PANEL + 5:].astype(np.float64)


def test_browser_renders_layers_from_file_url(bundle, tmp_path):
    require_chromium()
    shots = {}
    for layer in ("rgb", "prob/errors"):
        shots[layer] = _canvas(screenshot(f"{bundle}#scene=scene0000_00&layer={layer}",
                                          tmp_path / f"{layer.replace('/', '_')}.png", SIZE))
    for layer, img in shots.items():
        assert img.std() > 20, f"{layer}: the canvas is blank"
        assert (img.min(axis=2) < 200).mean() > 0.05, f"{layer}: almost nothing drawn"
    assert np.abs(shots["rgb"] - shots["prob/errors"]).mean() > 3, "switching the layer changed no pixels"


def test_browser_side_by_side_draws_two_layers(bundle, tmp_path):
    """Both halves share one camera: they differ only because their layers do."""
    require_chromium()
    img = _canvas(screenshot(f"{bundle}#scene=scene0000_00&layer=rgb&right=gt_semantic", tmp_path / "two.png",
                             SIZE))
    half = img.shape[1] // 2
    left, right = img[:, :half], img[:, half:2 * half]
    assert left.std() > 20 and right.std() > 20
    assert np.abs(left - right).mean() > 3


def test_browser_served_bundle(sources, tmp_path):
    require_chromium()
    cmd = [sys.executable, "-m", "minkseg", "view", str(sources["sub"]), "--scans", str(sources["scans"]),
           "--serve", "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("serving "):
                url = line.split()[1]
                break
        assert url and url.startswith("http://127.0.0.1:"), f"no URL printed (exit {proc.poll()})"
        img = _canvas(screenshot(url + "#layer=submission/instances", tmp_path / "served.png", SIZE))
        assert img.std() > 20, "the served page's canvas is blank"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
