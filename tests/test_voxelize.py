"""Voxelization, augmentation and devoxelization."""

import numpy as np
import pytest
import torch

from minkseg.data.augment import AugmentConfig, augment, crop_mask
from minkseg.data.voxelize import UNKNOWN_INSTANCE, VoxelScene, collate, input_features, majority_vote, voxelize
from minkseg.inference.devoxelize import devoxelize, resolve_inverse
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID, IGNORE_ID, SEMANTIC_NAMES
from scannet_tools.prepare import load_prepared


def test_majority_vote_ignores_ignore():
    group = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([3, 3, 5, IGNORE_ID, 7, IGNORE_ID])
    assert majority_vote(group, labels, 3, IGNORE_ID).tolist() == [3, 7, IGNORE_ID]


def test_voxelize_devoxelize_round_trip(prepared_dir):
    s = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    xyz = s["xyz"] - s["xyz"].min(0)
    v = voxelize(xyz, input_features(s["rgb"]), s["semantic"], s["instance"], voxel_size=0.05)
    assert (v.inverse >= 0).all() and len(v.coords) <= len(xyz)
    # each vertex lies inside its voxel
    np.testing.assert_array_equal(np.floor(xyz / 0.05).astype(np.int32), v.coords[v.inverse].numpy())
    # devoxelized voxel labels agree with the vertices' own labels almost everywhere
    sem_v = devoxelize(v.semantic, v.inverse).numpy()
    known = s["semantic"] != IGNORE_ID
    assert (sem_v[known] == s["semantic"][known]).mean() > 0.95
    # instances renumbered 0..K-1 with one class each, all of them instance classes
    assert v.instance.max() + 1 == v.num_instances and (v.instance_class >= 2).all()


def test_crop_keeps_a_window_and_devoxelize_falls_back_to_nearest(prepared_dir):
    s = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    xyz = s["xyz"] - s["xyz"].min(0)
    keep = crop_mask(xyz, 200, 0.05, np.random.default_rng(0))
    assert 0 < keep.sum() < len(xyz)
    v = voxelize(xyz, input_features(s["rgb"]), s["semantic"], s["instance"], 0.05, keep=keep)
    assert (v.inverse[~torch.from_numpy(keep)] == -1).all()
    with pytest.raises(ValueError, match="no voxel"):
        resolve_inverse(v.inverse)
    full = resolve_inverse(v.inverse, xyz, v.centers.numpy())
    assert (full >= 0).all()
    far = np.flatnonzero(~keep)[:50]
    d = np.linalg.norm(v.centers.numpy()[full[far].numpy()] - xyz[far], axis=1)
    d_min = np.linalg.norm(v.centers.numpy()[None] - xyz[far][:, None], axis=2).min(1)
    np.testing.assert_allclose(d, d_min, rtol=1e-6)


