"""``minkseg selftrain``: TWIST-style self-training rounds for limited labels.

Round 0 trains on the labelled training scenes only. Each round r >= 1 takes the previous
round's final model as teacher, writes its pseudo labels for every unlabelled training
scene, and trains a student (initialised from the teacher) on the labelled scenes plus
the pseudo-labelled ones. Round 1 has semantic pseudo labels only (supplementary Sec.
B); from round 2 on, certain instance proposals become instance pseudo labels too.

A run folder ``runs/<name>/`` holds::

    selftrain.yaml            the resolved config
    split.json                labelled and unlabelled training scenes
    round_0/                  a minkseg train run (config.yaml, last.pth, tb/) + metrics.json
    round_<r>/pseudo/         the teacher's pseudo labels: <scene>.npz, stats.json
    round_<r>/                the student's run + metrics.json
    supervised_same_budget/   (selftrain.same_budget_baseline) round 0 trained on, labelled
                              scenes only, for as many steps as all students together
    summary.json, summary.md  metrics and pseudo-label quality per round
    compare/                  minkseg compare over all rounds

Every stage is finished by an atomic write (a round by its ``metrics.json``, a pseudo-label
set by its ``stats.json``, a scene by its ``.npz``), so ``--resume`` continues after the
last finished one, and inside an unfinished training run from its ``last.pth``.

Under ``torchrun`` every stage is shared by the ranks: training runs in
DistributedDataParallel (see :mod:`minkseg.engine.train`), each rank pseudo-labels every
world-th unlabelled scene and writes those files itself (atomically), and rank 0 alone
writes the run's other files, each followed by a barrier before any rank reads them.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from tqdm import tqdm

from minkseg.config import Config, load_config, save_config, to_dict
from minkseg.data.dataset import PreparedScenes, iterate_prepared, resolve_workers
from minkseg.data.splits import labeled_scenes, split_scenes
from minkseg.device import resolve_device
from minkseg.engine import distributed
from minkseg.engine.checkpoint import load_checkpoint, read_checkpoint
from minkseg.engine.pseudo_labels import load_stats, pseudo_label_scene, pseudo_label_stats, summarize_stats
from minkseg.engine.train import Trainer
from minkseg.evaluation.evaluate import write_json
from minkseg.evaluation.model_eval import evaluate_model
from scannet_tools.io import write_text_atomic
from scannet_tools.prepare import prepared_path

BASELINE = "supervised_same_budget"


def round_config(cfg: Config, r: int, name: str | None = None) -> Config:
    """The training config of round ``r`` (its run lives in ``runs/<name>/round_<r>``)."""
    c = copy.deepcopy(cfg)
    c.name = f"{cfg.name}/{name or f'round_{r}'}"
    c.model.recorrector = cfg.selftrain.recorrect
    c.train.val_every = 0  # each round is evaluated once, at its end
    if r > 0 and cfg.selftrain.epochs:
        c.train.epochs = cfg.selftrain.epochs
    return c


def certainty_threshold(cfg: Config, r: int) -> float:
    """Round r's proposal certainty threshold: entry r-1 of ``selftrain.certainty``, the last repeating."""
    schedule = cfg.selftrain.certainty
    return float(schedule[min(r - 1, len(schedule) - 1)])


def _finished(path: Path) -> bool:
    return (path / "metrics.json").is_file()


