"""``minkseg view`` without a browser, fast: each layer's palette, names and values on hand-built
scenes, the payload and bundle files decoded back, and every SOURCE kind's scenes, geometry and
layers (checkpoint loading and prediction stood in where a network would run)."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import minkseg.viz.view as view
from minkseg.inference.instances import InstancePrediction
from minkseg.viz.colors import NONE_RGB, SEMANTIC_LUT, instance_palette, scalar_colors
from minkseg.viz.view import (
    ERROR_CATEGORIES,
    UNKNOWN_RGB,
    PredictedInstances,
    SceneGeometry,
    SceneView,
    class_name,
    compact_ids,
    error_layer,
    ground_truth_layers,
    instance_layer,
    partition_layer,
    prediction_layers,
    pseudo_label_layers,
    rgb_layer,
    scalar_layer,
    scene_payload,
    semantic_layer,
    write_bundle,
)

CHAIR, TABLE, WALL = 5, 7, 1


def decode(entry: dict) -> np.ndarray:
    raw = gzip.decompress(base64.b64decode(entry["b64gz"]))
    return np.frombuffer(raw, np.dtype(entry["dtype"]).newbyteorder("<"))


# ----------------------------------------------------------------------------- names and ids


def test_class_names():
    assert [class_name(i) for i in (1, 5, 39, 0, 40, 13, -1)] == [
        "wall", "chair", "otherfurniture", "unannotated", "other (NYU40 40)", "other (NYU40 13)", "other (NYU40 -1)"]


def test_compact_ids_number_the_ids_present_in_order():
    index, count = compact_ids(np.array([9, -1, 2, 9, -5, 40]))
    assert index.tolist() == [1, -1, 0, 1, -1, 2] and count == 3 and index.dtype == np.int64
    index, count = compact_ids([0, 0])
    assert index.tolist() == [0, 0] and count == 1
    index, count = compact_ids(np.zeros(0))
    assert index.tolist() == [] and count == 0


def test_decimation_edges():
    assert view.decimation(5, 5) is None and view.decimation(5, -1) is None
    keep = view.decimation(6, 5)
    assert len(keep) == 5 and len(set(keep.tolist())) == 5 and keep.tolist() == sorted(keep.tolist())
    assert view.decimation(1000, 10).tolist() == view.decimation(1000, 10, seed=0).tolist()
    assert view.decimation(1000, 10, seed=1).tolist() != view.decimation(1000, 10).tolist()


# ----------------------------------------------------------------------------- layers


def test_rgb_and_semantic_layers():
    rgb = rgb_layer(np.array([[1, 2, 3], [4, 5, 6]]))
    assert (rgb.key, rgb.title, rgb.group) == ("rgb", "input colours", "input")
    assert rgb.rgb.dtype == np.uint8 and rgb.colors().tolist() == [[1, 2, 3], [4, 5, 6]]
    assert rgb.subset(np.array([1])).rgb.tolist() == [[4, 5, 6]]
    assert view.Layer("k", "t", "g", rgb=np.array([[300 - 45, 2, 3]])).colors().dtype == np.uint8
    layer = semantic_layer("k", "t", "g", np.array([CHAIR, 0, 300, CHAIR, -4, 40]))
    assert (layer.key, layer.title, layer.group, layer.legend) == ("k", "t", "g", True)
    # ids present, clipped to 0..255, in increasing order: 0 (also -4), 5, 40, 255 (300)
    assert layer.names == ["unannotated", "chair", "other (NYU40 40)", "other (NYU40 255)"]
    assert layer.values.tolist() == [1, 0, 3, 1, 0, 2] and layer.values.dtype == np.uint8
    np.testing.assert_array_equal(layer.palette, SEMANTIC_LUT[[0, 5, 40, 255]])
    np.testing.assert_array_equal(layer.colors(), SEMANTIC_LUT[[5, 0, 255, 5, 0, 40]])
    assert layer.subset(np.array([0, 2])).values.tolist() == [1, 3] and layer.colorbar is None and layer.rgb is None


def test_instance_layer_palette_none_extras_then_instances():
    layer = instance_layer("k", "t", "g", np.array([1, -1, 0, -2, -3, 1]), ["i0", "i1"],
                           extra=(("unknown", (30, 30, 30)), ("other", (1, 2, 3))))
    assert layer.names == ["no instance", "unknown", "other", "i0", "i1"]
    assert layer.values.tolist() == [4, 0, 3, 1, 2, 4] and layer.values.dtype == np.uint16
    np.testing.assert_array_equal(layer.palette, [NONE_RGB, (30, 30, 30), (1, 2, 3), *instance_palette(2)])
    assert layer.palette.dtype == np.uint8 and not layer.legend
    plain = instance_layer("k", "t", "g", np.array([0, -1]), ["a"])
    assert plain.values.tolist() == [1, 0] and plain.names == ["no instance", "a"]
    np.testing.assert_array_equal(plain.palette, [NONE_RGB, instance_palette(1)[0]])
    big = instance_layer("k", "t", "g", np.array([70000, -1]), [str(i) for i in range(70001)])
    assert big.values.dtype == np.uint32 and big.values.tolist() == [70001, 0]
    edge = instance_layer("k", "t", "g", np.array([65534]), [str(i) for i in range(65535)])  # 65536 entries
    assert edge.values.dtype == np.uint16 and edge.values.tolist() == [65535]


def test_scalar_layer_quantises_into_256_bins_between_min_and_max():
    layer = scalar_layer("k", "t", "g", np.array([0.5, 1.5, 1.0, np.nan, 0.5 + 1 / 255]), "sigma")
    assert layer.colorbar == {"min": 0.5, "max": 1.5, "label": "sigma"}
    assert layer.values.tolist() == [0, 255, 128, 0, 1] and layer.values.dtype == np.uint8  # 127.5 rounds up
    np.testing.assert_array_equal(layer.palette, scalar_colors(np.linspace(0.5, 1.5, 256), 0.5, 1.5))
    assert layer.palette.shape == (256, 3) and layer.names is None and not layer.legend
    flat = scalar_layer("k", "t", "g", np.array([2.0, 2.0]), "x")
    assert flat.values.tolist() == [0, 0] and flat.colorbar["min"] == flat.colorbar["max"] == 2.0


def test_error_layer():
    layer = error_layer("run/errors", "run", np.array([0, 4, 2]))
    assert (layer.key, layer.title, layer.group, layer.legend) == ("run/errors", "errors", "run", True)
    assert layer.names == [n for n, _ in ERROR_CATEGORIES] and layer.values.tolist() == [0, 4, 2]
    np.testing.assert_array_equal(layer.colors(), [(205, 205, 205), (90, 90, 90), (255, 160, 0)])


def _geometry(annotated: bool = True) -> SceneGeometry:
    nyu40 = np.array([CHAIR, CHAIR, CHAIR, TABLE, TABLE, WALL, 0, 40])
    inst = np.array([1, 1, 0, 0, -1, -1, -1, -1])  # instance 1: vertices 0-1 (chair), 0: vertices 2-3
    return SceneGeometry("scene0007_00", np.arange(24, dtype=np.float32).reshape(8, 3), np.zeros((8, 3), np.uint8),
                         gt_nyu40=nyu40 if annotated else None, gt_instance=inst if annotated else None)


def test_scene_geometry_from_a_prepared_scene():
    scene = {"scene": "scene0001_00", "xyz": np.ones((3, 3)), "rgb": np.full((3, 3), 7), "normals": np.eye(3),
             "nyu40": np.array([0, 5, 5], np.uint8), "instance": np.array([-1, 12, 3])}
    geo = SceneGeometry.from_prepared(scene, faces=np.array([[0, 1, 2]]))
    assert geo.scene == "scene0001_00" and geo.xyz.dtype == np.float32 and geo.rgb.dtype == np.uint8
    assert geo.gt_nyu40.tolist() == [0, 5, 5] and geo.gt_instance.tolist() == [-1, 1, 0]
    assert geo.normals is scene["normals"] and geo.faces.tolist() == [[0, 1, 2]]
    bare = SceneGeometry.from_prepared(dict(scene, nyu40=np.zeros(3, np.uint8)))
    assert bare.gt_nyu40 is None and bare.gt_instance is None and bare.faces is None
    del scene["normals"]
    assert SceneGeometry.from_prepared(scene).normals is None


def test_ground_truth_layers_name_each_instance_by_class_and_size():
    semantic, instances = ground_truth_layers(_geometry())
    assert (semantic.key, semantic.title, semantic.group) == ("gt_semantic", "semantics", "ground truth")
    assert (instances.key, instances.title, instances.group) == ("gt_instance", "instances", "ground truth")
    # instance 0 = vertices 2 (chair) and 3 (table): named after its first vertex
    assert instances.names == ["no instance", "GT chair #0 · 2 vertices", "GT chair #1 · 2 vertices"]
    assert instances.values.tolist() == [2, 2, 1, 1, 0, 0, 0, 0]
    assert ground_truth_layers(_geometry(annotated=False)) == []
    geo = _geometry()
    geo.gt_instance = np.full(8, -1)
    assert ground_truth_layers(geo)[1].names == ["no instance"]


def test_prediction_layers_without_ground_truth_or_with_uncertainty():
    masks = [np.array([1, 1, 0, 0, 0, 0, 0, 0], bool), np.array([0, 0, 1, 1, 1, 0, 0, 0], bool)]
    inst = PredictedInstances(masks, [CHAIR, TABLE], [0.5, 0.875])
    layers = prediction_layers("run", _geometry(annotated=False), None, inst, np.linspace(0, 1, 8))
    assert [layer.key for layer in layers] == ["run/instances", "run/sigma"]
    assert layers[0].names == ["no instance", "chair #0 · score 0.50", "table #1 · score 0.88"]
    assert layers[0].values.tolist() == [1, 1, 2, 2, 2, 0, 0, 0] and layers[0].group == "run"
    assert layers[1].title == "uncertainty (sigma)" and layers[1].colorbar["label"] == "mean predicted sigma"
    assert layers[1].group == "run"
    assert prediction_layers("run", _geometry(), None, None) == []
    sem_only = prediction_layers("r", _geometry(), np.full(8, CHAIR), None)
    assert [layer.key for layer in sem_only] == ["r/semantic", "r/errors"]
    assert sem_only[0].title == "semantics" and sem_only[0].group == "r"
    # chair everywhere: right on the chair vertices, wrong on the table and wall, 0 and 40 not evaluated
    assert sem_only[1].values.tolist() == [0, 0, 0, 1, 1, 1, 4, 4]


def test_prediction_layers_match_instances_at_iou_one_half():
    geo = _geometry()
    # mask 0 = GT 1 exactly; mask 1 = vertices 2, 3, 4 against GT 0 = {2, 3}: IoU 2/3; mask 2 = vertex 3: 1/2
    masks = [np.arange(8) < 2, (np.arange(8) >= 2) & (np.arange(8) < 5), np.arange(8) == 3]
    inst = PredictedInstances(masks, [CHAIR, TABLE, TABLE], [0.9, 0.25, 0.5])
    layers = {layer.key: layer for layer in prediction_layers("run", geo, np.array([CHAIR] * 3 + [TABLE] * 5), inst)}
    assert layers["run/instances"].names == ["no instance", "chair #0 · score 0.90 · IoU 1.00 with GT chair #1",
                                             "table #1 · score 0.25 · IoU 0.67 with GT chair #0",
                                             "table #2 · score 0.50 · IoU 0.50 with GT chair #0"]
    # vertex 3 shows mask 2 (more confident than mask 1); mask 2 matches GT 0 at IoU 0.5 exactly
    assert layers["run/instances"].values.tolist() == [1, 1, 2, 3, 2, 0, 0, 0]
    # vertex 3 is claimed by mask 2, which matches GT 0 at IoU 0.5 (the threshold counts): correct;
    # vertex 4 is in mask 1 but in no ground-truth instance: wrong instance; the wall called table: wrong class
    assert layers["run/errors"].values.tolist() == [0, 0, 0, 0, 2, 1, 4, 4]


def test_pseudo_label_layers():
    labels = {"semantic": np.array([4, -100, 0, 4, -100, 1], np.int16), "instance": np.array([0, -1, -2, 1, 1, -1]),
              "instance_class": np.array([4, 6]), "certainty": np.array([0.75, 0.125], np.float32)}
    sem, inst = pseudo_label_layers("round_1", labels)
    assert (sem.key, sem.group, sem.title) == ("round_1/pseudo_semantic", "round_1", "pseudo semantics (33% ignored)")
    assert sem.names == ["ignored (no pseudo label)", "wall", "floor", "chair"] and sem.legend
    assert sem.values.tolist() == [3, 0, 1, 3, 0, 2]
    assert (inst.key, inst.group, inst.title) == ("round_1/pseudo_instances", "round_1", "pseudo instances (2 kept)")
    assert inst.names == ["no instance", "unknown (an instance class no kept proposal covers)",
                          "kept chair #0 · certainty 0.75", "kept table #1 · certainty 0.12"]
    assert inst.values.tolist() == [2, 0, 1, 3, 3, 0] and not inst.legend
    np.testing.assert_array_equal(inst.palette[:2], [NONE_RGB, UNKNOWN_RGB])
    empty = pseudo_label_layers("r", {"semantic": np.zeros(0), "instance": np.zeros(0), "instance_class": np.zeros(0),
                                      "certainty": np.zeros(0)})
    assert empty[0].title == "pseudo semantics (0% ignored)" and empty[1].title == "pseudo instances (0 kept)"


def test_partition_layer_numbers_the_parts_present():
    layer = partition_layer("pre", np.array([7, 3, 7, 31]))
    assert (layer.key, layer.title, layer.group) == ("pre/partition", "pretraining partition (3 parts)", "pre")
    assert layer.names == ["no instance", "part 0", "part 1", "part 2"] and layer.values.tolist() == [2, 1, 2, 3]


# ----------------------------------------------------------------------------- payload and bundle


def test_payload_entries():
    geo = _geometry()
    geo.normals = np.array([[0, 0, 2.0], [3, 4, 0], [0, 0, 0]] + [[1, 0, 0]] * 5)
    geo.faces = np.array([[0, 1, 2], [2, 3, 4]])
    layers = [rgb_layer(np.full((8, 3), 9)), scalar_layer("s", "S", "g", np.arange(8.0), "lab"),
              semantic_layer("m", "M", "h", geo.gt_nyu40)]
    payload = scene_payload(SceneView(geo, layers, total_vertices=20, note="n"))
    assert (payload["scene"], payload["vertices"], payload["total_vertices"], payload["note"]) == (
        "scene0007_00", 8, 20, "n")
    assert payload["origin"] == [0.0, 1.0, 2.0] and payload["scale"] == pytest.approx([21 / 65535] * 3)
    q = decode(payload["positions"]).reshape(-1, 3)
    assert payload["positions"]["dtype"] == "uint16" and q[0].tolist() == [0, 0, 0] and q[-1].tolist() == [65535] * 3
    assert decode(payload["normals"]).reshape(-1, 3)[:3].tolist() == [[0, 0, 127], [76, 102, 0], [0, 0, 0]]
    assert payload["normals"]["dtype"] == "int8"
    assert payload["faces"]["dtype"] == "uint16" and decode(payload["faces"]).tolist() == [0, 1, 2, 2, 3, 4]
    rgb, scalar, semantic = payload["layers"]
    assert rgb == {"key": "rgb", "title": "input colours", "group": "input", "rgb": rgb["rgb"]}
    assert decode(rgb["rgb"]).tolist() == [9] * 24
    assert scalar["colorbar"] == {"min": 0.0, "max": 7.0, "label": "lab"} and scalar["legend"] is False
    assert decode(scalar["values"]).tolist() == [0, 36, 73, 109, 146, 182, 219, 255]
    assert scalar["names"] is None and len(scalar["palette"]) == 256
    assert (semantic["key"], semantic["title"], semantic["group"], semantic["legend"]) == ("m", "M", "h", True)
    assert semantic["names"] == ["unannotated", "wall", "chair", "table", "other (NYU40 40)"]
    assert semantic["palette"] == SEMANTIC_LUT[[0, 1, 5, 7, 40]].tolist() and "colorbar" not in semantic
    assert semantic["values"]["dtype"] == "uint8"
    bare = scene_payload(SceneView(SceneGeometry("s", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))))
    assert bare["origin"] == [0.0, 0.0, 0.0] and bare["scale"] == pytest.approx([1 / 65535] * 3)
    assert "normals" not in bare and "faces" not in bare and bare["total_vertices"] == 0


def test_payload_of_a_large_mesh_indexes_faces_with_32_bits():
    n = 70000
    geo = SceneGeometry("big", np.zeros((n, 3), np.float32), np.zeros((n, 3), np.uint8),
                        faces=np.array([[0, 1, n - 1]]))
    payload = scene_payload(SceneView(geo))
    assert payload["faces"]["dtype"] == "uint32" and decode(payload["faces"]).tolist() == [0, 1, n - 1]
    assert payload["scale"] == pytest.approx([1e-9 / 65535] * 3)  # zero extent: a tiny step, not zero
    geo.faces = np.zeros((0, 3))
    assert "faces" not in scene_payload(SceneView(geo))
    small = SceneGeometry("s", np.zeros((65535, 3), np.float32), np.zeros((65535, 3), np.uint8),
                          faces=np.array([[0, 1, 65534]]))
    assert scene_payload(SceneView(small))["faces"]["dtype"] == "uint16"


def test_write_bundle_files(tmp_path):
    geo = _geometry()
    views = [SceneView(geo, [rgb_layer(np.full((8, 3), 9)), *ground_truth_layers(geo)]),
             SceneView(SceneGeometry("scene 2/b", geo.xyz, geo.rgb), [rgb_layer(geo.rgb)])]
    index = write_bundle(views, tmp_path / "b", title="T", max_vertices=5)
    assert index == tmp_path / "b" / "index.html"
    for name in ("index.html", "viewer.js", "viewer.css"):
        assert (tmp_path / "b" / name).read_text() == (view.ASSETS / name).read_text()
    text = (tmp_path / "b" / "manifest.js").read_text()
    assert text.startswith("window.MINKSEG_MANIFEST = {\n") and text.endswith("};\n")
    manifest = json.loads(text[len("window.MINKSEG_MANIFEST = "):-2])
    assert manifest["title"] == "T"
    first, second = manifest["scenes"]
    note = ("decimated for display: 5 of 8 vertices (uniform sample, drawn as points; raise --max-vertices to "
            "see all)")
    assert first == {"id": "scene0007_00", "file": "scenes/scene0007_00.js", "vertices": 5, "total_vertices": 8,
                     "note": note, "layers": [["rgb", "input", "input colours"],
                                              ["gt_semantic", "ground truth", "semantics"],
                                              ["gt_instance", "ground truth", "instances"]]}
    assert second["id"] == "scene 2/b" and second["file"] == "scenes/scene_2_b.js"
    body = (tmp_path / "b" / "scenes" / "scene0007_00.js").read_text()
    prefix = '(window.MINKSEG_SCENES = window.MINKSEG_SCENES || {})["scene0007_00"] = '
    assert body.startswith(prefix) and body.endswith(";\n")
    payload = json.loads(body[len(prefix):-2])
    assert payload["vertices"] == 5 and payload["note"] == note and len(decode(payload["layers"][0]["rgb"])) == 15
    assert '", "' not in body and '": ' not in body  # compact JSON
    write_bundle(views[:1], tmp_path / "c")
    assert json.loads((tmp_path / "c" / "manifest.js").read_text()[26:-2])["title"] == "minkseg view"
    assert json.loads((tmp_path / "c" / "manifest.js").read_text()[26:-2])["scenes"][0]["vertices"] == 8


def test_mesh_faces_only_for_a_readable_mesh_with_the_same_vertices(raw_root, tmp_path):
    from scannet_tools.reader import read_scene

    raw = read_scene(raw_root / "scans" / "scene0000_00", annotations=False)
    faces = view._mesh_faces(raw_root, "scene0000_00", len(raw.xyz))
    assert faces.dtype == np.int64 and (faces == raw.faces).all()
    assert view._mesh_faces(str(raw_root), "scene0000_00", len(raw.xyz)) is not None
    assert view._mesh_faces(raw_root, "scene0000_00", len(raw.xyz) + 1) is None
    assert view._mesh_faces(None, "scene0000_00", len(raw.xyz)) is None
    assert view._mesh_faces("", "scene0000_00", len(raw.xyz)) is None
    assert view._mesh_faces(raw_root, "scene9999_00", len(raw.xyz)) is None
    broken = tmp_path / "scans" / "scene0000_00"
    broken.mkdir(parents=True)
    (broken / "scene0000_00_vh_clean_2.ply").write_text("not a ply")
    assert view._mesh_faces(tmp_path, "scene0000_00", len(raw.xyz)) is None


def test_temporary_bundle_dir_and_its_removal():
    path = view.temporary_bundle_dir()
    assert path.is_dir() and path.name.startswith("minkseg-view-")
    (path / "x").write_text("")
    view.remove_bundle_dir(path)
    assert not path.exists()
    view.remove_bundle_dir(path)  # already gone: no error


def test_serve_hands_out_the_folder_quietly(tmp_path, capsys):
    (tmp_path / "index.html").write_text("hello")
    urls = []
    started = threading.Event()

    def ready(url):
        urls.append(url)
        started.set()

    threading.Thread(target=view.serve, args=(tmp_path,), kwargs={"port": 0, "ready": ready}, daemon=True).start()
    assert started.wait(30)
    (url,) = urls
    assert url.startswith("http://127.0.0.1:") and url.endswith("/index.html") and ":0/" not in url
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.read() == b"hello"
    assert capsys.readouterr().err == ""  # no log line per request

    class Stop(Exception):
        pass

    def stop(url):
        raise Stop(url)

    with pytest.raises(Stop, match=r"^http://localhost:\d+/index.html$"):
        view.serve(tmp_path, host="localhost", port=0, ready=stop)


# ----------------------------------------------------------------------------- sources


@pytest.fixture()
def checkpoint_stub(monkeypatch, prepared_dir, raw_root):
    """load_checkpoint, split_scenes, predict_scene and predict_partition stood in; calls logged."""
    import minkseg.data.splits as splits
    import minkseg.engine.checkpoint as checkpoint
    import minkseg.inference.partition as partition
    import minkseg.inference.predict as predict
    from minkseg.config import load_config

    log = []
    head = {"head": "probabilistic"}

    def load_checkpoint(path, device, tuned=True, allow_pretrain=False):
        log.append(("load", path, device, tuned, allow_pretrain))
        cfg = load_config(None, [f"data.prepared={prepared_dir}", f"data.root={raw_root}", "data.val_split=vv",
                                 f"model.head={head['head']}"])
        return "MODEL", cfg, {}

    def predict_scene(model, scene, cfg, device):
        log.append(("predict", model, scene["scene"], device))
        n = len(scene["xyz"])
        return types.SimpleNamespace(semantic_nyu40=np.full(n, CHAIR), uncertainty=np.linspace(0, 1, n),
                                     instances=[InstancePrediction(np.arange(n) < 5, CHAIR, 0.5)])

    def predict_partition(model, scene, cfg, device):
        log.append(("partition", model, scene["scene"], device))
        return np.arange(len(scene["xyz"])) % 3

    monkeypatch.setattr(checkpoint, "load_checkpoint", load_checkpoint)
    monkeypatch.setattr(splits, "split_scenes", lambda cfg, split: log.append(("split", split)) or ["scene0000_00"])
    monkeypatch.setattr(predict, "predict_scene", predict_scene)
    monkeypatch.setattr(partition, "predict_partition", predict_partition)
    return types.SimpleNamespace(log=log, head=head)


def test_checkpoint_source(checkpoint_stub, prepared_dir, raw_root, tmp_path):
    from scannet_tools.prepare import load_prepared, prepared_path

    log = checkpoint_stub.log
    src = view.CheckpointSource(tmp_path / "x.pth", "run", "DEV", tuned=False)
    assert log == [("load", tmp_path / "x.pth", "DEV", False, True)] and src.label == "run" and src.model == "MODEL"
    assert src.cfg.data.prepared == str(prepared_dir) and src.cfg.data.root == str(raw_root)
    assert src.default_scenes(None) == ["scene0000_00"] and log[-1] == ("split", "vv")
    src.default_scenes("train")
    assert log[-1] == ("split", "train")
    geo = src.geometry("scene0000_00")
    data = load_prepared(prepared_path(prepared_dir, "scene0000_00"))
    np.testing.assert_array_equal(geo.xyz, data["xyz"])
    assert geo.scene == "scene0000_00" and geo.faces is not None and len(geo.faces) > 0  # the raw mesh
    assert src.geometry("scene9999_00") is None and src.layers("scene9999_00", geo, "cpu") == []
    layers = src.layers("scene0000_00", geo, "D2")
    assert log[-1] == ("predict", "MODEL", "scene0000_00", "D2")
    assert [layer.key for layer in layers] == ["run/semantic", "run/instances", "run/errors", "run/sigma"]
    assert layers[1].names[1].startswith("chair #0 · score 0.50 · ")
    shorter = SceneGeometry("scene0000_00", geo.xyz[:-1], geo.rgb[:-1])
    assert src.layers("scene0000_00", shorter, "cpu") == []  # another scene's vertices: nothing to show
    checkpoint_stub.head["head"] = "partition"
    pre = view.CheckpointSource(tmp_path / "p.pth", "pre", "cpu", prepared=tmp_path / "P", root=tmp_path / "R")
    assert pre.cfg.data.prepared == str(tmp_path / "P") and pre.cfg.data.root == str(tmp_path / "R")
    assert log[-1] == ("load", tmp_path / "p.pth", "cpu", True, True)
    pre.cfg.data.prepared = str(prepared_dir)
    (layer,) = pre.layers("scene0000_00", geo, "D3")
    assert log[-1] == ("partition", "MODEL", "scene0000_00", "D3")
    assert layer.key == "pre/partition" and layer.title == "pretraining partition (3 parts)"


@pytest.fixture()
def submission(prepared_dir, tmp_path):
    from minkseg.evaluation.submission import write_scene_submission
    from minkseg.inference.predict import ScenePrediction
    from scannet_tools.prepare import load_prepared, prepared_path

    scene = load_prepared(prepared_path(prepared_dir, "scene0000_00"))
    chair = scene["nyu40"] == CHAIR
    sub = tmp_path / "submission"
    write_scene_submission(ScenePrediction("scene0000_00", np.where(chair, CHAIR, scene["nyu40"]).astype(np.int64),
                                           [InstancePrediction(chair, CHAIR, 0.8)]), sub)
    return sub, scene


def test_submission_source(submission, raw_root, tmp_path):
    sub, scene = submission
    with pytest.raises(ValueError, match=rf"^{sub}: a submission folder needs --scans \(the raw scans/ folder it "
                                         r"was made from\)$"):
        view.SubmissionSource(sub, "s", None)
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'nope'}: --scans is not a folder$"):
        view.SubmissionSource(sub, "s", tmp_path / "nope")
    src = view.SubmissionSource(sub, "sub", raw_root / "scans")
    (sub / "instance" / "scene0002_00.txt").write_text("")
    assert src.default_scenes(None) == ["scene0000_00", "scene0002_00"]
    assert src.default_scenes("scene0002_00,scene0001_00") == ["scene0002_00"]
    geo = src.geometry("scene0000_00")
    np.testing.assert_array_equal(geo.gt_nyu40, scene["nyu40"])  # annotated: labels from the scans' table
    assert geo.faces is not None and len(geo.faces) and geo.scene == "scene0000_00"
    assert src.geometry("scene9999_00") is None
    layers = {layer.key: layer for layer in src.layers("scene0000_00", geo, "cpu")}
    assert list(layers) == ["sub/semantic", "sub/instances", "sub/errors"]
    assert layers["sub/instances"].names[1].startswith("chair #0 · score 0.80 · IoU ")
    assert np.isin(layers["sub/errors"].values[scene["nyu40"] == CHAIR], [0, 2]).all()  # the class is right
    assert src.layers("scene0001_00", geo, "cpu") == []  # neither file
    (sub / "semantic" / "scene0000_00.txt").write_text("5\n5\n")
    with pytest.raises(ValueError, match=r"scene0000_00.txt: 2 lines, the scene has \d+ vertices$"):
        src.layers("scene0000_00", geo, "cpu")
    (sub / "semantic" / "scene0000_00.txt").unlink()
    assert [layer.key for layer in src.layers("scene0000_00", geo, "cpu")] == ["sub/instances", "sub/errors"]


def test_submission_geometry_without_annotations_or_label_table(submission, raw_root, tmp_path):
    import shutil

    sub, scene = submission
    scans = tmp_path / "scans"
    shutil.copytree(raw_root / "scans" / "scene0000_00", scans / "scene0000_00")
    geo = view.SubmissionSource(sub, "sub", scans).geometry("scene0000_00")  # no label table anywhere
    assert geo.gt_nyu40 is None and len(geo.xyz) == len(scene["xyz"])
    for f in (scans / "scene0000_00").glob("*aggregation.json"):
        f.unlink()
    shutil.copy(raw_root / "scannetv2-labels.combined.tsv", tmp_path / "scannetv2-labels.combined.tsv")
    geo = view.SubmissionSource(sub, "sub", scans).geometry("scene0000_00")  # no annotation to read
    assert geo.gt_nyu40 is None and geo.faces is not None


def _pseudo(folder: Path, n: int, scene: str = "scene0000_00") -> None:
    from minkseg.engine.pseudo_labels import PseudoLabels

    semantic = np.where(np.arange(n) % 3 == 0, -100, 4).astype(np.int64)
    instance = np.where(np.arange(n) < n // 3, 0, -1)
    PseudoLabels(semantic, instance, np.array([4]), np.array([0.75], np.float32), 3).save(
        folder / f"{scene}.npz", {"vertices": n})


def test_round_source(checkpoint_stub, prepared_dir, raw_root, tmp_path):
    from minkseg.config import load_config, save_config

    n = 0
    geo = view.CheckpointSource(tmp_path / "c.pth", "c", "cpu").geometry("scene0000_00")
    n = len(geo.xyz)
    rnd = tmp_path / "runs" / "st" / "round_2"
    with pytest.raises(FileNotFoundError, match=rf"^{rnd}: a round folder without a checkpoint needs config.yaml or "
                                                r"the run's selftrain.yaml next to it \(to find the prepared "
                                                r"scenes\)$"):
        view.RoundSource(rnd, "r", "cpu")
    cfg = load_config(None, [f"data.prepared={prepared_dir}", f"data.root={raw_root}"])
    save_config(cfg, rnd.parent.parent / "selftrain.yaml")
    _pseudo(rnd / "pseudo", n)
    _pseudo(rnd / "pseudo", 5, "scene0002_00")
    (rnd / "pseudo" / "notes.npz").write_text("")
    src = view.RoundSource(rnd, "round_2", "cpu", prepared=tmp_path / "P", root=tmp_path / "R")
    assert src.student is None and src.pseudo == rnd / "pseudo" and src.label == "round_2"
    assert src.cfg.data.prepared == str(tmp_path / "P") and src.cfg.data.root == str(tmp_path / "R")
    src = view.RoundSource(rnd, "round_2", "cpu")
    assert src.default_scenes(None) == ["scene0000_00", "scene0002_00"]
    assert src.default_scenes("scene0002_00,scene0005_00") == ["scene0002_00"]
    g = src.geometry("scene0000_00")
    np.testing.assert_array_equal(g.xyz, geo.xyz)
    assert g.faces is not None and src.geometry("scene9999_00") is None
    assert [layer.key for layer in src.layers("scene0000_00", g, "cpu")] == ["round_2/pseudo_semantic",
                                                                            "round_2/pseudo_instances"]
    assert src.layers("scene0001_00", g, "cpu") == []
    with pytest.raises(ValueError, match=r"scene0002_00.npz: 5 vertices, the scene has \d+$"):
        src.layers("scene0002_00", g, "cpu")
    save_config(load_config(None, [f"data.prepared={tmp_path}"]), rnd.parent / "selftrain.yaml")
    assert view.RoundSource(rnd, "r", "cpu").cfg.data.prepared == str(tmp_path)  # the nearer file first
    save_config(load_config(None, [f"data.prepared={tmp_path / 'own'}"]), rnd / "config.yaml")
    assert view.RoundSource(rnd, "r", "cpu").cfg.data.prepared == str(tmp_path / "own")
    # a pseudo/ folder given directly, and a round with its student's checkpoint
    (rnd / "last.pth").write_text("")
    with_student = view.RoundSource(rnd, "r", "DEV", tuned=False)
    assert checkpoint_stub.log[-1] == ("load", rnd / "last.pth", "DEV", False, True)
    assert with_student.cfg is with_student.student.cfg
    keys = [layer.key for layer in with_student.layers("scene0000_00", g, "cpu")]
    assert keys == ["r/pseudo_semantic", "r/pseudo_instances", "r/semantic", "r/instances", "r/errors", "r/sigma"]
    (rnd / "best.pth").write_text("")
    view.RoundSource(rnd, "r", "cpu")
    assert checkpoint_stub.log[-1][1] == rnd / "best.pth"
    bare = view.RoundSource(rnd / "pseudo", "p", "cpu")
    assert bare.pseudo == rnd / "pseudo" and bare.default_scenes(None) == ["scene0000_00", "scene0002_00"]


def test_open_source_tells_the_kinds_apart(checkpoint_stub, submission, raw_root, tmp_path):
    from minkseg.config import load_config, save_config

    sub, _ = submission
    ckpt = tmp_path / "run" / "last.pth"
    ckpt.parent.mkdir()
    ckpt.write_text("")
    assert isinstance(view.open_source(ckpt, "a", "cpu"), view.CheckpointSource)
    assert isinstance(view.open_source(ckpt.parent, "a", "cpu"), view.CheckpointSource)
    assert checkpoint_stub.log[-1][1] == ckpt
    assert isinstance(view.open_source(sub, "s", "cpu", scans=raw_root / "scans"), view.SubmissionSource)
    only_instances = tmp_path / "inst_only"
    (only_instances / "instance").mkdir(parents=True)
    assert isinstance(view.open_source(only_instances, "s", "cpu", scans=raw_root / "scans"), view.SubmissionSource)
    rnd = tmp_path / "st" / "round_1"
    save_config(load_config(None, []), rnd / "config.yaml")
    save_config(load_config(None, []), rnd.parent / "selftrain.yaml")  # what a pseudo/ folder alone finds
    (rnd / "pseudo").mkdir()
    src = view.open_source(rnd, "r", "cpu", prepared=tmp_path / "P", root=tmp_path / "R", tuned=False)
    assert isinstance(src, view.RoundSource) and src.cfg.data.prepared == str(tmp_path / "P")
    assert src.cfg.data.root == str(tmp_path / "R")
    _pseudo(rnd / "pseudo", 3)
    assert isinstance(view.open_source(rnd / "pseudo", "p", "cpu"), view.RoundSource)
    empty_pseudo = tmp_path / "x" / "pseudo"
    empty_pseudo.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"^{empty_pseudo}: not a run folder \(best.pth/last.pth\), a "
                                                r"checkpoint, a submission folder \(semantic/, instance/\) or a "
                                                r"self-training round folder \(pseudo/\)$"):
        view.open_source(empty_pseudo, "p", "cpu")
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'nope'}: no such run folder, checkpoint, submission "
                                                r"or round folder$"):
        view.open_source(tmp_path / "nope", "n", "cpu")
    src = view.open_source(ckpt, "a", "DEV", prepared=tmp_path / "P", root=tmp_path / "R", tuned=False)
    assert src.cfg.data.prepared == str(tmp_path / "P") and checkpoint_stub.log[-1] == ("load", ckpt, "DEV", False,
                                                                                         True)


class FakeSource(view.Source):
    def __init__(self, label: str, scenes: list[str], geometries: dict, layer_count: int = 1):
        self.label, self.scenes, self.geometries, self.calls = label, scenes, geometries, []
        self.layer_count = layer_count

    def default_scenes(self, split):
        self.calls.append(("scenes", split))
        return self.scenes

    def geometry(self, scene):
        return self.geometries.get(scene)

    def layers(self, scene, geo, device):
        self.calls.append(("layers", scene, device))
        return [rgb_layer(geo.rgb * 0 + i) for i in range(self.layer_count)]


def test_build_views_take_geometry_from_the_first_source_that_has_it():
    geo = _geometry()
    other = SceneGeometry("scene0007_00", geo.xyz, geo.rgb + 1)
    a = FakeSource("a", [], {})
    b = FakeSource("b", [], {"scene0007_00": geo}, layer_count=2)
    c = FakeSource("c", [], {"scene0007_00": other})
    (v,) = view.build_views([a, b, c], ["scene0007_00"], "DEV")
    assert v.geometry is geo
    assert [layer.key for layer in v.layers] == ["rgb", "gt_semantic", "gt_instance"] + ["rgb"] * 4
    assert a.calls == [("layers", "scene0007_00", "DEV")] == c.calls
    with pytest.raises(FileNotFoundError, match=r"^scene0001_00: no source has this scene \(prepared file or raw "
                                                r"mesh\)$"):
        view.build_views([a], ["scene0001_00"], "cpu")
    base = view.Source()
    assert base.geometry("x") is None
    for call in (lambda: base.default_scenes(None), lambda: base.layers("x", geo, "cpu")):
        with pytest.raises(NotImplementedError):
            call()


def test_export_viewer_chooses_scenes_and_labels(monkeypatch, tmp_path):
    geo = {f"scene000{i}_00": SceneGeometry(f"scene000{i}_00", np.zeros((2, 3), np.float32), np.zeros((2, 3), np.uint8))
           for i in range(4)}
    opened = []

    def open_source(path, label, device, scans, prepared, root, tuned):
        opened.append((path, label, str(device), scans, prepared, root, tuned))
        return FakeSource(label, sorted(geo)[:3], geo)

    monkeypatch.setattr(view, "open_source", open_source)
    logs = []
    index = view.export_viewer([tmp_path / "a" / "run", tmp_path / "b" / "run"], tmp_path / "out", split="val",
                               scans=tmp_path / "S", device="cpu", max_scenes=2, prepared=tmp_path / "P",
                               root=tmp_path / "R", log=logs.append, tuned=False)
    assert index == tmp_path / "out" / "index.html"
    assert opened == [(tmp_path / "a" / "run", "a/run", "cpu", tmp_path / "S", tmp_path / "P", tmp_path / "R", False),
                      (tmp_path / "b" / "run", "b/run", "cpu", tmp_path / "S", tmp_path / "P", tmp_path / "R", False)]
    assert logs == ["showing the first 2 of 3 scenes; choose others with --scenes A,B"]
    text = (tmp_path / "out" / "manifest.js").read_text()
    manifest = json.loads(text[text.index("=") + 1:].rstrip().rstrip(";"))
    assert manifest["title"] == "minkseg view: a/run, b/run"
    assert [s["id"] for s in manifest["scenes"]] == ["scene0000_00", "scene0001_00"]
    opened.clear()
    view.export_viewer([tmp_path / "c"], tmp_path / "o2", scenes=["scene0003_00"], device="cpu", max_vertices=1,
                       log=logs.append)
    assert opened[0][1:] == ("c", "cpu", None, None, None, True) and len(logs) == 1
    text = (tmp_path / "o2" / "manifest.js").read_text()
    (scene,) = json.loads(text[text.index("=") + 1:].rstrip().rstrip(";"))["scenes"]
    assert scene["id"] == "scene0003_00" and scene["vertices"] == 1 and scene["total_vertices"] == 2
    import minkseg.device as device_module

    asked = []
    monkeypatch.setattr(device_module, "resolve_device", lambda spec: asked.append(spec) or "DEV")
    view.export_viewer([tmp_path / "c"], tmp_path / "o3", max_scenes=3, log=logs.append)
    assert len(logs) == 1  # all three shown: nothing to say
    assert asked == ["auto"] and opened[-1][2] == "DEV"  # the default device, resolved once for every source
    view.export_viewer([tmp_path / "c"], tmp_path / "o4", device="cpu")
    assert asked[-1] == "cpu"
    with pytest.raises(ValueError, match=r"^give at least one SOURCE \(run folder, checkpoint, submission or round "
                                         r"folder\)$"):
        view.export_viewer([], tmp_path / "o")
    monkeypatch.setattr(view, "open_source", lambda *a: FakeSource("e", [], {}))
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'e'}: no scenes to show \(split test\)$"):
        view.export_viewer([tmp_path / "e"], tmp_path / "o", split="test", device="cpu")
    with pytest.raises(FileNotFoundError, match=r": no scenes to show \(split default\)$"):
        view.export_viewer([tmp_path / "e"], tmp_path / "o", device="cpu")