def test_augment_is_seeded_and_preserves_shape():
    xyz = np.random.default_rng(0).uniform(0, 3, (500, 3)).astype(np.float32)
    rgb = np.full((500, 3), 128, np.uint8)
    cfg = AugmentConfig(elastic=True)
    a = augment(xyz, rgb, cfg, np.random.default_rng(5))
    b = augment(xyz, rgb, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == xyz.shape and a[0].min() >= 0 and a[2].all()
    # distances are preserved up to scale and small jitter/elastic noise
    d0 = np.linalg.norm(xyz[0] - xyz[1])
    d1 = np.linalg.norm(a[0][0] - a[0][1])
    assert 0.6 * d0 < d1 < 1.4 * d0


def test_collate_offsets_instances(prepared_dir):
    files = sorted(prepared_dir.glob("*.npz"))[:2]
    scenes = []
    for f in files:
        s = load_prepared(f)
        xyz = s["xyz"] - s["xyz"].min(0)
        scenes.append(voxelize(xyz, input_features(s["rgb"]), s["semantic"], s["instance"], 0.05))
    b = collate(scenes)
    assert b.coords.shape[1] == 4 and b.batch.max() == 1
    k0 = scenes[0].num_instances
    assert b.instance[b.batch == 1].max() == k0 + scenes[1].num_instances - 1
    assert len(b.instance_class) == k0 + scenes[1].num_instances


@pytest.mark.parametrize("dense_limit", [0, 1 << 23])  # the sorted-pairs path and the dense table
def test_majority_vote_breaks_ties_towards_the_smaller_label(dense_limit):
    group = np.array([0, 0, 1, 1, 1, 1, 3])
    labels = np.array([10, 0, 4, 4, 2, 2, IGNORE_ID])
    assert majority_vote(group, labels, 4, IGNORE_ID, dense_limit).tolist() == [0, 2, IGNORE_ID, IGNORE_ID]


def test_majority_vote_paths_agree():
    rng = np.random.default_rng(0)
    group, labels = rng.integers(0, 300, 5000), rng.integers(-3, 12, 5000)
    np.testing.assert_array_equal(majority_vote(group, labels, 301, -1, dense_limit=0),
                                  majority_vote(group, labels, 301, -1))


SEM = {name: i for i, name in enumerate(SEMANTIC_NAMES)}


def sheet(u0: float, u1: float, z0: float, z1: float, y: float, step: float = 0.01) -> np.ndarray:
    """Vertices every ``step`` of the rectangle [u0, u1) x [z0, z1) in the plane y (x = u)."""
    u, z = np.meshgrid(np.arange(u0, u1, step), np.arange(z0, z1, step), indexing="ij")
    return np.stack([u.ravel(), np.full(u.size, y), z.ravel()], 1)


def wall_with_thin_objects() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """A 4 m x 2.5 m wall (plane y = 0, a vertex per cm, as in a ScanNet mesh) carrying
    1-vertex-thick objects: a window in the wall plane (no wall behind it), a picture 5 mm
    proud of the wall, a door frame of three 6 cm strips 1 cm proud around an opening, and
    a curtain 8 cm in front. Returns xyz, semantic, instance and {instance id: class}."""
    window, door = (0.2, 1.2, 1.0, 2.0), (2.2, 3.0, 0.0, 2.1)
    wall = sheet(0, 4, 0, 2.5, 0.0)
    in_window = ((wall[:, 0] >= window[0]) & (wall[:, 0] < window[1]) & (wall[:, 2] >= window[2])
                 & (wall[:, 2] < window[3]))
    in_door = (wall[:, 0] >= door[0]) & (wall[:, 0] < door[1]) & (wall[:, 2] < door[3])
    parts = [(wall[~in_window & ~in_door], SEM["wall"], -1), (sheet(*window, 0.0), SEM["window"], 1),
             (sheet(1.4, 2.0, 1.3, 1.8, -0.005), SEM["picture"], 2),
             (np.concatenate([sheet(2.14, 2.2, 0, 2.16, -0.01), sheet(3.0, 3.06, 0, 2.16, -0.01),
                              sheet(2.2, 3.0, 2.1, 2.16, -0.01)]), SEM["door"], 3),
             (sheet(3.2, 3.9, 0.2, 2.4, -0.08), SEM["curtain"], 4)]
    xyz = np.concatenate([p for p, _, _ in parts])
    semantic = np.concatenate([np.full(len(p), c) for p, c, _ in parts])
    instance = np.concatenate([np.full(len(p), k) for p, _, k in parts])
    return xyz, semantic, instance, {k: c for _, c, k in parts if k >= 0}


@pytest.mark.parametrize("voxel_size", [0.02, 0.05, 0.10])
def test_thin_wall_objects_never_become_wall_instances(voxel_size):
    xyz0, semantic, instance, true_class = wall_with_thin_objects()
    rng = np.random.default_rng(int(voxel_size * 100))
    for _ in range(4):
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        xyz = (xyz0 @ rot.T + rng.uniform(-1, 1, 3)).astype(np.float32)
        v = voxelize(xyz, np.zeros((len(xyz), 3), np.float32), semantic, instance, voxel_size)
        member = v.instance >= 0
        # every instance is one of the objects, with that object's class: never wall, floor or negative
        assert (v.instance_class >= FIRST_INSTANCE_TRAIN_ID).all()
        vertex_instance = v.instance[v.inverse].numpy()
        for k in range(v.num_instances):
            ids = instance[(vertex_instance == k) & (instance >= 0)]
            source = np.bincount(ids).argmax()
            assert v.instance_class[k] == true_class[source], (voxel_size, k, source)
        # a voxel is a member exactly when it carries its instance's class
        assert torch.equal(v.semantic[member], v.instance_class[v.instance[member]])
        assert (v.semantic[~member] < FIRST_INSTANCE_TRAIN_ID).all()
        collate([v])  # passes the batch-time label check
        survivors = {true_class[int(np.bincount(instance[(vertex_instance == k) & (instance >= 0)]).argmax())]
                     for k in range(v.num_instances)}
        assert SEM["window"] in survivors  # not vacuous: objects with voxels of their own stay
        if voxel_size <= 0.05:  # a 5 cm cube spans at most 7.1 cm across the wall: the curtain keeps its voxels
            assert SEM["curtain"] in survivors


def test_an_object_that_loses_every_voxel_to_the_wall_disappears():
    # a sparse picture 3 mm in front of a dense wall: every 10 cm voxel votes wall
    wall = sheet(0, 1, 0, 1, 0.001)
    picture = sheet(0.2, 0.8, 0.2, 0.8, 0.004, step=0.02)
    xyz = np.concatenate([wall, picture]).astype(np.float32)
    semantic = np.r_[np.full(len(wall), SEM["wall"]), np.full(len(picture), SEM["picture"])]
    instance = np.r_[np.full(len(wall), -1), np.full(len(picture), 0)]
    v = voxelize(xyz, np.zeros((len(xyz), 3), np.float32), semantic, instance, 0.1)
    assert (v.semantic == SEM["wall"]).all()
    assert v.num_instances == 0 and (v.instance == -1).all()


def test_instance_class_is_voted_over_vertices_not_voxels():
    # instance 5: 2 voxels of 10 sofa vertices, 3 voxels holding one (mislabelled) chair vertex each
    xyz = np.concatenate([np.full((10, 3), 0.05), np.full((10, 3), 0.15),
                          [[0.35, 0.05, 0.05], [0.55, 0.05, 0.05], [0.75, 0.05, 0.05]]]).astype(np.float32)
    semantic = np.r_[np.full(20, SEM["sofa"]), np.full(3, SEM["chair"])]
    v = voxelize(xyz, np.zeros((23, 3), np.float32), semantic, np.full(23, 5), 0.1)
    assert v.num_instances == 1 and v.instance_class.tolist() == [SEM["sofa"]]
    assert (v.instance == 0).all()


def test_wall_vertices_do_not_lend_their_voxel_to_an_instance():
    # one voxel: 3 wall vertices and 1 chair vertex; another: chair only
    xyz = np.array([[0.01, 0, 0], [0.02, 0, 0], [0.03, 0, 0], [0.04, 0, 0], [0.15, 0, 0]], np.float32)
    semantic = np.array([0, 0, 0, 4, 4])
    instance = np.array([-1, -1, -1, 2, 2])
    v = voxelize(xyz, np.zeros((5, 3), np.float32), semantic, instance, 0.1)
    assert v.semantic[v.inverse].tolist() == [0, 0, 0, 0, 4]
    assert v.instance[v.inverse].tolist() == [-1, -1, -1, -1, 0] and v.instance_class.tolist() == [4]


def hand_scene(semantic, instance, instance_class) -> VoxelScene:
    m = len(semantic)
    return VoxelScene(scene="scene_hand", coords=torch.zeros(m, 3, dtype=torch.int32), feats=torch.zeros(m, 3),
                      centers=torch.zeros(m, 3), semantic=torch.tensor(semantic), instance=torch.tensor(instance),
                      instance_class=torch.tensor(instance_class, dtype=torch.long),
                      inverse=torch.arange(m), voxel_size=0.1)


@pytest.mark.parametrize("semantic,instance,instance_class,message", [
    ([0, 4], [0, 0], [0], "scene_hand: instance 0 has class 0"),
    ([4, 4], [0, 0], [-1], "scene_hand: instance 0 has class -1"),
    ([4, 4], [0, 0], [IGNORE_ID], "scene_hand: instance 0 has class -100"),
    ([4, 0], [0, 0], [4], "scene_hand: 1 instance voxels are labelled wall"),
    ([4, 4], [0, 1], [4], "scene_hand: voxel instance index 1 but only 1"),
])
def test_collate_refuses_instances_that_are_not_of_an_instance_class(semantic, instance, instance_class, message):
    with pytest.raises(ValueError, match=message):
        collate([hand_scene(semantic, instance, instance_class)])
    collate([hand_scene([4, 0], [0, -1], [4])])  # agreeing labels pass


def test_input_features_scale_colours_and_append_normals():
    rgb = np.array([[0, 255, 51], [255, 0, 102]], np.uint8)
    expected = np.array([[-0.5, 0.5, -0.3], [0.5, -0.5, -0.1]], np.float32)
    got = input_features(rgb)
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_allclose(got, expected, atol=1e-7)
    normals = np.array([[0, 0, 1], [1, 0, 0]], np.float64)
    with_normals = input_features(rgb, normals)
    assert with_normals.dtype == np.float32 and with_normals.shape == (2, 6)
    np.testing.assert_allclose(with_normals, np.concatenate([expected, normals], 1), atol=1e-7)


def test_majority_vote_of_only_ignored_labels_is_ignore_everywhere():
    for dense_limit in (0, 1 << 23):
        out = majority_vote(np.array([0, 2, 2]), np.full(3, IGNORE_ID), 4, IGNORE_ID, dense_limit)
        assert out.dtype == np.int64 and out.tolist() == [IGNORE_ID] * 4


def test_voxelize_hand_case_values():
    # four vertices in three 0.5 m cells; vertex 1 is cropped away (its cell keeps vertex 0)
    xyz = np.array([[0.1, 0.1, 0.1], [0.4, 0.2, 0.3], [0.6, 0.1, 0.1], [1.2, 1.7, 0.9]], np.float32)
    feats = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]], np.float32)
    keep = np.array([True, False, True, True])
    v = voxelize(xyz, feats, voxel_size=0.5, scene="scene0007_00", keep=keep)
    assert v.scene == "scene0007_00" and v.voxel_size == 0.5
    by_vertex = v.coords[v.inverse[keep]].tolist()
    assert by_vertex == [[0, 0, 0], [1, 0, 0], [2, 3, 1]] and v.coords.dtype == torch.int32
    assert v.inverse[1] == -1 and v.inverse.dtype == torch.int64
    assert v.feats[v.inverse[keep]].tolist() == [[1, 1, 1], [3, 3, 3], [4, 4, 4]]  # the kept vertices' own
    np.testing.assert_allclose(v.centers[v.inverse[keep]].numpy(), [[0.25, 0.25, 0.25], [0.75, 0.25, 0.25],
                                                                     [1.25, 1.75, 0.75]])
    # no labels given: every voxel ignored, no instance, nothing unknown; ground truth by default
    assert (v.semantic == IGNORE_ID).all() and (v.instance == -1).all() and v.num_instances == 0
    assert v.instance_class.dtype == torch.int64 and v.instance_known is None
    assert v.labeled is True and v.weight == 1.0


