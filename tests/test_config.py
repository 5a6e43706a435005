"""minkseg.config: YAML files and dotted overrides into typed dataclasses, each bad value a one-line
ConfigError that names the key, the expectation and the value."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from minkseg.config import (
    ClusterConfig,
    Config,
    ConfigError,
    ModelConfig,
    PretrainConfig,
    _coerce,
    _merge,
    apply_override,
    from_dict,
    load_config,
    save_config,
    to_dict,
    with_cluster_overrides,
)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == Config()
    assert (cfg.name, cfg.runs_dir, cfg.run_dir) == ("run", "runs", Path("runs/run"))
    assert (cfg.model.head, cfg.train.lr, cfg.cluster.taus, cfg.data.augment.scale) == (
        "probabilistic", 1e-3, [], [0.9, 1.1])


def test_file_then_overrides_then_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from_file\ntrain:\n  epochs: 7\n  lr: 0.5\nmodel:\n  head: margin\n")
    cfg = load_config(path, ["train.lr=0.25", "cluster.taus=[0.25, 0.5]", "data.augment.max_voxels=9"])
    assert cfg.name == "from_file" and cfg.model.head == "margin"
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.25  # the override wins over the file
    assert cfg.train.batch_size == 4  # a key the file leaves out keeps its default
    assert cfg.cluster.taus == [0.25, 0.5] and cfg.data.augment.max_voxels == 9
    assert cfg.data.augment.scale == [0.9, 1.1]  # the rest of the nested section stays
    assert load_config(str(path)).train.epochs == 7  # a str path works too


def test_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_shipped_configs_load():
    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert "synthetic_probabilistic.yaml" in names and "synthetic_margin.yaml" in names
    assert load_config(ROOT / "configs" / "synthetic_margin.yaml").model.head == "margin"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/nope.yaml: config file does not exist$"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: top level must be a mapping$"):
        load_config(path)


def test_yaml_is_read_safely(tmp_path):
    path = tmp_path / "unsafe.yaml"
    path.write_text("name: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(yaml.constructor.ConstructorError):
        load_config(path)


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.lrr=1", "train.epoch=2"])
    valid = sorted(f for f in to_dict(Config())["train"])
    assert str(err.value) == f"config.train: unknown key(s) ['epoch', 'lrr']; valid: {valid}"
    with pytest.raises(ConfigError, match=r"^config: unknown key\(s\) \['trian'\]; valid: \['cluster', 'data', "):
        load_config(None, ["trian.lr=1"])
    with pytest.raises(ConfigError, match=r"^config.data.augment: unknown key\(s\) \['crop'\]"):
        load_config(None, ["data.augment.crop=1"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", "config.train.epochs: expected int, got 'ten'"),
    ("train.epochs=2.5", "config.train.epochs: expected int, got 2.5"),
    ("train.epochs=true", "config.train.epochs: expected int, got True"),
    ("train.lr=false", "config.train.lr: expected float, got False"),
    ("train.lr=[1]", "config.train.lr: expected float, got [1]"),
    ("data.use_normals=1", "config.data.use_normals: expected true/false, got 1"),
    ("data.use_normals=yess", "config.data.use_normals: expected true/false, got 'yess'"),
    ("train.lr_milestones=3", "config.train.lr_milestones: expected a list, got 3"),
    ("train.lr_milestones=[3, x]", "config.train.lr_milestones[1]: expected int, got 'x'"),
    ("data.augment=3", "config.data.augment: expected a mapping, got 3"),
    ("train=[1]", "config.train: expected a mapping, got [1]"),
])
def test_wrong_types_name_key_expectation_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_values_are_coerced_to_the_field_type():
    cfg = load_config(None, ["train.epochs=3.0", "train.lr=1", "name=5", "train.lr_milestones=[2.0, 4]",
                             "data.augment.scale=[1, 2]"])
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.name == "5"
    assert cfg.train.lr_milestones == [2, 4] and all(type(v) is int for v in cfg.train.lr_milestones)
    assert cfg.data.augment.scale == [1.0, 2.0] and all(type(v) is float for v in cfg.data.augment.scale)


@dataclass
class _Shapes:
    """Annotations the project's Config does not use yet, to pin down the rest of _coerce."""

    pair: tuple[int, ...] = (0, 0)
    anything: list = field(default_factory=list)
    untyped_list: typing.List = field(default_factory=list)  # noqa: UP006 (the bare alias has no item type)
    maybe: int | None = None
    path: Path = Path(".")