class SelfTraining:
    def __init__(self, cfg: Config, resume: bool = False, device: str | None = None):
        self.cfg = cfg
        self.device = resolve_device(device)
        self.root = cfg.run_dir
        st = cfg.selftrain
        if st.rounds < 0 or not st.certainty or st.pseudo_weight < 0:
            raise ValueError("selftrain: rounds >= 0, a non-empty certainty schedule and pseudo_weight >= 0 needed")
        train = split_scenes(cfg, cfg.data.train_split)
        self.labeled = labeled_scenes(cfg, train)
        if not self.labeled:
            raise ValueError(f"{cfg.data.train_split}: no labelled training scene (check data.label_list)")
        self.unlabeled = [s for s in train if s not in set(self.labeled)]
        if not self.unlabeled:
            raise ValueError("selftrain needs unlabelled scenes: set data.label_ratio < 1 or data.label_list")
        self.val = split_scenes(cfg, cfg.data.val_split)
        split = {"labeled": self.labeled, "unlabeled": self.unlabeled}
        if (self.root / "split.json").is_file():
            if not resume:
                raise FileExistsError(f"{self.root} already holds a self-training run; pass --resume or another name=")
            if json.loads((self.root / "split.json").read_text()) != split:
                raise ValueError(f"{self.root}/split.json: the run was started with another label split")
            if to_dict(load_config(self.root / "selftrain.yaml")) != to_dict(cfg):
                raise ValueError(f"{self.root}/selftrain.yaml: the run was started with a different config")
        distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
        if distributed.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.root / "split.json", json.dumps(split, indent=1) + "\n")
            save_config(cfg, self.root / "selftrain.yaml")
        distributed.barrier()

    def run(self) -> dict:
        """All rounds (skipping finished ones), the optional baseline, then summary and comparison."""
        st = self.cfg.selftrain
        _say(f"self-training {self.root}: {len(self.labeled)} labelled, {len(self.unlabeled)} unlabelled, "
             f"{len(self.val)} validation scenes; rounds 0..{st.rounds}")
        for r in range(st.rounds + 1):
            self.train_round(r)
        if st.same_budget_baseline:
            self.train_baseline()
        return self.summarize()

    def pseudo_labels(self, r: int) -> Path:
        """The round-(r-1) teacher's pseudo labels for every unlabelled scene (resumable per scene).

        Each rank labels every world-th scene and writes its files; rank 0 writes the
        statistics once all ranks are done.
        """
        out = self.root / f"round_{r}" / "pseudo"
        if (out / "stats.json").is_file():
            return out
        out.mkdir(parents=True, exist_ok=True)
        # the round's own cluster settings label (round_config), not a tuned.yaml placed in its folder
        teacher, _, _ = load_checkpoint(self.root / f"round_{r - 1}" / "last.pth", self.device, tuned=False)
        teacher_cfg = round_config(self.cfg, r - 1)
        instances, threshold = r >= 2, certainty_threshold(self.cfg, r)
        recorrect = instances and teacher.recorrector is not None
        mine = [self.unlabeled[i] for i in distributed.rank_items(len(self.unlabeled))]
        todo = [s for s in mine if not (out / f"{s}.npz").is_file()]
        prepared = Path(self.cfg.data.prepared)
        # a bad scene (e.g. a truncated .npz) must not stop the round: read errors come back as values
        scenes = iterate_prepared([prepared_path(prepared, s) for s in todo],
                                  resolve_workers(self.cfg.train.workers), errors_as_values=True)
        failed = []
        for scene, data in zip(todo, tqdm(scenes, total=len(todo), desc=f"round {r} pseudo labels", unit="scene",
                                          disable=None if distributed.is_main() else True)):
            try:
                if isinstance(data, Exception):
                    raise data
                labels = pseudo_label_scene(teacher, data, teacher_cfg, instances, threshold, recorrect, self.device)
                labels.save(out / f"{scene}.npz", pseudo_label_stats(labels, data))
            except Exception as e:
                failed.append(scene)
                tqdm.write(f"{scene}: no pseudo labels ({type(e).__name__}: {e})")
        failed = sorted(s for part in distributed.all_gather(failed) for s in part)  # also a barrier
        if distributed.is_main():
            counts = [load_stats(out / f"{s}.npz") for s in self.unlabeled if (out / f"{s}.npz").is_file()]
            stats = summarize_stats(counts) | {"round": r, "instances": instances, "recorrect": recorrect,
                                               "certainty_threshold": threshold if instances else None,
                                               "failed": failed}
            write_json(stats, out / "stats.json")
            tqdm.write(_format_stats(stats))
        distributed.barrier()
        return out

    def student_dataset(self, r: int, pseudo: Path) -> PreparedScenes:
        st, prepared = self.cfg.selftrain, Path(self.cfg.data.prepared)
        scenes = [s for s in self.unlabeled if (pseudo / f"{s}.npz").is_file()]
        repeat = st.labeled_repeat or max(1, round(len(scenes) / len(self.labeled)))
        labeled = self.labeled * repeat
        files = [prepared_path(prepared, s) for s in labeled + scenes]
        label_files = [None] * len(labeled) + [pseudo / f"{s}.npz" for s in scenes]
        weights = [1.0] * len(labeled) + [st.pseudo_weight] * len(scenes)
        return self._dataset(files, label_files, weights, r)

    def _dataset(self, files: list[Path], label_files: list[Path | None] | None, weights: list[float] | None,
                 r: int) -> PreparedScenes:
        d = self.cfg.data
        # a different augmentation stream per round, still a pure function of the config
        return PreparedScenes(files, d.voxel_size, d.augment, d.use_normals, seed=self.cfg.train.seed + 1000 * r,
                              label_files=label_files, weights=weights)

    def train_round(self, r: int) -> None:
        run = self.root / f"round_{r}"
        if _finished(run):
            _say(f"round {r}: finished earlier, skipped")
            return
        cfg = round_config(self.cfg, r)
        dataset, init = None, None
        if r > 0:
            dataset = self.student_dataset(r, self.pseudo_labels(r))
            if self.cfg.selftrain.init_from_teacher:
                init = self._weights(f"round_{r - 1}")
        self._train(cfg, run, dataset, init, f"round {r}")

    def train_baseline(self) -> None:
        """Round 0 trained on, labelled scenes only, for the students' total epochs of the same size."""
        run = self.root / BASELINE
        if _finished(run):
            return
        st = self.cfg.selftrain
        student = self.student_dataset(st.rounds, self.root / f"round_{st.rounds}" / "pseudo")
        epochs = sum(round_config(self.cfg, r).train.epochs for r in range(1, st.rounds + 1))
        cfg = round_config(self.cfg, 0, BASELINE)
        cfg.train.epochs = epochs
        files = [prepared_path(self.cfg.data.prepared, self.labeled[i % len(self.labeled)])
                 for i in range(len(student))]
        self._train(cfg, run, self._dataset(files, None, None, st.rounds + 1), self._weights("round_0"),
                    "supervised, same budget")

    def _weights(self, run: str) -> dict:
        """The final model weights of a finished round."""
        return read_checkpoint(self.root / run / "last.pth", self.device)["model"]

    def _train(self, cfg: Config, run: Path, dataset: PreparedScenes | None, init: dict | None, what: str) -> None:
        trainer = Trainer(cfg, resume=(run / "last.pth").is_file(), device=str(self.device), dataset=dataset,
                          init_model=init)
        _say(f"{what}: {len(trainer.dataset)} scenes per epoch, {cfg.train.epochs} epochs, world size "
             f"{trainer.world}")
        trainer.fit()
        metrics = evaluate_model(trainer.model, cfg, self.val, self.device, workers=trainer.workers,
                                 split_over_ranks=True)
        metrics["steps"] = trainer.step
        if distributed.is_main():
            write_json(metrics, run / "metrics.json")
        distributed.barrier()
        i = metrics["instance"]
        _say(f"{what}: val mAP {i['mAP']:.3f} AP50 {i['AP50']:.3f} AP25 {i['AP25']:.3f} "
             f"mIoU {metrics['semantic']['mIoU']:.3f} after {trainer.step} steps")

    def summarize(self) -> dict:
        """Rank 0 writes summary.json/.md and the comparison report; other ranks return an empty dict."""
        from minkseg.viz.compare import compare_runs

        if not distributed.is_main():
            return {}

        rows = []
        runs = [f"round_{r}" for r in range(self.cfg.selftrain.rounds + 1)]
        if _finished(self.root / BASELINE):
            runs.append(BASELINE)
        total = 0
        for name in runs:
            m = json.loads((self.root / name / "metrics.json").read_text())
            # rounds add up; the baseline continues round 0
            total = (rows[0]["steps"] if name == BASELINE else total) + m["steps"]
            stats_file = self.root / name / "pseudo" / "stats.json"
            rows.append({"run": name, "steps": total, "mAP": m["instance"]["mAP"], "AP50": m["instance"]["AP50"],
                         "AP25": m["instance"]["AP25"], "mIoU": m["semantic"]["mIoU"],
                         "pseudo": json.loads(stats_file.read_text()) if stats_file.is_file() else None})
        summary = {"config": to_dict(self.cfg), "labeled": self.labeled, "unlabeled": self.unlabeled, "rounds": rows}
        write_json(summary, self.root / "summary.json")
        write_text_atomic(self.root / "summary.md", format_summary(rows))
        tqdm.write(format_summary(rows))
        compare_runs([self.root / r for r in runs], self.root / "compare", device=str(self.device))
        return summary