def test_voxelize_refuses_an_empty_crop():
    xyz, feats = np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"^scene0003_01: no vertices to voxelize$"):
        voxelize(xyz, feats, scene="scene0003_01", keep=np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"^scene: no vertices to voxelize$"):
        voxelize(xyz, feats, keep=np.zeros(3, bool))


def test_instances_without_semantics_only_keep_the_unknown_marks():
    # semantic None: every voxel is ignored, so no voxel can be an instance member, but an
    # UNKNOWN_INSTANCE majority still marks the voxel's instance as unknown
    xyz = np.array([[0.05, 0, 0], [0.06, 0, 0], [0.15, 0, 0], [0.25, 0, 0]], np.float32)
    instance = np.array([UNKNOWN_INSTANCE, UNKNOWN_INSTANCE, 0, -1])
    v = voxelize(xyz, np.zeros((4, 3), np.float32), None, instance, 0.1)
    assert (v.semantic == IGNORE_ID).all() and (v.instance == -1).all() and v.num_instances == 0
    assert v.instance_known[v.inverse].tolist() == [False, False, True, True]
    # no instance left: still an int64 class vector, which collate concatenates with other scenes' classes
    assert v.instance_class.dtype == torch.int64
    assert collate([v]).instance_known.dtype == torch.bool


