"""``minkseg tune``: clustering thresholds searched on a validation split, the network run once.

The clustering settings (``cluster.tau_probabilistic`` or ``cluster.tau_margin``, whichever
is the run's head, ``cluster.seed_threshold``, ``cluster.min_size`` and, where
:class:`~minkseg.config.ClusterConfig` has it, ``cluster.hypothesis_threshold``) change
nothing upstream of the clustering, so each scene is voxelized and run through the network
once (:func:`~minkseg.inference.predict.forward_scene`) and every candidate setting only
re-runs :func:`~minkseg.inference.predict.predict_from_forward` on the cached outputs, scored
by the benchmark code of ``minkseg evaluate`` (``match_scene`` per scene, ``summarize_matches``
over the split): a setting's numbers are exactly those ``minkseg evaluate`` prints with it.

Cache: a scene's forward (voxel batch, head outputs, vertex -> voxel map; the decoder
features only when the model has the re-correction module Psi, which reads them) and its
prepared arrays are moved to the CPU and kept in memory until ``cache_bytes`` is reached;
later scenes are written under ``RUN/tune_cache/`` (removed at the end) and read back per
setting. Measured on a synthetic 150k-vertex scene at 2 cm (146k voxels, MinkUNet34C, either
head): 44 MiB of cached forward without Psi's features (~310 bytes per voxel: the voxel batch,
20 semantic logits and the head's maps), 97 MiB with them (+96 floats per voxel), plus 5 MiB of
prepared arrays. ScanNet's 312 val scenes (~150k vertices each, fewer voxels than vertices at
2 cm) thus take up to ~15 GiB without Psi: with the default 8 GiB budget the rest goes to disk
(``--cache-gib`` raises it). Each setting moves a scene's cached tensors to the device,
clusters there, and scores on the CPU.

Search (``search="descent"``, the default): coordinate descent from the run's own
settings: each parameter in turn takes the best of its candidate values with the others
fixed; passes repeat until one changes nothing (at most ``passes``). ``search="grid"``
scores every combination. Settings already scored are not scored again. Ties keep the
setting scored first, so the run's own settings win unless another is strictly better.

Under torchrun (``split_over_ranks``) each rank caches every world-th scene and scores its
share for each setting; the per-scene matches are gathered and every rank computes the same
metrics, as :func:`~minkseg.evaluation.model_eval.evaluate_model` does.

The result goes to ``RUN/tuned.yaml`` (the searched cluster keys, the metric, split, scene
count and checkpoint) and ``RUN/tune.md`` (one row per setting, the best marked).
:func:`~minkseg.engine.checkpoint.load_checkpoint` applies ``tuned.yaml`` to the config of
any checkpoint of that folder (``tuned=False``, the CLI's ``--no-tuned``, ignores it).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from minkseg.config import ClusterConfig, Config, ConfigError, from_dict, to_dict
from minkseg.data.dataset import iterate_prepared
from minkseg.data.voxelize import VoxelBatch, VoxelScene
from minkseg.engine import distributed
from minkseg.engine.checkpoint import read_checkpoint, save_checkpoint
from minkseg.evaluation.evaluate import summarize_matches
from minkseg.evaluation.metrics import match_scene, semantic_confusion
from minkseg.inference.predict import SceneForward, forward_scene, ground_truth_ids, predict_from_forward
from minkseg.models.heads import MarginOutput, ProbabilisticOutput
from minkseg.models.model import ModelOutput, SegmentationModel
from scannet_tools.io import write_text_atomic
from scannet_tools.prepare import load_prepared, prepared_path

TUNED_FILE = "tuned.yaml"
TABLE_FILE = "tune.md"
CACHE_DIR = "tune_cache"
INSTANCE_METRICS = ("mAP", "AP50", "AP25")
DEFAULT_CACHE_BYTES = 8 << 30

# candidate values added to the run's own; taus and seed thresholds are probabilities (kernel
# values and seed scores in [0, 1]); min_size is in voxels
DEFAULT_TAUS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_SEED_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_MIN_SIZES = (5, 10, 20, 40, 80)
DEFAULT_HYPOTHESIS_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)


def tau_key(cfg: Config) -> str:
    """The cluster key of the run's head threshold."""
    return "tau_probabilistic" if cfg.model.head == "probabilistic" else "tau_margin"