def _say(line: str) -> None:
    """A progress line, printed once (by rank 0) under torchrun."""
    if distributed.is_main():
        tqdm.write(line)


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _format_stats(s: dict) -> str:
    text = (f"round {s['round']} pseudo labels on {s['scenes']} scenes: semantic coverage "
            f"{_pct(s['semantic_coverage'])}%, precision {_pct(s['semantic_precision'])}%, recall "
            f"{_pct(s['semantic_recall'])}%; ")
    if not s["instances"]:
        return text + "no instance pseudo labels in this round"
    return text + (f"{s['pseudo_instances']} of {s['proposals']} proposals kept, instance precision "
                   f"{_pct(s['instance_precision'])}%, recall {_pct(s['instance_recall'])}%")


def format_summary(rows: list[dict]) -> str:
    """Markdown table: metrics (%) after each round and the quality of the pseudo labels it trained on."""
    lines = ["| run | steps | mAP | AP50 | AP25 | mIoU | sem. coverage | sem. P | sem. R | inst. kept | inst. P |"
             " inst. R |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        p = row["pseudo"] or {}
        cells = [_pct(row[k]) for k in ("mAP", "AP50", "AP25", "mIoU")]
        cells += [_pct(p.get(k)) for k in ("semantic_coverage", "semantic_precision", "semantic_recall")]
        cells.append(str(p["pseudo_instances"]) if p.get("instances") else "-")
        cells += [_pct(p.get(k)) if p.get("instances") else "-" for k in ("instance_precision", "instance_recall")]
        lines.append(f"| {row['run']} | {row['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