def test_default_voxel_size_is_2_cm():
    xyz = np.array([[0.01, 0.03, 0.05], [0.021, 0.0, 0.099]], np.float32)
    v = voxelize(xyz, np.zeros((2, 3), np.float32))
    assert v.voxel_size == 0.02 and v.coords[v.inverse].tolist() == [[0, 1, 2], [1, 0, 4]]


def test_instance_zero_and_the_first_instance_class_are_kept():
    # instance id 0 of class FIRST_INSTANCE_TRAIN_ID (cabinet), id 3 of the last class; a wall
    # vertex that carries an instance id (inconsistent input) does not make its voxel a member
    xyz = np.array([[0.05, 0, 0], [0.06, 0, 0], [0.15, 0, 0], [0.25, 0, 0]], np.float32)
    semantic = np.array([FIRST_INSTANCE_TRAIN_ID, FIRST_INSTANCE_TRAIN_ID, 19, 0])
    instance = np.array([0, 0, 3, 0])
    v = voxelize(xyz, np.zeros((4, 3), np.float32), semantic, instance, 0.1)
    assert v.instance[v.inverse].tolist() == [0, 0, 1, -1]
    assert v.instance_class.tolist() == [FIRST_INSTANCE_TRAIN_ID, 19] and v.instance_known is None