def test_coerce_tuples_unions_and_other_types():
    out = from_dict(_Shapes, {"pair": [1, 2.0], "anything": [1, "a"], "untyped_list": ["x", 2],
                              "maybe": "not checked", "path": 3})
    assert out.pair == (1, 2) and type(out.pair) is tuple and all(type(v) is int for v in out.pair)
    assert out.anything == [1, "a"] and out.untyped_list == ["x", 2] and type(out.untyped_list) is list
    assert out.maybe == "not checked" and out.path == 3  # unions and other types pass through unchecked
    with pytest.raises(ConfigError, match=r"^s.pair\[1\]: expected int, got 'b'$"):
        from_dict(_Shapes, {"pair": (1, "b")}, "s")
    with pytest.raises(ConfigError, match=r"^s.pair: expected a list, got 'ab'$"):
        from_dict(_Shapes, {"pair": "ab"}, "s")
    assert _coerce(2, float, "w") == 2.0 and type(_coerce(2, float, "w")) is float
    assert _coerce(True, bool, "w") is True and _coerce(False, bool, "w") is False


def test_from_dict_default_where_is_config():
    with pytest.raises(ConfigError, match=r"^config: unknown key\(s\) \['z'\]; valid: \['anything', 'maybe', "
                                          r"'pair', 'path', 'untyped_list'\]$"):
        from_dict(_Shapes, {"z": 1})


def test_override_values_are_yaml():
    data: dict = {}
    for o in ("a.b=1", "a.c=0.5", "a.d=true", "a.e=[1, 2]", "a.f=text", "a.g=", "a.h=x=y", " a.i =null"):
        apply_override(data, o)
    assert data == {"a": {"b": 1, "c": 0.5, "d": True, "e": [1, 2], "f": "text", "g": None, "h": "x=y",
                          "i": None}}


def test_override_creates_sections_and_refuses_to_descend_into_a_value():
    data = {"train": {"lr": 1.0}}
    apply_override(data, "x.y.z=2")
    assert data == {"train": {"lr": 1.0}, "x": {"y": {"z": 2}}}
    with pytest.raises(ConfigError, match=r"^override 'train.lr.x=1': lr is not a section$"):
        apply_override(data, "train.lr.x=1")
    with pytest.raises(ConfigError, match=r"^override 'train.lr' is not key=value$"):
        apply_override(data, "train.lr")


def test_cluster_overrides_copy_validate_and_refuse_other_sections():
    cfg = load_config(None, ["model.head=margin"])
    tuned = with_cluster_overrides(cfg, ["cluster.min_size=5", "cluster.taus=[0.3]"])
    assert (tuned.cluster.min_size, tuned.cluster.taus, tuned.model.head) == (5, [0.3], "margin")
    assert cfg.cluster.min_size == 20 and cfg.cluster.taus == []  # the checkpoint's config is untouched
    assert with_cluster_overrides(cfg, ()) == cfg
    with pytest.raises(ConfigError, match=r"^override 'train.lr=1': only cluster.\* options can change at "
                                          r"inference$"):
        with_cluster_overrides(cfg, ["cluster.min_size=5", "train.lr=1"])
    with pytest.raises(ConfigError, match=r"^config.cluster.score: expected cluster or psi, got 'best'$"):
        with_cluster_overrides(cfg, ["cluster.score=best"])
    with pytest.raises(ConfigError, match=r"^config.cluster: unknown key\(s\) \['tau'\]"):
        with_cluster_overrides(cfg, ["cluster.tau=0.3"])


def test_merge_replaces_values_and_merges_sections():
    base = {"a": {"x": 1, "y": 2}, "b": 3, "c": {"z": 1}}
    _merge(base, {"a": {"y": 5, "w": 6}, "b": {"new": 1}, "c": 4, "d": {"e": 1}})
    assert base == {"a": {"x": 1, "y": 5, "w": 6}, "b": {"new": 1}, "c": 4, "d": {"e": 1}}