def searchable_keys(cfg: Config) -> list[str]:
    """The cluster keys ``tune`` searches, in coordinate-descent order: those that change this
    config's predictions. The head's tau unless ``cluster.taus`` (several taus merged by NMS)
    replaces it; the seed threshold with greedy grouping (mean shift has no seeds); the minimum
    size; ``hypothesis_threshold`` when ``cluster.hypotheses`` > 1 (with one class per mask it
    is unused)."""
    c = cfg.cluster
    keys = [] if c.taus else [tau_key(cfg)]
    if c.grouping == "greedy":
        keys.append("seed_threshold")
    keys.append("min_size")
    if c.hypotheses > 1:
        keys.append("hypothesis_threshold")
    return keys


def default_space(cfg: Config) -> dict[str, list]:
    """Candidate values per searched key: the defaults above plus the run's own value, sorted."""
    defaults = {"seed_threshold": DEFAULT_SEED_THRESHOLDS, "min_size": DEFAULT_MIN_SIZES,
                "hypothesis_threshold": DEFAULT_HYPOTHESIS_THRESHOLDS, tau_key(cfg): DEFAULT_TAUS}
    return {k: sorted({*defaults[k], getattr(cfg.cluster, k)}) for k in searchable_keys(cfg)}


def with_cluster(cfg: Config, setting: dict) -> Config:
    """``cfg`` with some cluster keys replaced (validated as the config file's values are)."""
    cluster = from_dict(ClusterConfig, {**to_dict(cfg.cluster), **setting}, "cluster")
    return dataclasses.replace(cfg, cluster=cluster)


# ---------------------------------------------------------------- the cache of network outputs

_CACHED_TYPES = {c.__name__: c for c in (SceneForward, VoxelBatch, VoxelScene, ModelOutput, ProbabilisticOutput,
                                         MarginOutput)}