def scene_of(semantic: list[int], instance: list[int], instance_class: list[int], known: list[bool] | None,
             coords: list[list[int]]) -> VoxelScene:
    """A hand-built voxel scene whose voxels are told apart by their coordinates."""
    m = len(semantic)
    c = torch.tensor(coords, dtype=torch.int32)
    return VoxelScene(scene="s", coords=c, feats=c.float() * 2, centers=c.float() / 10,
                      semantic=torch.tensor(semantic), instance=torch.tensor(instance),
                      instance_class=torch.tensor(instance_class, dtype=torch.long), inverse=torch.arange(m),
                      voxel_size=0.1, instance_known=None if known is None else torch.tensor(known))


def test_collate_concatenates_three_scenes_exactly():
    a = scene_of([4, 0], [0, -1], [4], None, [[0, 0, 0], [1, 0, 0]])
    b = scene_of([5, 6, 1], [1, 0, -1], [6, 5], [True, False, True], [[2, 0, 0], [3, 0, 0], [4, 0, 0]])
    c = scene_of([3], [0], [3], None, [[5, 0, 0]])
    batch = collate([a, b, c])
    assert batch.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 2, 0, 0], [1, 3, 0, 0], [1, 4, 0, 0],
                                     [2, 5, 0, 0]]
    assert batch.coords.dtype == torch.int32 and batch.batch.dtype == torch.int64
    assert batch.batch.tolist() == [0, 0, 1, 1, 1, 2]
    assert batch.instance.tolist() == [0, -1, 2, 1, -1, 3]  # offsets 0, 1, 3
    assert batch.instance_class.tolist() == [4, 6, 5, 3]
    assert batch.semantic.tolist() == [4, 0, 5, 6, 1, 3]
    assert batch.instance_known.tolist() == [True, True, True, False, True, True]
    assert batch.instance_known.dtype == torch.bool and batch.instance_class.dtype == torch.int64
    assert batch.feats[:, 0].tolist() == [0, 2, 4, 6, 8, 10] and batch.centers[:, 0].tolist() == pytest.approx(
        [0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert batch.scenes == [a, b, c]


TENSOR_FIELDS = ("coords", "feats", "centers", "semantic", "instance", "instance_class", "batch", "instance_known")


def test_batch_to_moves_every_tensor_and_passes_non_blocking(monkeypatch):
    batch = collate([scene_of([4, 0], [0, -1], [4], None, [[0, 0, 0], [1, 0, 0]])])
    calls = []
    original = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        calls.append((args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    moved = batch.to("cpu")
    assert calls == [(("cpu",), {"non_blocking": False})] * len(TENSOR_FIELDS)
    calls.clear()
    batch.to(torch.device("cpu"), non_blocking=True)
    assert calls == [((torch.device("cpu"),), {"non_blocking": True})] * len(TENSOR_FIELDS)
    monkeypatch.undo()
    for name in TENSOR_FIELDS:
        assert torch.equal(getattr(moved, name), getattr(batch, name)), name
    assert moved.scenes is batch.scenes


def test_batch_pin_memory_pins_every_tensor(monkeypatch):
    batch = collate([scene_of([4, 0], [0, -1], [4], None, [[0, 0, 0], [1, 0, 0]])])
    pinned_ids = []

    def fake_pin(self):  # page-locking needs an accelerator; record which tensors would be pinned
        copy = self.clone()
        pinned_ids.append(id(copy))
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    pinned = batch.pin_memory()
    assert [id(getattr(pinned, name)) for name in TENSOR_FIELDS] == pinned_ids
    for name in TENSOR_FIELDS:
        assert torch.equal(getattr(pinned, name), getattr(batch, name)), name
    assert pinned.scenes is batch.scenes


def test_instance_label_check_names_an_unnamed_scene_scene():
    nameless = scene_of([0], [0], [0], None, [[0, 0, 0]])
    nameless.scene = ""
    with pytest.raises(ValueError, match=r"^scene: instance 0 has class 0;"):
        collate([nameless])


@pytest.mark.parametrize("semantic,instance,instance_class,message", [
    ([4, 4, 4], [0, 1, 1], [4, 1], r"^s: instance 1 has class 1; instances must have one of the instance classes "
     r"\(train ids 2\.\.19\), never wall, floor or ignored$"),
    ([4, 4], [0, 0], [20], r"^s: instance 0 has class 20;"),  # NUM_SEMANTIC is out of range
    ([4, 4], [0, 1], [4], r"^s: voxel instance index 1 but only 1 instance classes$"),
    ([4, 0, 1], [0, 0, 0], [4], r"^s: 2 instance voxels are labelled wall, floor or ignored; a voxel's semantic "
     r"label and instance membership must agree$"),
    ([FIRST_INSTANCE_TRAIN_ID, 1], [0, 0], [FIRST_INSTANCE_TRAIN_ID], r"^s: 1 instance voxels are labelled wall"),
])
def test_instance_label_check_messages(semantic, instance, instance_class, message):
    coords = [[i, 0, 0] for i in range(len(semantic))]
    with pytest.raises(ValueError, match=message):
        collate([scene_of(semantic, instance, instance_class, None, coords)])


def test_instance_label_check_accepts_the_class_range_ends():
    coords = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    batch = collate([scene_of([FIRST_INSTANCE_TRAIN_ID, 19, 0], [0, 1, -1], [FIRST_INSTANCE_TRAIN_ID, 19], None,
                              coords)])
    assert batch.instance_class.tolist() == [FIRST_INSTANCE_TRAIN_ID, 19]
    # no member voxel at all passes too
    collate([scene_of([0, 1], [-1, -1], [], None, coords[:2])])


def test_majority_vote_of_int32_inputs_with_many_groups_does_not_overflow():
    # 3 million groups x 1000 labels: (group, label) keys beyond 2**31, as int32 arrays (the dtype of
    # pseudo-label files) would wrap around if they were not widened first
    labels = np.r_[np.arange(1000), 999, 999].astype(np.int32)
    group = np.r_[np.full(1000, 5), 3_000_000, 3_000_000].astype(np.int32)
    out = majority_vote(group, labels, 3_000_001, IGNORE_ID)  # 3e9 table cells: the sorted-pairs path
    assert out[5] == 0 and out[3_000_000] == 999  # ties to the smallest label; two votes beat one
    assert (np.delete(out, [5, 3_000_000]) == IGNORE_ID).all()


def test_voxelize_quantizes_in_float32_and_gives_float32_features():
    # float64 coordinates are voxelized as their float32 copies (prepared files, augment and predict
    # all hold float32): 0.3 / 0.05 is 5.999... in float64 but 6 in float32
    xyz = np.array([[0.3, 0.15, 0.35], [0.7, 0.6, 0.9]], np.float64)
    feats = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], np.float64)
    v = voxelize(xyz, feats, voxel_size=0.05)
    assert v.coords[v.inverse].tolist() == [[6, 3, 7], [14, 12, 18]]
    assert v.coords.tolist() == voxelize(xyz.astype(np.float32), feats, voxel_size=0.05).coords.tolist()
    assert v.feats.dtype == torch.float32 and v.centers.dtype == torch.float32
    np.testing.assert_allclose(v.feats[v.inverse].numpy(), feats, rtol=1e-7)