def test_save_then_load_is_the_same_config_in_field_order(tmp_path):
    cfg = load_config(None, ["name=saved", "cluster.taus=[0.2, 0.4]", "model.head=margin", "train.lr=0.125"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("name: saved\nruns_dir: runs\ndata:\n  prepared: data/prepared\n")  # not sorted
    assert yaml.safe_load(text) == to_dict(cfg)
    assert load_config(tmp_path / "config.yaml") == cfg


def test_to_dict_is_nested_plain_data():
    d = to_dict(Config())
    assert d["loss"]["margin"]["smooth"] == 10.0 and d["data"]["augment"]["max_voxels"] == 0
    assert d["selftrain"]["certainty"] == [0.5] and d["pretrain"]["inputs"] == ["xyz"]


# ---------------------------------------------------------------- each section's own checks

@pytest.mark.parametrize("key", ["embedding_unit", "offset_range"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_model_lengths_must_be_positive(key, value):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{key: value})
    assert str(err.value) == f"config.model.{key}: expected a length > 0 metres, got {value!r}"


def test_model_lengths_just_above_zero_are_fine():
    assert ModelConfig(embedding_unit=1e-9, offset_range=1e-9).offset_range == 1e-9


@pytest.mark.parametrize("kwargs, message", [
    ({"score": "best"}, "config.cluster.score: expected cluster or psi, got 'best'"),
    ({"hypotheses": 0}, "config.cluster.hypotheses: expected >= 1, got 0"),
    ({"hypothesis_threshold": -0.01}, "config.cluster.hypothesis_threshold: expected a value in [0, 1], got -0.01"),
    ({"hypothesis_threshold": 1.01}, "config.cluster.hypothesis_threshold: expected a value in [0, 1], got 1.01"),
    ({"nms_iou": -0.5}, "config.cluster.nms_iou: expected a value in [0, 1], got -0.5"),
    ({"nms_iou": 2.0}, "config.cluster.nms_iou: expected a value in [0, 1], got 2.0"),
    ({"grouping": "dbscan"}, "config.cluster.grouping: expected greedy or meanshift, got 'dbscan'"),
    ({"meanshift_bandwidth": 0.0}, "config.cluster.meanshift_bandwidth: expected > 0, got 0.0"),
    ({"meanshift_bandwidth": -1.0}, "config.cluster.meanshift_bandwidth: expected > 0, got -1.0"),
    ({"meanshift_iterations": -1}, "config.cluster.meanshift_iterations: expected >= 0, got -1"),
    ({"tta": -2}, "config.cluster.tta: expected >= 0, got -2"),
    ({"meanshift_anchors": 0}, "config.cluster.meanshift_anchors: expected >= 1, got 0"),
])
def test_cluster_settings_out_of_range(kwargs, message):
    with pytest.raises(ConfigError) as err:
        ClusterConfig(**kwargs)
    assert str(err.value) == message


def test_cluster_settings_at_their_limits_are_fine():
    for kwargs in ({"score": "psi", "grouping": "meanshift"}, {"hypotheses": 1}, {"hypothesis_threshold": 0.0},
                   {"hypothesis_threshold": 1.0}, {"nms_iou": 0.0}, {"nms_iou": 1.0}, {"meanshift_bandwidth": 1e-6},
                   {"meanshift_iterations": 0}, {"tta": 0}, {"meanshift_anchors": 1}):
        cfg = ClusterConfig(**kwargs)
        assert all(getattr(cfg, k) == v for k, v in kwargs.items())


@pytest.mark.parametrize("kwargs, message", [
    ({"components": 0}, "config.pretrain.components: expected >= 1, got 0"),
    ({"scenes": "labeled"}, "config.pretrain.scenes: expected unlabeled or all, got 'labeled'"),
    ({"inputs": ["rgb"]}, "config.pretrain.inputs: expected xyz plus optionally rgb and normals, each once, "
                          "got ['rgb']"),
    ({"inputs": ["xyz", "depth"]}, "config.pretrain.inputs: expected xyz plus optionally rgb and normals, each "
                                   "once, got ['xyz', 'depth']"),
    ({"inputs": ["xyz", "rgb", "rgb"]}, "config.pretrain.inputs: expected xyz plus optionally rgb and normals, "
                                        "each once, got ['xyz', 'rgb', 'rgb']"),
    ({"covariance_floor": -1e-9}, "config.pretrain: covariance_floor must be >= 0 and feature_floor > 0"),
    ({"feature_floor": 0.0}, "config.pretrain: covariance_floor must be >= 0 and feature_floor > 0"),
])
def test_pretrain_settings_out_of_range(kwargs, message):
    with pytest.raises(ConfigError) as err:
        PretrainConfig(**kwargs)
    assert str(err.value) == message


def test_pretrain_settings_at_their_limits_are_fine():
    cfg = PretrainConfig(components=1, scenes="unlabeled", inputs=["normals", "xyz", "rgb"], covariance_floor=0.0,
                         feature_floor=1e-12)
    assert cfg.inputs == ["normals", "xyz", "rgb"] and PretrainConfig(scenes="all").scenes == "all"


def test_section_checks_run_when_loading():
    with pytest.raises(ConfigError, match=r"^config.model.offset_range: expected a length > 0 metres, got 0.0$"):
        load_config(None, ["model.offset_range=0"])
    with pytest.raises(ConfigError, match=r"^config.pretrain.components: expected >= 1, got 0$"):
        load_config(None, ["pretrain.components=0"])


@pytest.mark.parametrize("raw, expected", [("1e-3", 1e-3), ("5E-4", 5e-4), ("-2e2", -200.0), ("+.5e1", 5.0),
                                           ("3.e-2", 0.03), (" 1e-3", 1e-3)])
def test_exponent_floats_without_a_dot_are_floats(tmp_path, raw, expected):
    # PyYAML (YAML 1.1) reads 1e-3 as the string '1e-3'; a user typing train.lr=1e-3 means 0.001
    assert load_config(None, [f"train.lr={raw}"]).train.lr == expected
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  lr: {raw.strip()}\n")
    assert load_config(path, []).train.lr == expected


@pytest.mark.parametrize("raw", ["1e", "e-3", "1e-3x", "1e-3.5", "0x1p-3", "nan"])
def test_strings_that_are_not_exponent_floats_are_still_refused(raw):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"train.lr={raw}"])
    assert str(err.value) == f"config.train.lr: expected float, got {raw!r}"


def test_an_int_field_does_not_take_an_exponent_string():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=1e2"])
    assert str(err.value) == "config.train.epochs: expected int, got '1e2'"