def _move(value, device: torch.device | str):
    """Tensors inside (nested dataclasses of) ``value`` moved to ``device``; other values as they are."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(**{f.name: _move(getattr(value, f.name), device) for f in dataclasses.fields(value)})
    if isinstance(value, list):
        return [_move(v, device) for v in value]
    return value


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _to_plain(value):
    """A forward as tensors, containers and primitives (what a weights_only load reads back)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **{f.name: _to_plain(getattr(value, f.name))
                                                     for f in dataclasses.fields(value)}}
    if isinstance(value, np.ndarray):
        return {"__numpy__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(value):
    if isinstance(value, dict) and "__numpy__" in value:
        return value["__numpy__"].numpy()
    if isinstance(value, dict) and "__type__" in value:
        cls = _CACHED_TYPES[value["__type__"]]
        return cls(**{k: _from_plain(v) for k, v in value.items() if k != "__type__"})
    if isinstance(value, list):
        return [_from_plain(v) for v in value]
    return value


@dataclass
class CachedScene:
    index: int  # position in the scene list
    name: str
    gt_ids: np.ndarray  # (N,) official ground-truth ids (nyu40 * 1000 + instance)
    gt_nyu40: np.ndarray  # (N,) semantic ground truth
    forward: SceneForward | None = None  # on the CPU, or None when spilled to ``file``
    scene: dict | None = None  # prepared arrays, None when spilled (re-read from ``prepared``)
    file: Path | None = None
    prepared: Path | None = None


@dataclass
class ForwardCache:
    """Every scene's network outputs, on the CPU up to ``budget`` bytes, the rest on disk."""

    budget: int
    spill_dir: Path
    entries: list[CachedScene] = field(default_factory=list)
    memory_bytes: int = 0
    disk_bytes: int = 0

    def add(self, index: int, name: str, f: SceneForward, scene: dict, prepared: Path) -> None:
        f = _move(f, "cpu")
        entry = CachedScene(index, name, ground_truth_ids(scene).astype(np.int32), scene["nyu40"].astype(np.int16),
                            prepared=prepared)
        size = _nbytes(f) + _nbytes(scene)
        if self.memory_bytes + size <= self.budget:
            entry.forward, entry.scene = f, scene
            self.memory_bytes += size
        else:
            entry.file = self.spill_dir / f"{index:06d}.pth"
            save_checkpoint(entry.file, {"forward": _to_plain(f)})
            self.disk_bytes += entry.file.stat().st_size
        self.entries.append(entry)

    def load(self, entry: CachedScene, device: torch.device | str) -> tuple[SceneForward, dict]:
        if entry.forward is not None:
            return _move(entry.forward, device), entry.scene
        f = _from_plain(read_checkpoint(entry.file, "cpu", keys=("forward",))["forward"])
        return _move(f, device), load_prepared(entry.prepared)

    def close(self) -> None:
        shutil.rmtree(self.spill_dir, ignore_errors=True)


def build_cache(model: SegmentationModel, cfg: Config, scenes: list[str], device: torch.device | str,
                spill_dir: Path, budget: int = DEFAULT_CACHE_BYTES, workers: int = 0, progress: bool = False,
                split_over_ranks: bool = False) -> ForwardCache:
    """Run the network once on each scene (this rank's share under ``split_over_ranks``)."""
    mine = distributed.rank_items(len(scenes)) if split_over_ranks else list(range(len(scenes)))
    cache = ForwardCache(budget, spill_dir / f"rank{distributed.rank()}" if split_over_ranks else spill_dir)
    files = [prepared_path(cfg.data.prepared, scenes[i]) for i in mine]
    show = progress and (distributed.is_main() or not split_over_ranks)
    keep_features = model.recorrector is not None  # only Psi reads the decoder features
    for i, path, scene in zip(mine, files, tqdm(iterate_prepared(files, workers), total=len(files),
                                                  desc="network", unit="scene", disable=not show or None)):
        f = forward_scene(model, scene, cfg, device)
        if not keep_features:
            f = dataclasses.replace(f, out=dataclasses.replace(f.out, features=None))
        cache.add(i, scenes[i], f, scene, path)
    return cache


def score_setting(model: SegmentationModel, cfg: Config, cache: ForwardCache, device: torch.device | str,
                  split_over_ranks: bool = False) -> dict:
    """Benchmark metrics of ``cfg``'s clustering on the cached forwards (evaluate_model's numbers)."""
    records = []
    for entry in cache.entries:
        f, scene = cache.load(entry, device)
        pred = predict_from_forward(model, f, scene, cfg)
        records.append((entry.index, match_scene(entry.gt_ids, pred.instances),
                        semantic_confusion(entry.gt_nyu40.astype(np.int64), pred.semantic_nyu40)))
    parts = distributed.all_gather(records) if split_over_ranks else [records]
    gathered = sorted((r for part in parts for r in part), key=lambda r: r[0])
    return summarize_matches([m for _, m, _ in gathered], [c for _, _, c in gathered])


# ---------------------------------------------------------------- the search


@dataclass
class TrialRow:
    setting: dict  # searched cluster keys -> values
    metrics: dict  # summarize_matches output
    seconds: float

    def value(self, metric: str) -> float:
        v = self.metrics.get("instance", {}).get(metric, float("nan"))
        return -math.inf if v != v else float(v)  # a NaN objective (no class scored) never wins


@dataclass
class TuneResult:
    metric: str
    rows: list[TrialRow]
    best: int  # index into rows
    baseline: int  # the row of the run's own settings
    scenes: int

    @property
    def best_setting(self) -> dict:
        return self.rows[self.best].setting


def resolve_metric(cfg: Config, metric: str | None) -> str:
    """``metric``, else the run's train.select_metric when it is an instance metric, else mAP
    (mIoU does not depend on the clustering)."""
    chosen = metric or (cfg.train.select_metric if cfg.train.select_metric in INSTANCE_METRICS else "mAP")
    if chosen not in INSTANCE_METRICS:
        raise ValueError(f"--metric {chosen!r}: tune optimizes an instance metric ({', '.join(INSTANCE_METRICS)}); "
                         "mIoU does not depend on the clustering")
    return chosen


def search(model: SegmentationModel, cfg: Config, cache: ForwardCache, space: dict[str, list], metric: str,
           device: torch.device | str, mode: str = "descent", passes: int = 3, split_over_ranks: bool = False,
           log=None) -> TuneResult:
    """Score settings of ``space`` on the cached forwards by coordinate descent or a full grid."""
    unknown = [k for k in space if k not in searchable_keys(cfg)]
    if unknown:
        raise ValueError(f"cannot search cluster key(s) {unknown}; searchable: {searchable_keys(cfg)}")
    if any(not v for v in space.values()):
        raise ValueError("every searched key needs at least one candidate value")
    keys = list(space)
    rows: list[TrialRow] = []
    seen: dict[tuple, int] = {}

    def trial(setting: dict) -> int:
        key = tuple(setting[k] for k in keys)
        if key not in seen:
            t0 = time.perf_counter()
            metrics = score_setting(model, with_cluster(cfg, setting), cache, device, split_over_ranks)
            rows.append(TrialRow(dict(setting), metrics, time.perf_counter() - t0))
            seen[key] = len(rows) - 1
            if log:
                log(_row_line(rows[-1], len(rows), keys, metric))
        return seen[key]

    baseline = trial({k: getattr(cfg.cluster, k) for k in keys})
    if mode == "grid":
        for values in itertools.product(*(space[k] for k in keys)):
            trial(dict(zip(keys, values)))
    elif mode == "descent":
        current = dict(rows[baseline].setting)
        for _ in range(passes):
            before = dict(current)
            for k in keys:
                # the current value first: a tie keeps it
                scored = [trial({**current, k: v}) for v in [current[k], *[v for v in space[k] if v != current[k]]]]
                best = max(scored, key=lambda i: (rows[i].value(metric), -scored.index(i)))
                current = dict(rows[best].setting)
            if current == before:
                break
    else:
        raise ValueError(f"unknown search {mode!r}; choose descent or grid")
    best = max(range(len(rows)), key=lambda i: (rows[i].value(metric), -i))
    return TuneResult(metric, rows, best, baseline, len(cache.entries))


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def _row_line(row: TrialRow, number: int, keys: list[str], metric: str) -> str:
    inst = row.metrics.get("instance", {})
    return (f"setting {number}: " + ", ".join(f"{k}={_fmt(row.setting[k])}" for k in keys)
            + f" -> {metric} {_pct(inst.get(metric, float('nan')))} ({row.seconds:.1f} s)")


def format_table(result: TuneResult) -> str:
    """The search as a Markdown table: one row per setting in scoring order, the best marked."""
    keys = list(result.rows[0].setting)
    head = ["#"] + [f"cluster.{k}" for k in keys] + [f"**{m}**" if m == result.metric else m
                                                     for m in INSTANCE_METRICS] + ["s", ""]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---:"] * (len(head) - 1) + ["---"]) + " |"]
    for i, row in enumerate(result.rows):
        inst = row.metrics.get("instance", {})
        note = " ".join(n for n, hit in (("**best**", i == result.best), ("run's settings", i == result.baseline))
                        if hit)
        lines.append("| " + " | ".join([str(i + 1)] + [_fmt(row.setting[k]) for k in keys]
                                       + [_pct(inst.get(m, float("nan"))) for m in INSTANCE_METRICS]
                                       + [f"{row.seconds:.1f}", note]) + " |")
    return "\n".join(lines)


def write_results(result: TuneResult, run_dir: Path, checkpoint: Path, split: str, mode: str,
                  cache: ForwardCache, step: int | None = None, fixed: dict | None = None) -> tuple[Path, Path]:
    """``RUN/tuned.yaml`` (the best setting, after the ``fixed`` cluster overrides it was searched
    with) and ``RUN/tune.md`` (the table), both written atomically."""
    best, base = result.rows[result.best], result.rows[result.baseline]
    tuned = {
        "cluster": {**(fixed or {}), **best.setting},
        "metric": result.metric,
        "value": best.value(result.metric) if best.value(result.metric) > -math.inf else None,
        "baseline_value": base.value(result.metric) if base.value(result.metric) > -math.inf else None,
        "split": split,
        "scenes": result.scenes,
        "checkpoint": checkpoint.name,
        "step": step,
    }
    yaml_path, md_path = run_dir / TUNED_FILE, run_dir / TABLE_FILE
    write_text_atomic(yaml_path, "# written by minkseg tune: the clustering settings with the best "
                                 f"{result.metric} on split {split!r}; evaluate, predict and compare apply them to "
                                 "every checkpoint of this folder (--no-tuned ignores them)\n"
                      + yaml.safe_dump(tuned, sort_keys=False))
    how = ("coordinate descent from the run's settings (each key in turn, the others fixed)" if mode == "descent"
           else "every combination of the candidate values")
    cache_line = (f"{cache.memory_bytes / 2**20:.0f} MiB of cached outputs in memory"
                  + (f", {cache.disk_bytes / 2**20:.0f} MiB on disk" if cache.disk_bytes else ""))
    md = [f"# Clustering search: {run_dir.name} ({checkpoint.name}), split {split}, {result.scenes} scenes", "",
          f"Objective: **{result.metric}** (values in %). Search: {how}; {len(result.rows)} settings scored on one "
          f"network pass per scene ({cache_line})."
          + (f" Fixed for the search (also in {TUNED_FILE}): {_setting_text(fixed)}." if fixed else ""), "",
          format_table(result), "",
          f"Best: {_setting_text(best.setting)}: {result.metric} {_pct(best.metrics['instance'][result.metric])} "
          f"(run's settings: {_pct(base.metrics['instance'][result.metric])}), written to {TUNED_FILE}. "
          "`minkseg evaluate`, `predict` and `compare` with a checkpoint of this run use it; `--no-tuned` "
          "ignores it."]
    write_text_atomic(md_path, "\n".join(md) + "\n")
    return yaml_path, md_path


def _setting_text(setting: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in setting.items())


# ---------------------------------------------------------------- reading tuned.yaml back


def read_tuned(path: Path) -> dict:
    """The contents of a ``tuned.yaml``; a malformed file raises :class:`ConfigError`, one line naming it."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or type(e).__name__}); "
                          "rerun minkseg tune or pass --no-tuned") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__}: {e}); pass --no-tuned") from None
    if not isinstance(data, dict) or not isinstance(data.get("cluster"), dict) or not data["cluster"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'cluster' section (as minkseg tune writes "
                          "it); rerun minkseg tune or pass --no-tuned")
    return data


def apply_tuned(cfg: Config, folder: Path, announce: bool = True) -> Config:
    """``cfg`` with the cluster settings of ``folder/tuned.yaml`` when that file exists (else ``cfg``),
    saying so in one line on stderr."""
    path = Path(folder) / TUNED_FILE
    if not path.is_file():
        return cfg
    data = read_tuned(path)
    try:
        out = with_cluster(cfg, data["cluster"])
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}; rerun minkseg tune or pass --no-tuned") from None
    if announce:
        basis = ", ".join(str(x) for x in (data.get("metric"), data.get("split") and f"split {data['split']}",
                                           data.get("scenes") and f"{data['scenes']} scenes",
                                           data.get("checkpoint")) if x)
        print(f"using tuned clustering settings from {path}" + (f" ({basis})" if basis else "")
              + f": {_setting_text(data['cluster'])}; --no-tuned ignores them", file=sys.stderr)
    return out


# ---------------------------------------------------------------- the command


def tune_run(checkpoint: Path, split: str = "val", metric: str | None = None, space: dict[str, list] | None = None,
             mode: str = "descent", passes: int = 3, device: torch.device | str = "cpu",
             prepared: str | None = None, root: str | None = None, fixed: dict | None = None,
             cache_bytes: int = DEFAULT_CACHE_BYTES, workers: int = 0, progress: bool = True,
             split_over_ranks: bool = False, log=None) -> tuple[TuneResult, Path | None, Path | None]:
    """Search the clustering settings of a checkpoint on a split and write them next to it.

    ``fixed`` sets cluster options for the whole search (e.g. ``{"hypotheses": 3}``); they are
    written to ``tuned.yaml`` with the best setting. ``space`` maps searched cluster keys (or
    ``"tau"``: the head's tau) to candidate values; keys left out take :func:`default_space`'s
    candidates, a key with one value stays fixed. Returns the result and the paths of ``tuned.yaml`` and ``tune.md``
    (None on ranks other than 0).
    """
    from minkseg.data.splits import split_scenes
    from minkseg.engine.checkpoint import load_checkpoint

    checkpoint = Path(checkpoint)
    model, cfg, state = load_checkpoint(checkpoint, device, tuned=False)  # search from the trained settings
    if prepared:
        cfg.data.prepared = prepared
    if root:
        cfg.data.root = root
    if fixed:
        cfg = with_cluster(cfg, fixed)
    metric = resolve_metric(cfg, metric)
    full = default_space(cfg)
    space = dict(space or {})
    if "tau" in space:  # the head's tau, whichever head the run has
        space[tau_key(cfg)] = space.pop("tau")
    unknown = [k for k in space if k not in full]
    if unknown:
        context = {k: getattr(cfg.cluster, k) for k in ("taus", "grouping", "hypotheses") if hasattr(cfg.cluster, k)}
        raise ValueError(f"cannot search cluster key(s) {unknown} with a {cfg.model.head} head and "
                         f"{_setting_text(context)}; searchable: {list(full)}")
    full.update({k: sorted(set(v)) for k, v in space.items()})
    scenes = split_scenes(cfg, split)
    cache = build_cache(model, cfg, scenes, device, checkpoint.parent / CACHE_DIR, cache_bytes, workers, progress,
                        split_over_ranks)
    try:
        result = search(model, cfg, cache, full, metric, device, mode, passes, split_over_ranks, log)
    finally:
        cache.close()
    result.scenes = len(scenes)
    if split_over_ranks and not distributed.is_main():
        return result, None, None
    step = state.get("step") if isinstance(state.get("step"), int) else None
    yaml_path, md_path = write_results(result, checkpoint.parent, checkpoint, split, mode, cache, step, fixed)
    return result, yaml_path, md_path
